package agent

import (
	"cmp"
	"runtime"
	"slices"
	"time"

	"github.com/mtwatch/mtwatch/lib/control"
	"github.com/mtwatch/mtwatch/lib/dispatch"
	"github.com/mtwatch/mtwatch/lib/domid"
)

// The Agent is the control API's Source: it answers from memory, never
// from XenStore, so the API works while xenstored is gone.
var _ control.Source = (*Agent)(nil)

// Status implements control.Source.
func (a *Agent) Status() control.Status {
	st := a.d.Stats()
	stallAt := time.Duration(a.stallAt.Load())
	s := control.Status{
		Version:          a.opts.Version,
		PID:              pid,
		StartedAt:        a.started,
		UptimeSeconds:    time.Since(a.started).Seconds(),
		Mode:             a.mode(),
		AutoDetect:       a.auto,
		StallThresholdMS: stallAt.Milliseconds(),
		GOMAXPROCS:       runtime.GOMAXPROCS(0),
		Workers:          st.Workers,
		Stalled:          len(a.stalls(st)),
		DefaultWorker: control.DefaultWorker{
			Queued:        st.Default.Queued,
			Processed:     st.Default.Processed,
			LastLatencyUS: st.Default.LastLatency.Microseconds(),
			MaxLatencyUS:  st.Default.MaxLatency.Microseconds(),
			Current:       a.current(st.Default.Current),
		},
		Totals: control.Totals{
			Dispatched: st.Totals.Dispatched, Unmatched: st.Totals.Unmatched,
			Processed: st.Totals.Processed, Coalesced: st.Totals.Coalesced,
			Filtered: st.Totals.Filtered, Dropped: st.Totals.Dropped,
			Overflows: st.Totals.Overflows, Purged: st.Totals.Purged,
			Panics: st.Totals.Panics, Errors: st.Totals.Errors, Stalls: st.Totals.Stalls,
		},
		Plugins: a.pluginStatus(),
	}
	a.cmu.Lock()
	s.Xenstore = control.XenstoreStatus{
		Path:       a.xsPath,
		State:      "disconnected",
		Reconnects: a.reconnects,
		LastError:  a.lastErr,
	}
	if a.cur != nil {
		s.Xenstore.State = "connected"
		s.Xenstore.ConnectedSince = a.connectedSince
	}
	a.cmu.Unlock()
	if s.Xenstore.Path == "" {
		s.Xenstore.Path = "default"
	}
	a.mu.Lock()
	s.Domains = len(a.doms)
	for _, d := range a.doms {
		if d.node {
			s.Nodes++
		}
		if d.stale {
			s.Stale++
		}
	}
	a.mu.Unlock()
	return s
}

func (a *Agent) current(rh *dispatch.RunningHandler) *control.Current {
	if rh == nil {
		return nil
	}
	stallAt := time.Duration(a.stallAt.Load())
	return &control.Current{
		Path:    rh.Path,
		Watch:   rh.Watch,
		Token:   rh.Token,
		AgeMS:   rh.Age.Milliseconds(),
		Stalled: stallAt > 0 && rh.Age >= stallAt,
	}
}

// Domains implements control.Source: dom0 first, then the guests by domid.
func (a *Agent) Domains() []control.Domain {
	st := a.d.Stats()
	byID := make(map[domid.ID]dispatch.DomainStats, len(st.Domains))
	for _, ds := range st.Domains {
		byID[ds.Domid] = ds
	}
	a.mu.Lock()
	out := make([]control.Domain, 0, len(a.doms)+1)
	out = append(out, a.domain(domid.Dom0, byID[domid.Dom0]))
	for id := range a.doms {
		out = append(out, a.domain(id, byID[id]))
	}
	for id, ds := range byID {
		if _, known := a.doms[id]; !known && id != domid.Dom0 {
			out = append(out, a.domain(id, ds))
		}
	}
	a.mu.Unlock()
	slices.SortFunc(out[1:], func(x, y control.Domain) int { return cmp.Compare(x.Domid, y.Domid) })
	return out
}

// Domain implements control.Source.
func (a *Agent) Domain(id uint16) (control.Domain, bool) {
	ds, inDispatch := a.d.DomainStats(domid.ID(id))
	a.mu.Lock()
	defer a.mu.Unlock()
	_, known := a.doms[domid.ID(id)]
	if id != 0 && !known && !inDispatch {
		return control.Domain{}, false
	}
	return a.domain(domid.ID(id), ds), true
}

// domain builds one entry; a.mu held.
func (a *Agent) domain(id domid.ID, ds dispatch.DomainStats) control.Domain {
	d := control.Domain{
		Domid:         uint16(id),
		Worker:        control.WorkerNone,
		Queued:        ds.Queued,
		Dispatched:    ds.Dispatched,
		Processed:     ds.Processed,
		Coalesced:     ds.Coalesced,
		Filtered:      ds.Filtered,
		Dropped:       ds.Dropped,
		LastLatencyUS: ds.LastLatency.Microseconds(),
		MaxLatencyUS:  ds.MaxLatency.Microseconds(),
		Current:       a.current(ds.Current),
	}
	switch {
	case id == domid.Dom0:
		d.Worker = control.WorkerDefault
	case ds.Worker:
		d.Worker = control.WorkerLive
	case ds.Draining > 0:
		d.Worker = control.WorkerDraining
	}
	if st := a.doms[id]; st != nil {
		d.Name, d.UUID, d.Node, d.Introduced, d.Stale = st.name, st.uuid, st.node, st.introduced, st.stale
		d.Backend = st.backend
	}
	if id == domid.Dom0 {
		d.Name = "Domain-0"
	}
	return d
}

// Stalls implements control.Source.
func (a *Agent) Stalls() []control.Stall {
	return a.stalls(a.d.Stats())
}

func (a *Agent) stalls(st dispatch.Stats) []control.Stall {
	stallAt := time.Duration(a.stallAt.Load())
	if stallAt <= 0 {
		return []control.Stall{}
	}
	out := []control.Stall{}
	add := func(rh *dispatch.RunningHandler, worker string) {
		if rh == nil || rh.Age < stallAt {
			return
		}
		out = append(out, control.Stall{
			Domid: uint16(rh.Domid), Worker: worker, Watch: rh.Watch, Token: rh.Token,
			Path: rh.Path, Started: rh.Started, AgeMS: rh.Age.Milliseconds(),
		})
	}
	add(st.Default.Current, "default")
	for _, ds := range st.Domains {
		if ds.Domid != domid.Dom0 && ds.Current != nil && (ds.Worker || ds.Draining > 0) {
			add(ds.Current, "domain")
		}
	}
	a.mu.Lock()
	for i := range out {
		if d := a.doms[domid.ID(out[i].Domid)]; d != nil {
			out[i].Name = d.name
		}
	}
	a.mu.Unlock()
	slices.SortFunc(out, func(x, y control.Stall) int { return x.Started.Compare(y.Started) })
	return out
}
