package xenstore

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Defaults of the tunables (see the options).
const (
	defaultMaxInflight = 256
	defaultWatchQueue  = 1024
	defaultTxAttempts  = 16
	// watchChanCap is the capacity of every Watch.Events channel: the
	// reader hands events straight to it while it has room.
	watchChanCap = 128
	// readBufSize holds many replies per read(2); it must exceed
	// headerSize+PayloadMax so that a whole message can be peeked.
	readBufSize = 64 << 10
	// keepWriteBuf caps the write buffer kept between flushes.
	keepWriteBuf = 64 << 10
)

type options struct {
	path        string
	maxInflight int
	watchQueue  int
	txAttempts  int
}

// Option configures Dial.
type Option func(*options)

// WithPath connects to this socket or device instead of discovering one.
func WithPath(path string) Option { return func(o *options) { o.path = path } }

// WithMaxInflight bounds the requests outstanding on the connection
// (default 256); further calls wait for a slot, or for their context. Note
// that xenstored limits unprivileged domains to 20 outstanding requests.
func WithMaxInflight(n int) Option {
	return func(o *options) {
		if n > 0 {
			o.maxInflight = n
		}
	}
}

// WithWatchQueue sets how many distinct events each watch may hold queued
// behind a full Events channel before it overflows (default 1024; see Watch).
func WithWatchQueue(n int) Option {
	return func(o *options) {
		if n > 0 {
			o.watchQueue = n
		}
	}
}

// WithTxAttempts bounds how often Transaction runs its function when the
// commit keeps failing with EAGAIN (default 16).
func WithTxAttempts(n int) Option {
	return func(o *options) {
		if n > 0 {
			o.txAttempts = n
		}
	}
}

// DevicePath is the kernel's XenStore device, used when no socket exists
// (in guests, or in dom0 when xenstored runs in a stub domain).
const DevicePath = "/dev/xen/xenbus"

// Paths returns the candidates Dial tries, in order: $XENSTORED_PATH if set,
// else ${XENSTORED_RUNDIR:-/var/run/xenstored}/socket; then
// /run/xenstored/socket; then DevicePath.
func Paths() []string {
	first := os.Getenv("XENSTORED_PATH")
	if first == "" {
		dir := os.Getenv("XENSTORED_RUNDIR")
		if dir == "" {
			dir = "/var/run/xenstored"
		}
		first = strings.TrimRight(dir, "/") + "/socket"
	}
	out := []string{first}
	for _, p := range []string{"/run/xenstored/socket", DevicePath} {
		if p != first {
			out = append(out, p)
		}
	}
	return out
}

// Dial connects to xenstored: to the WithPath path if given, else to the
// first of Paths that accepts a connection.
func Dial(ctx context.Context, opts ...Option) (*Client, error) {
	o := options{maxInflight: defaultMaxInflight, watchQueue: defaultWatchQueue, txAttempts: defaultTxAttempts}
	for _, opt := range opts {
		opt(&o)
	}
	paths := Paths()
	if o.path != "" {
		paths = []string{o.path}
	}
	var errs []error
	for _, p := range paths {
		rwc, dev, err := open(ctx, p)
		if err == nil {
			return newClient(rwc, dev, o), nil
		}
		errs = append(errs, err)
		if ctx.Err() != nil {
			break
		}
	}
	return nil, fmt.Errorf("xenstore: dial: %w", errors.Join(errs...))
}

// open connects to a unix socket, or opens a character device (the kernel's
// xenbus device speaks the same protocol but takes one message per write).
func open(ctx context.Context, path string) (rwc io.ReadWriteCloser, device bool, err error) {
	if fi, err := os.Stat(path); err == nil && fi.Mode()&os.ModeCharDevice != 0 {
		f, err := os.OpenFile(path, os.O_RDWR, 0)
		if err != nil {
			return nil, false, err
		}
		return f, true, nil
	}
	conn, err := dialSocket(ctx, path)
	if err != nil {
		return nil, false, err
	}
	return conn, false, nil
}

// Client is a connection to xenstored. It is safe for concurrent use: calls
// from many goroutines are pipelined on the one connection.
//
// A Client does not reconnect: once the connection is lost every call fails
// with an error wrapping ErrConnectionLost, every watch ends, and the caller
// dials a new Client (and re-reads the state it watches, since events may
// have been missed).
type Client struct {
	conn io.ReadWriteCloser
	// framePerWrite: the transport takes exactly one message per write
	// (the xenbus device discards anything after the first message).
	framePerWrite bool
	opt           options
	// sem holds one token per request in the pending map: it bounds the
	// pending map and the write buffer.
	sem chan struct{}

	mu       sync.Mutex
	nextID   uint32
	pending  map[uint32]*call
	wbuf     []byte // frames waiting to be written
	wspare   []byte
	flushing bool  // a caller is writing wbuf out
	err      error // why the connection ended; set once

	// Reading: one goroutine at a time owns the connection's read side
	// (reading, under mu). A caller waiting for its reply reads itself when
	// nobody does, so a lone request costs no goroutine hand-off; while
	// other calls are pending or watches exist after its reply, a
	// background reader goroutine takes over.
	br      *bufio.Reader
	reading bool
	readers sync.WaitGroup // background readers
	// dl interrupts a reading caller whose context ends; nil if the
	// transport has no read deadlines (callers then never read).
	dl      deadliner
	dlMu    sync.Mutex
	dlOwner *call // the reading caller an interrupt may target

	wmu      sync.Mutex
	watches  map[string]*Watch // by wire token
	byPath   map[watchKey]*Watch
	watchSeq uint64
	nwatch   atomic.Int32 // len(watches), readable without wmu

	dead      chan struct{} // closed when err is set
	closing   chan struct{} // closed by Close: stops watch drainers
	closeOnce sync.Once
}

type deadliner interface{ SetReadDeadline(time.Time) error }

type watchKey struct{ path, token string }

// call is one outstanding request.
type call struct {
	id   uint32
	typ  msgType
	tx   uint32
	done chan struct{} // capacity 1: the reader never blocks on it
	// Set by the reader before signalling done.
	rtyp  msgType
	reply []byte
	err   error
	// abandoned marks a placeholder left in pending by a caller that gave
	// up: its reply is dropped, after running cleanup on success.
	abandoned bool
	cleanup   func(reply []byte)
}

var callPool = sync.Pool{New: func() any { return &call{done: make(chan struct{}, 1)} }}

func newClient(rwc io.ReadWriteCloser, framePerWrite bool, o options) *Client {
	if o.maxInflight <= 0 {
		o.maxInflight = defaultMaxInflight
	}
	if o.watchQueue <= 0 {
		o.watchQueue = defaultWatchQueue
	}
	if o.txAttempts <= 0 {
		o.txAttempts = defaultTxAttempts
	}
	c := &Client{
		conn:          rwc,
		framePerWrite: framePerWrite,
		opt:           o,
		sem:           make(chan struct{}, o.maxInflight),
		pending:       make(map[uint32]*call),
		watches:       make(map[string]*Watch),
		byPath:        make(map[watchKey]*Watch),
		dead:          make(chan struct{}),
		closing:       make(chan struct{}),
		br:            bufio.NewReaderSize(rwc, readBufSize),
	}
	// Files that are not pollable (a character device without poll
	// support) refuse deadlines.
	if d, ok := rwc.(deadliner); ok && d.SetReadDeadline(time.Time{}) == nil {
		c.dl = d
	}
	return c
}

// Close closes the connection. Pending calls fail with ErrClosed, watches
// end with ErrClosed (events still queued are dropped).
func (c *Client) Close() error {
	c.closeOnce.Do(func() {
		close(c.closing)
		c.fail(ErrClosed)
	})
	c.readers.Wait()
	return nil
}

// Err reports why the connection ended, or nil while it is usable.
func (c *Client) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}

// Done is closed when the connection has ended (see Err). The client reads
// only while calls are pending or watches exist, so the loss of an idle
// connection without watches shows at its next call, as with libxenstore.
func (c *Client) Done() <-chan struct{} { return c.dead }

// connLost wraps the cause of a connection loss.
type connLost struct{ cause error }

func (e *connLost) Error() string   { return ErrConnectionLost.Error() + ": " + e.cause.Error() }
func (e *connLost) Unwrap() []error { return []error{ErrConnectionLost, e.cause} }

// fail ends the connection: the first error wins; every pending call and
// every watch is ended with it.
func (c *Client) fail(err error) {
	if err != ErrClosed {
		err = &connLost{cause: err}
	}
	c.mu.Lock()
	if c.err != nil {
		c.mu.Unlock()
		return
	}
	c.err = err
	pending := c.pending
	c.pending = nil
	c.wbuf, c.wspare = nil, nil
	close(c.dead)
	c.mu.Unlock()

	c.conn.Close()
	for _, cl := range pending {
		<-c.sem
		if !cl.abandoned {
			cl.err = err
			cl.done <- struct{}{}
		}
	}

	c.wmu.Lock()
	watches := c.watches
	c.watches, c.byPath = nil, nil
	c.nwatch.Store(0)
	c.wmu.Unlock()
	for _, w := range watches {
		// After Close nobody wants queued events; after a loss the
		// consumer gets those already received, then the error.
		w.end(err, err != ErrClosed)
	}
}

// req describes a request: NUL-terminated string arguments followed by raw
// bytes (a WRITE value). It is passed by pointer to stay on the caller's
// stack.
type req struct {
	typ   msgType
	tx    uint32
	nargs int
	args  [3]string
	raw   []byte
	// cleanup runs (in a new goroutine) if the caller abandons the call
	// and the server then reports success.
	cleanup func(reply []byte)
}

func (r *req) size() int {
	n := len(r.raw)
	for _, a := range r.args[:r.nargs] {
		n += len(a) + 1
	}
	return n
}

// do sends r and waits for its reply. A reply of type ERROR is returned as
// the errno it names.
func (c *Client) do(ctx context.Context, r *req) ([]byte, error) {
	if n := r.size(); n > PayloadMax {
		return nil, invalidf("request payload of %d bytes over the %d-byte limit", n, PayloadMax)
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	select {
	case c.sem <- struct{}{}:
	default:
		select {
		case c.sem <- struct{}{}:
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-c.dead:
			return nil, c.Err()
		}
	}
	cl := callPool.Get().(*call)
	cl.typ, cl.tx = r.typ, r.tx

	c.mu.Lock()
	if c.err != nil {
		err := c.err
		c.mu.Unlock()
		<-c.sem
		callPool.Put(cl)
		return nil, err
	}
	cl.id = c.allocID()
	c.pending[cl.id] = cl
	c.appendFrame(cl.id, r)
	self := false
	if !c.reading {
		if c.dl != nil {
			c.reading, self = true, true
		} else {
			c.startReaderLocked()
		}
	}
	c.flushLocked()

	if self {
		if c.readOwn(ctx, cl, r.cleanup) {
			return nil, ctx.Err()
		}
	} else {
		select {
		case <-cl.done:
		case <-ctx.Done():
			if c.abandon(cl, r.cleanup) {
				return nil, ctx.Err()
			}
			// The reply (or the connection's failure) is already being
			// delivered: take it.
			<-cl.done
		}
	}
	reply, rtyp, err := cl.reply, cl.rtyp, cl.err
	cl.reply, cl.err = nil, nil
	callPool.Put(cl)
	if err != nil {
		return nil, err
	}
	if rtyp == typeError {
		return nil, serverError(reply)
	}
	return reply, nil
}

// send queues a request whose reply nobody waits for (aborting a
// transaction, undoing an abandoned watch). It never blocks the caller.
func (c *Client) send(r req) {
	go func() {
		select {
		case c.sem <- struct{}{}:
		case <-c.dead:
			return
		}
		c.mu.Lock()
		if c.err != nil {
			c.mu.Unlock()
			<-c.sem
			return
		}
		id := c.allocID()
		c.pending[id] = &call{id: id, typ: r.typ, tx: r.tx, abandoned: true}
		c.appendFrame(id, &r)
		if !c.reading {
			c.startReaderLocked()
		}
		c.flushLocked()
	}()
}

// abandon replaces a pending call by a placeholder so that its reply is
// dropped. It reports false if the reader already took the call.
func (c *Client) abandon(cl *call, cleanup func([]byte)) bool {
	c.mu.Lock()
	if c.pending[cl.id] != cl {
		c.mu.Unlock()
		return false
	}
	c.pending[cl.id] = &call{id: cl.id, typ: cl.typ, tx: cl.tx, abandoned: true, cleanup: cleanup}
	c.mu.Unlock()
	cl.reply, cl.err = nil, nil
	callPool.Put(cl)
	return true
}

// allocID returns a request id not in use. Ids start at 1 and skip 0, which
// watch events carry. Called with c.mu held; terminates because pending
// holds at most maxInflight entries.
func (c *Client) allocID() uint32 {
	for {
		c.nextID++
		if c.nextID == 0 {
			continue
		}
		if _, busy := c.pending[c.nextID]; !busy {
			return c.nextID
		}
	}
}

// appendFrame encodes r into the write buffer. Called with c.mu held.
func (c *Client) appendFrame(id uint32, r *req) {
	b := c.wbuf
	off := len(b)
	b = append(b, make([]byte, headerSize)...)
	for _, a := range r.args[:r.nargs] {
		b = append(b, a...)
		b = append(b, 0)
	}
	b = append(b, r.raw...)
	putHeader(b[off:], header{typ: r.typ, reqID: id, txID: r.tx, len: uint32(len(b) - off - headerSize)})
	c.wbuf = b
}

// flushLocked writes the buffered frames out unless another caller is
// already doing so, in which case that caller writes ours too: under
// concurrency requests are batched into one write(2) without a dedicated
// writer goroutine, and a lone caller writes its own request with no
// hand-off. Called with c.mu held; returns with it released.
func (c *Client) flushLocked() {
	if c.flushing {
		c.mu.Unlock()
		return
	}
	c.flushing = true
	for len(c.wbuf) > 0 {
		b := c.wbuf
		c.wbuf = c.wspare[:0]
		c.mu.Unlock()
		err := c.writeOut(b)
		c.mu.Lock()
		if cap(b) <= keepWriteBuf {
			c.wspare = b[:0]
		} else {
			c.wspare = nil
		}
		if err != nil || c.err != nil {
			c.flushing = false
			c.mu.Unlock()
			if err != nil {
				c.fail(fmt.Errorf("write: %w", err))
			}
			return
		}
	}
	c.flushing = false
	c.mu.Unlock()
}

func (c *Client) writeOut(b []byte) error {
	if !c.framePerWrite {
		_, err := c.conn.Write(b)
		return err
	}
	for len(b) > 0 {
		n := headerSize + int(binary.LittleEndian.Uint32(b[12:16]))
		if _, err := c.conn.Write(b[:n]); err != nil {
			return err
		}
		b = b[n:]
	}
	return nil
}

// startReaderLocked starts a background reader. Called with c.mu held,
// by a goroutine that owns reading or when nobody does.
func (c *Client) startReaderLocked() {
	c.reading = true
	c.readers.Add(1)
	go c.readLoop()
}

// readLoop is the background reader: it matches replies to pending calls
// by req_id and hands watch events to their watches, never blocking on a
// caller or a watch consumer, and exits when nothing is left to read for.
func (c *Client) readLoop() {
	defer c.readers.Done()
	for {
		if err := c.readMsg(c.br); err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) {
				// An interrupt meant for a reading caller that landed
				// after it handed over: not ours.
				c.dl.SetReadDeadline(time.Time{})
				continue
			}
			c.readFailed(err)
			return
		}
		if !c.keepReading() {
			return
		}
	}
}

// keepReading reports whether the reader must go on: calls are pending or
// watches may receive events. Otherwise it gives up reading, atomically with
// respect to do(), which elects a new reader when none is active.
func (c *Client) keepReading() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.err == nil && (len(c.pending) > 0 || c.nwatch.Load() > 0) {
		return true
	}
	c.reading = false
	return false
}

// readOwn reads as the elected reader until cl is done, then hands reading
// over. It reports true if ctx ended first and the call was abandoned.
func (c *Client) readOwn(ctx context.Context, cl *call, cleanup func([]byte)) (abandoned bool) {
	c.dlMu.Lock()
	c.dlOwner = cl
	c.dlMu.Unlock()
	stop := func() bool { return false }
	if ctx.Done() != nil { // a context that can end; AfterFunc allocates
		stop = context.AfterFunc(ctx, func() {
			c.dlMu.Lock()
			if c.dlOwner == cl {
				c.dl.SetReadDeadline(time.Unix(1, 0)) // wakes the read below
			}
			c.dlMu.Unlock()
		})
	}
	defer func() {
		stop()
		// No interrupt for cl may outlive this: it would hit the next
		// reader.
		c.dlMu.Lock()
		c.dlOwner = nil
		c.dl.SetReadDeadline(time.Time{})
		c.dlMu.Unlock()
		c.handOver()
	}()
	for {
		select {
		case <-cl.done:
			return false
		default:
		}
		err := c.readMsg(c.br)
		switch {
		case err == nil:
		case errors.Is(err, os.ErrDeadlineExceeded) && ctx.Err() != nil:
			if c.abandon(cl, cleanup) {
				return true
			}
			<-cl.done
			return false
		case errors.Is(err, os.ErrDeadlineExceeded):
			c.dlMu.Lock()
			c.dl.SetReadDeadline(time.Time{})
			c.dlMu.Unlock()
		default:
			c.readFailed(err)
			<-cl.done // failed by readFailed, as every pending call
			return false
		}
	}
}

// handOver ends a caller's turn as reader: a background reader takes over
// if anything is left to read for.
func (c *Client) handOver() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.err == nil && (len(c.pending) > 0 || c.nwatch.Load() > 0) {
		c.readers.Add(1)
		go c.readLoop()
		return
	}
	c.reading = false
}

func (c *Client) readFailed(err error) {
	if errors.Is(err, os.ErrClosed) {
		err = io.EOF
	}
	c.fail(err)
}

func (c *Client) readMsg(br *bufio.Reader) error {
	hb, err := br.Peek(headerSize)
	if err != nil {
		if err == io.EOF && br.Buffered() > 0 {
			err = fmt.Errorf("%w: truncated header", errProtocol)
		}
		return err
	}
	h, err := parseHeader(hb)
	if err != nil {
		return err
	}
	n := headerSize + int(h.len)
	msg, err := br.Peek(n)
	if err != nil {
		if err == io.EOF {
			return fmt.Errorf("%w: connection closed inside a %d-byte %s payload", errProtocol, h.len, h.typ)
		}
		return err
	}
	payload := msg[headerSize:]
	if h.typ == typeWatchEvent {
		err := c.dispatchEvent(payload)
		br.Discard(n)
		return err
	}

	c.mu.Lock()
	cl, ok := c.pending[h.reqID]
	if ok {
		delete(c.pending, h.reqID)
	}
	c.mu.Unlock()
	if !ok {
		return fmt.Errorf("%w: %s reply for unknown request id %d", errProtocol, h.typ, h.reqID)
	}
	<-c.sem
	if h.typ != cl.typ && h.typ != typeError {
		err := fmt.Errorf("%w: %s reply to %s request %d", errProtocol, h.typ, cl.typ, h.reqID)
		if !cl.abandoned {
			cl.err = &connLost{cause: err}
			cl.done <- struct{}{}
		}
		return err
	}
	reply := make([]byte, len(payload))
	copy(reply, payload)
	br.Discard(n)
	if cl.abandoned {
		if cl.cleanup != nil && h.typ != typeError {
			go cl.cleanup(reply)
		}
		return nil
	}
	cl.rtyp, cl.reply = h.typ, reply
	cl.done <- struct{}{}
	return nil
}

// backoff sleeps before a retry; false if ctx ended.
func backoff(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}
