package agent

import (
	"errors"
	"log/slog"
	"sync"
	"time"

	"github.com/mtwatch/mtwatch/lib/dispatch"
)

// Bounds of the barrier: how many plugin events it holds at most, and for
// how long. Past either, the held events are dispatched anyway (in order),
// the barriers up to then are given up, and the fact is counted and logged
// once. A rescan after @introduceDomain takes a few round trips (well under
// a millisecond on an idle dom0), so neither bound is reached in normal
// operation; they keep a slow or stuck xenstored from holding the data
// plane up.
const (
	barrierMaxHeld = 4096
	barrierMaxWait = 250 * time.Millisecond
)

// barrier keeps plugin events behind the control-plane events read before
// them. libxl introduces a domain (and the hooks write its node) before it
// writes any of its backend devices, so in the connection's event stream
// @introduceDomain, or the node's event, comes before the domain's device
// events. The agent handles those control-plane events on the session
// goroutine, a few round trips later; without the barrier the device events
// read meanwhile would be dispatched before the domain's worker exists and
// run on the default worker, behind any hung handler there, and through I1
// hold the domain's new worker back too.
//
// raise is called on the connection's reading goroutine when such an event
// is read; event, for each plugin event, on the same goroutine, so both see
// the stream's order. While a barrier is up, plugin events are held in
// order; release, called by the session once it has handled the events up
// to a barrier (workers created), dispatches the events read before the
// next barrier. Nothing here blocks: the reader only appends under a mutex.
type barrier struct {
	dispatch func(path, token string) error
	log      *slog.Logger
	maxHeld  int
	maxWait  time.Duration

	mu       sync.Mutex
	owner    any    // the session whose raises count; nil: none (shutting down)
	raised   uint64 // sequence number of the last barrier raised
	released uint64 // every barrier up to this one is released
	held     []heldEvent
	head     int // held[head:] is pending
	timer    *time.Timer
	given    uint64 // times the bounds made it give up
	logged   bool
}

type heldEvent struct {
	path, token string
	seq         uint64 // the barrier it waits for
	at          time.Time
}

func newBarrier(dispatch func(path, token string) error, log *slog.Logger) *barrier {
	return &barrier{dispatch: dispatch, log: log, maxHeld: barrierMaxHeld, maxWait: barrierMaxWait}
}

// setOwner makes raises count only when they come from owner: the
// callbacks of a connection that was replaced cannot raise a barrier
// nobody would release. A nil owner releases everything and raises no
// more barriers.
func (b *barrier) setOwner(owner any) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.owner = owner
	if owner == nil {
		b.releaseLocked(b.raised)
	}
}

// raise puts a barrier up after every event read so far and returns its
// sequence number; 0 if owner is not the current owner.
func (b *barrier) raise(owner any) uint64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	if owner == nil || owner != b.owner {
		return 0
	}
	b.raised++
	return b.raised
}

// current returns the sequence number of the last barrier raised.
func (b *barrier) current() uint64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.raised
}

// event dispatches a plugin event, or holds it behind the barriers up.
func (b *barrier) event(path, token string) {
	b.mu.Lock()
	if b.raised == b.released && b.head == len(b.held) {
		b.mu.Unlock()
		// Nothing held, nothing to wait for: only this goroutine adds
		// events, so nothing can be dispatched ahead of this one.
		b.send(path, token)
		return
	}
	defer b.mu.Unlock()
	if len(b.held)-b.head >= b.maxHeld {
		b.giveUpLocked("held events")
		b.send(path, token)
		return
	}
	now := time.Now()
	if b.head == len(b.held) {
		b.held, b.head = b.held[:0], 0
		b.armLocked(b.maxWait)
	}
	b.held = append(b.held, heldEvent{path: path, token: token, seq: b.raised, at: now})
}

// release tells that the session has handled every control-plane event up
// to barrier seq: the events held behind it (and not behind a later one)
// are dispatched in order.
func (b *barrier) release(seq uint64) {
	if seq == 0 {
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	b.releaseLocked(seq)
}

func (b *barrier) releaseLocked(seq uint64) {
	if seq > b.released {
		b.released = min(seq, b.raised)
	}
	for b.head < len(b.held) && b.held[b.head].seq <= b.released {
		ev := b.held[b.head]
		b.held[b.head] = heldEvent{}
		b.head++
		b.send(ev.path, ev.token)
	}
	if b.head == len(b.held) {
		if cap(b.held) > 1024 {
			b.held = nil // let a burst's array go
		} else {
			b.held = b.held[:0]
		}
		b.head = 0
		if b.timer != nil {
			b.timer.Stop()
		}
		return
	}
	// The events left wait for a later barrier: their own deadline.
	b.armLocked(b.maxWait - time.Since(b.held[b.head].at))
}

// armLocked (re)starts the timer that enforces maxWait.
func (b *barrier) armLocked(d time.Duration) {
	if b.timer == nil {
		b.timer = time.AfterFunc(d, b.expire)
		return
	}
	b.timer.Reset(d)
}

// expire runs on the timer's goroutine: events held for maxWait are
// dispatched anyway, and every barrier up to now is given up.
func (b *barrier) expire() {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.head == len(b.held) {
		return
	}
	if wait := time.Since(b.held[b.head].at); wait < b.maxWait {
		b.armLocked(b.maxWait - wait) // a release moved the head meanwhile
		return
	}
	b.giveUpLocked("wait")
}

// giveUpLocked dispatches everything held and releases every barrier.
func (b *barrier) giveUpLocked(bound string) {
	b.given++
	if !b.logged {
		b.logged = true
		b.log.Warn("plugin events held behind a domain introduction were dispatched before the agent had handled it; "+
			"a new domain's first device events may run on the default worker (logged once, counted in mtwatch_barrier_timeouts_total)",
			"bound", bound, "held", len(b.held)-b.head, "max_held", b.maxHeld, "max_wait", b.maxWait)
	}
	b.releaseLocked(b.raised)
}

// timeouts returns how often the bounds made the barrier give up.
func (b *barrier) timeouts() uint64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.given
}

// stop releases everything and stops the timer.
func (b *barrier) stop() {
	b.setOwner(nil)
	b.mu.Lock()
	if b.timer != nil {
		b.timer.Stop()
	}
	b.mu.Unlock()
}

func (b *barrier) send(path, token string) {
	if err := b.dispatch(path, token); err != nil &&
		!errors.Is(err, dispatch.ErrUnknownWatch) && !errors.Is(err, dispatch.ErrStopped) {
		b.log.Error("dispatch failed", "path", path, "watch", token, "err", err)
	}
}
