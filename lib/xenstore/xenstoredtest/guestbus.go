package xenstoredtest

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/mtwatch/mtwatch/lib/domid"
)

// Message types the guest bus looks at, beside those of wire.go.
const (
	typeUnwatch          uint32 = 5
	typeTransactionStart uint32 = 6
	typeTransactionEnd   uint32 = 7
)

// Sizes of the wire format (xen/include/public/io/xs_wire.h).
const (
	headerSize = 16
	msgMax     = headerSize + xsPayloadMax
)

// fileQueueMax bounds what one bus file holds unread. The kernel's queue
// (read_buffers) has no bound; here a file that falls that far behind
// fails instead, and the others go on.
const fileQueueMax = 1 << 20

// ErrFileOverflow is the error of a bus file whose reader left more than
// fileQueueMax bytes of replies and events unread.
var ErrFileOverflow = errors.New("xenbus file: too many replies and events unread")

// ErrBusClosed is the error of the files of a GuestBus that was closed.
var ErrBusClosed = errors.New("xenbus: the guest bus is closed")

// GuestBus is guest id's store ring as the guest's Linux kernel owns it,
// with the kernel's xenbus device in front of it: Open is an open of
// /dev/xen/xenbus, and every open file shares the ring. It does for each
// file what drivers/xen/xenbus does (xenbus_dev_frontend.c, xenbus_xs.c,
// xenbus_comms.c):
//
//   - a request goes out under a request id of the bus's own, and its reply
//     comes back with the file's (xs_send keeps caller_req_id, process_msg
//     puts it back), so files that number their requests alike do not mix;
//   - a WATCH is registered with xenstored under a token of the bus's own,
//     and its events reach the file with the file's token (xenbus_write_watch,
//     register_xenbus_watch, watch_fired); the write of a WATCH waits for
//     xenstored, fails with the errno xenstored answered, and otherwise the
//     file gets a synthesized OK (xenbus_command_reply). The same path and
//     token twice on one file are two watches, as there;
//   - an UNWATCH removes the file's watch with that path and token, if any,
//     and is answered OK in any case;
//   - a file may use only the transactions it started: another id is
//     answered ENOENT, a TRANSACTION_END other than T or F EINVAL
//     (xenbus_write_transaction, xenbus_dev_queue_reply);
//   - a write holds one message: more than one is dropped past the first, a
//     message in pieces is put together (xenbus_file_write);
//   - Close is the release of the file: once its requests in flight are
//     answered (the kernel's kref), each of its transactions is ended
//     (aborted) and each of its watches unregistered (xenbus_worker); the
//     other files and the domain's connection in xenstored are not touched.
//
// One goroutine reads the ring and hands each message to its file; it never
// waits for a file (see fileQueueMax). The kernel's own watches are not
// emulated: the guest's kernel here runs no xenbus drivers.
type GuestBus struct {
	id   domid.ID
	ring *guestConn
	dir  string // where Socket makes its socket
	// queueMax is fileQueueMax, smaller in a test of the bound.
	queueMax int

	mu      sync.Mutex
	files   map[*BusFile]struct{}
	pending map[uint32]*busReq
	watches map[string]*busWatch // by the bus's token
	reqSeq  uint32
	tokSeq  uint64
	err     error // why the bus stopped; nil while it runs
	sock    *busSocket

	done chan struct{} // closed when the ring's reader has returned
	wg   sync.WaitGroup
}

// busReq is a request in flight on the ring.
type busReq struct {
	f    *BusFile // nil: the bus's own (a release's)
	hdr  header   // the file's header
	wait chan busReply
}

type busReply struct {
	typ  uint32
	body []byte
}

// busWatch is a file's watch: registered with xenstored under ktoken.
type busWatch struct {
	f           *BusFile
	path, token string
	ktoken      string
}

type header struct{ typ, reqID, txID, len uint32 }

func parseHeader(b []byte) header {
	return header{
		typ:   binary.LittleEndian.Uint32(b[0:]),
		reqID: binary.LittleEndian.Uint32(b[4:]),
		txID:  binary.LittleEndian.Uint32(b[8:]),
		len:   binary.LittleEndian.Uint32(b[12:]),
	}
}

func frame(h header, body []byte) []byte {
	b := make([]byte, headerSize+len(body))
	binary.LittleEndian.PutUint32(b[0:], h.typ)
	binary.LittleEndian.PutUint32(b[4:], h.reqID)
	binary.LittleEndian.PutUint32(b[8:], h.txID)
	binary.LittleEndian.PutUint32(b[12:], uint32(len(body)))
	copy(b[headerSize:], body)
	return b
}

// GuestBus creates guest id as CreateDomain does, maps its store ring (see
// GuestConn) and puts the guest kernel's xenbus device in front of it. id
// must not be introduced yet. Close unmaps the ring; the domain's
// connection in xenstored lives on until KillDomain.
func (s *Server) GuestBus(id domid.ID) (*GuestBus, error) {
	ring, err := s.mapRing(id)
	if err != nil {
		return nil, err
	}
	b := &GuestBus{
		id: id, ring: ring, dir: s.cfg.Dir, queueMax: fileQueueMax,
		files:   map[*BusFile]struct{}{},
		pending: map[uint32]*busReq{},
		watches: map[string]*busWatch{},
		done:    make(chan struct{}),
	}
	b.wg.Add(1)
	go b.read()
	return b, nil
}

// GuestBus is Server.GuestBus, closed when the test ends.
func (in *Instance) GuestBus(id domid.ID) *GuestBus {
	in.t.Helper()
	b, err := in.srv.GuestBus(id)
	if err != nil {
		in.t.Fatalf("xenstoredtest: %v", err)
	}
	in.t.Cleanup(func() { b.Close() })
	return b
}

// Domid is the guest whose ring this is.
func (b *GuestBus) Domid() domid.ID { return b.id }

// BusStats counts what the bus holds in xenstored for its files.
type BusStats struct {
	Files        int // open files
	Watches      int // watches registered with xenstored
	Transactions int // transactions started and not ended
	InFlight     int // requests on the ring not answered yet
}

// Stats returns what the bus holds now.
func (b *GuestBus) Stats() BusStats {
	b.mu.Lock()
	defer b.mu.Unlock()
	st := BusStats{Files: len(b.files), Watches: len(b.watches), InFlight: len(b.pending)}
	for f := range b.files {
		st.Transactions += len(f.txs)
	}
	return st
}

// Watches lists the watches the bus holds, as "path token" with each
// file's own token, sorted.
func (b *GuestBus) Watches() []string {
	b.mu.Lock()
	out := make([]string, 0, len(b.watches))
	for _, w := range b.watches {
		out = append(out, w.path+" "+w.token)
	}
	b.mu.Unlock()
	slices.Sort(out)
	return out
}

// Open opens a new file of the guest's xenbus device, as a process of the
// guest opens /dev/xen/xenbus.
func (b *GuestBus) Open() (*BusFile, error) {
	f := &BusFile{b: b, max: b.queueMax, changed: make(chan struct{})}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.err != nil {
		return nil, fmt.Errorf("open xenbus of domain %d: %w", b.id, b.err)
	}
	b.files[f] = struct{}{}
	return f, nil
}

// Close stops the bus: every file fails with ErrBusClosed, the socket (if
// any) goes, and the ring is unmapped once no goroutine of the bus runs.
func (b *GuestBus) Close() error {
	b.mu.Lock()
	if b.err == nil {
		b.err = ErrBusClosed
	}
	sock := b.sock
	b.mu.Unlock()
	if sock != nil {
		sock.close()
	}
	err := b.ring.Close() // the reader returns
	<-b.done
	b.wg.Wait()
	if errors.Is(err, os.ErrClosed) {
		err = nil
	}
	return err
}

// newReqID returns a request id no request in flight has, as
// xs_request_enter numbers the kernel's. Called with b.mu held.
func (b *GuestBus) newReqID() uint32 {
	for {
		b.reqSeq++
		if _, used := b.pending[b.reqSeq]; !used {
			return b.reqSeq
		}
	}
}

// newToken returns a token for a watch of the bus: the kernel's is the
// address of its struct xenbus_watch in hex (register_xenbus_watch).
func (b *GuestBus) newToken() string {
	b.tokSeq++
	return fmt.Sprintf("FFFF8880%08X", b.tokSeq)
}

// send puts one message on the ring.
func (b *GuestBus) send(h header, body []byte) error {
	_, err := b.ring.Write(frame(h, body))
	if err != nil {
		return fmt.Errorf("xenbus of domain %d: %w", b.id, err)
	}
	return nil
}

// read is the ring's reader: the only goroutine reading the response ring
// (xenbus_thread's process_msg).
func (b *GuestBus) read() {
	defer b.wg.Done()
	defer close(b.done)
	hdr := make([]byte, headerSize)
	for {
		if _, err := io.ReadFull(b.ring, hdr); err != nil {
			b.fail(err)
			return
		}
		h := parseHeader(hdr)
		if h.len > xsPayloadMax {
			b.fail(fmt.Errorf("xenstored sent a %d-byte payload, over the limit", h.len))
			return
		}
		body := make([]byte, h.len)
		if _, err := io.ReadFull(b.ring, body); err != nil {
			b.fail(err)
			return
		}
		if h.typ == TypeWatchEvent {
			b.event(body)
			continue
		}
		b.reply(h, body)
	}
}

// event hands a watch event to the file of its watch, with the file's
// token; an event of a watch that is gone is dropped (find_watch).
func (b *GuestBus) event(body []byte) {
	path, rest, ok := bytes.Cut(body, []byte{0})
	if !ok {
		return
	}
	ktoken, _, _ := bytes.Cut(rest, []byte{0})
	b.mu.Lock()
	w := b.watches[string(ktoken)]
	b.mu.Unlock()
	if w == nil {
		return
	}
	ev := make([]byte, 0, len(path)+len(w.token)+2)
	ev = append(append(append(append(ev, path...), 0), w.token...), 0)
	w.f.enqueue(frame(header{typ: TypeWatchEvent}, ev))
}

// reply hands a reply to the file that asked, under the file's request id.
func (b *GuestBus) reply(h header, body []byte) {
	b.mu.Lock()
	r := b.pending[h.reqID]
	delete(b.pending, h.reqID)
	if r == nil {
		b.mu.Unlock()
		return // a reply to nobody: the kernel warns and goes on
	}
	f := r.f
	if f != nil {
		f.trackTx(r.hdr, h, body)
	}
	if r.wait != nil {
		// The writer waiting for it does the rest.
		b.mu.Unlock()
		r.wait <- busReply{typ: h.typ, body: body}
		return
	}
	release := false
	if f != nil {
		release = f.done()
	}
	b.mu.Unlock()
	if f == nil {
		return
	}
	f.enqueue(frame(header{typ: h.typ, reqID: r.hdr.reqID, txID: h.txID}, body))
	if release {
		// Not on this goroutine: the release writes to the ring, which
		// may wait for xenstored, which may wait for this reader.
		b.wg.Add(1)
		go func() {
			defer b.wg.Done()
			b.release(f)
		}()
	}
}

// fail stops the bus with err: every file fails.
func (b *GuestBus) fail(err error) {
	b.mu.Lock()
	if b.err == nil {
		b.err = fmt.Errorf("xenbus of domain %d: ring lost: %w", b.id, err)
	}
	err = b.err
	files := make([]*BusFile, 0, len(b.files))
	for f := range b.files {
		files = append(files, f)
	}
	waits := make([]chan busReply, 0)
	for id, r := range b.pending {
		if r.wait != nil {
			waits = append(waits, r.wait)
		}
		delete(b.pending, id)
	}
	b.mu.Unlock()
	for _, f := range files {
		f.setErr(err, false)
	}
	for _, w := range waits {
		close(w)
	}
}

// release ends what a closed file left in xenstored: its transactions are
// aborted and its watches unregistered (xenbus_worker). The replies are
// nobody's. Called once per file, by whoever claimed it (BusFile.done).
func (b *GuestBus) release(f *BusFile) {
	type msg struct {
		h    header
		body []byte
	}
	var out []msg
	b.mu.Lock()
	if b.err != nil {
		b.mu.Unlock()
		return
	}
	for _, tx := range f.txs {
		if tx == 0 {
			continue // its START failed: nothing to end
		}
		id := b.newReqID()
		b.pending[id] = &busReq{}
		out = append(out, msg{header{typ: typeTransactionEnd, reqID: id, txID: tx}, []byte("F\x00")})
	}
	f.txs = nil
	for _, w := range f.watches {
		delete(b.watches, w.ktoken)
		id := b.newReqID()
		b.pending[id] = &busReq{}
		out = append(out, msg{header{typ: typeUnwatch, reqID: id}, []byte(w.path + "\x00" + w.ktoken + "\x00")})
	}
	f.watches = nil
	b.mu.Unlock()
	for _, m := range out {
		if b.send(m.h, m.body) != nil {
			return // the bus is down: xenstored's connection is the domain's anyway
		}
	}
}

// BusFile is one open file of a GuestBus: what a process of the guest has
// when it opens /dev/xen/xenbus. It is an io.ReadWriteCloser that takes one
// message per Write (xenstore.NewClient wraps it), with read deadlines as
// the pollable device has.
type BusFile struct {
	b   *GuestBus
	wmu sync.Mutex // one write at a time (msgbuffer_mutex)
	buf []byte     // a message written in pieces, under wmu

	// Under b.mu: the file's kernel state.
	watches     []*busWatch
	txs         []uint32 // ids of its transactions; 0 while a START is in flight
	outstanding int      // requests in flight (the kernel's kref)
	closed      bool
	released    bool

	max      int // bound of queue
	qmu      sync.Mutex
	queue    []byte // replies and events not read yet
	err      error  // what Read returns once queue is empty
	deadline time.Time
	changed  chan struct{} // closed and replaced when any of these change
}

// trackTx follows the file's transactions from the replies to its START
// and END (xenbus_dev_queue_reply). Called with b.mu held.
func (f *BusFile) trackTx(req, rep header, body []byte) {
	switch req.typ {
	case typeTransactionStart:
		for i, tx := range f.txs {
			if tx != 0 {
				continue
			}
			id, err := strconv.ParseUint(string(bytes.TrimRight(body, "\x00")), 10, 32)
			if rep.typ == TypeError || err != nil {
				f.txs = append(f.txs[:i], f.txs[i+1:]...)
			} else {
				f.txs[i] = uint32(id)
			}
			return
		}
	case typeTransactionEnd:
		f.dropTx(req.txID)
	}
}

func (f *BusFile) dropTx(id uint32) {
	for i, tx := range f.txs {
		if tx == id {
			f.txs = append(f.txs[:i], f.txs[i+1:]...)
			return
		}
	}
}

func (f *BusFile) hasTx(id uint32) bool {
	for _, tx := range f.txs {
		if tx == id {
			return true
		}
	}
	return false
}

// done counts a request of f answered; it reports whether f is now to be
// released, and claims the release. Called with b.mu held.
func (f *BusFile) done() bool {
	f.outstanding--
	if f.closed && f.outstanding == 0 && !f.released {
		f.released = true
		return true
	}
	return false
}

// writeErr is how a failed write(2) of the device looks.
func writeErr(err error) error {
	return &os.PathError{Op: "write", Path: "/dev/xen/xenbus", Err: err}
}

// Write takes one message, or a piece of one (the kernel puts the pieces
// together); bytes after the first message of p are dropped, as the kernel
// drops them. A WATCH or UNWATCH waits for xenstored's answer.
func (f *BusFile) Write(p []byte) (int, error) {
	f.wmu.Lock()
	defer f.wmu.Unlock()
	if err := f.readErr(); err != nil {
		return 0, err
	}
	if len(p) == 0 {
		return 0, nil
	}
	if len(p) > msgMax-len(f.buf) {
		f.buf = nil
		return 0, writeErr(syscall.EINVAL)
	}
	f.buf = append(f.buf, p...)
	if len(f.buf) < headerSize {
		return len(p), nil
	}
	h := parseHeader(f.buf)
	if headerSize+int64(h.len) > msgMax {
		f.buf = nil
		return 0, writeErr(syscall.E2BIG)
	}
	if len(f.buf) < headerSize+int(h.len) {
		return len(p), nil
	}
	body := bytes.Clone(f.buf[headerSize : headerSize+int(h.len)])
	f.buf = nil
	var err error
	switch h.typ {
	case TypeWatch, typeUnwatch:
		err = f.watchOp(h, body)
	default:
		err = f.forward(h, body)
	}
	if err != nil {
		return 0, err
	}
	return len(p), nil
}

// commandReply queues a reply the kernel makes itself, under the
// request's header (xenbus_command_reply).
func (f *BusFile) commandReply(req header, typ uint32, body string) {
	f.enqueue(frame(header{typ: typ, reqID: req.reqID, txID: req.txID}, []byte(body+"\x00")))
}

// forward sends a request on the ring under a request id of the bus.
func (f *BusFile) forward(h header, body []byte) error {
	b := f.b
	b.mu.Lock()
	if err := f.usable(); err != nil {
		b.mu.Unlock()
		return err
	}
	switch {
	case h.typ == typeTransactionStart:
		f.txs = append(f.txs, 0)
	case h.txID != 0 && !f.hasTx(h.txID):
		b.mu.Unlock()
		f.commandReply(h, TypeError, "ENOENT")
		return nil
	case h.typ == typeTransactionEnd && string(body) != "T\x00" && string(body) != "F\x00":
		b.mu.Unlock()
		f.commandReply(h, TypeError, "EINVAL")
		return nil
	}
	id := b.newReqID()
	b.pending[id] = &busReq{f: f, hdr: h}
	f.outstanding++
	b.mu.Unlock()
	return b.send(header{typ: h.typ, reqID: id, txID: h.txID}, body)
}

// usable refuses a request of a file that is closed or of a bus that
// stopped. Called with b.mu held.
func (f *BusFile) usable() error {
	if f.closed {
		return writeErr(os.ErrClosed)
	}
	if f.b.err != nil {
		return writeErr(f.b.err)
	}
	return nil
}

// watchOp registers or removes a watch of the file with xenstored under a
// token of the bus's, waiting for xenstored as register_xenbus_watch and
// unregister_xenbus_watch do.
func (f *BusFile) watchOp(h header, body []byte) error {
	b := f.b
	path, rest, ok := bytes.Cut(body, []byte{0})
	token, _, ok2 := bytes.Cut(rest, []byte{0})
	if !ok || !ok2 {
		f.commandReply(h, TypeError, "EINVAL")
		return nil
	}
	b.mu.Lock()
	if err := f.usable(); err != nil {
		b.mu.Unlock()
		return err
	}
	var w *busWatch
	if h.typ == TypeWatch {
		// Known before the request goes: the first event may come
		// before the reply.
		w = &busWatch{f: f, path: string(path), token: string(token), ktoken: b.newToken()}
		b.watches[w.ktoken] = w
		f.watches = append(f.watches, w)
	} else {
		for i, x := range f.watches {
			if x.path == string(path) && x.token == string(token) {
				w = x
				f.watches = append(f.watches[:i], f.watches[i+1:]...)
				delete(b.watches, w.ktoken)
				break
			}
		}
		if w == nil {
			b.mu.Unlock()
			f.commandReply(h, typeUnwatch, "OK")
			return nil
		}
	}
	id := b.newReqID()
	wait := make(chan busReply, 1)
	b.pending[id] = &busReq{f: f, hdr: h, wait: wait}
	f.outstanding++
	b.mu.Unlock()

	err := b.send(header{typ: h.typ, reqID: id}, []byte(w.path+"\x00"+w.ktoken+"\x00"))
	var r busReply
	if err == nil {
		var got bool
		select {
		case r, got = <-wait:
		case <-b.done:
		}
		if !got {
			err = writeErr(ErrBusClosed)
		}
	}
	b.mu.Lock()
	if err != nil {
		delete(b.pending, id)
	}
	failed := h.typ == TypeWatch && (err != nil || r.typ == TypeError)
	if failed {
		delete(b.watches, w.ktoken)
		for i, x := range f.watches {
			if x == w {
				f.watches = append(f.watches[:i], f.watches[i+1:]...)
				break
			}
		}
	}
	release := f.done()
	b.mu.Unlock()
	if release {
		b.release(f)
	}
	switch {
	case err != nil:
		return err
	case failed:
		// register_xenbus_watch's error is the write's; a name the
		// kernel does not know (oxenstored's EQUOTA) is EINVAL
		// (get_error in xenbus_xs.c).
		if e, ok := errnoByName[string(bytes.TrimRight(r.body, "\x00"))]; ok {
			return writeErr(e)
		}
		return writeErr(syscall.EINVAL)
	}
	// An UNWATCH's error is only logged by the kernel.
	f.commandReply(h, h.typ, "OK")
	return nil
}

// enqueue adds a message for the file's reader; past fileQueueMax the file
// fails.
func (f *BusFile) enqueue(msg []byte) {
	f.qmu.Lock()
	defer f.qmu.Unlock()
	if f.err != nil {
		return
	}
	if len(f.queue)+len(msg) > f.max {
		f.err, f.queue = ErrFileOverflow, nil
	} else {
		f.queue = append(f.queue, msg...)
	}
	f.broadcast()
}

// broadcast wakes the readers. Called with qmu held.
func (f *BusFile) broadcast() {
	close(f.changed)
	f.changed = make(chan struct{})
}

// setErr makes Read fail with err once what is queued is read (at once
// if discard).
func (f *BusFile) setErr(err error, discard bool) {
	f.qmu.Lock()
	defer f.qmu.Unlock()
	if f.err == nil {
		f.err = err
	}
	if discard {
		f.queue = nil
	}
	f.broadcast()
}

func (f *BusFile) readErr() error {
	f.qmu.Lock()
	defer f.qmu.Unlock()
	if f.err != nil {
		return writeErr(f.err)
	}
	return nil
}

// Read returns replies and events, waiting for some.
func (f *BusFile) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	f.qmu.Lock()
	for len(f.queue) == 0 {
		if f.err != nil {
			err := f.err
			f.qmu.Unlock()
			return 0, err
		}
		var timer *time.Timer
		var timeout <-chan time.Time
		if !f.deadline.IsZero() {
			d := time.Until(f.deadline)
			if d <= 0 {
				f.qmu.Unlock()
				return 0, os.ErrDeadlineExceeded
			}
			timer = time.NewTimer(d)
			timeout = timer.C
		}
		changed := f.changed
		f.qmu.Unlock()
		select {
		case <-changed:
		case <-timeout:
		}
		if timer != nil {
			timer.Stop()
		}
		f.qmu.Lock()
	}
	n := copy(p, f.queue)
	f.queue = f.queue[n:]
	if len(f.queue) == 0 {
		f.queue = nil
	}
	f.qmu.Unlock()
	return n, nil
}

// SetReadDeadline sets the deadline of Reads, pending ones included.
func (f *BusFile) SetReadDeadline(t time.Time) error {
	f.qmu.Lock()
	defer f.qmu.Unlock()
	f.deadline = t
	f.broadcast()
	return nil
}

// Close releases the file: its reads and writes fail from now on, and
// once its requests in flight are answered its transactions are aborted
// and its watches unregistered. Those of a file with nothing in flight
// are on the ring when Close returns, so that a request written on
// another file afterwards is handled after them.
func (f *BusFile) Close() error {
	f.setErr(os.ErrClosed, true)
	b := f.b
	b.mu.Lock()
	if f.closed {
		b.mu.Unlock()
		return os.ErrClosed
	}
	f.closed = true
	delete(b.files, f)
	release := f.outstanding == 0 && !f.released
	if release {
		f.released = true
	}
	b.mu.Unlock()
	if release {
		b.release(f)
	}
	return nil
}
