package xenstoredtest

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"github.com/mtwatch/mtwatch/lib/domid"
)

// Layout of struct xenstore_domain_interface (xen/include/public/io/xs_wire.h):
// the request ring, the response ring, then their indexes.
const (
	ringSize = 1024
	ringPage = 4096
	reqOff   = 0
	rspOff   = ringSize
	reqCons  = 2 * ringSize
	reqProd  = reqCons + 4
	rspCons  = reqCons + 8
	rspProd  = reqCons + 12
)

// Polling bounds of a guest connection: xenemu's event-channel notify is a
// no-op, so the guest side learns of replies and freed ring space only by
// looking. It looks again at once after progress, and backs off to
// guestMaxPoll while idle.
const (
	guestMinPoll = 20 * time.Microsecond
	guestMaxPoll = 2 * time.Millisecond
)

// GuestConn creates guest id as CreateDomain does, with a store ring the
// caller speaks on: the file ring-<id> of the control directory, which
// xenemu maps into xenstored when the domain is introduced, so xenstored
// applies the guest's permissions (and quotas) to every request, as to a
// guest's xenbus on a Xen host. The connection takes one message per Write,
// as the kernel's xenbus device does (xenstore.NewClient wraps it).
//
// The caller is the guest's kernel: the ring is raw, with nothing between
// the caller and xenstored. GuestBus puts the kernel's xenbus device in
// between, for processes of the guest.
//
// id must not be introduced yet: xenstored maps a domain's ring once. The
// domain's connection in xenstored (its watches, its transactions) outlives
// Close; KillDomain ends it.
func (s *Server) GuestConn(id domid.ID) (io.ReadWriteCloser, error) {
	return s.mapRing(id)
}

// mapRing creates guest id with a store ring mapped here (see GuestConn).
func (s *Server) mapRing(id domid.ID) (*guestConn, error) {
	if !id.IsGuest() {
		return nil, fmt.Errorf("guest connection of domain %d: not a guest domid", id)
	}
	c, err := Dial(s.Socket())
	if err != nil {
		return nil, err
	}
	in, err := c.Request(TypeIsDomainIntroduced, id.String())
	c.Close()
	if err != nil {
		return nil, fmt.Errorf("guest connection of domain %d: %w", id, err)
	}
	if in == "T" {
		return nil, fmt.Errorf("guest connection of domain %d: already introduced, its ring is mapped already", id)
	}
	path := filepath.Join(s.cfg.Dir, fmt.Sprintf("ring-%d", id))
	if err := os.WriteFile(path, make([]byte, ringPage), 0o600); err != nil {
		return nil, fmt.Errorf("guest connection of domain %d: %w", id, err)
	}
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return nil, fmt.Errorf("guest connection of domain %d: %w", id, err)
	}
	ring, err := syscall.Mmap(int(f.Fd()), 0, ringPage, syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_SHARED)
	f.Close()
	if err != nil {
		return nil, fmt.Errorf("guest connection of domain %d: mmap %s: %w", id, path, err)
	}
	g := &guestConn{id: id, ring: ring, wake: filepath.Join(s.cfg.Dir, "evtchn"),
		notify: []byte(fmt.Sprintf("g%d\n", id)), closed: make(chan struct{})}
	if err := s.CreateDomain(id); err != nil {
		syscall.Munmap(ring)
		return nil, err
	}
	return g, nil
}

// GuestConn is Server.GuestConn, closed when the test ends.
func (in *Instance) GuestConn(id domid.ID) io.ReadWriteCloser {
	in.t.Helper()
	g, err := in.srv.GuestConn(id)
	if err != nil {
		in.t.Fatalf("xenstoredtest: %v", err)
	}
	in.t.Cleanup(func() { g.Close() })
	return g
}

// guestConn is the guest's end of a store ring. Write and Read may run
// concurrently (they touch different halves of the page); mu keeps Close
// from unmapping the page under either.
type guestConn struct {
	id     domid.ID
	wake   string // the event-channel FIFO
	notify []byte // the record that is this guest's event-channel notification

	mu     sync.RWMutex
	ring   []byte // nil once closed
	closed chan struct{}
	once   sync.Once
	wmu    sync.Mutex // one writer at a time: a message is not interleaved
}

func (g *guestConn) idx(off int) *uint32 { return (*uint32)(unsafe.Pointer(&g.ring[off])) }

// Write puts p, one message, into the request ring, waiting for space when
// it is longer than what is free.
func (g *guestConn) Write(p []byte) (int, error) {
	g.wmu.Lock()
	defer g.wmu.Unlock()
	n := 0
	poll := guestMinPoll
	for n < len(p) {
		k, err := g.put(p[n:])
		if err != nil {
			return n, err
		}
		if k > 0 {
			n += k
			poll = guestMinPoll
			g.kick()
			continue
		}
		if err := g.sleep(&poll); err != nil {
			return n, err
		}
	}
	return n, nil
}

func (g *guestConn) put(p []byte) (int, error) {
	g.mu.RLock()
	defer g.mu.RUnlock()
	if g.ring == nil {
		return 0, os.ErrClosed
	}
	cons, prod := atomic.LoadUint32(g.idx(reqCons)), atomic.LoadUint32(g.idx(reqProd))
	free := ringSize - int(prod-cons)
	if free <= 0 {
		return 0, nil
	}
	k := min(free, len(p))
	for i := range k {
		g.ring[reqOff+int((prod+uint32(i))%ringSize)] = p[i]
	}
	atomic.StoreUint32(g.idx(reqProd), prod+uint32(k))
	return k, nil
}

// Read returns what the response ring holds, waiting until it holds
// something.
func (g *guestConn) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	poll := guestMinPoll
	for {
		n, err := g.take(p)
		if err != nil {
			return 0, err
		}
		if n > 0 {
			// xenstored stops writing to a full ring until it is woken.
			g.kick()
			return n, nil
		}
		if err := g.sleep(&poll); err != nil {
			return 0, err
		}
	}
}

func (g *guestConn) take(p []byte) (int, error) {
	g.mu.RLock()
	defer g.mu.RUnlock()
	if g.ring == nil {
		return 0, io.EOF
	}
	cons, prod := atomic.LoadUint32(g.idx(rspCons)), atomic.LoadUint32(g.idx(rspProd))
	k := min(int(prod-cons), len(p))
	for i := range k {
		p[i] = g.ring[rspOff+int((cons+uint32(i))%ringSize)]
	}
	atomic.StoreUint32(g.idx(rspCons), cons+uint32(k))
	return k, nil
}

// sleep waits *poll, doubling it up to guestMaxPoll; an error once closed.
func (g *guestConn) sleep(poll *time.Duration) error {
	t := time.NewTimer(*poll)
	defer t.Stop()
	*poll = min(2**poll, guestMaxPoll)
	select {
	case <-g.closed:
		return io.EOF
	case <-t.C:
		return nil
	}
}

// kick notifies xenstored on the guest's event channel, as the guest's
// kernel does after it produced a request or consumed a reply: the C
// xenstored then looks at every ring, oxenstored at this guest's. The FIFO
// is opened non-blocking: xenstored holds it open, and if it is down there
// is nobody to wake.
func (g *guestConn) kick() {
	f, err := os.OpenFile(g.wake, os.O_WRONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return
	}
	f.Write(g.notify) // shorter than PIPE_BUF: never interleaved
	f.Close()
}

// Close unmaps the ring once no Read or Write is using it.
func (g *guestConn) Close() error {
	err := os.ErrClosed
	g.once.Do(func() {
		close(g.closed)
		g.mu.Lock()
		defer g.mu.Unlock()
		err = syscall.Munmap(g.ring)
		g.ring = nil
	})
	return err
}
