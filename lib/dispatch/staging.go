package dispatch

import (
	"fmt"
	"time"

	"github.com/mtwatch/mtwatch/lib/domid"
)

// This file holds Config.Staging (events of a guest domid wait for its worker
// instead of running on the default worker) and incarnations (a reused
// domid's new worker does not wait for the old one's).

// stageFullLocked reports whether an event of dom would have to be staged
// while the staged events of all domids reach their bound.
func (d *Dispatcher) stageFullLocked(dom *domain) bool {
	return d.staging && dom != d.dom0 && (dom.live == nil || dom.held) && d.stagedTotal >= d.stageLimit
}

// stageLocked appends it to its domain's staging queue.
func (d *Dispatcher) stageLocked(it *item) {
	dom := it.dom
	if dom.staged.head == nil {
		dom.stagedAt = d.now()
		d.staged[dom] = struct{}{}
		d.startStagerLocked()
		if d.onStage != nil {
			d.onStage(dom.id)
		}
	}
	dom.staged.push(it)
	if it.dropped == 0 {
		d.stagedTotal++
		d.totals.Staged++
	}
}

// unstageLocked does the bookkeeping of it leaving its domain's staging
// queue (already unlinked).
func (d *Dispatcher) unstageLocked(it *item) {
	if it.dropped == 0 {
		d.stagedTotal--
	}
	if it.dom.staged.head == nil {
		delete(d.staged, it.dom)
	}
}

// takeStagedLocked moves dom's staged events, in order, to the end of l.
func (d *Dispatcher) takeStagedLocked(dom *domain, l *list) int {
	n := 0
	for it := dom.staged.pop(); it != nil; it = dom.staged.pop() {
		d.unstageLocked(it)
		l.push(it)
		n++
	}
	return n
}

// promoteLocked hands dom's staged events to its new worker wk, ahead of
// anything dispatched after its creation.
func (d *Dispatcher) promoteLocked(dom *domain, wk *worker) {
	if n := d.takeStagedLocked(dom, &wk.list); n > 0 {
		d.totals.Promoted += uint64(n)
	}
	d.kickLocked(wk)
}

// FlushStaged runs the staged events of id, in order, on a drain generation
// of id of their own, never on the default worker, when the caller has
// established that no worker will come for them. gone says id is no domain
// (no node, no /libxl/<domid>, no /local/domain/<domid>, not introduced):
// the handlers then get an already cancelled context, as the last events of
// a destroyed domain do; otherwise (a domain that no configured source gives
// a worker) a live one. It returns how many events and notices it flushed;
// 0 if id has a live worker or nothing staged.
func (d *Dispatcher) FlushStaged(id domid.ID, gone bool) (int, error) {
	if !id.IsGuest() {
		return 0, fmt.Errorf("dispatch: flush domain %d: %w", id, ErrInvalidDomain)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.stopping {
		return 0, fmt.Errorf("dispatch: flush domain %d: %w", id, ErrStopped) // I8
	}
	dom := d.doms[id]
	if dom == nil || dom.live != nil {
		return 0, nil
	}
	return d.flushLocked(dom, gone), nil
}

// flushLocked moves dom's staged events to a new, destroyed generation
// ordered after dom's others, as if a worker had been created and destroyed
// at once; with a live context unless gone.
func (d *Dispatcher) flushLocked(dom *domain, gone bool) int {
	if dom.staged.head == nil || dom.live != nil {
		return 0
	}
	wk := &worker{dom: dom, down: true, keepCtx: !gone}
	n := d.takeStagedLocked(dom, &wk.list)
	d.totals.Flushed += uint64(n)
	d.appendGenLocked(dom, wk)
	d.compactLocked(dom)
	d.kickLocked(wk) // a no-op if compaction merged it into its predecessor
	d.settleLocked(dom)
	return n
}

// retireLocked replaces old, the record of a domid whose generations belong
// to another incarnation, with a fresh record; old stays in d.retired until
// its generations have drained. Its staged events arrived after its last
// worker went down, so they are the new incarnation's: they move along.
func (d *Dispatcher) retireLocked(old *domain) *domain {
	nd := &domain{id: old.id, held: old.held, holdSeq: old.holdSeq}
	old.held = false
	d.doms[old.id] = nd
	d.retired[old] = struct{}{}
	var l list
	d.takeStagedLocked(old, &l)
	for it := l.pop(); it != nil; it = l.pop() {
		d.unpendLocked(it)
		old.items--
		it.dom = nd
		nd.items++
		if it.dropped > 0 {
			nd.notices = append(nd.notices, it)
		} else {
			d.pendLocked(it.w, nd, it.w.key(nd, it.path))
		}
		d.stageLocked(it)
		d.totals.Staged-- // staged once, counted once
	}
	if nd.staged.head != nil {
		nd.stagedAt = old.stagedAt
	}
	d.settleLocked(old)
	return nd
}

// startStagerLocked starts the goroutine that enforces the staging timeout,
// unless it runs: it exits once nothing is staged (I7).
func (d *Dispatcher) startStagerLocked() {
	if d.stagerOn || d.stopping {
		return
	}
	d.stagerOn = true
	d.goroutines++
	go d.stager()
}

// stager flushes the staged events of every domid that got no worker within
// the staging timeout of its first staged event. It sleeps until the
// earliest deadline: later staged domids have later deadlines, so only Stop
// needs to wake it.
func (d *Dispatcher) stager() {
	t := time.NewTimer(d.stageTimeout)
	defer t.Stop()
	for {
		d.mu.Lock()
		now, next := d.now(), int64(-1)
		for dom := range d.staged {
			if dom.live != nil {
				continue // held (Hold): its Release hands them on
			}
			deadline := dom.stagedAt + int64(d.stageTimeout)
			if deadline > now {
				if next < 0 || deadline < next {
					next = deadline
				}
				continue
			}
			if n := d.flushLocked(dom, false); n > 0 {
				d.log.Warn("dispatch: staged events flushed: no worker appeared for the domain; they run on a worker of their own",
					"domid", dom.id, "events", n, "staging_timeout", d.stageTimeout)
			}
		}
		if next < 0 || d.stopping {
			d.stagerOn = false
			d.goroutines--
			d.checkDrainedLocked()
			d.mu.Unlock()
			return
		}
		d.mu.Unlock()
		t.Reset(time.Duration(next - now))
		select {
		case <-t.C:
		case <-d.stageKick:
			t.Stop()
		}
	}
}

// stopStagingLocked, at Stop: staged events are flushed (their handlers get
// a cancelled context, as every handler does from now on), the stager is
// woken to exit, and pending grace timers are stopped (d.cancel has already
// cancelled every context they would cancel).
func (d *Dispatcher) stopStagingLocked() {
	for dom := range d.staged {
		d.flushLocked(dom, true)
	}
	select {
	case d.stageKick <- struct{}{}:
	default:
	}
	for t := range d.graceTimers {
		t.Stop()
	}
	clear(d.graceTimers)
}

// cancelAfterLocked calls cancel after g; Stop makes it moot.
func (d *Dispatcher) cancelAfterLocked(cancel func(), g time.Duration) {
	if d.stopping {
		cancel()
		return
	}
	var t *time.Timer
	t = time.AfterFunc(g, func() {
		d.mu.Lock()
		delete(d.graceTimers, t) // t is set: it was assigned before d.mu was released
		d.mu.Unlock()
		cancel()
	})
	d.graceTimers[t] = struct{}{}
}

// FlushAllStaged flushes the staged events of every domid, as FlushStaged
// does: for a caller about to wait for the workers to drain (WaitIdle) while
// no worker will come any more, such as mtwatchd shutting down.
func (d *Dispatcher) FlushAllStaged() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	n := 0
	for dom := range d.staged {
		n += d.flushLocked(dom, false)
	}
	return n
}

// Hold makes the events of guest id wait in its staging queue from now on,
// even while it has a live worker, until Release(id, seq) with the seq this
// call returns and no later Hold. The caller reads, in the event stream's
// order, that id's worker may be about to change (its /libxl/<domid> or its
// node was written: a reused domid's new incarnation, or its end) and has
// yet to find out: the events after that point belong to whatever worker it
// decides on (CreateIncarnation promotes them), not to the one live now.
// It never blocks. A no-op without Config.Staging.
func (d *Dispatcher) Hold(id domid.ID) uint64 {
	if !d.staging || !id.IsGuest() {
		return 0
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.stopping {
		return 0
	}
	dom := d.domainLocked(id)
	dom.holdSeq++
	dom.held = true
	return dom.holdSeq
}

// Release ends the Hold that returned seq, unless a later Hold of id came
// since: the events it staged go to id's live worker, in order, if it has
// one; otherwise they wait for a worker or a flush as staged events do.
func (d *Dispatcher) Release(id domid.ID, seq uint64) {
	if seq == 0 {
		return
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if dom := d.doms[id]; dom != nil && dom.held && dom.holdSeq == seq {
		d.releaseLocked(dom)
	}
}

// ReleaseAll ends every Hold: the caller that would have released them is
// gone (a lost connection; the next one reconciles).
func (d *Dispatcher) ReleaseAll() {
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, dom := range d.doms {
		if dom.held {
			d.releaseLocked(dom)
		}
	}
}

func (d *Dispatcher) releaseLocked(dom *domain) {
	dom.held = false
	if wk := dom.live; wk != nil {
		if n := d.takeStagedLocked(dom, &wk.list); n > 0 {
			d.totals.Promoted += uint64(n)
		}
		d.kickLocked(wk)
	}
	d.orphanedLocked(dom)
	d.maybeFreeLocked(dom)
}

// orphanedLocked: dom's staged events, held while it had a live worker,
// now wait for a worker it does not have: the staging timeout and OnStage
// apply to them as to newly staged ones.
func (d *Dispatcher) orphanedLocked(dom *domain) {
	if dom.staged.head == nil || dom.live != nil || dom.held {
		return
	}
	d.startStagerLocked()
	select {
	case d.stageKick <- struct{}{}: // their deadline may be past
	default:
	}
	if d.onStage != nil {
		d.onStage(dom.id)
	}
}
