package xenstore

import (
	"bufio"
	"context"
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
	// txFreedCap bounds the wake-ups of Transactions waiting for the
	// transaction quota; a waiter not woken polls.
	txFreedCap = 16
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
			o.path = p
			return newClient(rwc, dev, o), nil
		}
		errs = append(errs, err)
		if ctx.Err() != nil {
			break
		}
	}
	return nil, fmt.Errorf("xenstore: dial: %w", errors.Join(errs...))
}

// Path is the socket or device the client dialled: the one of Paths that
// accepted the connection when Dial was given none. "" for a client made
// by NewClient over a connection of the caller's.
func (c *Client) Path() string { return c.opt.path }

// Client is a connection to xenstored. It is safe for concurrent use: calls
// from many goroutines are pipelined on the one connection.
//
// A Client does not reconnect: once the connection is lost every call fails
// with an error wrapping ErrConnectionLost, every watch ends, and the caller
// dials a new Client (and re-reads the state it watches, since events may
// have been missed).
type Client struct {
	// Lock order: mu, dlMu and wmu are never held together, and each
	// Watch's mu and fnMu are taken with none of them held (fnMu before mu); nobody blocks on sem or
	// on a call's done channel while holding any of them. The fields under
	// a lock are listed after it.

	conn io.ReadWriteCloser
	// framePerWrite: the transport takes exactly one message per write
	// (the xenbus device discards anything after the first message).
	framePerWrite bool
	opt           options
	// sem holds one token per request in the pending map: it bounds the
	// pending map and the write buffer.
	sem chan struct{}
	// br is read only by the goroutine that owns reading (reader, under
	// mu; see reader.go).
	br *bufio.Reader
	// dl interrupts a reading caller whose context ends; nil if the
	// transport has no read deadlines (callers then never read).
	dl      deadliner
	readers sync.WaitGroup // background readers

	mu       sync.Mutex
	nextID   uint32
	pending  map[uint32]*call
	wbuf     []byte // frames waiting to be written
	wspare   []byte
	flushing bool        // a caller is writing wbuf out
	reader   readerState // who owns br (see reader.go)
	err      error       // why the connection ended; set once

	dlMu sync.Mutex
	// turns numbers the callers' reading turns; dlTurn is the turn an
	// interrupt may target, 0 outside a caller's turn; dlSet: a deadline
	// was set in it, cleared when the turn ends.
	turns, dlTurn uint64
	dlSet         bool

	wmu      sync.Mutex
	watches  map[string]*Watch // by wire token
	byPath   map[watchKey]*Watch
	watchSeq uint64
	nwatch   atomic.Int32 // len(watches), readable without wmu

	// txFreed holds a token per transaction of the client ended
	// lately, for a Transaction waiting for the quota (beginWaiting).
	txFreed chan struct{}

	dead      chan struct{} // closed when err is set
	closing   chan struct{} // closed by Close: stops watch drainers
	closeOnce sync.Once

	hooks *testHooks // nil outside tests
}

type deadliner interface{ SetReadDeadline(time.Time) error }

type watchKey struct{ path, token string }

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
		txFreed:       make(chan struct{}, txFreedCap),
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

// NewClient wraps an established connection to xenstored over a transport
// other than the socket and the device Dial opens: a guest's store ring, a
// test's pipe. rwc must take one message per Write, as the kernel's xenbus
// device does, and is closed by Close. Of the options, WithPath does not
// apply.
func NewClient(rwc io.ReadWriteCloser, opts ...Option) *Client {
	o := options{maxInflight: defaultMaxInflight, watchQueue: defaultWatchQueue, txAttempts: defaultTxAttempts}
	for _, opt := range opts {
		opt(&o)
	}
	return newClient(rwc, true, o)
}
