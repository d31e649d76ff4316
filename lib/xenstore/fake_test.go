package xenstore

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"runtime"
	"slices"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// fakeServer is the server end of a net.Pipe: tests read the client's
// requests and write arbitrary (hostile) bytes back.
type fakeServer struct {
	t    *testing.T
	conn net.Conn
}

func newFake(t *testing.T, opts ...Option) (*Client, *fakeServer) {
	t.Helper()
	cli, srv := net.Pipe()
	o := options{}
	for _, opt := range opts {
		opt(&o)
	}
	c := newClient(cli, false, o)
	t.Cleanup(func() { c.Close(); srv.Close() })
	return c, &fakeServer{t: t, conn: srv}
}

// next reads one request.
func (f *fakeServer) next() (header, []byte) {
	f.t.Helper()
	f.conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	hb := make([]byte, headerSize)
	if _, err := io.ReadFull(f.conn, hb); err != nil {
		f.t.Fatalf("fake server: %v", err)
	}
	h, err := parseHeader(hb)
	if err != nil {
		f.t.Fatalf("fake server: %v", err)
	}
	p := make([]byte, h.len)
	if _, err := io.ReadFull(f.conn, p); err != nil {
		f.t.Fatalf("fake server: %v", err)
	}
	return h, p
}

func frame(typ msgType, id, tx uint32, payload []byte) []byte {
	b := make([]byte, headerSize+len(payload))
	putHeader(b, header{typ: typ, reqID: id, txID: tx, len: uint32(len(payload))})
	copy(b[headerSize:], payload)
	return b
}

func (f *fakeServer) send(b []byte) {
	f.t.Helper()
	f.conn.SetWriteDeadline(time.Now().Add(5 * time.Second))
	if _, err := f.conn.Write(b); err != nil {
		f.t.Fatalf("fake server: %v", err)
	}
}

func asyncRead(c *Client, path string) chan error {
	ch := make(chan error, 1)
	go func() {
		_, err := c.Read(context.Background(), path)
		ch <- err
	}()
	return ch
}

func wait(t *testing.T, ch chan error) error {
	t.Helper()
	select {
	case err := <-ch:
		return err
	case <-time.After(5 * time.Second):
		t.Fatal("call did not return")
	}
	return nil
}

// TestHostileReplies checks that malformed server output closes the
// connection with a protocol error, failing the pending call, and never
// panics or blocks.
func TestHostileReplies(t *testing.T) {
	for _, tc := range []struct {
		name  string
		reply func(h header) []byte
	}{
		{"unknown req_id", func(h header) []byte { return frame(typeRead, h.reqID+1000, 0, []byte("x")) }},
		{"req_id 0 reply", func(h header) []byte { return frame(typeRead, 0, 0, []byte("x")) }},
		{"oversized length", func(h header) []byte {
			b := frame(typeRead, h.reqID, 0, nil)
			binary.LittleEndian.PutUint32(b[12:], 1<<31)
			return b
		}},
		{"one over the reply limit", func(h header) []byte { return frame(typeRead, h.reqID, 0, make([]byte, maxReplyPayload+1)) }},
		{"event one over the payload limit", func(h header) []byte {
			return frame(typeWatchEvent, 0, 0, append(make([]byte, PayloadMax-1), 0, 0))
		}},
		{"wrong reply type", func(h header) []byte { return frame(typeWrite, h.reqID, 0, []byte("OK\x00")) }},
		{"event without NUL", func(h header) []byte { return frame(typeWatchEvent, 0, 0, []byte("path-only")) }},
		{"event without token terminator", func(h header) []byte { return frame(typeWatchEvent, 0, 0, []byte("p\x00tok")) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, f := newFake(t)
			ch := asyncRead(c, "/x")
			h, _ := f.next()
			go f.conn.Write(tc.reply(h))
			err := wait(t, ch)
			if !errors.Is(err, ErrConnectionLost) || !errors.Is(err, errProtocol) {
				t.Fatalf("pending read: %v, want a protocol error wrapping ErrConnectionLost", err)
			}
			if _, err := c.Read(context.Background(), "/x"); !errors.Is(err, ErrConnectionLost) {
				t.Errorf("read after the violation: %v", err)
			}
		})
	}
}

func TestTruncatedPayload(t *testing.T) {
	c, f := newFake(t)
	ch := asyncRead(c, "/x")
	h, _ := f.next()
	b := frame(typeRead, h.reqID, 0, []byte("0123456789"))
	f.send(b[:headerSize+4])
	f.conn.Close()
	err := wait(t, ch)
	if !errors.Is(err, ErrConnectionLost) || !errors.Is(err, errProtocol) {
		t.Fatalf("read: %v", err)
	}
}

// TestPipelinedOutOfOrder answers requests in reverse order: replies are
// matched by req_id, not by position.
func TestPipelinedOutOfOrder(t *testing.T) {
	c, f := newFake(t)
	paths := []string{"/a", "/b", "/c", "/d"}
	type res struct {
		path string
		v    []byte
		err  error
	}
	out := make(chan res, len(paths))
	for _, p := range paths {
		go func() {
			v, err := c.Read(context.Background(), p)
			out <- res{p, v, err}
		}()
	}
	var reqs []header
	var args []string
	for range paths {
		h, p := f.next()
		reqs = append(reqs, h)
		args = append(args, string(trimNUL(p)))
	}
	seen := map[uint32]bool{}
	for i := len(reqs) - 1; i >= 0; i-- {
		if reqs[i].reqID == 0 || seen[reqs[i].reqID] {
			t.Fatalf("request id %d reused or zero", reqs[i].reqID)
		}
		seen[reqs[i].reqID] = true
		f.send(frame(typeRead, reqs[i].reqID, 0, []byte("value of "+args[i])))
	}
	for range paths {
		r := <-out
		if r.err != nil || string(r.v) != "value of "+r.path {
			t.Errorf("read %s = %q, %v", r.path, r.v, r.err)
		}
	}
}

// TestRequestIDWraparound checks that ids skip 0 (which events carry).
func TestRequestIDWraparound(t *testing.T) {
	c, f := newFake(t)
	c.mu.Lock()
	c.nextID = ^uint32(0) - 1
	c.mu.Unlock()
	var ids []uint32
	for i := 0; i < 3; i++ {
		ch := asyncRead(c, "/x")
		h, _ := f.next()
		ids = append(ids, h.reqID)
		f.send(frame(typeRead, h.reqID, 0, nil))
		if err := wait(t, ch); err != nil {
			t.Fatal(err)
		}
	}
	if ids[0] != ^uint32(0) || ids[1] != 1 || ids[2] != 2 {
		t.Errorf("ids %v, want [4294967295 1 2]", ids)
	}
}

// TestAbandonedReply: a reply to a call whose context ended is dropped, not
// treated as an unknown request.
func TestAbandonedReply(t *testing.T) {
	c, f := newFake(t)
	ctx, cancel := context.WithCancel(context.Background())
	ch := make(chan error, 1)
	go func() { _, err := c.Read(ctx, "/slow"); ch <- err }()
	h, _ := f.next()
	cancel()
	if err := wait(t, ch); !errors.Is(err, context.Canceled) {
		t.Fatalf("read: %v", err)
	}
	f.send(frame(typeRead, h.reqID, 0, []byte("late")))
	ch2 := asyncRead(c, "/next")
	h2, _ := f.next()
	f.send(frame(typeError, h2.reqID, 0, []byte("ENOENT\x00")))
	if err := wait(t, ch2); !errors.Is(err, syscall.ENOENT) {
		t.Errorf("read after the late reply: %v", err)
	}
}

func TestUnknownServerError(t *testing.T) {
	c, f := newFake(t)
	ch := asyncRead(c, "/x")
	h, _ := f.next()
	f.send(frame(typeError, h.reqID, 0, []byte("EWHATEVER\x00")))
	err := wait(t, ch)
	var ue *UnknownError
	if !errors.As(err, &ue) || ue.Name != "EWHATEVER" || !errors.Is(err, syscall.EIO) {
		t.Errorf("err = %v", err)
	}
}

// TestInflightBound: with WithMaxInflight(2) a third call waits for a slot
// and honours its context meanwhile.
func TestInflightBound(t *testing.T) {
	c, f := newFake(t, WithMaxInflight(2))
	a, b := asyncRead(c, "/a"), asyncRead(c, "/b")
	ha, _ := f.next()
	hb, _ := f.next()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Millisecond)
	defer cancel()
	if _, err := c.Read(ctx, "/c"); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("third read: %v, want to wait for a slot", err)
	}
	f.send(frame(typeRead, ha.reqID, 0, nil))
	f.send(frame(typeRead, hb.reqID, 0, nil))
	if wait(t, a) != nil || wait(t, b) != nil {
		t.Fatal("reads failed")
	}
}

// TestSlowWatchConsumer: a consumer that never reads overflows its own
// watch; the reader keeps serving replies and other watches meanwhile.
func TestSlowWatchConsumer(t *testing.T) {
	c, f := newFake(t, WithWatchQueue(8))
	watch := func(path string) *Watch {
		ch := make(chan *Watch, 1)
		go func() {
			w, err := c.Watch(context.Background(), path, "t")
			if err != nil {
				t.Error(err)
			}
			ch <- w
		}()
		h, p := f.next()
		f.send(frame(typeWatch, h.reqID, 0, []byte("OK\x00")))
		w := <-ch
		if got := string(p); got != path+"\x00"+w.wire+"\x00" {
			t.Fatalf("watch payload %q", got)
		}
		return w
	}
	slow, fast := watch("/slow"), watch("/fast")
	event := func(w *Watch, path string) []byte {
		return frame(typeWatchEvent, 0, 0, []byte(path+"\x00"+w.wire+"\x00"))
	}
	// Identical pending events coalesce: a flood of one path never
	// overflows.
	for i := 0; i < watchChanCap+100; i++ {
		f.send(event(slow, "/slow/same"))
	}
	// Distinct paths do.
	for i := 0; i < 20; i++ {
		f.send(event(slow, "/slow/"+string(rune('a'+i))))
	}
	// The slow watch's UNWATCH goes out, and the connection still serves
	// the fast watch and replies.
	h, p := f.next()
	if h.typ != typeUnwatch || string(p) != "/slow\x00"+slow.wire+"\x00" {
		t.Fatalf("got %s %q, want the overflowed watch's unwatch", h.typ, p)
	}
	f.send(frame(typeUnwatch, h.reqID, 0, []byte("OK\x00")))
	f.send(event(fast, "/fast/x"))
	if ev := <-fast.Events(); ev.Path != "/fast/x" {
		t.Errorf("fast watch got %v", ev)
	}
	ch := asyncRead(c, "/r")
	hr, _ := f.next()
	f.send(frame(typeRead, hr.reqID, 0, []byte("v")))
	if err := wait(t, ch); err != nil {
		t.Fatal(err)
	}
	// The slow consumer finally reads: it gets what was buffered, in
	// order, then the overflow.
	var got []string
	for ev := range slow.Events() {
		got = append(got, ev.Path)
	}
	if !errors.Is(slow.Err(), ErrWatchOverflow) {
		t.Errorf("slow watch ended with %v", slow.Err())
	}
	// The channel's capacity, the queue's bound, and at most one event
	// in the drainer's hands.
	if len(got) < watchChanCap+8 || len(got) > watchChanCap+9 {
		t.Errorf("slow watch delivered %d events, want %d or %d", len(got), watchChanCap+8, watchChanCap+9)
	}
	var distinct []string
	for _, p := range got {
		if p != "/slow/same" {
			distinct = append(distinct, p)
		}
	}
	if len(distinct) == 0 || !slices.IsSorted(distinct) {
		t.Errorf("distinct events missing or out of order: %q", distinct)
	}
	if slow.Coalesced() == 0 {
		t.Error("no event was coalesced")
	}
	if fast.Err() != nil {
		t.Errorf("fast watch ended: %v", fast.Err())
	}
}

// TestUnwatchDropsPending: after Unwatch returns nothing more is delivered.
func TestUnwatchDropsPending(t *testing.T) {
	c, f := newFake(t)
	ch := make(chan *Watch, 1)
	go func() {
		w, _ := c.Watch(context.Background(), "/u", "t")
		ch <- w
	}()
	h, _ := f.next()
	f.send(frame(typeWatch, h.reqID, 0, []byte("OK\x00")))
	w := <-ch
	for i := 0; i < watchChanCap*2; i++ {
		f.send(frame(typeWatchEvent, 0, 0, []byte("/u/"+string(rune('A'+i%50))+string(rune('A'+i/50))+"\x00"+w.wire+"\x00")))
	}
	done := make(chan error, 1)
	go func() { done <- w.Unwatch(context.Background()) }()
	h, _ = f.next()
	f.send(frame(typeUnwatch, h.reqID, 0, []byte("OK\x00")))
	if err := wait(t, done); err != nil {
		t.Fatal(err)
	}
	if ev, ok := <-w.Events(); ok {
		t.Errorf("event %v after Unwatch returned", ev)
	}
	if !errors.Is(w.Err(), ErrUnwatched) {
		t.Errorf("Err = %v", w.Err())
	}
}

// TestCloseEndsEverything: Close fails pending calls and watches with
// ErrClosed.
func TestCloseEndsEverything(t *testing.T) {
	c, f := newFake(t)
	ch := make(chan *Watch, 1)
	go func() {
		w, _ := c.Watch(context.Background(), "/c", "t")
		ch <- w
	}()
	h, _ := f.next()
	f.send(frame(typeWatch, h.reqID, 0, []byte("OK\x00")))
	w := <-ch
	r := asyncRead(c, "/x")
	f.next()
	c.Close()
	if err := wait(t, r); !errors.Is(err, ErrClosed) {
		t.Errorf("pending read: %v", err)
	}
	for range w.Events() {
	}
	if !errors.Is(w.Err(), ErrClosed) {
		t.Errorf("watch: %v", w.Err())
	}
	if _, err := c.Read(context.Background(), "/x"); !errors.Is(err, ErrClosed) {
		t.Errorf("read after close: %v", err)
	}
}

// TestWatchFuncEndWaits: ending a WatchFunc watch waits for a call of its
// function in progress, and no call follows.
func TestWatchFuncEndWaits(t *testing.T) {
	c, f := newFake(t)
	entered, release := make(chan struct{}), make(chan struct{})
	var calls atomic.Int32
	ch := make(chan *Watch, 1)
	go func() {
		w, err := c.WatchFunc(context.Background(), "/f", "t", func(Event) {
			if calls.Add(1) == 1 {
				close(entered)
				<-release
			}
		})
		if err != nil {
			t.Error(err)
		}
		ch <- w
	}()
	h, _ := f.next()
	f.send(frame(typeWatch, h.reqID, 0, []byte("OK\x00")))
	w := <-ch
	ev := func(path string) []byte {
		return frame(typeWatchEvent, 0, 0, []byte(path+"\x00"+w.wire+"\x00"))
	}
	f.send(ev("/f/a"))
	<-entered
	closed := make(chan struct{})
	go func() { c.Close(); close(closed) }()
	select {
	case <-closed:
		t.Fatal("Close returned while the watch's function ran")
	case <-time.After(50 * time.Millisecond):
	}
	close(release)
	<-closed
	for range w.Events() {
	}
	if !errors.Is(w.Err(), ErrClosed) {
		t.Errorf("watch: %v", w.Err())
	}
	if n := calls.Load(); n != 1 {
		t.Errorf("function called %d times, want 1", n)
	}
}

// TestWatchFuncUnwatchUnderFlood: events keep arriving while Unwatch runs;
// once it returns the function is never called again, and events of the
// removed watch that were already on the wire are dropped.
func TestWatchFuncUnwatchUnderFlood(t *testing.T) {
	c, f := newFake(t)
	var calls atomic.Int32
	ch := make(chan *Watch, 1)
	go func() {
		w, err := c.WatchFunc(context.Background(), "/f", "t", func(Event) { calls.Add(1) })
		if err != nil {
			t.Error(err)
		}
		ch <- w
	}()
	h, _ := f.next()
	f.send(frame(typeWatch, h.reqID, 0, []byte("OK\x00")))
	w := <-ch
	ev := frame(typeWatchEvent, 0, 0, []byte("/f/x\x00"+w.wire+"\x00"))
	for i := 0; i < 100; i++ {
		f.send(ev)
	}
	done := make(chan error, 1)
	go func() { done <- w.Unwatch(context.Background()) }()
	h, _ = f.next()
	if h.typ != typeUnwatch {
		t.Fatalf("got %s, want UNWATCH", h.typ)
	}
	// Crossing the UNWATCH: xenstored had already queued these.
	for i := 0; i < 100; i++ {
		f.send(ev)
	}
	f.send(frame(typeUnwatch, h.reqID, 0, []byte("OK\x00")))
	if err := wait(t, done); err != nil {
		t.Fatal(err)
	}
	// Events not yet handled when Unwatch began are dropped, as a channel
	// watch drops what its consumer has not received.
	n := calls.Load()
	// A late event, read by the next caller: nobody reads without a call
	// pending or a watch.
	r := asyncRead(c, "/r")
	hr, _ := f.next()
	f.send(ev)
	f.send(frame(typeRead, hr.reqID, 0, []byte("v")))
	if err := wait(t, r); err != nil {
		t.Fatal(err)
	}
	if got := calls.Load(); got != n {
		t.Errorf("%d calls after Unwatch returned", got-n)
	}
	if !errors.Is(w.Err(), ErrUnwatched) {
		t.Errorf("Err = %v", w.Err())
	}
}

// TestLateInterrupt: a caller whose context ends just as its reply arrives
// leaves an interrupt in flight; when it lands, the next caller is reading
// in a turn of its own, and the interrupt must not touch it.
func TestLateInterrupt(t *testing.T) {
	c, f := newFake(t)
	blocked, release := make(chan struct{}), make(chan struct{})
	fired := make(chan bool, 1)
	c.hooks = &testHooks{
		beforeInterrupt: func() { close(blocked); <-release },
		afterInterrupt:  func(b bool) { fired <- b },
	}
	turnOpen := func() {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for {
			c.dlMu.Lock()
			open := c.dlTurn != 0
			c.dlMu.Unlock()
			if open {
				return
			}
			if time.Now().After(deadline) {
				t.Fatal("no caller began reading")
			}
			time.Sleep(time.Millisecond)
		}
	}
	type result struct {
		v   string
		err error
	}
	read := func(ctx context.Context, path string) chan result {
		ch := make(chan result, 1)
		go func() {
			v, err := c.Read(ctx, path)
			ch <- result{string(v), err}
		}()
		return ch
	}

	// The first caller reads its own reply; its context ends, and the
	// interrupt is held back while the reply arrives.
	ctxA, cancelA := context.WithCancel(context.Background())
	a := read(ctxA, "/a")
	ha, _ := f.next()
	turnOpen()
	cancelA()
	<-blocked
	f.send(frame(typeRead, ha.reqID, 0, []byte("a")))
	if r := <-a; r.v != "a" || r.err != nil {
		t.Fatalf("first read = %q, %v; its reply arrived before the interrupt", r.v, r.err)
	}

	// The next caller reads in a new turn when the interrupt lands.
	ctxB, cancelB := context.WithCancel(context.Background())
	defer cancelB()
	b := read(ctxB, "/b")
	hb, _ := f.next()
	turnOpen()
	close(release)
	if <-fired {
		t.Error("the first caller's interrupt fired in the next caller's turn")
	}
	f.send(frame(typeRead, hb.reqID, 0, []byte("b")))
	if r := <-b; r.v != "b" || r.err != nil {
		t.Errorf("next read = %q, %v", r.v, r.err)
	}
	if err := c.Err(); err != nil {
		t.Errorf("connection ended: %v", err)
	}
}

// serve answers every request with reply(h) until the connection closes.
// Unlike next and send it runs off the test goroutine, so it never fails
// the test itself: the caller's assertions do.
func (f *fakeServer) serve(reply func(h header) []byte) {
	hb := make([]byte, headerSize)
	p := make([]byte, PayloadMax)
	for {
		if _, err := io.ReadFull(f.conn, hb); err != nil {
			return
		}
		h, err := parseHeader(hb)
		if err != nil {
			return
		}
		if _, err := io.ReadFull(f.conn, p[:h.len]); err != nil {
			return
		}
		if _, err := f.conn.Write(reply(h)); err != nil {
			return
		}
	}
}

// TestDirectoryPartMemory: a server answering DIRECTORY_PART with an
// endless listing of one-byte names must not push the client's memory much
// beyond maxDirectoryMemory; each name costs far more than its byte.
func TestDirectoryPartMemory(t *testing.T) {
	c, f := newFake(t)
	// One part, reused for every reply: its allocations are not the
	// client's.
	const gen = "1"
	payload := []byte(gen + "\x00")
	for len(payload)+2 <= PayloadMax {
		payload = append(payload, 'a', 0)
	}
	part := frame(typeDirectoryPart, 0, 0, payload)
	e2big := frame(typeError, 0, 0, []byte("E2BIG\x00"))
	go f.serve(func(h header) []byte {
		b := part
		if h.typ == typeDirectory {
			b = e2big
		}
		binary.LittleEndian.PutUint32(b[4:8], h.reqID)
		return b
	})

	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	names, err := c.Directory(context.Background(), "/huge")
	runtime.ReadMemStats(&after)
	if !errors.Is(err, errProtocol) {
		t.Errorf("directory: %d names, %v; want a protocol error", len(names), err)
	}
	// Everything allocated meanwhile bounds the peak from above.
	alloc := after.TotalAlloc - before.TotalAlloc
	t.Logf("a hostile listing allocated %d MiB", alloc>>20)
	if alloc > 2*maxDirectoryMemory {
		t.Errorf("listing allocated %d MiB, over twice the %d MiB bound", alloc>>20, maxDirectoryMemory>>20)
	}
	if err := c.Err(); err != nil {
		t.Errorf("connection ended: %v", err)
	}
}

// TestLargeReply: a reply over PayloadMax, as oxenstored sends over a socket
// for a big directory, and larger than the read buffer, reaches its caller
// whole, and the connection goes on with the next reply.
func TestLargeReply(t *testing.T) {
	t.Parallel()
	for _, n := range []int{PayloadMax + 1, readBufSize, maxReplyPayload} {
		c, f := newFake(t)
		var names []byte
		for i := 0; len(names) < n; i++ {
			names = append(names, fmt.Sprintf("%d\x00", i)...)
		}
		names = names[:n]
		names[n-1] = 0
		type result struct {
			names []string
			err   error
		}
		ch := make(chan result, 1)
		go func() {
			got, err := c.Directory(context.Background(), "/big")
			ch <- result{got, err}
		}()
		h, _ := f.next()
		go f.send(frame(typeDirectory, h.reqID, 0, names))
		var r result
		select {
		case r = <-ch:
		case <-time.After(5 * time.Second):
			t.Fatal("directory did not return")
		}
		if r.err != nil {
			t.Fatalf("%d-byte reply: %v", n, r.err)
		}
		if want := strings.Count(string(names), "\x00"); len(r.names) != want {
			t.Fatalf("%d-byte reply: %d names, want %d", n, len(r.names), want)
		}
		rc := asyncRead(c, "/after")
		h, _ = f.next()
		go f.send(frame(typeRead, h.reqID, 0, []byte("v")))
		if err := wait(t, rc); err != nil {
			t.Fatalf("read after a %d-byte reply: %v", n, err)
		}
	}
}
