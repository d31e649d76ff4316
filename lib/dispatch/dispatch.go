package dispatch

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/mtwatch/mtwatch/lib/domid"
)

// Defaults for Config fields left zero.
const (
	DefaultCapacity       = 1024
	DefaultStallThreshold = 10 * time.Second
)

// Sentinel errors. Returned errors wrap one of them, so callers use errors.Is.
var (
	// ErrStopped: the dispatcher is stopping or stopped.
	ErrStopped = errors.New("dispatcher stopped")
	// ErrUnknownWatch: an event carries a token no registered watch has,
	// typically a late event of a watch that was just unregistered.
	ErrUnknownWatch = errors.New("no watch registered for token")
	// ErrDuplicateToken: a watch with this token is already registered.
	ErrDuplicateToken = errors.New("watch token already registered")
	// ErrInvalidWatch: a WatchConfig misses its path or handler.
	ErrInvalidWatch = errors.New("invalid watch")
	// ErrInvalidDomain: the domid cannot have a domain worker (dom0 or a
	// reserved id).
	ErrInvalidDomain = errors.New("domid cannot have a domain worker")
	// ErrDomainExists: the domain already has a live worker.
	ErrDomainExists = errors.New("domain worker already exists")
	// ErrNoDomain: the domain has no live worker.
	ErrNoDomain = errors.New("no domain worker")
)

// Config configures a Dispatcher. The zero value is usable.
type Config struct {
	// Logger receives stall, panic and handler-error reports. Nil means
	// slog.Default().
	Logger *slog.Logger
	// Capacity bounds the events pending per domain (dom0 and paths of no
	// domain count as one domain). Zero means DefaultCapacity.
	Capacity int
	// StallThreshold: a handler running longer is reported. Zero means
	// DefaultStallThreshold; negative disables stall detection.
	StallThreshold time.Duration
	// SingleWorker runs every event on the default worker, as Linux's single
	// xenwatch thread and xl devd do; CreateDomain and DestroyDomain are then
	// accepted but create no worker. It is the baseline of the benchmarks.
	SingleWorker bool
}

// Dispatcher routes watch events to domain workers. Its methods are safe for
// concurrent use.
type Dispatcher struct {
	log      *slog.Logger
	capacity int
	stallAt  time.Duration
	single   bool
	epoch    time.Time

	ctx    context.Context // parent of every handler context
	cancel context.CancelFunc

	wmu     sync.RWMutex
	watches map[string]*Registration // by token

	mu         sync.Mutex
	stopping   bool
	def        *worker              // the default worker
	dom0       *domain              // events of dom0 and of paths of no domain
	doms       map[domid.ID]*domain // guests with a worker or with events
	active     map[*worker]struct{} // workers whose goroutine runs
	pend       map[pendKey]int32    // pending events by coalescing key
	pendPeak   int
	goroutines int           // worker goroutines plus the stall monitor
	items      int           // events and notices not yet completed
	drained    chan struct{} // closed once stopping and nothing left
	monitorEnd chan struct{} // closed by Stop to end the stall monitor
	totals     Counters
	workers    int // domain workers, live or draining

	itemPool sync.Pool
}

// New returns a running Dispatcher.
func New(cfg Config) (*Dispatcher, error) {
	if cfg.Capacity < 0 {
		return nil, fmt.Errorf("dispatch: negative capacity %d", cfg.Capacity)
	}
	d := &Dispatcher{
		log:        cfg.Logger,
		capacity:   cfg.Capacity,
		stallAt:    cfg.StallThreshold,
		single:     cfg.SingleWorker,
		epoch:      time.Now(),
		watches:    make(map[string]*Registration),
		doms:       make(map[domid.ID]*domain),
		active:     make(map[*worker]struct{}),
		pend:       make(map[pendKey]int32),
		drained:    make(chan struct{}),
		monitorEnd: make(chan struct{}),
	}
	if d.log == nil {
		d.log = slog.Default()
	}
	if d.capacity == 0 {
		d.capacity = DefaultCapacity
	}
	if d.stallAt == 0 {
		d.stallAt = DefaultStallThreshold
	}
	d.itemPool.New = func() any { return new(item) }
	d.ctx, d.cancel = context.WithCancel(context.Background())
	d.dom0 = &domain{id: domid.Dom0}
	d.def = &worker{}
	if d.stallAt > 0 {
		d.goroutines++
		go d.monitor()
	}
	return d, nil
}

// now is a monotonic timestamp in nanoseconds; cheaper to store than a
// time.Time.
func (d *Dispatcher) now() int64 { return int64(time.Since(d.epoch)) }

// Dispatch queues the event (path, token) read from XenStore for the watch
// registered with token. It never waits for a handler. An event that is
// coalesced, filtered or dropped for overflow is not an error: a dropped event
// turns into an overflow notice for its watch. Errors: ErrUnknownWatch (the
// event is counted and discarded) and ErrStopped.
func (d *Dispatcher) Dispatch(path, token string) error {
	d.wmu.RLock()
	w := d.watches[token]
	d.wmu.RUnlock()
	if w == nil {
		d.mu.Lock()
		d.totals.Unmatched++
		d.mu.Unlock()
		return fmt.Errorf("dispatch: event %q: %w %q", path, ErrUnknownWatch, token)
	}
	// Find the domain before taking the lock: DomainOf is caller code.
	id := w.owner
	if id == domid.Dom0 {
		var ok bool
		if id, ok = w.domainOf(path); !ok || !id.IsGuest() {
			id = domid.Dom0
		}
	}

	d.mu.Lock()
	defer d.mu.Unlock()
	if d.stopping {
		return fmt.Errorf("dispatch: event %q: %w", path, ErrStopped)
	}
	if w.removed {
		d.totals.Unmatched++
		return fmt.Errorf("dispatch: event %q: %w %q", path, ErrUnknownWatch, token)
	}
	d.totals.Dispatched++
	w.dispatched++
	dom := d.dom0
	if id != domid.Dom0 {
		dom = d.doms[id]
		if dom == nil {
			dom = &domain{id: id}
			d.doms[id] = dom
		}
	}
	dom.dispatched++

	if w.filter != nil && !w.filter(path, int(d.pend[pendKey{dom: dom, w: w, perWatch: true}])) {
		d.totals.Filtered++
		dom.filtered++
		w.filtered++
		d.maybeFree(dom)
		return nil
	}
	key := w.key(dom, path)
	if d.pend[key] > 0 {
		d.totals.Coalesced++
		dom.coalesced++
		w.coalesced++
		return nil
	}
	if dom.queued >= d.capacity {
		d.overflow(dom, w)
		return nil
	}
	it := d.itemPool.Get().(*item)
	*it = item{w: w, dom: dom, path: path, enq: d.now()}
	d.pend[key]++
	if w.countPerWatch && !key.perWatch {
		d.pend[pendKey{dom: dom, w: w, perWatch: true}]++
	}
	d.pendPeak = max(d.pendPeak, len(d.pend))
	dom.queued++
	d.route(it)
	return nil
}

// overflow drops an event of w for dom, counting it in the watch's pending
// overflow notice for dom or queueing a new notice. Notices are bounded by
// one per watch and domain, so they may exceed the capacity.
func (d *Dispatcher) overflow(dom *domain, w *Registration) {
	d.totals.Dropped++
	dom.dropped++
	w.dropped++
	for _, n := range dom.notices {
		if n.w == w {
			n.dropped++
			return
		}
	}
	d.totals.Overflows++
	it := d.itemPool.Get().(*item)
	*it = item{w: w, dom: dom, path: w.path, enq: d.now(), dropped: 1}
	dom.notices = append(dom.notices, it)
	d.route(it)
}

// route appends a new item to the queue that must run it next in its
// domain's order.
func (d *Dispatcher) route(it *item) {
	dom := it.dom
	dom.items++
	d.items++
	switch {
	case dom == d.dom0 || d.single:
		d.toDefault(it)
	case dom.live != nil:
		dom.live.list.push(it)
		d.kick(dom.live)
	case dom.tail != nil:
		// The domain went down but its last worker still drains: hold the
		// event until then, so it cannot overtake the drained ones.
		dom.tail.after.push(it)
	default:
		d.toDefault(it)
	}
}

func (d *Dispatcher) toDefault(it *item) {
	if it.dom != d.dom0 {
		it.dom.onDefault++
		it.onDefault = true
	}
	d.def.list.push(it)
	d.kick(d.def)
}

// kick starts q's goroutine if q has runnable work and none is running.
func (d *Dispatcher) kick(q *worker) {
	if q.running || q.gated || q.list.head == nil {
		return
	}
	q.running = true
	d.goroutines++
	d.active[q] = struct{}{}
	go d.run(q)
}

// CreateDomain starts a worker for the guest id. Events of id already queued
// on the default worker run before the new worker runs anything, as do the
// events of an earlier, destroyed worker of id that is still draining.
func (d *Dispatcher) CreateDomain(id domid.ID) error {
	if !id.IsGuest() {
		return fmt.Errorf("dispatch: create domain %d: %w", id, ErrInvalidDomain)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.stopping {
		return fmt.Errorf("dispatch: create domain %d: %w", id, ErrStopped)
	}
	if d.single {
		return nil
	}
	dom := d.doms[id]
	if dom == nil {
		dom = &domain{id: id}
		d.doms[id] = dom
	} else if dom.live != nil {
		return fmt.Errorf("dispatch: create domain %d: %w", id, ErrDomainExists)
	}
	q := &worker{dom: dom}
	switch {
	case dom.tail != nil:
		// Gated on the previous worker: when it finishes it releases its
		// held events to the default worker and hands the gate on.
		q.gated = true
		dom.tail.next = q
	case dom.onDefault > 0:
		q.gated = true
		dom.waiting = q
	}
	if dom.first == nil {
		dom.first = q
	}
	dom.tail = q
	dom.live = q
	d.workers++
	return nil
}

// DestroyDomain takes id's worker down. Events queued before run first (with
// their context already cancelled, so handlers stop waiting for a domain that
// is gone); then the worker exits and releases everything. Events of id that
// arrive afterwards run on the default worker, after the drain.
func (d *Dispatcher) DestroyDomain(id domid.ID) error {
	if !id.IsGuest() {
		return fmt.Errorf("dispatch: destroy domain %d: %w", id, ErrInvalidDomain)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.stopping {
		return fmt.Errorf("dispatch: destroy domain %d: %w", id, ErrStopped)
	}
	if d.single {
		return nil
	}
	dom := d.doms[id]
	if dom == nil || dom.live == nil {
		return fmt.Errorf("dispatch: destroy domain %d: %w", id, ErrNoDomain)
	}
	q := dom.live
	dom.live = nil
	q.down = true
	if q.cancel != nil {
		q.cancel()
	}
	d.settle(dom)
	return nil
}

// settle applies the consequences of a change of dom's state: a worker gated
// on the default worker is released once dom has no events there; the oldest
// worker generation finishes once it is down and drained; a domain with
// nothing left is forgotten.
func (d *Dispatcher) settle(dom *domain) {
	if dom == d.dom0 {
		return
	}
	for {
		if q := dom.waiting; q != nil && dom.onDefault == 0 {
			dom.waiting = nil
			q.gated = false
			d.kick(q)
			continue
		}
		if q := dom.first; q != nil && q.down && !q.gated && !q.running && q.list.head == nil {
			d.finish(q)
			continue
		}
		break
	}
	d.maybeFree(dom)
}

// finish retires a drained, destroyed worker: its held events go to the
// default worker and its successor, if any, waits for them.
func (d *Dispatcher) finish(q *worker) {
	dom := q.dom
	for it := q.after.pop(); it != nil; it = q.after.pop() {
		d.toDefault(it)
	}
	dom.first = q.next
	if dom.tail == q {
		dom.tail = nil
	}
	if n := q.next; n != nil {
		// n was gated on q; now it waits for the events just released.
		q.next = nil
		dom.waiting = n
	}
	d.workers--
}

func (d *Dispatcher) maybeFree(dom *domain) {
	if dom != d.dom0 && dom.live == nil && dom.first == nil && dom.items == 0 {
		delete(d.doms, dom.id)
	}
}

// Stop stops the dispatcher: Dispatch, Register, CreateDomain and
// DestroyDomain fail from now on, the context of every running handler is
// cancelled, and the workers drain their queues, handlers getting an already
// cancelled context. Stop returns nil once everything has run and every
// goroutine of the dispatcher has exited. If ctx ends first, the events not yet
// started are discarded and Stop returns ctx's error; the goroutines then exit
// as soon as their running handlers return.
func (d *Dispatcher) Stop(ctx context.Context) error {
	d.mu.Lock()
	if !d.stopping {
		d.stopping = true
		d.cancel()
		close(d.monitorEnd)
		d.checkDrained()
	}
	d.mu.Unlock()
	select {
	case <-d.drained:
		return nil
	case <-ctx.Done():
	}
	d.mu.Lock()
	d.purge(nil, func(*item) bool { return true })
	d.mu.Unlock()
	select {
	case <-d.drained:
		return nil
	default:
		return fmt.Errorf("dispatch: stop: %w", ctx.Err())
	}
}

// checkDrained closes d.drained once stopping and nothing is left.
func (d *Dispatcher) checkDrained() {
	if d.stopping && d.goroutines == 0 && d.items == 0 {
		select {
		case <-d.drained:
		default:
			close(d.drained)
		}
	}
}

// purge removes the pending (not running) items matching match from every
// queue, or only from dom's and the default queue if dom is not nil.
func (d *Dispatcher) purge(dom *domain, match func(*item) bool) int {
	n := 0
	touched := make(map[*domain]struct{})
	drop := func(it *item) {
		n++
		d.totals.Purged++
		touched[it.dom] = struct{}{}
		d.unpend(it)
		d.complete(it)
	}
	scanDom := func(dom *domain) {
		for q := dom.first; q != nil; q = q.next {
			q.list.removeIf(match, drop)
			q.after.removeIf(match, drop)
		}
	}
	if dom != nil {
		scanDom(dom)
	} else {
		for _, dom := range d.doms {
			scanDom(dom)
		}
	}
	// The default queue last: nothing moves there while purging, since
	// settling happens only below.
	d.def.list.removeIf(match, drop)
	for dom := range touched {
		d.settle(dom)
	}
	d.checkDrained()
	return n
}

// unpend does the bookkeeping of an item leaving the pending state.
func (d *Dispatcher) unpend(it *item) {
	dom := it.dom
	if it.dropped > 0 {
		for i, n := range dom.notices {
			if n == it {
				last := len(dom.notices) - 1
				dom.notices[i] = dom.notices[last]
				dom.notices[last] = nil
				dom.notices = dom.notices[:last]
				break
			}
		}
		return
	}
	dom.queued--
	w := it.w
	key := w.key(dom, it.path)
	if d.pend[key]--; d.pend[key] <= 0 {
		delete(d.pend, key)
	}
	if w.countPerWatch && !key.perWatch {
		k := pendKey{dom: dom, w: w, perWatch: true}
		if d.pend[k]--; d.pend[k] <= 0 {
			delete(d.pend, k)
		}
	}
	if len(d.pend) == 0 && d.pendPeak > 4096 {
		// Maps do not shrink: let a flood's buckets go.
		d.pend = make(map[pendKey]int32)
		d.pendPeak = 0
	}
}

// complete does the bookkeeping of an item that has run or was discarded.
// The caller settles it.dom.
func (d *Dispatcher) complete(it *item) {
	dom := it.dom
	dom.items--
	d.items--
	if it.onDefault {
		dom.onDefault--
	}
	*it = item{}
	d.itemPool.Put(it)
}
