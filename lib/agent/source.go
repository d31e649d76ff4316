package agent

import (
	"runtime"
	"slices"
	"time"

	"github.com/mtwatch/mtwatch/lib/config"
	"github.com/mtwatch/mtwatch/lib/control"
	"github.com/mtwatch/mtwatch/lib/dispatch"
	"github.com/mtwatch/mtwatch/lib/domid"
	"github.com/mtwatch/mtwatch/plugin"
)

// The Agent is the control API's Source: it answers from memory, never
// from XenStore, so the API works while xenstored is gone.
var _ control.Source = (*Agent)(nil)

// Status implements control.Source.
func (a *Agent) Status() control.Status {
	st := a.d.Stats()
	return a.status(st, a.stalls(st))
}

// status builds the status from one snapshot of the dispatcher and the
// stalls found in it.
func (a *Agent) status(st dispatch.Stats, stalls []control.Stall) control.Status {
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
		Stalled:          len(stalls),
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
			Staged: st.Totals.Staged, Promoted: st.Totals.Promoted, Flushed: st.Totals.Flushed,
			GuestOnDefault: st.Totals.GuestOnDefault,
		},
		Plugins:  a.pluginStatus(),
		Xenstore: a.conn.status(a.xsPath),
	}
	s.Domains, s.Nodes, s.Stale = a.domains.counts()
	s.Sources = a.sources()
	if a.canary != nil {
		cs := a.canary.Status()
		s.Canary = &control.Canary{
			IntervalMS: cs.Interval.Milliseconds(), ThresholdMS: cs.Threshold.Milliseconds(),
			Samples: cs.Samples, LastLatencyUS: cs.LastLatency.Microseconds(), MaxLatencyUS: cs.MaxLatency.Microseconds(),
			Alarm: cs.Alarm, Alarms: cs.Alarms, PendingMS: cs.PendingFor.Milliseconds(), LastError: cs.LastError,
		}
	}
	return s
}

// current describes a running handler for the control API.
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
// Each entry carries its domain's plugin stalls, so that a list shows a
// domain whose hotplug script hangs as stalled though its worker is idle.
func (a *Agent) Domains() []control.Domain {
	st := a.d.Stats()
	byID := make(map[domid.ID]dispatch.DomainStats, len(st.Domains))
	for _, ds := range st.Domains {
		byID[ds.Domid] = ds
	}
	return a.domains.entries(byID, stallsByDomain(a.pluginStalls()), a.current)
}

// Domain implements control.Source.
func (a *Agent) Domain(id uint16) (control.Domain, bool) {
	ds, inDispatch := a.d.DomainStats(domid.ID(id))
	var ps pluginStalls
	for _, s := range a.pluginStalls() {
		if s.Domid == id {
			ps.add(s)
		}
	}
	return a.domains.entry(domid.ID(id), ds, inDispatch, ps, a.current)
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
	out = append(out, a.pluginStalls()...)
	a.domains.nameStalls(out)
	slices.SortFunc(out, func(x, y control.Stall) int { return x.Started.Compare(y.Started) })
	return out
}

// pluginStalls asks the running plugins for their work stalled past the
// stall threshold (worker "plugin", unnamed, unsorted). Each Staller is
// cheap and answers from memory, so this costs a pass over the plugins'
// devices, not a XenStore request.
func (a *Agent) pluginStalls() []control.Stall {
	stallAt := time.Duration(a.stallAt.Load())
	if stallAt <= 0 {
		return nil
	}
	var out []control.Stall
	now := time.Now()
	for _, p := range a.plugins {
		sr, ok := p.p.(plugin.Staller)
		if !ok || !p.enabled || !p.running.Load() {
			continue
		}
		for _, s := range sr.Stalls(stallAt) {
			out = append(out, control.Stall{
				Domid: uint16(s.Domid), Worker: "plugin", Watch: p.name, Path: s.Path,
				Started: s.Started, AgeMS: now.Sub(s.Started).Milliseconds(), Detail: s.Detail,
			})
		}
	}
	return out
}

// pluginStalls sums up one domain's plugin stalls for its entry.
type pluginStalls struct {
	n        int
	oldestMS int64
}

func (ps *pluginStalls) add(s control.Stall) {
	ps.n++
	ps.oldestMS = max(ps.oldestMS, s.AgeMS)
}

func stallsByDomain(stalls []control.Stall) map[domid.ID]pluginStalls {
	out := make(map[domid.ID]pluginStalls)
	for _, s := range stalls {
		ps := out[domid.ID(s.Domid)]
		ps.add(s)
		out[domid.ID(s.Domid)] = ps
	}
	return out
}

// sources lists what gives a guest a worker, in the agent's mode.
func (a *Agent) sources() []string {
	if a.single {
		return nil
	}
	if a.driver {
		return []string{"backend"}
	}
	var out []string
	if a.domains.useNode {
		out = append(out, config.SourceNode)
	}
	if a.domains.useLibxl {
		out = append(out, config.SourceLibxl)
	}
	if a.auto {
		out = append(out, config.SourceIntroduce)
	}
	return out
}
