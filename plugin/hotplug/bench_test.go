package hotplug

import (
	"context"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mtwatch/mtwatch/lib/domid"
	"github.com/mtwatch/mtwatch/plugin/plugintest"
)

// BenchmarkSetupLatency measures device set-up latency, from the backend's
// InitWait to hotplug-status=connected written by a trivial script, for 50
// healthy domains with a vif and a vbd each, while one more domain's script
// hangs (until the 2 s timeout): with a worker per domain, with a single
// worker (xl devd's model), and without the hang. Reported: p50, p99 and max
// of the 100 healthy devices' latencies, over all iterations.
//
//	go test -run '^$' -bench SetupLatency -benchtime 5x ./plugin/hotplug
func BenchmarkSetupLatency(b *testing.B) {
	for _, bc := range []struct {
		name   string
		hang   bool
		single bool
	}{
		{"no-hang", false, false},
		{"hang/multi-worker", true, false},
		{"hang/single-worker", true, true},
	} {
		b.Run(bc.name, func(b *testing.B) { benchSetup(b, bc.hang, bc.single) })
	}
}

const (
	benchDomains = 50
	hungDomain   = domid.ID(benchDomains + 1)
)

func benchSetup(b *testing.B, hang, single bool) {
	f := start(b, plugintest.Options{SingleWorker: single}, "timeout = \"2s\"\ngrace = \"100ms\"")
	for id := domid.ID(1); id <= hungDomain; id++ {
		f.h.AddDomain(id)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	w, err := f.h.Client.Watch(ctx, Backend, "bench")
	if err != nil {
		b.Fatal(err)
	}
	defer w.Unwatch(context.Background())
	var mu sync.Mutex
	connected := map[string]time.Time{}
	arrived := make(chan struct{}, 1024)
	go func() {
		for ev := range w.Events() {
			if base, ok := strings.CutSuffix(ev.Path, "/hotplug-status"); ok {
				mu.Lock()
				if _, seen := connected[base]; !seen {
					connected[base] = time.Now()
				}
				mu.Unlock()
				arrived <- struct{}{}
			}
		}
	}()

	var lat []time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		var bases []string
		for id := domid.ID(1); id <= benchDomains; id++ {
			bases = append(bases, f.device("vif", id, i, "trivial"), f.device("vbd", id, 768+i, "trivial"))
		}
		if hang {
			hb := f.device("vbd", hungDomain, 768+i, "hang")
			f.h.Write(hb+"/state", "2")
			// Hanging now: the script is in its wait, costing nothing
			// while the healthy devices are timed.
			gc := filepath.Join(f.out, strings.ReplaceAll(hb, "/", "_")+".grandchild")
			f.h.Wait(20*time.Second, "hung script", func() bool { _, err := os.Stat(gc); return err == nil })
		}
		b.StartTimer()
		written := make(map[string]time.Time, len(bases))
		for _, base := range bases {
			written[base] = time.Now()
			f.h.Write(base+"/state", "2")
		}
		deadline := time.After(60 * time.Second)
		for {
			mu.Lock()
			n := 0
			for _, base := range bases {
				if _, ok := connected[base]; ok {
					n++
				}
			}
			mu.Unlock()
			if n == len(bases) {
				break
			}
			select {
			case <-arrived:
			case <-deadline:
				b.Fatalf("%d of %d devices connected", n, len(bases))
			}
		}
		mu.Lock()
		for _, base := range bases {
			lat = append(lat, connected[base].Sub(written[base]))
		}
		mu.Unlock()
	}
	b.StopTimer()
	slices.Sort(lat)
	q := func(p float64) float64 { return float64(lat[int(p*float64(len(lat)-1))]) / float64(time.Millisecond) }
	b.ReportMetric(q(0.5), "p50-ms")
	b.ReportMetric(q(0.99), "p99-ms")
	b.ReportMetric(q(1), "max-ms")
	b.ReportMetric(0, "ns/op")
}

// BenchmarkStorm: STORM_DOMAINS domains (200 by default), each with its
// worker, have their disks reach InitWait at once (a host booting its
// guests); each script takes 50 ms. Reported: the most scripts that ran at
// once (never above max_scripts, 64), the time until every device is
// connected, and the Go heap in use at its peak during the storm and after
// it, against the heap before. 200 by default: the test xenstored traces
// every request with a line per introduced domain, so with 1,000 domains it
// spends its time writing its trace (22 GB in 8 minutes, measured) and the
// storm does not end within the wait.
//
//	go test -run '^$' -bench Storm -benchtime 1x ./plugin/hotplug
func BenchmarkStorm(b *testing.B) {
	domains := 200
	if s := os.Getenv("STORM_DOMAINS"); s != "" {
		domains, _ = strconv.Atoi(s)
	}
	f := start(b, plugintest.Options{}, "timeout = \"60s\"\nmax_scripts = 64")
	f.p.env = append(f.p.env, "SLOW=0.05")
	for id := domid.ID(1); id <= domid.ID(domains); id++ {
		f.h.AddDomain(id)
	}
	var bases []string
	for i := range b.N {
		b.StopTimer()
		bases = bases[:0]
		for id := domid.ID(1); id <= domid.ID(domains); id++ {
			bases = append(bases, f.device("vbd", id, 768+i, "sleepy"))
		}
		runtime.GC()
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		before := ms.HeapInuse
		b.StartTimer()
		t0 := time.Now()
		for _, base := range bases {
			f.h.Write(base+"/state", "2")
		}
		var peakHeap uint64
		f.h.Wait(300*time.Second, "every device connected", func() bool {
			runtime.ReadMemStats(&ms)
			peakHeap = max(peakHeap, ms.HeapInuse)
			st := f.p.Status().(Status)
			return st.OK == uint64((i+1)*domains) && len(st.Running) == 0
		})
		b.ReportMetric(time.Since(t0).Seconds(), "storm-s")
		runtime.GC()
		runtime.ReadMemStats(&ms)
		b.ReportMetric(float64(peakHeap-before)/(1<<20), "peak-heap-growth-MiB")
		b.ReportMetric(float64(int64(ms.HeapInuse)-int64(before))/(1<<20), "heap-after-MiB")
	}
	st := f.p.Status().(Status)
	if st.Peak > 64 {
		b.Fatalf("%d scripts ran at once, max_scripts 64", st.Peak)
	}
	b.ReportMetric(float64(st.Peak), "peak-scripts")
	b.ReportMetric(0, "ns/op")
}
