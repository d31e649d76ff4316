package dispatch

import (
	"cmp"
	"slices"
	"time"

	"github.com/mtwatch/mtwatch/lib/domid"
)

// Counters are cumulative event counts.
type Counters struct {
	Dispatched uint64 // events accepted by Dispatch for a registered watch
	Unmatched  uint64 // events whose token matched no watch
	Processed  uint64 // handler calls, overflow notices included
	Coalesced  uint64 // events merged into an identical pending one
	Filtered   uint64 // events a watch's Filter refused
	Dropped    uint64 // events discarded because their domain's queue was full
	Overflows  uint64 // overflow notices queued
	Purged     uint64 // pending events and notices discarded by Unregister or Stop
	Panics     uint64 // handler panics recovered
	Errors     uint64 // handler errors
	Stalls     uint64 // callbacks that ran longer than the stall threshold
	Staged     uint64 // events that waited for their domain's worker (Config.Staging)
	Promoted   uint64 // staged events handed to the new worker of their domain
	Flushed    uint64 // staged events run on a drain generation: their domain got no worker
	// GuestOnDefault counts handler calls of a guest domain's events (and
	// notices) on the default worker: what Config.Staging keeps at zero.
	GuestOnDefault uint64
}

// RunningHandler describes a running handler call.
type RunningHandler struct {
	Domid   domid.ID // the event's domain
	Watch   string   // the watch's path
	Token   string
	Path    string // the event's path
	Started time.Time
	Age     time.Duration
	Stalled bool // Age passed the stall threshold
}

// WorkerStats describes the default worker.
type WorkerStats struct {
	Queued      int // events waiting in its queue
	Processed   uint64
	LastLatency time.Duration // Dispatch to handler return, last event
	MaxLatency  time.Duration
	Current     *RunningHandler // nil when idle
}

// DomainStats describes one domain: Domid dom0 stands for dom0 and for paths
// of no domain. Counters cover the domain's events wherever they ran.
// Current is the running handler of the domain's worker; dom0's worker is
// the default worker, so dom0's Current is whatever the default worker runs
// (its Domid says whose event it is: dom0's, a path of no domain's, or a
// domain's without a worker).
type DomainStats struct {
	Domid                                               domid.ID
	Worker                                              bool // the domain has a live worker
	Draining                                            int  // destroyed worker generations still draining
	Queued                                              int  // pending events (not notices), bounded by the capacity
	Staged                                              int  // events and notices waiting for the domain's worker
	Dispatched, Processed, Coalesced, Filtered, Dropped uint64
	LastLatency                                         time.Duration // Dispatch to handler return, last event
	MaxLatency                                          time.Duration
	Current                                             *RunningHandler // the running handler of the domain's worker
}

// Stats is a snapshot of the dispatcher.
type Stats struct {
	Totals  Counters
	Workers int // domain workers, live or draining
	Default WorkerStats
	// Domains lists dom0 first, then every domain with a worker (in
	// single-worker mode: created and not destroyed) or with events not yet
	// completed, by domid. Idle domains without one are forgotten, and so
	// are their counters.
	Domains []DomainStats
}

// WatchStats counts the events of one watch.
type WatchStats struct {
	Dispatched, Coalesced, Filtered, Dropped, Processed, Panics, Errors, Stalls uint64
	Running                                                                     int
}

// Stats returns a snapshot. The counters it reads are kept under the lock
// Dispatch takes anyway, so keeping them costs nothing extra.
func (d *Dispatcher) Stats() Stats {
	d.mu.Lock()
	defer d.mu.Unlock()
	now := d.now()
	s := Stats{
		Totals:  d.totals,
		Workers: d.workers,
		Default: WorkerStats{
			Queued:      d.def.list.n,
			Processed:   d.def.processed,
			LastLatency: time.Duration(d.def.lastLat),
			MaxLatency:  time.Duration(d.def.maxLat),
			Current:     d.runningHandlerLocked(d.def, now),
		},
		Domains: make([]DomainStats, 0, len(d.doms)+1),
	}
	s.Domains = append(s.Domains, d.domainStatsLocked(d.dom0, now))
	for _, dom := range d.doms {
		s.Domains = append(s.Domains, d.domainStatsLocked(dom, now))
	}
	slices.SortFunc(s.Domains[1:], func(a, b DomainStats) int { return cmp.Compare(a.Domid, b.Domid) })
	return s
}

// DomainStats returns the snapshot of one domain; ok is false if the
// dispatcher knows nothing of it.
func (d *Dispatcher) DomainStats(id domid.ID) (st DomainStats, ok bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	dom := d.dom0
	if id != domid.Dom0 {
		if dom = d.doms[id]; dom == nil {
			return DomainStats{}, false
		}
	}
	return d.domainStatsLocked(dom, d.now()), true
}

func (d *Dispatcher) domainStatsLocked(dom *domain, now int64) DomainStats {
	st := DomainStats{
		Domid:       dom.id,
		Worker:      dom.live != nil,
		Queued:      dom.queued,
		Dispatched:  dom.dispatched,
		Processed:   dom.processed,
		Coalesced:   dom.coalesced,
		Filtered:    dom.filtered,
		Dropped:     dom.dropped,
		LastLatency: time.Duration(dom.lastLat),
		MaxLatency:  time.Duration(dom.maxLat),
		Staged:      dom.staged.n,
	}
	if dom == d.dom0 {
		st.Current = d.runningHandlerLocked(d.def, now)
	}
	for wk := dom.first; wk != nil; wk = wk.next {
		if wk.down {
			st.Draining++
		}
		if st.Current == nil {
			st.Current = d.runningHandlerLocked(wk, now)
		}
	}
	// The generations of the domid's older incarnations still draining.
	for old := range d.retired {
		if old.id != dom.id || dom == d.dom0 {
			continue
		}
		for wk := old.first; wk != nil; wk = wk.next {
			st.Draining++
			if st.Current == nil {
				st.Current = d.runningHandlerLocked(wk, now)
			}
		}
	}
	return st
}

func (d *Dispatcher) runningHandlerLocked(wk *worker, now int64) *RunningHandler {
	if wk.cur == nil {
		return nil
	}
	return &RunningHandler{
		Domid:   wk.curDom,
		Watch:   wk.curWatch.path,
		Token:   wk.curWatch.token,
		Path:    wk.curPath,
		Started: d.epoch.Add(time.Duration(wk.curStart)),
		Age:     time.Duration(now - wk.curStart),
		Stalled: wk.stalled,
	}
}

// Stats returns the watch's counters.
func (w *Registration) Stats() WatchStats {
	w.d.mu.Lock()
	defer w.d.mu.Unlock()
	return WatchStats{
		Dispatched: w.dispatched,
		Coalesced:  w.coalesced,
		Filtered:   w.filtered,
		Dropped:    w.dropped,
		Processed:  w.processed,
		Panics:     w.panics,
		Errors:     w.errors,
		Stalls:     w.stalls,
		Running:    w.active,
	}
}
