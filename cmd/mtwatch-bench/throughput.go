package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/mtwatch/mtwatch/lib/dispatch"
	"github.com/mtwatch/mtwatch/lib/xenstore/xenstoredtest"
)

// throughputResult is scenario 1.
type throughputResult struct {
	Domains int `json:"domains"`
	Writes  int `json:"writes_per_run"`
	// Per variant: events/s received and dispatched (for the agent: whose
	// no-op handler ran), and events per write (below 1 when xenstored
	// merged identical pending events of a watcher that fell behind).
	EventsPerSec   map[string]spread `json:"events_per_sec"`
	EventsPerWrite map[string]spread `json:"events_per_write"`
	// CPU time of the watcher's process per event received (for the agent:
	// this process, which is the agent and its no-op handler), from
	// getrusage over the run: what the watcher takes from the writer and
	// xenstored on a shared host. Steadier than the rate on a noisy host.
	CPUPerEvent map[string]spread `json:"cpu_ns_per_event"`
	// Ratio of the agent's median to libxenstore's.
	Ratio map[string]float64 `json:"ratio_to_libxenstore"`
	// Per run, the agent's rate over libxenstore's in the same run (the
	// variants of a run are adjacent in time, so drift of the host's speed
	// between runs cancels out).
	PairedRatio map[string]spread `json:"paired_ratio_to_libxenstore"`
}

// cpuNow is this process's CPU time (user and system, every thread).
func cpuNow() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

const variantLibxenstore = "libxenstore"

// cbenchBinary builds lib/xenstore/bench/cbench.c against libxenstore.so.4,
// as lib/xenstore's BenchmarkWatchEvents does (cached by source hash).
func cbenchBinary(src string) (string, error) {
	code, err := os.ReadFile(src)
	if err != nil {
		return "", fmt.Errorf("cbench source: %w (run from the source tree or give --cbench)", err)
	}
	sum := sha256.Sum256(code)
	out := filepath.Join(os.TempDir(), "mtwatch-cbench-"+hex.EncodeToString(sum[:8]))
	if _, err := os.Stat(out); err == nil {
		return out, nil
	}
	tmp := out + ".tmp" + strconv.Itoa(os.Getpid())
	cmd := exec.Command("gcc", "-O2", "-Wall", "-Wextra", "-Werror", "-o", tmp, src, "-l:libxenstore.so.4", "-lpthread")
	if msg, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("build cbench (needs gcc and Debian package libxenstore4): %v\n%s", err, msg)
	}
	return out, os.Rename(tmp, out)
}

func benchThroughput(ctx context.Context, o *options, srv *xenstoredtest.Server) (*throughputResult, error) {
	cbench, err := cbenchBinary(o.cbenchSrc)
	if err != nil {
		return nil, err
	}
	c, err := dial(ctx, srv)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	if err := createNodes(ctx, srv, 1, o.domains); err != nil {
		return nil, err
	}
	for d := 1; d <= o.domains; d++ {
		if err := c.Write(ctx, streamPath(d), []byte("1")); err != nil {
			return nil, err
		}
	}
	wp, err := startWriter(srv.Socket())
	if err != nil {
		return nil, err
	}
	defer wp.close()
	stream := func() error {
		if err := wp.send(fmt.Sprintf("stream %d %d", o.writes, o.domains)); err != nil {
			return err
		}
		if l, err := wp.line(); err != nil || !strings.HasPrefix(l, "done") {
			return fmt.Errorf("writer: %q %v", l, err)
		}
		return nil
	}

	// A run's figures: events received (for the agent: dispatched to a
	// worker, merged ones included), handler calls, the time from the
	// first write to the last event handled, and the watcher's CPU time.
	type runResult struct {
		events, calls int64
		d, cpu        time.Duration
	}
	agentRun := func(m mode) (r runResult, err error) {
		var n, last atomic.Int64
		end := make(chan struct{}, 1)
		// A no-op handler: it counts and notes the time, without allocating
		// (so that it measures the agent, not itself).
		a, stop, err := runAgent(ctx, srv.Socket(), m, func(_ context.Context, ev dispatch.Event) error {
			n.Add(1)
			last.Store(time.Now().UnixNano())
			if isSentinel(ev.Path) {
				select {
				case end <- struct{}{}:
				default:
				}
			}
			return nil
		})
		if err != nil {
			return r, err
		}
		defer stop()
		want := o.domains
		if m == modeSingle {
			want = 0
		}
		if err := waitWorkers(ctx, a, want, 5*time.Millisecond); err != nil {
			return r, err
		}
		time.Sleep(50 * time.Millisecond) // the initial event
		if err := waitIdle(a.Dispatcher(), time.Minute); err != nil {
			return r, err
		}
		n.Store(0)
		dispatched0 := a.Dispatcher().Stats().Totals.Dispatched
		cpu0 := cpuNow()
		start := time.Now()
		if err := stream(); err != nil {
			return r, err
		}
		select {
		case <-end:
		case <-time.After(2 * time.Minute):
			return r, fmt.Errorf("agent (%s): sentinel event never ran", m)
		}
		// Events of other domains may still be on their workers: the run
		// ends with the last handler call.
		if err := waitIdle(a.Dispatcher(), time.Minute); err != nil {
			return r, err
		}
		r.cpu = cpuNow() - cpu0
		r.events = int64(a.Dispatcher().Stats().Totals.Dispatched - dispatched0)
		r.calls = n.Load()
		r.d = time.Unix(0, last.Load()).Sub(start)
		return r, nil
	}
	cRun := func() (r runResult, err error) {
		cmd := exec.Command(cbench, "watch", dom0Home+benchWatch)
		cmd.Env = append(os.Environ(), srv.Env()...)
		cw, err := startProc(cmd)
		if err != nil {
			return r, err
		}
		defer cw.close()
		start := time.Now()
		if err := cw.send(sentinel); err != nil {
			return r, err
		}
		if err := stream(); err != nil {
			return r, err
		}
		l, err := cw.line()
		r.d = time.Since(start)
		if err != nil {
			return r, err
		}
		// "done <events> <cpu-ns> <context switches>"
		f := strings.Fields(l)
		if len(f) < 3 || f[0] != "done" {
			return r, fmt.Errorf("cbench: %q", l)
		}
		r.events, err = strconv.ParseInt(f[1], 10, 64)
		if err != nil {
			return r, fmt.Errorf("cbench: %q", l)
		}
		cpu, err := strconv.ParseInt(f[2], 10, 64)
		if err != nil {
			return r, fmt.Errorf("cbench: %q", l)
		}
		r.calls, r.cpu = r.events, time.Duration(cpu)
		return r, nil
	}

	variants := []string{string(modeMtwatch), string(modeSingle), string(modeMtwatchAllCPUs), variantLibxenstore}
	rate, perWrite, cpu := map[string][]float64{}, map[string][]float64{}, map[string][]float64{}
	for run := range o.tpRuns {
		for _, v := range rotate(variants, run) {
			var rr runResult
			var err error
			if v == variantLibxenstore {
				rr, err = cRun()
			} else {
				rr, err = agentRun(mode(v))
			}
			if err != nil {
				return nil, fmt.Errorf("throughput %s: %w", v, err)
			}
			rate[v] = append(rate[v], float64(rr.events)/rr.d.Seconds())
			perWrite[v] = append(perWrite[v], float64(rr.events)/float64(o.writes+1))
			cpu[v] = append(cpu[v], float64(rr.cpu.Nanoseconds())/float64(rr.events))
			logf("throughput run %d %s: %d events (%d handler calls) in %v (%.0f/s), %.2f µs CPU per event",
				run+1, v, rr.events, rr.calls, rr.d.Round(time.Millisecond), float64(rr.events)/rr.d.Seconds(),
				float64(rr.cpu.Nanoseconds())/float64(rr.events)/1e3)
		}
	}
	r := &throughputResult{Domains: o.domains, Writes: o.writes,
		EventsPerSec: map[string]spread{}, EventsPerWrite: map[string]spread{}, CPUPerEvent: map[string]spread{}, Ratio: map[string]float64{}}
	for _, v := range variants {
		r.EventsPerSec[v] = newSpread(rate[v])
		r.EventsPerWrite[v] = newSpread(perWrite[v])
		r.CPUPerEvent[v] = newSpread(cpu[v])
	}
	r.PairedRatio = map[string]spread{}
	for _, v := range variants[:3] {
		r.Ratio[v] = r.EventsPerSec[v].Median / r.EventsPerSec[variantLibxenstore].Median
		paired := make([]float64, len(rate[v]))
		for i := range paired {
			paired[i] = rate[v][i] / rate[variantLibxenstore][i]
		}
		r.PairedRatio[v] = newSpread(paired)
	}
	return r, nil
}

// rotate starts the variants' order at a different one each run, so that
// none always runs first (on a warm or a cold host).
func rotate(vs []string, run int) []string {
	k := run % len(vs)
	return append(append([]string{}, vs[k:]...), vs[:k]...)
}

// waitIdle waits until no event is queued or running on any worker.
// (Counting handler calls up to Dispatched would not do: events merged into
// a pending one are dispatched but never run on their own.)
func waitIdle(d *dispatch.Dispatcher, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		st := d.Stats()
		busy := st.Default.Queued > 0 || st.Default.Current != nil
		for _, ds := range st.Domains {
			busy = busy || ds.Queued > 0 || ds.Current != nil
		}
		if !busy {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("events still queued or running after %v", timeout)
		}
		time.Sleep(time.Millisecond)
	}
}
