package main

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mtwatch/mtwatch/lib/dispatch"
	"github.com/mtwatch/mtwatch/lib/domid"
	"github.com/mtwatch/mtwatch/lib/node"
	"github.com/mtwatch/mtwatch/lib/xenstore"
	"github.com/mtwatch/mtwatch/lib/xenstore/xenstoredtest"
)

func dial(ctx context.Context, srv *xenstoredtest.Server) (*xenstore.Client, error) {
	return xenstore.Dial(ctx, xenstore.WithPath(srv.Socket()))
}

// createNodes writes the mtwatch nodes of domains first..first+n-1 through
// the node protocol (lib/node, as the hook does), from 8 connections.
func createNodes(ctx context.Context, srv *xenstoredtest.Server, first, n int) error {
	return parallelNodes(ctx, srv, first, n, func(c *xenstore.Client, id domid.ID) error {
		return node.Create(ctx, c, id, "")
	})
}

func removeNodes(ctx context.Context, srv *xenstoredtest.Server, first, n int) error {
	return parallelNodes(ctx, srv, first, n, func(c *xenstore.Client, id domid.ID) error {
		return node.Destroy(ctx, c, id)
	})
}

func parallelNodes(ctx context.Context, srv *xenstoredtest.Server, first, n int, fn func(*xenstore.Client, domid.ID) error) error {
	const conns = 8
	var next atomic.Int64
	errs := make(chan error, conns)
	var wg sync.WaitGroup
	for range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := dial(ctx, srv)
			if err != nil {
				errs <- err
				return
			}
			defer c.Close()
			for {
				i := int(next.Add(1)) - 1
				if i >= n {
					return
				}
				if err := fn(c, domid.ID(first+i)); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	return <-errs
}

// latencyProbe measures the latency of healthy domains' events through the
// agent: from just before the write that fires the event to the start of
// its handler. Paths are backend/vbd/<domid>/<round>/state, distinct per
// round so that no two events merge. Only writes still in flight are
// remembered, so the probe's own memory stays small during a long run.
type latencyProbe struct {
	sent    sync.Map // path -> time.Time
	mu      sync.Mutex
	lat     []time.Duration
	got     atomic.Int64
	healthy func(domid.ID) bool
}

func newProbe(healthy func(domid.ID) bool) *latencyProbe {
	return &latencyProbe{healthy: healthy}
}

func probePath(d, round int) string {
	return dom0Home + benchWatch + "/vbd/" + strconv.Itoa(d) + "/" + strconv.Itoa(round) + "/state"
}

// seen records a handler start.
func (p *latencyProbe) seen(path string) {
	now := time.Now()
	path = absPath(path)
	v, ok := p.sent.LoadAndDelete(path)
	if !ok {
		return // the initial event, a stalled domain's event
	}
	id, ok := domid.FromPath(strings.TrimPrefix(path, dom0Home))
	if !ok || !p.healthy(id) {
		return
	}
	p.mu.Lock()
	p.lat = append(p.lat, now.Sub(v.(time.Time)))
	p.mu.Unlock()
	p.got.Add(1)
}

func (p *latencyProbe) write(ctx context.Context, c *xenstore.Client, path string) error {
	p.sent.Store(path, time.Now())
	return c.Write(ctx, path, []byte("4"))
}

// wait waits for want healthy events to have run and returns their
// latencies, sorted.
func (p *latencyProbe) wait(want int, timeout time.Duration) ([]time.Duration, error) {
	deadline := time.Now().Add(timeout)
	for p.got.Load() < int64(want) {
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("%d of %d healthy events ran within %v", p.got.Load(), want, timeout)
		}
		time.Sleep(time.Millisecond)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	s := slices.Clone(p.lat)
	slices.Sort(s)
	return s, nil
}

// isolationResult is scenario 2.
type isolationResult struct {
	Domains  int    `json:"domains"`
	Stalled  int    `json:"stalled_domains"`
	Stall    string `json:"stall_per_event"`
	Rounds   int    `json:"rounds"`
	Interval string `json:"round_interval"`
	// Per variant, over the runs, in µs.
	P50 map[string]spread `json:"p50_us"`
	P99 map[string]spread `json:"p99_us"`
	// P99 of mtwatch with stalls over no stall (goal <= 2).
	Ratio float64 `json:"p99_ratio_mtwatch_to_no_stall"`
	// Every latency of every run, for the CDF plot (not in the JSON).
	samples map[string][]time.Duration
}

const (
	isoMtwatch = "mtwatch, 10% stalled"
	isoSingle  = "single-worker, 10% stalled"
	isoNone    = "mtwatch, no stall"
)

// benchIsolation: the first tenth of the domains get one event whose
// handler blocks (ignoring its context, as a script stuck in D state), then
// every domain gets an event per round; latency is measured for the others.
func benchIsolation(ctx context.Context, o *options, srv *xenstoredtest.Server) (*isolationResult, error) {
	const first = 1
	n := o.isoDomains
	stalled := n / 10
	if err := createNodes(ctx, srv, first, n); err != nil {
		return nil, err
	}
	defer removeNodes(ctx, srv, first, n)
	c, err := dial(ctx, srv)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	isStalled := func(id domid.ID) bool { return int(id) >= first && int(id) < first+stalled }
	one := func(variant string) ([]time.Duration, error) {
		m, stall := modeMtwatch, true
		switch variant {
		case isoSingle:
			m = modeSingle
		case isoNone:
			stall = false
		}
		p := newProbe(func(id domid.ID) bool { return !isStalled(id) })
		a, stop, err := runAgent(ctx, srv.Socket(), m, func(_ context.Context, ev dispatch.Event) error {
			p.seen(ev.Path)
			if id, ok := domid.FromPath(strings.TrimPrefix(absPath(ev.Path), dom0Home)); ok && stall && isStalled(id) {
				time.Sleep(o.stall)
			}
			return nil
		})
		if err != nil {
			return nil, err
		}
		defer stop()
		want := n
		if m == modeSingle {
			want = 0
		}
		if err := waitWorkers(ctx, a, want, 5*time.Millisecond); err != nil {
			return nil, err
		}
		time.Sleep(50 * time.Millisecond) // the initial event
		for d := first; d < first+stalled; d++ {
			if err := p.write(ctx, c, probePath(d, 0)); err != nil {
				return nil, err
			}
		}
		tick := time.NewTicker(o.interval)
		defer tick.Stop()
		for r := range o.rounds {
			for d := first + stalled; d < first+n; d++ {
				if err := p.write(ctx, c, probePath(d, r)); err != nil {
					return nil, err
				}
			}
			<-tick.C
		}
		lat, err := p.wait((n-stalled)*o.rounds, time.Duration(stalled+2)*o.stall+time.Minute)
		if err != nil {
			return nil, err
		}
		// Remove the round nodes, so the next run writes new nodes too.
		for d := first; d < first+n; d++ {
			_ = c.Rm(ctx, dom0Home+benchWatch+"/vbd/"+strconv.Itoa(d))
		}
		return lat, nil
	}
	variants := []string{isoMtwatch, isoSingle, isoNone}
	r := &isolationResult{Domains: n, Stalled: stalled, Stall: o.stall.String(), Rounds: o.rounds,
		Interval: o.interval.String(), P50: map[string]spread{}, P99: map[string]spread{},
		samples: map[string][]time.Duration{}}
	p50, p99 := map[string][]float64{}, map[string][]float64{}
	for run := range o.runs {
		for _, v := range rotate(variants, run) {
			lat, err := one(v)
			if err != nil {
				return nil, fmt.Errorf("isolation %s: %w", v, err)
			}
			p50[v] = append(p50[v], us(percentile(lat, 50)))
			p99[v] = append(p99[v], us(percentile(lat, 99)))
			r.samples[v] = append(r.samples[v], lat...)
			logf("isolation run %d %s: p50 %v p99 %v", run+1, v, percentile(lat, 50), percentile(lat, 99))
		}
	}
	for _, v := range variants {
		r.P50[v], r.P99[v] = newSpread(p50[v]), newSpread(p99[v])
		slices.Sort(r.samples[v])
	}
	r.Ratio = r.P99[isoMtwatch].Median / r.P99[isoNone].Median
	return r, nil
}
