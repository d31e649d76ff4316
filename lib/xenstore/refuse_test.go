package xenstore

import (
	"context"
	"errors"
	"net"
	"os"
	"strconv"
	"syscall"
	"testing"
	"time"
)

// scriptedDevice is a xenbus device whose writes the test decides: each
// frame goes to write, which may block or fail it; replies are what the
// test sends on the other end of the pipe.
type scriptedDevice struct {
	net.Conn
	write func(h header) error
}

func (d *scriptedDevice) Write(p []byte) (int, error) {
	h, err := parseHeader(p)
	if err != nil {
		return 0, err
	}
	if err := d.write(h); err != nil {
		return 0, &os.PathError{Op: "write", Path: "/dev/xen/xenbus", Err: err}
	}
	return len(p), nil
}

// TestRefusedFrameWakesItsReader: a caller elected to read its own reply
// whose frame another caller writes, and the device refuses, gets the
// error at once: nobody else will read for it, and no reply comes. The
// flusher is a queued abort whose reply the background reader took (so
// nobody reads) while its write had not returned yet; the refused call is
// a WATCH issued then.
func TestRefusedFrameWakesItsReader(t *testing.T) {
	cli, srv := net.Pipe()
	t.Cleanup(func() { srv.Close() })
	gate := make(chan struct{})
	seen := make(chan header, 4)
	dev := &scriptedDevice{Conn: cli, write: func(h header) error {
		seen <- h
		switch h.typ {
		case typeTransactionEnd:
			<-gate // held in the write(2)
		case typeWatch:
			return syscall.E2BIG
		}
		return nil
	}}
	c := newClient(dev, true, options{})
	t.Cleanup(func() { c.Close() })
	state := func() readerState {
		c.mu.Lock()
		defer c.mu.Unlock()
		return c.reader
	}

	c.send(endReq(5, false))
	h := <-seen
	// Its reply, read by the background reader while the write is held:
	// nothing pending, no watch, nobody reads.
	srv.Write(frame(typeTransactionEnd, h.reqID, h.txID, []byte("OK\x00")))
	waitFor(t, "the reader gone", func() bool { return state() == readerNone })

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	done := make(chan error, 1)
	go func() {
		_, err := c.Watch(ctx, "data", "tok")
		done <- err
	}()
	waitFor(t, "the watch's caller reading", func() bool { return state() == readerCaller })
	close(gate) // the abort's write returns; the flusher writes the WATCH
	select {
	case err := <-done:
		if !errors.Is(err, syscall.E2BIG) {
			t.Fatalf("watch: %v, want E2BIG", err)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("the refused watch's caller still waits")
	}
	if err := c.Err(); err != nil {
		t.Fatalf("connection ended: %v", err)
	}
	// And the connection works: the next call reads its reply.
	go func() {
		for {
			select {
			case h := <-seen:
				if h.typ == typeRead {
					srv.Write(frame(typeRead, h.reqID, 0, []byte("7")))
					return
				}
			case <-ctx.Done():
				return
			}
		}
	}()
	if v, err := c.Read(ctx, "domid"); err != nil || string(v) != "7" {
		t.Fatalf("read after the refusal: %q, %v", v, err)
	}
}

// TestRefusedFrameOtherReader: a caller reading for its own reply is
// woken by another caller's refused frame: it reads on, and gets its
// reply when it comes. As in TestRefusedFrameWakesItsReader, a queued
// abort holds the flush while nobody reads; the READ's caller is elected
// reader, the WATCH's waits, and the abort's flush writes both.
func TestRefusedFrameOtherReader(t *testing.T) {
	cli, srv := net.Pipe()
	t.Cleanup(func() { srv.Close() })
	gate := make(chan struct{})
	seen := make(chan header, 4)
	dev := &scriptedDevice{Conn: cli, write: func(h header) error {
		seen <- h
		switch h.typ {
		case typeTransactionEnd:
			<-gate
		case typeWatch:
			return syscall.E2BIG
		}
		return nil
	}}
	c := newClient(dev, true, options{})
	t.Cleanup(func() { c.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	state := func() (readerState, int) {
		c.mu.Lock()
		defer c.mu.Unlock()
		return c.reader, len(c.pending)
	}

	c.send(endReq(5, false))
	h := <-seen
	srv.Write(frame(typeTransactionEnd, h.reqID, h.txID, []byte("OK\x00")))
	waitFor(t, "the reader gone", func() bool { r, _ := state(); return r == readerNone })
	got := make(chan error, 1)
	go func() {
		v, err := c.Read(ctx, "domid")
		if err == nil && string(v) != "7" {
			err = errors.New("read returned " + strconv.Quote(string(v)))
		}
		got <- err
	}()
	waitFor(t, "the read's caller reading", func() bool { r, n := state(); return r == readerCaller && n == 1 })
	watched := make(chan error, 1)
	go func() {
		_, err := c.Watch(ctx, "data", "tok")
		watched <- err
	}()
	waitFor(t, "the watch queued", func() bool { _, n := state(); return n == 2 })
	close(gate)
	if err := <-watched; !errors.Is(err, syscall.E2BIG) {
		t.Fatalf("watch: %v, want E2BIG", err)
	}
	// The reader was woken for the watch; its own reply comes later.
	time.Sleep(50 * time.Millisecond)
	for h := range seen {
		if h.typ == typeRead {
			srv.Write(frame(typeRead, h.reqID, 0, []byte("7")))
			break
		}
	}
	if err := <-got; err != nil {
		t.Fatalf("read: %v", err)
	}
	if err := c.Err(); err != nil {
		t.Fatalf("connection ended: %v", err)
	}
}

// waitFor polls cond for up to 5 s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within 5s", what)
		}
		time.Sleep(time.Millisecond)
	}
}
