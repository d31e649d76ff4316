package main

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/mtwatch/mtwatch/lib/agent"
	"github.com/mtwatch/mtwatch/lib/dispatch"
	"github.com/mtwatch/mtwatch/lib/domid"
	"github.com/mtwatch/mtwatch/lib/xenstore/xenstoredtest"
)

// floodResult is scenario 3.
type floodResult struct {
	Domains  int    `json:"domains"`
	Duration string `json:"duration"`
	Interval string `json:"round_interval"`
	Rounds   []int  `json:"rounds"`
	// Writes per second the flooding domain achieved.
	FloodWritesPerSec spread `json:"flood_writes_per_sec"`
	// Per variant ("flood", "no flood"): peak RSS of the bench process (the
	// agent runs in it), live Go heap after the run, and the other domains'
	// event latency.
	PeakRSSMiB map[string]spread `json:"peak_rss_mib"`
	HeapMiB    map[string]spread `json:"heap_after_mib"`
	P50        map[string]spread `json:"p50_us"`
	P99        map[string]spread `json:"p99_us"`
	// Flood events the agent ran, merged and dropped (flood variant).
	FloodProcessed spread `json:"flood_events_processed"`
	FloodCoalesced spread `json:"flood_events_coalesced"`
	FloodDropped   spread `json:"flood_events_dropped"`
}

const (
	floodOn  = "flood"
	floodOff = "no flood"
)

// benchFlood: one domain's watched path is rewritten as fast as xenstored
// allows, by another process, for o.floodFor; meanwhile the other domains
// get an event each every o.floodInterval, whose latency is measured.
func benchFlood(ctx context.Context, o *options, srv *xenstoredtest.Server) (*floodResult, error) {
	const first = 1
	n := o.isoDomains
	flooder := first
	if err := createNodes(ctx, srv, first, n); err != nil {
		return nil, err
	}
	defer removeNodes(ctx, srv, first, n)
	c, err := dial(ctx, srv)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	wp, err := startWriter(srv.Socket())
	if err != nil {
		return nil, err
	}
	defer wp.close()
	floodPath := dom0Home + benchWatch + "/vif/" + strconv.Itoa(flooder) + "/0/state"

	r := &floodResult{Domains: n, Duration: o.floodFor.String(), Interval: o.floodInterval.String(), PeakRSSMiB: map[string]spread{},
		HeapMiB: map[string]spread{}, P50: map[string]spread{}, P99: map[string]spread{}}
	rss, heap, p50, p99 := map[string][]float64{}, map[string][]float64{}, map[string][]float64{}, map[string][]float64{}
	var rates, processed, coalesced, dropped []float64
	variants := []string{floodOn, floodOff}
	for run := range o.runs {
		for _, v := range rotate(variants, run) {
			p := newProbe(func(id domid.ID) bool { return int(id) != flooder })
			peak := rssPeak()
			a, stop, err := runAgent(ctx, srv.Socket(), modeMtwatch, func(_ context.Context, ev dispatch.Event) error {
				p.seen(ev.Path)
				return nil
			})
			if err != nil {
				return nil, err
			}
			if err := waitWorkers(ctx, a, n, 5*time.Millisecond); err != nil {
				stop()
				return nil, err
			}
			time.Sleep(50 * time.Millisecond)
			if v == floodOn {
				if err := wp.send(fmt.Sprintf("flood %s %s", floodPath, o.floodFor)); err != nil {
					stop()
					return nil, err
				}
			}
			// Rounds until the flood ends: under the flood a round's writes
			// take longer, and the rounds must not outlast it.
			tick := time.NewTicker(o.floodInterval)
			rounds := 0
			for end := time.Now().Add(o.floodFor); time.Now().Before(end); rounds++ {
				rd := rounds
				for d := first; d < first+n; d++ {
					if d == flooder {
						continue
					}
					if err := p.write(ctx, c, probePath(d, rd)); err != nil {
						tick.Stop()
						stop()
						return nil, err
					}
				}
				<-tick.C
			}
			tick.Stop()
			if v == floodOn {
				l, err := wp.line()
				if err != nil {
					stop()
					return nil, err
				}
				w, _ := strconv.ParseFloat(strings.TrimPrefix(l, "done "), 64)
				rates = append(rates, w/o.floodFor.Seconds())
			}
			r.Rounds = append(r.Rounds, rounds)
			lat, err := p.wait((n-1)*rounds, time.Minute)
			if err != nil {
				stop()
				return nil, fmt.Errorf("flood %s: %w", v, err)
			}
			if v == floodOn {
				st, _ := a.Dispatcher().DomainStats(domid.ID(flooder))
				processed = append(processed, float64(st.Processed))
				coalesced = append(coalesced, float64(st.Coalesced))
				dropped = append(dropped, float64(st.Dropped))
			}
			heap[v] = append(heap[v], heapMiB())
			stop()
			rss[v] = append(rss[v], peak())
			p50[v] = append(p50[v], us(percentile(lat, 50)))
			p99[v] = append(p99[v], us(percentile(lat, 99)))
			logf("flood run %d %s: peak RSS %.1f MiB, others p50 %v p99 %v", run+1, v, rss[v][len(rss[v])-1], percentile(lat, 50), percentile(lat, 99))
			for d := first; d < first+n; d++ {
				if d != flooder {
					_ = c.Rm(ctx, dom0Home+benchWatch+"/vbd/"+strconv.Itoa(d))
				}
			}
		}
	}
	for _, v := range variants {
		r.PeakRSSMiB[v], r.HeapMiB[v], r.P50[v], r.P99[v] = newSpread(rss[v]), newSpread(heap[v]), newSpread(p50[v]), newSpread(p99[v])
	}
	r.FloodWritesPerSec = newSpread(rates)
	r.FloodProcessed, r.FloodCoalesced, r.FloodDropped = newSpread(processed), newSpread(coalesced), newSpread(dropped)
	return r, nil
}

// scaleResult is scenario 4.
type scaleResult struct {
	Domains int `json:"domains"`
	// Nodes created (and removed) per second by the 8 writers, and workers
	// created (destroyed) per second by the agent, first node write to last
	// worker. "nodes alone" is the same node writes with no agent.
	CreatedPerSec   map[string]spread `json:"created_per_sec"`
	DestroyedPerSec map[string]spread `json:"destroyed_per_sec"`
	RSSMiB          spread            `json:"rss_at_all_live_mib"`
	HeapMiB         spread            `json:"heap_at_all_live_mib"`
	BaseRSSMiB      spread            `json:"rss_before_mib"`
}

const (
	scaleAgent = "agent workers"
	scaleBare  = "nodes alone (no agent)"
)

func benchScale(ctx context.Context, o *options, srv *xenstoredtest.Server) (*scaleResult, error) {
	const first = 1
	n := o.scaleDomains
	r := &scaleResult{Domains: n, CreatedPerSec: map[string]spread{}, DestroyedPerSec: map[string]spread{}}
	created, destroyed := map[string][]float64{}, map[string][]float64{}
	var rss, heap, base []float64
	variants := []string{scaleAgent, scaleBare}
	for run := range o.runs {
		for _, v := range rotate(variants, run) {
			if v == scaleBare {
				t0 := time.Now()
				if err := createNodes(ctx, srv, first, n); err != nil {
					return nil, err
				}
				created[v] = append(created[v], float64(n)/time.Since(t0).Seconds())
				t0 = time.Now()
				if err := removeNodes(ctx, srv, first, n); err != nil {
					return nil, err
				}
				destroyed[v] = append(destroyed[v], float64(n)/time.Since(t0).Seconds())
				continue
			}
			a, stop, err := runAgent(ctx, srv.Socket(), modeMtwatch, func(context.Context, dispatch.Event) error { return nil })
			if err != nil {
				return nil, err
			}
			heapMiB()
			base = append(base, rssMiB())
			t0 := time.Now()
			err = createNodes(ctx, srv, first, n)
			if err == nil {
				err = waitWorkers(ctx, a, n, 20*time.Millisecond)
			}
			if err != nil {
				err = fmt.Errorf("scale run %d: %w; %s", run+1, err, missingWorkers(a, first, n))
				stop()
				return nil, err
			}
			created[v] = append(created[v], float64(n)/time.Since(t0).Seconds())
			heap = append(heap, heapMiB())
			rss = append(rss, rssMiB())
			t0 = time.Now()
			err = removeNodes(ctx, srv, first, n)
			if err == nil {
				err = waitWorkers(ctx, a, 0, 20*time.Millisecond)
			}
			stop()
			if err != nil {
				return nil, err
			}
			destroyed[v] = append(destroyed[v], float64(n)/time.Since(t0).Seconds())
			logf("scale run %d: %d workers created at %.0f/s, destroyed at %.0f/s, RSS %.1f MiB", run+1, n,
				created[v][len(created[v])-1], destroyed[v][len(destroyed[v])-1], rss[len(rss)-1])
		}
	}
	for _, v := range variants {
		r.CreatedPerSec[v], r.DestroyedPerSec[v] = newSpread(created[v]), newSpread(destroyed[v])
	}
	r.RSSMiB, r.HeapMiB, r.BaseRSSMiB = newSpread(rss), newSpread(heap), newSpread(base)
	return r, nil
}

// missingWorkers says which of the domains whose node exists have no worker,
// and what the agent believes of them.
func missingWorkers(a *agent.Agent, first, n int) string {
	var missing []string
	count := 0
	for id := first; id < first+n; id++ {
		if st, ok := a.Dispatcher().DomainStats(domid.ID(id)); ok && st.Worker {
			continue
		}
		count++
		if len(missing) < 5 {
			d, found := a.Domain(uint16(id))
			missing = append(missing, fmt.Sprintf("%d (agent knows it %v, node %v, worker %q)", id, found, d.Node, d.Worker))
		}
	}
	return fmt.Sprintf("%d domains with a node have no worker, e.g. %s", count, strings.Join(missing, ", "))
}
