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
// worker or events.
type domain struct {
	id domid.ID

	live  *worker // the worker new events go to; nil when down
	first *worker // oldest worker generation not yet finished
	tail  *worker // newest worker generation (live or draining)
	// waiting is the worker gated until no event of the domain is left on
	// the default worker.
	waiting *worker

	items     int     // events and notices not yet completed
	onDefault int     // of which queued or running on the default worker
	queued    int     // pending events (not notices), bounded by the capacity
	notices   []*item // pending overflow notices, one per watch at most

	dispatched, processed, coalesced, filtered, dropped uint64
	lastLat, maxLat                                     int64
}

// worker is the default worker or one generation of a domain's
// worker. A goroutine runs only while the queue has work.
type worker struct {
	dom   *domain // nil for the default worker
	list  list
	after list    // events arrived after DestroyDomain, held until drained
	next  *worker // the generation gated on this one

	running bool // a goroutine runs the queue
	gated   bool // must not start yet (ordering across creation)
	down    bool // destroyed; finishes once drained
	cancel  context.CancelFunc

	// The running callback, for stall detection and stats.
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

// WorkerOf reports which worker runs the handler that ctx was given to:
// domid.Dom0 for the default worker. ok is false for any other context.
func WorkerOf(ctx context.Context) (id domid.ID, ok bool) {
	q, ok := ctx.Value(workerKey{}).(*worker)
	if !ok {
		return 0, false
	}
	if q.dom == nil {
		return domid.Dom0, true
	}
	return q.dom.id, true
}

// run is the goroutine of q; it exits when q has no work left.
func (d *Dispatcher) run(q *worker) {
	ctx, cancel := context.WithCancel(d.ctx)
	ctx = context.WithValue(ctx, workerKey{}, q)
	var stallEnd *stallReport

	d.mu.Lock()
	if q.down {
		cancel()
	} else {
		q.cancel = cancel
	}
	for {
		it := q.list.pop()
		if it == nil {
			break
		}
		d.unpend(it)
		w := it.w
		if w.removed {
			// Unregister purges eagerly; this is only a safety net.
			dom := it.dom
			d.complete(it)
			d.settle(dom)
			continue
		}
		w.active++
		start := d.now()
		q.cur, q.curWatch, q.curPath, q.curDom = it, w, it.path, it.dom.id
		q.curStart, q.curExcluded, q.stalled = start, false, false
		ev := Event{Path: it.path, Token: w.token, Domid: it.dom.id}
		if it.dropped > 0 {
			ev.Overflow, ev.Dropped = true, it.dropped
		}
		d.mu.Unlock()

		if stallEnd != nil {
			d.logStallEnd(stallEnd)
			stallEnd = nil
		}
		err, panicked := d.call(ctx, w, ev)

		d.mu.Lock()
		end := d.now()
		lat := end - it.enq
		dom := it.dom
		d.totals.Processed++
		w.processed++
		dom.processed++
		dom.lastLat = lat
		dom.maxLat = max(dom.maxLat, lat)
		q.processed++
		q.lastLat = lat
		q.maxLat = max(q.maxLat, lat)
		if err != nil {
			d.totals.Errors++
			w.errors++
		}
		if panicked {
			d.totals.Panics++
			w.panics++
		}
		if q.stalled {
			stallEnd = &stallReport{dom: q.curDom, w: w, path: it.path, age: time.Duration(end - start)}
		}
		w.active--
		if q.curExcluded {
			w.excluded--
		}
		w.broadcast()
		q.cur, q.curWatch, q.curPath = nil, nil, ""
		d.complete(it)
		d.settle(dom)
	}
	q.running = false
	q.cancel = nil
	delete(d.active, q)
	d.goroutines--
	if q.dom != nil {
		d.settle(q.dom)
	}
	d.checkDrained()
	d.mu.Unlock()
	cancel()
	if stallEnd != nil {
		d.logStallEnd(stallEnd)
	}
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

func (d *Dispatcher) logStallEnd(r *stallReport) {
	d.log.Info("dispatch: stalled watch callback returned",
		"domid", r.dom, "watch", r.w.path, "token", r.w.token, "path", r.path, "duration", r.age)
}

// monitor reports callbacks running longer than the stall threshold. It
// looks only at queues whose goroutine runs, so its cost does not grow with
// idle workers.
func (d *Dispatcher) monitor() {
	interval := min(max(d.stallAt/4, time.Millisecond), time.Second)
	t := time.NewTicker(interval)
	defer t.Stop()
	var reports []stallReport
	for {
		select {
		case <-d.monitorEnd:
			d.mu.Lock()
			d.goroutines--
			d.checkDrained()
			d.mu.Unlock()
			return
		case <-t.C:
		}
		reports = reports[:0]
		d.mu.Lock()
		now := d.now()
		for q := range d.active {
			if q.cur == nil || q.stalled {
				continue
			}
			if age := time.Duration(now - q.curStart); age >= d.stallAt {
				q.stalled = true
				d.totals.Stalls++
				q.curWatch.stalls++
				reports = append(reports, stallReport{dom: q.curDom, w: q.curWatch, path: q.curPath, age: age})
			}
		}
		d.mu.Unlock()
		for _, r := range reports {
			d.log.Warn("dispatch: watch callback stalled",
				"domid", r.dom, "watch", r.w.path, "token", r.w.token, "path", r.path, "duration", r.age)
		}
	}
}
