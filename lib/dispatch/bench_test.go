package dispatch

import (
	"context"
	"fmt"
	"log/slog"
	"runtime"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mtwatch/mtwatch/lib/domid"
)

// Benchmarks compare multi-worker mode with single-worker mode (everything on
// the default worker, like Linux's kernel xenwatch thread) in the same
// run. Results and the command producing them are in docs/performance.md.

func benchDispatcher(b *testing.B, single bool, capacity int) *Dispatcher {
	b.Helper()
	d, err := New(Config{Logger: slog.New(slog.DiscardHandler), SingleWorker: single, Capacity: capacity})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		if err := d.Stop(context.Background()); err != nil {
			b.Error(err)
		}
	})
	return d
}

func modeName(single bool) string {
	if single {
		return "single"
	}
	return "multi"
}

// waitProcessed waits until n events have run.
func waitProcessed(b *testing.B, n *atomic.Int64, want int64) {
	for n.Load() < want {
		runtime.Gosched()
	}
}

// BenchmarkDispatch: cost per event with 1, 100 and 10,000 domains, each with
// a worker, from Dispatch to the end of a no-op handler, at saturation: the
// loop keeps at most 4096 events in flight and the timed part includes
// draining. Paths cycle through 65,536 per run, so an event coalesces only
// if an identical one is still pending that many events later
// (coalesced/op reports it; it stays at or near 0); nothing is dropped.
func BenchmarkDispatch(b *testing.B) {
	const inflight = 4096
	for _, domains := range []int{1, 100, 10000} {
		for _, single := range []bool{false, true} {
			b.Run(fmt.Sprintf("domains=%d/%s", domains, modeName(single)), func(b *testing.B) {
				d := benchDispatcher(b, single, 2*inflight)
				var ran atomic.Int64
				register(b, d, WatchConfig{Path: "backend", Token: "be", Handler: func(context.Context, Event) error {
					ran.Add(1)
					return nil
				}})
				perDomain := max(1, 65536/domains)
				paths := make([]string, 0, domains*perDomain)
				for k := range perDomain {
					for i := range domains {
						paths = append(paths, "backend/vif/"+strconv.Itoa(i+1)+"/"+strconv.Itoa(k))
					}
				}
				for i := range domains {
					if err := d.CreateDomain(domid.ID(i + 1)); err != nil {
						b.Fatal(err)
					}
				}
				b.ReportAllocs()
				b.ResetTimer()
				var merged int64 // coalesced events: they never run
				for i := range b.N {
					for int64(i)-merged-ran.Load() >= inflight {
						runtime.Gosched()
						merged = int64(d.Stats().Totals.Coalesced)
					}
					if err := d.Dispatch(paths[i%len(paths)], "be"); err != nil {
						b.Fatal(err)
					}
				}
				tot := d.Stats().Totals
				waitProcessed(b, &ran, int64(b.N)-int64(tot.Coalesced))
				b.StopTimer()
				if tot.Dropped != 0 {
					b.Fatalf("events dropped: %+v", tot)
				}
				b.ReportMetric(float64(tot.Coalesced)/float64(b.N), "coalesced/op")
			})
		}
	}
}

// BenchmarkThroughput: 1,000,000 events over 1,000 domains (distinct paths,
// nothing coalesces or is dropped), no-op handler; one op is the whole
// million, dispatched and drained.
func BenchmarkThroughput(b *testing.B) {
	const (
		domains   = 1000
		perDomain = 1000
		events    = domains * perDomain
	)
	paths := make([]string, 0, events)
	for k := range perDomain {
		for i := range domains {
			paths = append(paths, "backend/vif/"+strconv.Itoa(i+1)+"/"+strconv.Itoa(k))
		}
	}
	for _, single := range []bool{false, true} {
		b.Run(modeName(single), func(b *testing.B) {
			d := benchDispatcher(b, single, perDomain)
			var ran atomic.Int64
			register(b, d, WatchConfig{Path: "backend", Token: "be", Handler: func(context.Context, Event) error {
				ran.Add(1)
				return nil
			}})
			for i := range domains {
				if err := d.CreateDomain(domid.ID(i + 1)); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportAllocs()
			b.ResetTimer()
			start := time.Now()
			for n := range b.N {
				for _, p := range paths {
					if err := d.Dispatch(p, "be"); err != nil {
						b.Fatal(err)
					}
				}
				waitProcessed(b, &ran, int64(n+1)*events)
			}
			elapsed := time.Since(start)
			b.StopTimer()
			if tot := d.Stats().Totals; tot.Coalesced != 0 || tot.Dropped != 0 {
				b.Fatalf("events lost: %+v", tot)
			}
			b.ReportMetric(float64(b.N*events)/elapsed.Seconds(), "events/s")
		})
	}
}

// BenchmarkIsolation: 100 domains, 10 of which have a handler that blocks
// for one second per event. The other 90 domains get 20 rounds of events,
// one round every 5 ms; their latency (Dispatch to handler start) is
// reported as p50/p99, against the same run without blocked domains, in
// multi-worker and single-worker mode. One op is one whole run.
func BenchmarkIsolation(b *testing.B) {
	const (
		domains = 100
		blocked = 10 // domains 1..10
		rounds  = 20
		block   = time.Second
		pace    = 5 * time.Millisecond
	)
	for _, single := range []bool{false, true} {
		for _, withBlocked := range []bool{false, true} {
			name := fmt.Sprintf("%s/blocked=%d", modeName(single), map[bool]int{false: 0, true: blocked}[withBlocked])
			b.Run(name, func(b *testing.B) {
				var lats []time.Duration
				for range b.N {
					lats = append(lats, isolationRun(b, single, withBlocked, domains, blocked, rounds, block, pace)...)
				}
				slices.Sort(lats)
				q := func(p float64) float64 {
					return float64(lats[int(p*float64(len(lats)-1))].Microseconds())
				}
				b.ReportMetric(q(0.50), "p50-µs")
				b.ReportMetric(q(0.99), "p99-µs")
				b.ReportMetric(float64(lats[len(lats)-1].Microseconds()), "max-µs")
			})
		}
	}
}

func isolationRun(b *testing.B, single, withBlocked bool, domains, blocked, rounds int, block, pace time.Duration) []time.Duration {
	d := benchDispatcher(b, single, 0)
	var (
		mu   sync.Mutex
		lats = make([]time.Duration, 0, (domains-blocked)*rounds)
		wg   sync.WaitGroup
	)
	sent := make(map[string]time.Time, domains*rounds)
	var sentMu sync.Mutex
	register(b, d, WatchConfig{Path: "backend", Token: "be", Handler: func(ctx context.Context, ev Event) error {
		defer wg.Done()
		started := time.Now()
		if int(ev.Domid) <= blocked {
			if withBlocked {
				time.Sleep(block) // a stuck guest: the handler ignores ctx
			}
			return nil
		}
		sentMu.Lock()
		t0 := sent[ev.Path]
		sentMu.Unlock()
		mu.Lock()
		lats = append(lats, started.Sub(t0))
		mu.Unlock()
		return nil
	}})
	for i := range domains {
		if err := d.CreateDomain(domid.ID(i + 1)); err != nil {
			b.Fatal(err)
		}
	}
	for r := range rounds {
		for i := range domains {
			id := i + 1
			if id <= blocked && r > 0 {
				continue // one (blocking) event per blocked domain
			}
			p := "backend/vif/" + strconv.Itoa(id) + "/" + strconv.Itoa(r)
			wg.Add(1)
			sentMu.Lock()
			sent[p] = time.Now()
			sentMu.Unlock()
			if err := d.Dispatch(p, "be"); err != nil {
				b.Fatal(err)
			}
		}
		time.Sleep(pace)
	}
	wg.Wait()
	return lats
}

// BenchmarkIdleWorkers: memory per idle domain worker with 32,000 of them
// (about every possible guest domid), fresh and after each ran one event,
// and the goroutines they hold (must be zero).
func BenchmarkIdleWorkers(b *testing.B) {
	const workers = 32000
	var fresh, used, goroutines float64
	for range b.N {
		d := benchDispatcher(b, false, 0)
		var ran atomic.Int64
		register(b, d, WatchConfig{Path: "backend", Token: "be", Handler: func(context.Context, Event) error {
			ran.Add(1)
			return nil
		}})
		paths := make([]string, workers)
		for i := range paths {
			paths[i] = "backend/vif/" + strconv.Itoa(i+1) + "/0"
		}
		g0 := runtime.NumGoroutine()
		h0 := heapInUse()
		for i := range workers {
			if err := d.CreateDomain(domid.ID(i + 1)); err != nil {
				b.Fatal(err)
			}
		}
		h1 := heapInUse()
		for _, p := range paths {
			if err := d.Dispatch(p, "be"); err != nil {
				b.Fatal(err)
			}
		}
		waitProcessed(b, &ran, workers)
		// Let the workers' goroutines exit.
		for d.Stats().Totals.Processed < workers || runtime.NumGoroutine() > g0 {
			runtime.Gosched()
		}
		h2 := heapInUse()
		fresh += float64(h1-h0) / workers
		used += float64(h2-h0) / workers
		goroutines += float64(runtime.NumGoroutine() - g0)
		runtime.KeepAlive(paths)
		if err := d.Stop(context.Background()); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(fresh/float64(b.N), "B/idle-worker")
	b.ReportMetric(used/float64(b.N), "B/idle-worker-after-event")
	b.ReportMetric(goroutines/float64(b.N), "goroutines")
}

func heapInUse() int64 {
	var ms runtime.MemStats
	runtime.GC()
	runtime.GC()
	runtime.ReadMemStats(&ms)
	return int64(ms.HeapAlloc)
}

// BenchmarkCreateDestroy: one op is a CreateDomain plus a DestroyDomain, with
// no other worker and with 32,000 other live workers.
func BenchmarkCreateDestroy(b *testing.B) {
	for _, others := range []int{0, 32000} {
		b.Run(fmt.Sprintf("live=%d", others), func(b *testing.B) {
			d := benchDispatcher(b, false, 0)
			for i := range others {
				if err := d.CreateDomain(domid.ID(i + 1)); err != nil {
					b.Fatal(err)
				}
			}
			base := others + 1
			span := int(domid.MaxGuest) - base
			b.ReportAllocs()
			b.ResetTimer()
			start := time.Now()
			for i := range b.N {
				id := domid.ID(base + i%span)
				if err := d.CreateDomain(id); err != nil {
					b.Fatal(err)
				}
				if err := d.DestroyDomain(id); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "pairs/s")
		})
	}
}

// BenchmarkReusedDomid: a domid's old incarnation has a handler that hangs
// for hang; the domid is reused, and the new incarnation's first event is
// dispatched before its worker exists (staged) and then the worker is
// created. Reported: from that Dispatch to the start of its handler. With
// incarnations the new worker does not wait for the old one; the baseline
// (CreateDomain, one chain of generations per domid) waits for the hang.
func BenchmarkReusedDomid(b *testing.B) {
	const hang = 50 * time.Millisecond
	for _, mode := range []string{"incarnation", "same-chain"} {
		b.Run(mode, func(b *testing.B) {
			d, err := New(Config{Logger: slog.New(slog.DiscardHandler), Staging: true})
			if err != nil {
				b.Fatal(err)
			}
			b.Cleanup(func() { d.Stop(context.Background()) })
			started := make(chan string, 4)
			register(b, d, WatchConfig{Path: "backend", Token: "be", Handler: func(ctx context.Context, ev Event) error {
				started <- ev.Path
				if ev.Path == "backend/vif/7/hang" {
					time.Sleep(hang)
				}
				return nil
			}})
			create := func(inc string) {
				var err error
				if mode == "incarnation" {
					err = d.CreateIncarnation(7, inc)
				} else {
					err = d.CreateDomain(7)
				}
				if err != nil {
					b.Fatal(err)
				}
			}
			lats := make([]time.Duration, 0, b.N)
			b.ResetTimer()
			for i := range b.N {
				create(strconv.Itoa(2 * i))
				dispatch(b, d, "backend/vif/7/hang", "be")
				<-started
				if err := d.DestroyDomain(7); err != nil {
					b.Fatal(err)
				}
				t0 := time.Now()
				dispatch(b, d, "backend/vif/7/first", "be")
				create(strconv.Itoa(2*i + 1))
				if p := <-started; p != "backend/vif/7/first" {
					b.Fatalf("ran %s", p)
				}
				lats = append(lats, time.Since(t0))
				if err := d.DestroyDomain(7); err != nil {
					b.Fatal(err)
				}
				b.StopTimer()
				waitAtMost(b, d, 0)
				b.StartTimer()
			}
			b.StopTimer()
			slices.Sort(lats)
			q := func(p float64) float64 { return float64(lats[int(p*float64(len(lats)-1))].Microseconds()) }
			b.ReportMetric(q(0.50), "p50-µs")
			b.ReportMetric(q(0.99), "p99-µs")
			b.ReportMetric(float64(lats[len(lats)-1].Microseconds()), "max-µs")
		})
	}
}
