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
	// Ratio of the agent's median to libxenstore's.
	Ratio map[string]float64 `json:"ratio_to_libxenstore"`
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

	agentRun := func(m mode) (events int64, d time.Duration, err error) {
		var n, last atomic.Int64
		end := make(chan struct{}, 1)
		a, stop, err := runAgent(ctx, srv.Socket(), m, func(_ context.Context, ev dispatch.Event) error {
			n.Add(1)
			last.Store(time.Now().UnixNano())
			if absPath(ev.Path) == sentinel {
				select {
				case end <- struct{}{}:
				default:
				}
			}
			return nil
		})
		if err != nil {
			return 0, 0, err
		}
		defer stop()
		want := o.domains
		if m == modeSingle {
			want = 0
		}
		if err := waitWorkers(ctx, a, want, 5*time.Millisecond); err != nil {
			return 0, 0, err
		}
		time.Sleep(50 * time.Millisecond) // the initial event
		n.Store(0)
		start := time.Now()
		if err := stream(); err != nil {
			return 0, 0, err
		}
		select {
		case <-end:
		case <-time.After(2 * time.Minute):
			return 0, 0, fmt.Errorf("agent (%s): sentinel event never ran", m)
		}
		// Events of other domains may still be on their workers: the run
		// ends with the last handler call.
		if err := waitIdle(a.Dispatcher(), time.Minute); err != nil {
			return 0, 0, err
		}
		return n.Load(), time.Unix(0, last.Load()).Sub(start), nil
	}
	cRun := func() (int64, time.Duration, error) {
		cmd := exec.Command(cbench, "watch", dom0Home+benchWatch)
		cmd.Env = append(os.Environ(), srv.Env()...)
		cw, err := startProc(cmd)
		if err != nil {
			return 0, 0, err
		}
		defer cw.close()
		start := time.Now()
		if err := cw.send(sentinel); err != nil {
			return 0, 0, err
		}
		if err := stream(); err != nil {
			return 0, 0, err
		}
		l, err := cw.line()
		d := time.Since(start)
		if err != nil {
			return 0, 0, err
		}
		// "done <events> <cpu-ns> <context switches>"
		f := strings.Fields(l)
		if len(f) < 2 || f[0] != "done" {
			return 0, 0, fmt.Errorf("cbench: %q", l)
		}
		n, err := strconv.ParseInt(f[1], 10, 64)
		if err != nil {
			return 0, 0, fmt.Errorf("cbench: %q", l)
		}
		return n, d, nil
	}

	variants := []string{string(modeMtwatch), string(modeSingle), variantLibxenstore}
	rate, perWrite := map[string][]float64{}, map[string][]float64{}
	for run := range o.runs {
		for _, v := range rotate(variants, run) {
			var n int64
			var d time.Duration
			var err error
			if v == variantLibxenstore {
				n, d, err = cRun()
			} else {
				n, d, err = agentRun(mode(v))
			}
			if err != nil {
				return nil, fmt.Errorf("throughput %s: %w", v, err)
			}
			rate[v] = append(rate[v], float64(n)/d.Seconds())
			perWrite[v] = append(perWrite[v], float64(n)/float64(o.writes+1))
			logf("throughput run %d %s: %d events in %v (%.0f/s)", run+1, v, n, d.Round(time.Millisecond), float64(n)/d.Seconds())
		}
	}
	r := &throughputResult{Domains: o.domains, Writes: o.writes,
		EventsPerSec: map[string]spread{}, EventsPerWrite: map[string]spread{}, Ratio: map[string]float64{}}
	for _, v := range variants {
		r.EventsPerSec[v] = newSpread(rate[v])
		r.EventsPerWrite[v] = newSpread(perWrite[v])
	}
	for _, v := range variants[:2] {
		r.Ratio[v] = r.EventsPerSec[v].Median / r.EventsPerSec[variantLibxenstore].Median
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
