package dispatch

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mtwatch/mtwatch/lib/domid"
)

// Defaults for Config fields left zero.
const (
	// DefaultCapacity is the capacity of a Config that leaves it zero.
	DefaultCapacity = 1024
	// DefaultStagingTimeout: how long events of a guest domid wait for its
	// worker before they are flushed (see Config.Staging).
	DefaultStagingTimeout = 10 * time.Second
	// DefaultStagingDomains: how many domids' capacities of staged events
	// the dispatcher holds in all, by default.
	DefaultStagingDomains = 64
	// DefaultSupersedeGrace: how long the handlers of an incarnation that a
	// new one replaced keep their context.
	DefaultSupersedeGrace = 2 * time.Second
)

// Sentinel errors. Returned errors wrap one of them, so callers use errors.Is.
var (
	// ErrStopped is returned when the dispatcher is stopping or stopped.
	ErrStopped = errors.New("dispatcher stopped")
	// ErrUnknownWatch is returned when an event carries a token no
	// registered watch has, typically a late event of a watch that was
	// just unregistered.
	ErrUnknownWatch = errors.New("no watch registered for token")
	// ErrDuplicateToken is returned when a watch with the token is already
	// registered.
	ErrDuplicateToken = errors.New("watch token already registered")
	// ErrInvalidWatch is returned when a WatchConfig misses its path or
	// handler.
	ErrInvalidWatch = errors.New("invalid watch")
	// ErrInvalidDomain is returned when the domid cannot have a domain
	// worker (dom0 or a reserved id).
	ErrInvalidDomain = errors.New("domid cannot have a domain worker")
	// ErrDomainExists is returned when the domain already has a live worker.
	ErrDomainExists = errors.New("domain worker already exists")
	// ErrNoDomain is returned when the domain has no live worker.
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
	// StallThreshold: a handler running longer is reported. Zero (or
	// negative) turns stall detection off, as 0 does in mtwatchd's
	// stall_threshold.
	StallThreshold time.Duration
	// SingleWorker runs every event on the default worker, as Linux's single
	// kernel xenwatch thread runs every watch callback (and any single-loop
	// daemon whose handlers run synchronously); CreateDomain and DestroyDomain are then
	// accepted but create no worker. It is the baseline of the benchmarks.
	SingleWorker bool
	// Staging keeps every event of a guest domid off the default worker:
	// while the domid has no live worker its events wait in its staging
	// queue (bounded by Capacity, and by StagingLimit for all domids
	// together: past either the event is dropped into the usual overflow
	// notice, which is staged too). CreateDomain promotes them, in order,
	// to the new worker. Staged events of a domid that gets no worker are
	// flushed: FlushStaged, or StagingTimeout after the first of them,
	// runs them in order on a drain generation of the domid, whose handlers
	// get an already cancelled context, as the last events of a destroyed
	// domain do. They never run on the default worker.
	Staging bool
	// StagingTimeout: zero means DefaultStagingTimeout.
	StagingTimeout time.Duration
	// StagingLimit bounds the staged events of all domids together. Zero
	// means DefaultStagingDomains times Capacity.
	StagingLimit int
	// SupersedeGrace: when CreateIncarnation replaces a live worker of
	// another incarnation (its destroy was missed), the old generation's
	// handlers keep their context this long, then it is cancelled (the
	// plugins then signal their process groups). Zero means
	// DefaultSupersedeGrace; negative cancels at once.
	SupersedeGrace time.Duration
	// OnStage, if set, is called when a guest domid's staging queue gets
	// its first event, so that the caller can check whether the domid is a
	// domain at all and FlushStaged it if not. It runs with the dispatcher
	// locked: it must not block or call the Dispatcher.
	OnStage func(domid.ID)
}

// Dispatcher routes watch events to domain workers. Its methods are safe for
// concurrent use.
//
// Locking: wmu guards watches; mu guards everything else that changes,
// including the mutable state of domains, workers, items and Registrations.
// Register holds mu, then wmu; nothing else holds both. Helpers whose name
// ends in Locked must be called with mu held.
type Dispatcher struct {
	log      *slog.Logger
	capacity int
	stallAt  atomic.Int64 // time.Duration; <= 0: off (SetStallThreshold)
	single   bool
	epoch    time.Time

	ctx    context.Context // parent of every handler context
	cancel context.CancelFunc

	wmu     sync.RWMutex
	watches map[string]*Registration // by token

	mu          sync.Mutex
	stopping    bool
	def         *worker              // the default worker
	dom0        *domain              // events of dom0 and of paths of no domain
	doms        map[domid.ID]*domain // guests with a worker or with events
	active      map[*worker]struct{} // workers whose goroutine runs
	pend        map[pendKey]int32    // pending events by coalescing key
	pendPeak    int
	goroutines  int           // worker goroutines plus the stall monitor
	items       int           // events and notices not yet completed
	drained     chan struct{} // closed once stopping and nothing left
	idle        chan struct{} // closed when items drops to 0; nil when nobody waits
	monitorEnd  chan struct{} // closed by Stop to end the stall monitor
	monitorKick chan struct{} // capacity 1: the stall threshold changed
	monitorOn   bool          // the stall monitor's goroutine was started
	totals      Counters
	workers     int // domain worker generations, live or draining

	// Staging (Config.Staging). retired holds the records of domids' older
	// incarnations that still have events; d.doms has the current one.
	staging        bool
	onStage        func(domid.ID)
	stageTimeout   time.Duration
	stageLimit     int
	supersedeGrace time.Duration
	staged         map[*domain]struct{} // current records with staged events
	stagedTotal    int                  // staged events (not notices)
	retired        map[*domain]struct{}
	stagerOn       bool          // the staging timer's goroutine runs
	stageKick      chan struct{} // capacity 1: a new staged domain or Stop
	graceTimers    map[*time.Timer]struct{}

	itemPool sync.Pool
}

// New returns a running Dispatcher.
func New(cfg Config) (*Dispatcher, error) {
	if cfg.Capacity < 0 {
		return nil, fmt.Errorf("dispatch: negative capacity %d", cfg.Capacity)
	}
	if cfg.StagingTimeout < 0 || cfg.StagingLimit < 0 {
		return nil, fmt.Errorf("dispatch: negative staging timeout %v or limit %d", cfg.StagingTimeout, cfg.StagingLimit)
	}
	d := &Dispatcher{
		log:         cfg.Logger,
		capacity:    cfg.Capacity,
		single:      cfg.SingleWorker,
		epoch:       time.Now(),
		watches:     make(map[string]*Registration),
		doms:        make(map[domid.ID]*domain),
		active:      make(map[*worker]struct{}),
		pend:        make(map[pendKey]int32),
		drained:     make(chan struct{}),
		monitorEnd:  make(chan struct{}),
		monitorKick: make(chan struct{}, 1),
		staging:     cfg.Staging && !cfg.SingleWorker,
		onStage:     cfg.OnStage,
		stageKick:   make(chan struct{}, 1),
		staged:      make(map[*domain]struct{}),
		retired:     make(map[*domain]struct{}),
		graceTimers: make(map[*time.Timer]struct{}),
	}
	if d.log == nil {
		d.log = slog.Default()
	}
	if d.capacity == 0 {
		d.capacity = DefaultCapacity
	}
	d.stageTimeout = cmp.Or(cfg.StagingTimeout, DefaultStagingTimeout)
	d.stageLimit = cmp.Or(cfg.StagingLimit, DefaultStagingDomains*d.capacity)
	d.supersedeGrace = cmp.Or(cfg.SupersedeGrace, DefaultSupersedeGrace)
	d.stallAt.Store(int64(stallThreshold(cfg.StallThreshold)))
	d.itemPool.New = func() any { return new(item) }
	d.ctx, d.cancel = context.WithCancel(context.Background())
	d.dom0 = &domain{id: domid.Dom0}
	d.def = &worker{}
	d.mu.Lock()
	d.startMonitorLocked()
	d.mu.Unlock()
	return d, nil
}

// stallThreshold applies Config.StallThreshold's rule: zero or negative
// is off, kept as -1.
func stallThreshold(t time.Duration) time.Duration {
	if t <= 0 {
		return -1
	}
	return t
}

// StallThreshold returns the stall threshold in force; -1 when stall
// detection is off.
func (d *Dispatcher) StallThreshold() time.Duration { return time.Duration(d.stallAt.Load()) }

// SetStallThreshold changes the stall threshold while the dispatcher runs
// (a configuration reload), with Config.StallThreshold's meaning: zero
// turns stall detection off. The monitor
// applies it at once: running handlers already past a lowered threshold are
// reported at its next look. Safe for concurrent use.
func (d *Dispatcher) SetStallThreshold(t time.Duration) {
	d.stallAt.Store(int64(stallThreshold(t)))
	d.mu.Lock()
	d.startMonitorLocked()
	d.mu.Unlock()
	select {
	case d.monitorKick <- struct{}{}:
	default:
	}
}

// startMonitorLocked starts the stall monitor if stall detection is on and
// it does not run yet: a dispatcher started with detection off owns no
// monitor goroutine until a threshold is set.
func (d *Dispatcher) startMonitorLocked() {
	if d.monitorOn || d.stopping || d.stallAt.Load() <= 0 {
		return
	}
	d.monitorOn = true
	d.goroutines++
	go d.monitor()
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
	var id domid.ID
	if w != nil {
		id = w.domainFor(path) // caller code: before taking the lock
	}

	d.mu.Lock()
	defer d.mu.Unlock()
	if w != nil && d.stopping {
		return fmt.Errorf("dispatch: event %q: %w", path, ErrStopped) // I8
	}
	if w == nil || w.removed {
		d.totals.Unmatched++
		return fmt.Errorf("dispatch: event %q: %w %q", path, ErrUnknownWatch, token)
	}
	d.enqueueLocked(w, d.domainLocked(id), path)
	return nil
}

// Post queues an event of w for path as if xenstored had sent it: routed,
// filtered and coalesced as one. A plugin uses it to have work it did off
// the workers (a script that ended) looked at by the domain's worker, in the
// domain's order. Errors: ErrUnknownWatch once w is unregistered, and
// ErrStopped.
func (w *Registration) Post(path string) error {
	id := w.domainFor(path)
	d := w.d
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.stopping {
		return fmt.Errorf("dispatch: post %q: %w", path, ErrStopped)
	}
	if w.removed {
		return fmt.Errorf("dispatch: post %q: %w %q", path, ErrUnknownWatch, w.token)
	}
	d.enqueueLocked(w, d.domainLocked(id), path)
	return nil
}

// domainLocked returns the record of domain id, creating it if needed;
// d.dom0 for dom0.
func (d *Dispatcher) domainLocked(id domid.ID) *domain {
	if id == domid.Dom0 {
		return d.dom0
	}
	dom := d.doms[id]
	if dom == nil {
		dom = &domain{id: id}
		d.doms[id] = dom
	}
	return dom
}

// enqueueLocked queues an event of w for dom unless the watch's filter
// refuses it, a pending event absorbs it, or dom's queue is full (I5, I6).
func (d *Dispatcher) enqueueLocked(w *Registration, dom *domain, path string) {
	d.totals.Dispatched++
	w.dispatched++
	dom.dispatched++
	if w.filter != nil && !w.filter(path, int(d.pend[w.watchKey(dom)])) {
		d.totals.Filtered++
		dom.filtered++
		w.filtered++
		d.maybeFreeLocked(dom)
		return
	}
	key := w.key(dom, path)
	if d.pend[key] > 0 {
		d.totals.Coalesced++
		dom.coalesced++
		w.coalesced++
		return
	}
	if dom.queued >= d.capacity || d.stageFullLocked(dom) {
		d.overflowLocked(dom, w)
		return
	}
	d.pendLocked(w, dom, key)
	d.routeLocked(d.newItem(item{w: w, dom: dom, path: path}))
}

// pendLocked counts a new pending event of w for dom under key.
func (d *Dispatcher) pendLocked(w *Registration, dom *domain, key pendKey) {
	d.pend[key]++
	if w.countPerWatch && !key.perWatch {
		d.pend[w.watchKey(dom)]++
	}
	d.pendPeak = max(d.pendPeak, len(d.pend))
	dom.queued++
}

func (d *Dispatcher) newItem(v item) *item {
	it := d.itemPool.Get().(*item)
	*it = v
	it.enq = d.now()
	return it
}

// overflowLocked drops an event of w for dom, counting it in the watch's
// pending overflow notice for dom or queueing a new notice. Notices are
// bounded by one per watch and domain, so they may exceed the capacity (I6).
func (d *Dispatcher) overflowLocked(dom *domain, w *Registration) {
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
	it := d.newItem(item{w: w, dom: dom, path: w.path, dropped: 1})
	dom.notices = append(dom.notices, it)
	d.routeLocked(it)
}

// routeLocked appends a new item to the worker that must run it next in its
// domain's order (I1, I3).
func (d *Dispatcher) routeLocked(it *item) {
	dom := it.dom
	dom.items++
	d.items++
	switch {
	case dom == d.dom0 || d.single:
		d.toDefaultLocked(it)
	case dom.live != nil && !dom.held:
		dom.live.list.push(it)
		d.kickLocked(dom.live)
	case d.staging:
		d.stageLocked(it)
	case dom.tail != nil:
		// The domain went down but its last worker still drains: hold the
		// event until then, so it cannot overtake the drained ones.
		dom.tail.after.push(it)
	default:
		d.toDefaultLocked(it)
	}
}

func (d *Dispatcher) toDefaultLocked(it *item) {
	if it.dom != d.dom0 {
		it.dom.onDefault++
		it.onDefault = true
	}
	d.def.list.push(it)
	d.kickLocked(d.def)
}

// kickLocked starts wk's goroutine if wk has runnable work and none is
// running (I7).
func (d *Dispatcher) kickLocked(wk *worker) {
	if wk.running || wk.gated || wk.list.head == nil {
		return
	}
	wk.running = true
	d.goroutines++
	d.active[wk] = struct{}{}
	go d.run(wk)
}

// CreateDomain starts a worker for the guest id. Events of id already queued
// on the default worker run before the new worker runs anything, as do the
// events of an earlier, destroyed worker of id that is still draining (I1).
func (d *Dispatcher) CreateDomain(id domid.ID) error {
	return d.CreateIncarnation(id, "")
}

// CreateIncarnation is CreateDomain for one incarnation of the domid: inc
// names it (the VM's uuid, or when the toolstack created /libxl/<domid>),
// "" when unknown. A domid is reused when a guest config fixes it or the
// counter wraps at 32752, and the new domain must not wait for the old
// one's handlers: when inc differs from the incarnation of id's earlier
// generations, the new worker is not gated on them (I1 holds within an
// incarnation), and a live worker of the old incarnation (whose destroy was
// missed) is taken down, its handlers' context cancelled after the
// SupersedeGrace. Staged events of id are promoted to the new worker. With
// an unknown incarnation on either side the generations are ordered, as
// CreateDomain orders them.
func (d *Dispatcher) CreateIncarnation(id domid.ID, inc string) error {
	if !id.IsGuest() {
		return fmt.Errorf("dispatch: create domain %d: %w", id, ErrInvalidDomain)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.stopping {
		return fmt.Errorf("dispatch: create domain %d: %w", id, ErrStopped) // I8
	}
	if d.single {
		// No worker, but the domain's counters last until DestroyDomain,
		// as a worker's do: they never go back to zero while it exists.
		d.domainLocked(id).kept = true
		return nil
	}
	dom := d.domainLocked(id)
	other := inc != "" && dom.inc != "" && inc != dom.inc
	if dom.live != nil {
		if !other {
			return fmt.Errorf("dispatch: create domain %d: %w", id, ErrDomainExists)
		}
		d.downLocked(dom, d.supersedeGrace)
		dom = d.domainLocked(id) // downLocked may have forgotten an idle record
	}
	if other && dom.first != nil {
		dom = d.retireLocked(dom)
	}
	if inc != "" {
		dom.inc = inc
	}
	wk := &worker{dom: dom}
	d.appendGenLocked(dom, wk)
	dom.live = wk
	d.promoteLocked(dom, wk)
	return nil
}

// appendGenLocked puts generation wk at the end of dom's chain, gated on
// the generation before it (when that one finishes it releases its held
// events to the default worker and hands the gate on) or on the domain's
// events still running on the default worker.
func (d *Dispatcher) appendGenLocked(dom *domain, wk *worker) {
	switch {
	case dom.tail != nil:
		wk.gated = true
		dom.tail.next = wk
	case dom.onDefault > 0:
		wk.gated = true
		dom.waiting = wk
	}
	if dom.first == nil {
		dom.first = wk
	}
	dom.tail = wk
	d.workers++
}

// DestroyDomain takes id's worker down. Events queued before run first (with
// their context already cancelled, so handlers stop waiting for a domain that
// is gone); then the worker exits and releases everything. Events of id that
// arrive afterwards run on the default worker, after the drain (I1, I3).
func (d *Dispatcher) DestroyDomain(id domid.ID) error {
	if !id.IsGuest() {
		return fmt.Errorf("dispatch: destroy domain %d: %w", id, ErrInvalidDomain)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.stopping {
		return fmt.Errorf("dispatch: destroy domain %d: %w", id, ErrStopped) // I8
	}
	if d.single {
		if dom := d.doms[id]; dom != nil {
			dom.kept = false
			d.maybeFreeLocked(dom)
		}
		return nil
	}
	dom := d.doms[id]
	if dom == nil || dom.live == nil {
		return fmt.Errorf("dispatch: destroy domain %d: %w", id, ErrNoDomain)
	}
	d.downLocked(dom, 0)
	return nil
}

// downLocked takes dom's live worker down; its handlers' context is
// cancelled after grace (at once if grace <= 0).
func (d *Dispatcher) downLocked(dom *domain, grace time.Duration) {
	wk := dom.live
	dom.live = nil
	wk.down = true
	switch {
	case grace > 0:
		wk.graceUntil = d.now() + int64(grace)
		if wk.cancel != nil {
			d.cancelAfterLocked(wk.cancel, grace)
		}
	case wk.cancel != nil:
		wk.cancel()
	}
	d.compactLocked(dom)
	d.settleLocked(dom)
	d.orphanedLocked(dom)
}

// compactLocked merges dom's destroyed generations that wait behind an
// earlier one into it wherever no event lies between them, so that
// create/destroy churn behind a busy default worker adds no generation
// holding no event (I6). The previous generation p of a destroyed one q is
// itself destroyed, so q's events get the same cancelled context on p; and
// q, gated on p, has not run anything. Either q's events follow p's directly
// (p holds no event for the default worker), or q has none of its own and
// what it holds for the default worker follows p's.
func (d *Dispatcher) compactLocked(dom *domain) {
	for p := dom.first; p != nil && p.next != nil; {
		q := p.next
		switch {
		case !q.down || q.keepCtx != p.keepCtx:
			// Live, or its events get another context than p's.
			p = q
			continue
		case p.after.head == nil:
			p.list.concat(&q.list)
			p.after.concat(&q.after)
			d.kickLocked(p)
		case q.list.head == nil:
			p.after.concat(&q.after)
		default:
			p = q
			continue
		}
		p.next = q.next
		if dom.tail == q {
			dom.tail = p
		}
		d.workers--
	}
}

// settleLocked applies the consequences of a change of dom's state: a worker
// gated on the default worker is released once dom has no events there; the
// oldest worker generation finishes once it is down and has nothing left to
// run; a domain with nothing left is forgotten.
func (d *Dispatcher) settleLocked(dom *domain) {
	if dom == d.dom0 {
		return
	}
	for {
		if wk := dom.waiting; wk != nil && dom.onDefault == 0 {
			dom.waiting = nil
			wk.gated = false
			d.kickLocked(wk)
			continue
		}
		// A generation still gated on the default worker may finish too
		// when it has nothing to run: what it holds for the default worker
		// goes behind what waits there already (I1).
		if wk := dom.first; wk != nil && wk.down && !wk.running && wk.list.head == nil {
			d.finishLocked(wk)
			continue
		}
		break
	}
	d.maybeFreeLocked(dom)
}

// finishLocked retires the oldest generation, destroyed and drained: its held
// events go to the default worker and its successor, if any, waits for them.
func (d *Dispatcher) finishLocked(wk *worker) {
	dom := wk.dom
	for it := wk.after.pop(); it != nil; it = wk.after.pop() {
		d.toDefaultLocked(it)
	}
	if dom.waiting == wk {
		dom.waiting = nil
	}
	dom.first = wk.next
	if dom.tail == wk {
		dom.tail = nil
	}
	if n := wk.next; n != nil {
		// n was gated on wk; now it waits for the events just released.
		wk.next = nil
		dom.waiting = n
	}
	d.workers--
}

func (d *Dispatcher) maybeFreeLocked(dom *domain) {
	if dom != d.dom0 && dom.live == nil && dom.first == nil && dom.items == 0 && !dom.kept && !dom.held {
		if d.doms[dom.id] == dom {
			delete(d.doms, dom.id)
		}
		delete(d.retired, dom)
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
		d.stopStagingLocked()
		d.checkDrainedLocked()
	}
	d.mu.Unlock()
	select {
	case <-d.drained:
		return nil
	case <-ctx.Done():
	}
	d.mu.Lock()
	d.purgeLocked(nil, func(*item) bool { return true })
	d.mu.Unlock()
	select {
	case <-d.drained:
		return nil
	default:
		return fmt.Errorf("dispatch: stop: %w", ctx.Err())
	}
}

// WaitIdle waits until no event or overflow notice is queued, held or
// running on any worker, and returns nil, or until ctx ends, and returns its
// error. Events dispatched meanwhile are waited for too: a caller that
// wants an end stops dispatching first (mtwatchd's shutdown removes its
// watches, then waits for the workers to drain).
func (d *Dispatcher) WaitIdle(ctx context.Context) error {
	d.mu.Lock()
	if d.items == 0 {
		d.mu.Unlock()
		return nil
	}
	if d.idle == nil {
		d.idle = make(chan struct{})
	}
	idle := d.idle
	d.mu.Unlock()
	select {
	case <-idle:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// checkDrainedLocked closes d.drained once stopping and nothing is left.
func (d *Dispatcher) checkDrainedLocked() {
	if d.stopping && d.goroutines == 0 && d.items == 0 {
		select {
		case <-d.drained:
		default:
			close(d.drained)
		}
	}
}

// purgeLocked removes the pending (not running) items matching match from
// every worker, or only from dom's and the default worker if dom is not nil.
func (d *Dispatcher) purgeLocked(dom *domain, match func(*item) bool) int {
	n := 0
	touched := make(map[*domain]struct{})
	drop := func(it *item) {
		n++
		d.totals.Purged++
		touched[it.dom] = struct{}{}
		d.unpendLocked(it)
		d.completeLocked(it)
	}
	scanDom := func(dom *domain) {
		for wk := dom.first; wk != nil; wk = wk.next {
			wk.list.removeIf(match, drop)
			wk.after.removeIf(match, drop)
		}
		dom.staged.removeIf(match, func(it *item) {
			d.unstageLocked(it)
			drop(it)
		})
	}
	if dom != nil && len(d.retired) == 0 {
		scanDom(dom)
	} else {
		// An older incarnation's record may hold events of dom too.
		for _, dom := range d.doms {
			scanDom(dom)
		}
		for dom := range d.retired {
			scanDom(dom)
		}
	}
	// The default queue last: nothing moves there while purging, since
	// settling happens only below.
	d.def.list.removeIf(match, drop)
	for dom := range touched {
		d.compactLocked(dom)
		d.settleLocked(dom)
	}
	d.checkDrainedLocked()
	return n
}

// unpendLocked does the bookkeeping of an item leaving the pending state.
func (d *Dispatcher) unpendLocked(it *item) {
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
		k := w.watchKey(dom)
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

// completeLocked does the bookkeeping of an item that has run or was
// discarded. The caller settles it.dom.
func (d *Dispatcher) completeLocked(it *item) {
	dom := it.dom
	dom.items--
	d.items--
	if d.items == 0 && d.idle != nil {
		close(d.idle)
		d.idle = nil
	}
	if it.onDefault {
		dom.onDefault--
	}
	*it = item{}
	d.itemPool.Put(it)
}
