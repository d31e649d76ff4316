package dispatch

import (
	"context"
	"fmt"
	"time"

	"github.com/mtwatch/mtwatch/lib/domid"
)

// Event is what a handler receives: a watch event, or an overflow notice.
type Event struct {
	// Path is the XenStore path that changed (the watch's own path for an
	// overflow notice); Token is the watch's token.
	Path  string
	Token string
	// Domid is the domain the event was routed by; domid.Dom0 for dom0 and
	// for paths of no domain.
	Domid domid.ID
	// Overflow marks a notice that Dropped events of this watch for Domid
	// were discarded because the domain's queue was full. The handler should
	// resync the domain's state from XenStore: the notice runs after every
	// dropped event had already happened.
	Overflow bool
	Dropped  int
}

// Handler handles the events of one watch. ctx is cancelled when the event's
// domain worker is destroyed, when the dispatcher stops, and after the watch's
// Timeout. An error is logged and counted; it does not stop the worker.
type Handler func(ctx context.Context, ev Event) error

// Coalesce is a coalescing policy: it selects which pending events of a
// watch merge into one.
type Coalesce uint8

const (
	// CoalescePerPath keeps at most one pending event per watch and path:
	// an event identical to a pending one is merged into it (it keeps its
	// place in the queue). This is the default; xenstored itself merges
	// identical pending events the same way.
	CoalescePerPath Coalesce = iota
	// CoalescePerWatch keeps at most one pending event per watch and domain
	// whatever its path, as Linux backends do for an otherend "state" watch
	// after XSA-349: the handler re-reads the state anyway.
	CoalescePerWatch
)

// WatchConfig describes a watch to Register.
type WatchConfig struct {
	// Path is the XenStore path the watch was registered for; Token is its
	// token, unique among the dispatcher's watches: Dispatch matches events
	// by token.
	Path  string
	Token string
	// Handler runs the events. Required.
	Handler Handler
	// DomainOf tells which domain an event path belongs to (the seed's
	// get_domid); ok=false or dom0 routes to the default worker. Nil means
	// domid.FromPath. It runs on the Dispatch goroutine, without locks.
	DomainOf func(path string) (id domid.ID, ok bool)
	// Owner, if not dom0, is the domain every event of the watch belongs to
	// (the seed's get_owner, e.g. a backend's watch on its frontend's
	// state); DomainOf is then not used, and unregistering only has to look
	// at that domain's queues.
	Owner domid.ID
	// Coalesce selects which pending events merge; Filter, if set, decides
	// whether to queue an event at all (the seed's will_handle after
	// XSA-349), given the number of the watch's events pending for the
	// domain. Filter runs on the Dispatch goroutine with the dispatcher
	// locked: it must be quick and must not call the Dispatcher. Filtered
	// events are counted, not notified.
	Coalesce Coalesce
	Filter   func(path string, pending int) bool
	// Timeout, if positive, bounds each handler call through its context.
	Timeout time.Duration
	// Plugin, if set, names who registered the watch in the log entries
	// about it (a stalled callback), so a journal search by PLUGIN finds
	// them.
	Plugin string
	// SkipInitial is for whoever registers the XenStore watch (mtwatchd's
	// agent, for its plugins; the dispatcher itself ignores it): the event
	// xenstored fires for the watched path as each registration completes
	// (at start, after every reconnection) is not dispatched. For a watch
	// that acts on changes only, and would take that event for one.
	SkipInitial bool
}

// Registration is a registered watch: the handle Register returns.
type Registration struct {
	d             *Dispatcher
	path, token   string
	handler       Handler
	domainOf      func(string) (domid.ID, bool)
	owner         domid.ID
	perWatch      bool
	countPerWatch bool
	filter        func(string, int) bool
	timeout       time.Duration
	plugin        string

	// Guarded by d.mu.
	removed  bool
	active   int           // handlers running
	excluded int           // of which have called Unregister of w themselves
	changed  chan struct{} // closed when active or excluded change

	dispatched, coalesced, filtered, dropped, processed, panics, errors, stalls uint64
}

// key is the coalescing key of an event of w for dom.
func (w *Registration) key(dom *domain, path string) pendKey {
	if w.perWatch {
		return w.watchKey(dom)
	}
	return pendKey{dom: dom, w: w, path: path}
}

// watchKey counts all the pending events of w for dom.
func (w *Registration) watchKey(dom *domain) pendKey {
	return pendKey{dom: dom, w: w, perWatch: true}
}

// domainFor returns the domain an event path of w belongs to: w's owner, or
// what its DomainOf says, dom0 for anything that is not a guest. It runs
// caller code: call it without locks.
func (w *Registration) domainFor(path string) domid.ID {
	if w.owner != domid.Dom0 {
		return w.owner
	}
	if id, ok := w.domainOf(path); ok && id.IsGuest() {
		return id
	}
	return domid.Dom0
}

// Path returns the path the watch was registered with.
func (w *Registration) Path() string { return w.path }

// Token returns the watch's token.
func (w *Registration) Token() string { return w.token }

// Register adds a watch. Events with its token are dispatched from now on.
func (d *Dispatcher) Register(cfg WatchConfig) (*Registration, error) {
	switch {
	case cfg.Path == "":
		return nil, fmt.Errorf("dispatch: register watch token %q: %w: empty path", cfg.Token, ErrInvalidWatch)
	case cfg.Handler == nil:
		return nil, fmt.Errorf("dispatch: register watch %q: %w: nil handler", cfg.Path, ErrInvalidWatch)
	case cfg.Coalesce > CoalescePerWatch:
		return nil, fmt.Errorf("dispatch: register watch %q: %w: unknown coalesce policy %d", cfg.Path, ErrInvalidWatch, cfg.Coalesce)
	case cfg.Owner.IsReserved():
		return nil, fmt.Errorf("dispatch: register watch %q: %w: reserved owner domid %d", cfg.Path, ErrInvalidWatch, cfg.Owner)
	case cfg.Timeout < 0:
		return nil, fmt.Errorf("dispatch: register watch %q: %w: negative timeout", cfg.Path, ErrInvalidWatch)
	}
	w := &Registration{
		d:             d,
		path:          cfg.Path,
		token:         cfg.Token,
		handler:       cfg.Handler,
		domainOf:      cfg.DomainOf,
		owner:         cfg.Owner,
		perWatch:      cfg.Coalesce == CoalescePerWatch,
		countPerWatch: cfg.Coalesce == CoalescePerWatch || cfg.Filter != nil,
		filter:        cfg.Filter,
		timeout:       cfg.Timeout,
		plugin:        cfg.Plugin,
	}
	if w.domainOf == nil {
		w.domainOf = domid.FromPath
	}
	// Holding mu until the watch is in the table orders Register before or
	// after Stop as a whole (I8).
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.stopping {
		return nil, fmt.Errorf("dispatch: register watch %q: %w", cfg.Path, ErrStopped)
	}
	d.wmu.Lock()
	defer d.wmu.Unlock()
	if _, dup := d.watches[cfg.Token]; dup {
		return nil, fmt.Errorf("dispatch: register watch %q: %w: %q", cfg.Path, ErrDuplicateToken, cfg.Token)
	}
	d.watches[cfg.Token] = w
	return w, nil
}

// Unregister removes the watch: its pending events are dropped and no new
// ones are queued. It returns once no handler of the watch is running, or
// with ctx's error when ctx ends first. Called from the watch's own handler
// with the handler's ctx, it does not wait for that handler (which would
// deadlock) nor for other handlers of the watch doing the same; pass that ctx
// only from the handler's goroutine, and wrap it in context.WithoutCancel to
// keep waiting after the handler's context is cancelled. Unregistering twice
// is harmless.
func (w *Registration) Unregister(ctx context.Context) error {
	d := w.d
	w.remove()
	d.mu.Lock()
	// Called from one of the watch's own handlers: wait for the others, not
	// for the caller, nor for other handlers of the watch doing the same.
	self := false
	if wk, ok := ctx.Value(workerKey{}).(*worker); ok && wk.curWatch == w {
		self = true
		if !wk.curExcluded {
			wk.curExcluded = true
			w.excluded++
			w.broadcastLocked()
		}
	}
	for {
		busy := w.active
		if self {
			busy -= w.excluded
		}
		if busy == 0 {
			d.mu.Unlock()
			return nil
		}
		if w.changed == nil {
			w.changed = make(chan struct{})
		}
		changed := w.changed
		d.mu.Unlock()
		select {
		case <-changed:
		case <-ctx.Done():
			return fmt.Errorf("dispatch: unregister watch %q: %w", w.path, ctx.Err())
		}
		d.mu.Lock()
	}
}

// Detach removes the watch as Unregister does, without waiting for a
// running handler of it, which runs to its end: for a caller that must not
// wait for a handler and does not need it to be over (I4 does not hold
// until it is). Detaching twice, or after Unregister, is harmless.
func (w *Registration) Detach() { w.remove() }

// remove forgets the watch and drops its pending events.
func (w *Registration) remove() {
	d := w.d
	d.wmu.Lock()
	if d.watches[w.token] == w {
		delete(d.watches, w.token)
	}
	d.wmu.Unlock()
	d.mu.Lock()
	defer d.mu.Unlock()
	if w.removed {
		return
	}
	w.removed = true
	var dom *domain
	if w.owner != domid.Dom0 {
		// Only the owner's queues and the default worker hold its
		// events; an owner with no record has none outside the latter.
		if dom = d.doms[w.owner]; dom == nil {
			dom = &domain{}
		}
	}
	d.purgeLocked(dom, func(it *item) bool { return it.w == w })
}

// broadcastLocked wakes the Unregister calls waiting for w's handlers.
func (w *Registration) broadcastLocked() {
	if w.changed != nil {
		close(w.changed)
		w.changed = nil
	}
}
