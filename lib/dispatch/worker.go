package dispatch

import (
	"context"
	"runtime/debug"
	"time"

	"github.com/mtwatch/mtwatch/lib/domid"
)

// item is a queued event, or an overflow notice when dropped > 0.
type item struct {
	next      *item
	w         *Registration
	dom       *domain // the domain the event belongs to (d.dom0 for none)
	path      string
	enq       int64 // d.now() at Dispatch
	dropped   int
	onDefault bool // counted in dom.onDefault
}

// list is a FIFO of items.
type list struct {
	head, tail *item
	n          int
}

func (l *list) push(it *item) {
	it.next = nil
	if l.tail == nil {
		l.head = it
	} else {
		l.tail.next = it
	}
	l.tail = it
	l.n++
}

func (l *list) pop() *item {
	it := l.head
	if it == nil {
		return nil
	}
	l.head = it.next
	if l.head == nil {
		l.tail = nil
	}
	it.next = nil
	l.n--
	return it
}

// concat moves every item of o to the end of l.
func (l *list) concat(o *list) {
	if o.head == nil {
		return
	}
	if l.tail == nil {
		l.head = o.head
	} else {
		l.tail.next = o.head
	}
	l.tail = o.tail
	l.n += o.n
	*o = list{}
}

// removeIf unlinks every item matching match, in order, and hands it to drop.
func (l *list) removeIf(match func(*item) bool, drop func(*item)) {
	var prev *item
	for it := l.head; it != nil; {
		next := it.next
		if !match(it) {
			prev = it
			it = next
			continue
		}
		if prev == nil {
			l.head = next
		} else {
			prev.next = next
		}
		if l.tail == it {
			l.tail = prev
		}
		l.n--
		it.next = nil
		drop(it)
		it = next
	}
}

// pendKey identifies pending events of a domain that coalesce: same watch
// and path, or same watch for CoalescePerWatch (perWatch entries also count a
// watch's pending events for its Filter). One map for all domains keeps idle
// domains free of map buckets.
type pendKey struct {
	dom      *domain
	w        *Registration
	path     string
	perWatch bool
}

// domain is what the dispatcher knows of one guest: its worker generations
// and its pending events wherever they wait. It exists while the guest has a
// worker or events. Guarded by d.mu.
type domain struct {
	id domid.ID

	// Generations form a chain from first to tail through next; only the
	// tail may be live, and every generation but the first is gated on its
	// predecessor (I1). compactLocked keeps the chain no longer than the
	// events it holds (I6).
	live  *worker // the worker new events go to; nil when down
	first *worker // oldest worker generation not yet finished
	tail  *worker // newest worker generation (live or draining)
	// waiting is the worker gated until no event of the domain is left on
	// the default worker.
	waiting *worker

	// inc names the incarnation the generations belong to ("" unknown).
	inc string
	// staged holds the events that arrived while the domain had no live
	// worker (Config.Staging), in order; stagedAt is when the first came.
	staged   list
	stagedAt int64
	// held: events are staged even while live is set (Hold); holdSeq
	// numbers the holds.
	held    bool
	holdSeq uint64

	items     int     // events and notices not yet completed
	onDefault int     // of which queued or running on the default worker
	queued    int     // pending events (not notices), bounded by the capacity
	notices   []*item // pending overflow notices, one per watch at most

	dispatched, processed, coalesced, filtered, dropped uint64
	lastLat, maxLat                                     int64

	// kept: in single-worker mode, created and not destroyed. The domain
	// has no worker but keeps its counters, as it would with one.
	kept bool
}

// worker is the default worker or one generation of a domain's worker. A
// goroutine runs only while the worker has work (I7). Guarded by d.mu.
type worker struct {
	dom   *domain // nil for the default worker
	list  list
	after list    // events arrived after DestroyDomain, held until drained
	next  *worker // the generation gated on this one

	running bool // a goroutine runs the worker
	gated   bool // must not start yet (ordering across creation)
	down    bool // destroyed; finishes once drained
	// graceUntil: a superseded generation's context is cancelled at this
	// d.now() (0: at once), also when it first runs later.
	graceUntil int64
	// keepCtx: a generation made by flushing staged events of a domain
	// that exists keeps a live context although it is down.
	keepCtx bool
	// The context of the generation's handlers, made when its goroutine
	// first starts (a worker that never runs costs nothing) and kept until
	// the generation is destroyed or the dispatcher stops: one per
	// generation rather than one per goroutine start, which with events
	// spread over many domains is nearly one per event. ctx.Context is
	// written once, under mu, before any handler sees ctx.
	ctx    workerCtx
	cancel context.CancelFunc

	// The running handler, for stall detection and stats.
	cur         *item
	curWatch    *Registration
	curPath     string
	curDom      domid.ID
	curStart    int64
	curExcluded bool // the handler unregistered its own watch
	stalled     bool

	processed       uint64
	lastLat, maxLat int64
}

type workerKey struct{}

// workerCtx is a handler context: it answers WorkerOf's key with its worker
// and delegates everything else to the generation's cancel context. Being
// part of the worker, it costs no allocation; context.WithTimeout and
// WithCancel on it still find the cancel context through Value, so they
// start no goroutine.
type workerCtx struct {
	context.Context
	wk *worker
}

func (c *workerCtx) Value(key any) any {
	if key == (workerKey{}) {
		return c.wk
	}
	return c.Context.Value(key)
}

// WorkerOf reports which worker runs the handler that ctx was given to:
// domid.Dom0 for the default worker. ok is false for any other context.
func WorkerOf(ctx context.Context) (id domid.ID, ok bool) {
	wk, ok := ctx.Value(workerKey{}).(*worker)
	if !ok {
		return 0, false
	}
	if wk.dom == nil {
		return domid.Dom0, true
	}
	return wk.dom.id, true
}

// run is the goroutine of wk; it exits when wk has no work left (I7).
func (d *Dispatcher) run(wk *worker) {
	var stallEnd *stallReport
	d.mu.Lock()
	ctx := d.handlerCtxLocked(wk)
	for it := d.nextLocked(wk); it != nil; it = d.nextLocked(wk) {
		ev := d.beginLocked(wk, it)
		d.mu.Unlock()
		d.logStallEnd(stallEnd)
		err, panicked := d.call(ctx, it.w, ev)
		d.mu.Lock()
		stallEnd = d.endLocked(wk, it, err, panicked)
	}
	d.exitLocked(wk)
	d.mu.Unlock()
	d.logStallEnd(stallEnd)
}

// handlerCtxLocked returns the context of wk's handlers, making it on wk's
// first run: a child of d.ctx (so Stop cancels it), already cancelled for a
// destroyed generation, as DestroyDomain cancels it for a live one.
func (d *Dispatcher) handlerCtxLocked(wk *worker) context.Context {
	if wk.ctx.Context == nil {
		ctx, cancel := context.WithCancel(d.ctx)
		wk.ctx = workerCtx{Context: ctx, wk: wk}
		wk.cancel = cancel
		if wk.down && !wk.keepCtx {
			if g := time.Duration(wk.graceUntil - d.now()); g > 0 {
				d.cancelAfterLocked(cancel, g)
			} else {
				cancel()
			}
		}
	}
	return &wk.ctx
}

// nextLocked takes wk's next item to run; nil when there is none.
func (d *Dispatcher) nextLocked(wk *worker) *item {
	for {
		it := wk.list.pop()
		if it == nil {
			return nil
		}
		d.unpendLocked(it)
		if !it.w.removed {
			return it
		}
		// Unregister purges eagerly; this is only a safety net (I4).
		dom := it.dom
		d.completeLocked(it)
		d.settleLocked(dom)
	}
}

// beginLocked marks it as wk's running handler and returns its event.
func (d *Dispatcher) beginLocked(wk *worker, it *item) Event {
	w := it.w
	w.active++
	wk.cur, wk.curWatch, wk.curPath, wk.curDom = it, w, it.path, it.dom.id
	wk.curStart, wk.curExcluded, wk.stalled = d.now(), false, false
	ev := Event{Path: it.path, Token: w.token, Domid: it.dom.id}
	if it.dropped > 0 {
		ev.Overflow, ev.Dropped = true, it.dropped
	}
	return ev
}

// endLocked accounts for the return of wk's running handler and retires its
// item. It returns the report to log if the handler had been reported stalled.
func (d *Dispatcher) endLocked(wk *worker, it *item, err error, panicked bool) *stallReport {
	end := d.now()
	lat := end - it.enq
	w, dom := it.w, it.dom
	d.totals.Processed++
	if wk == d.def && dom != d.dom0 {
		d.totals.GuestOnDefault++
	}
	w.processed++
	dom.processed++
	dom.lastLat, dom.maxLat = lat, max(dom.maxLat, lat)
	wk.processed++
	wk.lastLat, wk.maxLat = lat, max(wk.maxLat, lat)
	if err != nil {
		d.totals.Errors++
		w.errors++
	}
	if panicked {
		d.totals.Panics++
		w.panics++
	}
	var stallEnd *stallReport
	if wk.stalled {
		stallEnd = &stallReport{dom: wk.curDom, w: w, path: it.path, age: time.Duration(end - wk.curStart)}
	}
	w.active--
	if wk.curExcluded {
		w.excluded--
	}
	w.broadcastLocked() // I4: Unregister waits for active to drop
	wk.cur, wk.curWatch, wk.curPath = nil, nil, ""
	d.completeLocked(it)
	d.settleLocked(dom)
	return stallEnd
}

// exitLocked records that wk's goroutine is about to exit.
func (d *Dispatcher) exitLocked(wk *worker) {
	wk.running = false
	delete(d.active, wk)
	d.goroutines--
	if wk.dom != nil {
		d.settleLocked(wk.dom)
	}
	d.checkDrainedLocked()
}

// call runs the handler, recovering a panic.
func (d *Dispatcher) call(ctx context.Context, w *Registration, ev Event) (err error, panicked bool) {
	if w.timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, w.timeout)
		defer cancel()
	}
	defer func() {
		if r := recover(); r != nil {
			panicked = true
			d.log.Error("dispatch: watch handler panicked",
				"domid", ev.Domid, "watch", w.path, "token", w.token, "path", ev.Path,
				"panic", r, "stack", string(debug.Stack()))
		}
	}()
	err = w.handler(ctx, ev)
	if err != nil {
		d.log.Warn("dispatch: watch handler failed",
			"domid", ev.Domid, "watch", w.path, "token", w.token, "path", ev.Path, "err", err)
	}
	return err, false
}

type stallReport struct {
	dom  domid.ID
	w    *Registration
	path string
	age  time.Duration
}

// logStallEnd logs that a handler reported stalled returned; r may be nil.
func (d *Dispatcher) logStallEnd(r *stallReport) {
	if r == nil {
		return
	}
	d.log.Info("dispatch: stalled handler returned", r.attrs()...)
}

// attrs are the log fields of a stall: the watch, its plugin if known, the
// event's domain and path, and how long the handler ran.
func (r stallReport) attrs() []any {
	a := []any{"domid", r.dom, "watch", r.w.path, "token", r.w.token, "path", r.path, "duration", r.age}
	if r.w.plugin != "" {
		a = append(a, "plugin", r.w.plugin)
	}
	return a
}

// monitor reports handlers running longer than the stall threshold. It looks
// only at workers whose goroutine runs, so its cost does not grow with idle
// workers. It looks every quarter of the threshold (1 ms to 1 s), and again
// at once when SetStallThreshold changes it; while detection is off it only
// waits for a change or the end.
func (d *Dispatcher) monitor() {
	t := time.NewTimer(time.Hour)
	defer t.Stop()
	var reports []stallReport
	for {
		var tick <-chan time.Time
		if at := time.Duration(d.stallAt.Load()); at > 0 {
			t.Reset(min(max(at/4, time.Millisecond), time.Second))
			tick = t.C
		}
		select {
		case <-d.monitorEnd:
			d.mu.Lock()
			d.goroutines--
			d.checkDrainedLocked()
			d.mu.Unlock()
			return
		case <-d.monitorKick:
			t.Stop()
		case <-tick:
		}
		reports = d.stalled(reports[:0])
		for _, r := range reports {
			d.log.Warn("dispatch: handler stalled", r.attrs()...)
		}
	}
}

// stalled marks the running handlers that just passed the stall threshold
// and appends their reports to reports.
func (d *Dispatcher) stalled(reports []stallReport) []stallReport {
	d.mu.Lock()
	defer d.mu.Unlock()
	at := time.Duration(d.stallAt.Load())
	if at <= 0 {
		return reports
	}
	now := d.now()
	for wk := range d.active {
		if wk.cur == nil || wk.stalled {
			continue
		}
		if age := time.Duration(now - wk.curStart); age >= at {
			wk.stalled = true
			d.totals.Stalls++
			wk.curWatch.stalls++
			reports = append(reports, stallReport{dom: wk.curDom, w: wk.curWatch, path: wk.curPath, age: age})
		}
	}
	return reports
}
