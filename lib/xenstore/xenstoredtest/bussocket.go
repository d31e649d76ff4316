package xenstoredtest

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"sync"
	"syscall"
)

// maxSocketConns bounds the connections a bus socket serves at once; more
// are closed on arrival.
const maxSocketConns = 64

// busSocket serves a GuestBus on a unix socket, a bus file per connection.
type busSocket struct {
	path string
	ln   net.Listener

	mu     sync.Mutex
	conns  map[net.Conn]struct{}
	closed bool
}

// Socket serves the bus on a unix socket and returns its path: every
// connection is a new file of the bus, as if the process at the other end
// ran in the guest and opened /dev/xen/xenbus. libxenstore's clients
// (xenstore-write, pyxs) run as processes of the guest with
// XENSTORED_PATH set to it: relative paths are the guest's, and xenstored
// applies the guest's permissions. The socket goes with the bus.
func (b *GuestBus) Socket() (string, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.sock != nil {
		return b.sock.path, nil
	}
	if b.err != nil {
		return "", b.err
	}
	path := filepath.Join(b.dir, fmt.Sprintf("xenbus-%d", b.id))
	os.Remove(path)
	ln, err := net.Listen("unix", path)
	if err != nil {
		return "", fmt.Errorf("xenbus of domain %d: %w", b.id, err)
	}
	s := &busSocket{path: path, ln: ln, conns: map[net.Conn]struct{}{}}
	b.sock = s
	b.wg.Add(1)
	go b.accept(s)
	return path, nil
}

func (b *GuestBus) accept(s *busSocket) {
	defer b.wg.Done()
	for {
		c, err := s.ln.Accept()
		if err != nil {
			return // closed
		}
		if !s.add(c) {
			c.Close()
			continue
		}
		f, err := b.Open()
		if err != nil {
			s.remove(c)
			continue
		}
		b.wg.Add(2)
		go func() {
			defer b.wg.Done()
			b.serveRequests(c, f)
			f.Close()
			s.remove(c)
		}()
		go func() {
			defer b.wg.Done()
			io.Copy(c, f) // until the file is closed or the peer goes
			c.Close()
		}()
	}
}

// serveRequests writes the connection's messages to f one per write, as a
// process writes to the device, until the peer goes or a write fails. A
// write the device refuses with an errno of xsd_errors (a WATCH past the
// domain's quota) is answered with that error, which a libxenstore client
// on the device gets as the errno of its write(2) too (xs_talkv); any
// other failed write ends the connection.
func (b *GuestBus) serveRequests(c net.Conn, f *BusFile) {
	msg := make([]byte, msgMax)
	for {
		if _, err := io.ReadFull(c, msg[:headerSize]); err != nil {
			return
		}
		h := parseHeader(msg)
		if h.len > xsPayloadMax {
			return
		}
		if _, err := io.ReadFull(c, msg[headerSize:headerSize+h.len]); err != nil {
			return
		}
		if _, err := f.Write(msg[:headerSize+h.len]); err != nil {
			var errno syscall.Errno
			name, known := "", false
			if errors.As(err, &errno) {
				name, known = errnoName(errno)
			}
			if !known {
				return
			}
			f.commandReply(h, TypeError, name)
		}
	}
}

func (s *busSocket) add(c net.Conn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed || len(s.conns) >= maxSocketConns {
		return false
	}
	s.conns[c] = struct{}{}
	return true
}

func (s *busSocket) remove(c net.Conn) {
	s.mu.Lock()
	delete(s.conns, c)
	s.mu.Unlock()
	c.Close()
}

// close stops accepting and ends every connection; their goroutines then
// close their files.
func (s *busSocket) close() {
	s.mu.Lock()
	s.closed = true
	for c := range s.conns {
		c.Close()
	}
	s.mu.Unlock()
	s.ln.Close()
	os.Remove(s.path)
}

// errnoName is the xsd_errors name of errno.
func errnoName(errno syscall.Errno) (string, bool) {
	for name, e := range errnoByName {
		if e == errno {
			return name, true
		}
	}
	return "", false
}
