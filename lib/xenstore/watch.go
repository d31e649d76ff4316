package xenstore

import (
	"context"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
)

// Event is a watch event: Path is the node that changed (or the watched
// path itself for the initial event; relative if the watch was registered
// with a relative path) and Token the token given to Watch.
type Event struct {
	Path, Token string
}

// Watch is a registered XenStore watch.
//
// Buffering policy: the connection's reader never blocks on a consumer.
// Events go straight into the Events channel while it has room (capacity
// 128). Behind a full channel, events queue in a per-watch FIFO that a
// goroutine, running only while the FIFO is non-empty, feeds to the
// channel. An event whose path is already in the FIFO is coalesced
// (dropped): the consumer has not looked at that node since, and will read
// its current state when it handles the queued event - XenStore events mean
// "look again", and xenstored merges identical pending events the same
// way. If the FIFO still reaches its bound (WithWatchQueue, default 1024
// distinct paths), the watch overflows: it is removed from the server,
// events already queued are still delivered, and Events is then closed with
// Err returning ErrWatchOverflow; the consumer must resynchronise (re-read
// what it watches) and register again. One slow watch therefore costs
// bounded memory and never delays replies or other watches.
//
// A watch registered with WatchFunc has no queue: its function is called by
// the reader itself, and Events only reports the watch's end.
type Watch struct {
	c     *Client
	path  string
	token string
	wire  string // the token on the wire: unique per client

	// fn, if set, receives the events on the reading goroutine (WatchFunc).
	// fnMu is held while it runs, so that ending the watch waits for a
	// call in progress; fnOff, set under fnMu, stops further calls.
	fn    func(Event)
	fnMu  sync.Mutex
	fnOff atomic.Bool

	ch   chan Event
	stop chan struct{} // closed to make the drainer give up

	mu        sync.Mutex
	q         []Event // FIFO behind a full ch; q[head:] is pending
	head      int
	queued    map[string]struct{} // paths in q, for coalescing
	draining  bool
	drainDone chan struct{}
	ended     bool // no further events accepted
	closed    bool // ch closed
	err       error
	coalesced uint64
	stopOnce  sync.Once
}

// Watch registers a watch on path (a node, relative or absolute, or a
// special path such as "@introduceDomain") with token. It fires once right
// after registration and then for every change to the node or a
// descendant. ctx bounds the registration only; the watch lasts until
// Unwatch, Close, overflow or connection loss.
//
// Each watch travels with a token unique to this client, so two watches
// never share events even if their user tokens are equal; registering the
// same (path, token) twice fails with EEXIST as it does in xenstored.
func (c *Client) Watch(ctx context.Context, path, token string) (*Watch, error) {
	return c.watch(ctx, path, token, nil)
}

// WatchFunc registers a watch like Watch, but delivers its events by calling
// fn on the goroutine that reads the connection, one event at a time and in
// order, as soon as each is read: no queue, no goroutine hand-off, no
// coalescing and no overflow (WithWatchQueue does not apply). It is meant
// for a single consumer that queues events itself without blocking, such as
// an event dispatcher with bounded per-domain queues.
//
// fn must return quickly and must not call the Client or the Watch (the
// reply to such a call could only be read once fn has returned): while fn
// runs, no reply and no other event is read. It may be called before
// WatchFunc returns (the initial event). The Events channel of the watch
// yields no events; it is closed when the watch ends, and Err says why.
// Once the watch has ended (Unwatch, Close, connection loss) fn is not
// running and is not called again.
func (c *Client) WatchFunc(ctx context.Context, path, token string, fn func(Event)) (*Watch, error) {
	if fn == nil {
		return nil, opErr("watch", path, invalidf("nil event function"))
	}
	return c.watch(ctx, path, token, fn)
}

func (c *Client) watch(ctx context.Context, path, token string, fn func(Event)) (*Watch, error) {
	if err := validateWatchPath(path); err != nil {
		return nil, opErr("watch", path, err)
	}
	if err := validateToken(token); err != nil {
		return nil, opErr("watch", path, err)
	}
	w := &Watch{c: c, path: path, token: token, fn: fn, stop: make(chan struct{})}
	if fn == nil {
		w.ch = make(chan Event, watchChanCap)
	} else {
		w.ch = make(chan Event) // never sent to: closed at the end
	}

	// Registered locally before the request is sent: the initial event
	// may be read before the caller sees the reply.
	key := watchKey{path, token}
	c.wmu.Lock()
	if c.watches == nil {
		c.wmu.Unlock()
		return nil, opErr("watch", path, c.Err())
	}
	if _, dup := c.byPath[key]; dup {
		c.wmu.Unlock()
		return nil, opErr("watch", path, syscall.EEXIST)
	}
	c.watchSeq++
	w.wire = strconv.FormatUint(c.watchSeq, 36) + ":" + token
	c.watches[w.wire] = w
	c.byPath[key] = w
	c.nwatch.Add(1)
	c.wmu.Unlock()

	r := req{typ: typeWatch, nargs: 2}
	r.args[0], r.args[1] = path, w.wire
	r.cleanup = func([]byte) { c.send(w.unwatchReq()) }
	if _, err := c.do(ctx, &r); err != nil {
		c.removeWatch(w)
		w.end(err, false)
		return nil, opErr("watch", path, err)
	}
	return w, nil
}

func (w *Watch) unwatchReq() req {
	r := req{typ: typeUnwatch, nargs: 2}
	r.args[0], r.args[1] = w.path, w.wire
	return r
}

// removeWatch forgets w locally; it reports whether w was registered.
func (c *Client) removeWatch(w *Watch) bool {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.watches[w.wire] != w {
		return false
	}
	delete(c.watches, w.wire)
	delete(c.byPath, watchKey{w.path, w.token})
	c.nwatch.Add(-1)
	return true
}

// Path is the watched path, as given to Watch.
func (w *Watch) Path() string { return w.path }

// Token is the token given to Watch.
func (w *Watch) Token() string { return w.token }

// Events returns the channel of events, starting with the initial event.
// It is closed when the watch ends; Err then says why.
func (w *Watch) Events() <-chan Event { return w.ch }

// Err returns why the watch ended (ErrUnwatched, ErrWatchOverflow, ErrClosed,
// or an error wrapping ErrConnectionLost), or nil while it is active.
func (w *Watch) Err() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.err
}

// Coalesced returns how many events were dropped because an event for the
// same path was already queued.
func (w *Watch) Coalesced() uint64 {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.coalesced
}

// Unwatch removes the watch from the server and ends it with ErrUnwatched.
// Events not yet received from the channel are dropped; once Unwatch
// returns, the channel yields nothing more and is closed. Unwatch on a
// watch that already ended only releases its buffers and returns nil.
func (w *Watch) Unwatch(ctx context.Context) error {
	if !w.c.removeWatch(w) {
		w.end(ErrUnwatched, false)
		return nil
	}
	r := w.unwatchReq()
	_, err := w.c.do(ctx, &r)
	w.end(ErrUnwatched, false)
	return opErr("unwatch", w.path, err)
}

// dispatchEvent routes one WATCH_EVENT payload; called by the reader.
func (c *Client) dispatchEvent(p []byte) error {
	path, token, err := splitEvent(p)
	if err != nil {
		return err
	}
	c.wmu.Lock()
	w := c.watches[string(token)]
	c.wmu.Unlock()
	if w == nil {
		// A watch just removed (its UNWATCH crossed this event).
		return nil
	}
	if w.fn != nil {
		w.call(string(path))
		return nil
	}
	if w.deliver(string(path)) {
		return nil
	}
	// Overflow: stop the server's events, let the consumer drain.
	if c.removeWatch(w) {
		c.send(w.unwatchReq())
	}
	return nil
}

// call hands one event to a WatchFunc watch's function, unless the watch
// has ended.
func (w *Watch) call(path string) {
	w.fnMu.Lock()
	defer w.fnMu.Unlock()
	if w.fnOff.Load() {
		return
	}
	w.fn(Event{Path: path, Token: w.token})
}

// deliver queues one event without blocking; false means the watch
// overflowed (and has been ended).
func (w *Watch) deliver(path string) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.ended {
		return true
	}
	ev := Event{Path: path, Token: w.token}
	if !w.draining {
		select {
		case w.ch <- ev:
			return true
		default:
		}
	}
	if _, dup := w.queued[path]; dup {
		w.coalesced++
		return true
	}
	if len(w.q)-w.head >= w.c.opt.watchQueue {
		w.endLocked(ErrWatchOverflow)
		return false
	}
	if w.queued == nil {
		w.queued = make(map[string]struct{})
	}
	w.queued[path] = struct{}{}
	if w.head > 0 && w.head == len(w.q) {
		w.q, w.head = w.q[:0], 0
	}
	w.q = append(w.q, ev)
	if !w.draining {
		w.draining = true
		w.drainDone = make(chan struct{})
		go w.drain(w.drainDone)
	}
	return true
}

// drain feeds queued events to the channel; it runs only while the queue
// is non-empty, and gives up when the watch is stopped or the client
// closed.
func (w *Watch) drain(done chan struct{}) {
	defer close(done)
	for {
		w.mu.Lock()
		if w.head == len(w.q) {
			w.q, w.head = w.q[:0], 0
			w.draining = false
			if w.ended && !w.closed {
				w.closed = true
				close(w.ch)
			}
			w.mu.Unlock()
			return
		}
		ev := w.q[w.head]
		w.q[w.head] = Event{}
		w.head++
		delete(w.queued, ev.Path)
		w.mu.Unlock()

		select {
		case w.ch <- ev:
			continue
		case <-w.stop:
		case <-w.c.closing:
		}
		w.mu.Lock()
		w.q, w.head, w.queued = nil, 0, nil
		w.draining = false
		if w.ended && !w.closed {
			w.closed = true
			close(w.ch)
		}
		w.mu.Unlock()
		return
	}
}

// endLocked marks the watch ended, keeping queued events for the consumer.
func (w *Watch) endLocked(err error) {
	if w.ended {
		return
	}
	w.ended, w.err = true, err
	if !w.draining && !w.closed {
		w.closed = true
		close(w.ch)
	}
}

// end ends the watch with err. With flush, events already queued are still
// delivered before the channel closes; without, they are dropped, the
// drainer is stopped and the channel closed before end returns.
func (w *Watch) end(err error, flush bool) {
	if w.fn != nil && !w.fnOff.Load() {
		// Wait for a call in progress, and make it the last. Taken
		// before mu: call never holds mu.
		w.fnMu.Lock()
		w.fnOff.Store(true)
		w.fnMu.Unlock()
	}
	w.mu.Lock()
	w.endLocked(err)
	if flush {
		w.mu.Unlock()
		return
	}
	w.stopOnce.Do(func() { close(w.stop) })
	done := w.drainDone
	draining := w.draining
	w.mu.Unlock()
	if draining {
		<-done
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.closed {
		// Unreachable in practice (the drainer closes ch when it stops
		// after the watch ended), kept as the invariant's safety net.
		w.closed = true
		close(w.ch)
	}
	// Drop what the consumer has not received yet.
	for range w.ch {
	}
}
