package xenstoredtest

import (
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/mtwatch/mtwatch/lib/domid"
)

// busMsg is a message read from a bus file.
type busMsg struct {
	typ, reqID, txID uint32
	body             string // without the trailing NUL of a one-string reply
}

func (m busMsg) String() string {
	return fmt.Sprintf("{type %d req %d tx %d %q}", m.typ, m.reqID, m.txID, m.body)
}

// rawFile speaks the wire protocol on a bus file, as a process of the
// guest on /dev/xen/xenbus: the harness's tests use no client of the
// project's.
type rawFile struct {
	t    *testing.T
	f    *BusFile
	name string
	// got holds messages read while looking for another.
	got []busMsg
}

func openRaw(t *testing.T, b *GuestBus, name string) *rawFile {
	t.Helper()
	f, err := b.Open()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return &rawFile{t: t, f: f, name: name}
}

// write sends one message; args are NUL-terminated, except a WRITE's value
// (the last argument), as on the wire.
func (r *rawFile) write(typ, reqID, txID uint32, args ...string) error {
	var body []byte
	for i, a := range args {
		body = append(body, a...)
		if typ != TypeWrite || i < len(args)-1 {
			body = append(body, 0)
		}
	}
	_, err := r.f.Write(frame(header{typ: typ, reqID: reqID, txID: txID}, body))
	return err
}

func (r *rawFile) send(typ, reqID, txID uint32, args ...string) {
	r.t.Helper()
	if err := r.write(typ, reqID, txID, args...); err != nil {
		r.t.Fatalf("%s: write of type %d: %v", r.name, typ, err)
	}
}

// next reads one message, within d.
func (r *rawFile) next(d time.Duration) (busMsg, error) {
	r.f.SetReadDeadline(time.Now().Add(d))
	hdr := make([]byte, headerSize)
	if _, err := io.ReadFull(r.f, hdr); err != nil {
		return busMsg{}, err
	}
	h := parseHeader(hdr)
	body := make([]byte, h.len)
	if _, err := io.ReadFull(r.f, body); err != nil {
		return busMsg{}, err
	}
	s := string(body)
	if h.typ != TypeWatchEvent {
		s = strings.TrimSuffix(s, "\x00")
	}
	return busMsg{h.typ, h.reqID, h.txID, s}, nil
}

// expect returns the first message, read or already seen, that ok
// accepts; the others are kept.
func (r *rawFile) expect(what string, ok func(busMsg) bool) busMsg {
	r.t.Helper()
	for i, m := range r.got {
		if ok(m) {
			r.got = append(r.got[:i], r.got[i+1:]...)
			return m
		}
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		m, err := r.next(time.Until(deadline))
		if err != nil {
			r.t.Fatalf("%s: %s: %v (seen %v)", r.name, what, err, r.got)
		}
		if ok(m) {
			return m
		}
		r.got = append(r.got, m)
	}
}

// reply waits for the reply to request id.
func (r *rawFile) reply(id uint32) busMsg {
	r.t.Helper()
	return r.expect(fmt.Sprintf("reply %d", id), func(m busMsg) bool { return m.typ != TypeWatchEvent && m.reqID == id })
}

// event waits for an event of path with token.
func (r *rawFile) event(path, token string) {
	r.t.Helper()
	want := path + "\x00" + token + "\x00"
	r.expect("event "+want, func(m busMsg) bool { return m.typ == TypeWatchEvent && m.body == want })
}

// events reads for d and returns the events of token seen.
func (r *rawFile) events(token string, d time.Duration) []string {
	var out []string
	keep := r.got[:0]
	for _, m := range r.got {
		if p, tok, ok := strings.Cut(strings.TrimSuffix(m.body, "\x00"), "\x00"); m.typ == TypeWatchEvent && ok && tok == token {
			out = append(out, p)
		} else {
			keep = append(keep, m)
		}
	}
	r.got = keep
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		m, err := r.next(time.Until(deadline))
		if err != nil {
			break
		}
		if p, tok, ok := strings.Cut(strings.TrimSuffix(m.body, "\x00"), "\x00"); m.typ == TypeWatchEvent && ok && tok == token {
			out = append(out, p)
			continue
		}
		r.got = append(r.got, m)
	}
	return out
}

// ok checks that m is a success with body want.
func (r *rawFile) ok(m busMsg, typ uint32, want string) {
	r.t.Helper()
	if m.typ != typ || (want != "" && m.body != want) {
		r.t.Fatalf("%s: reply %v, want type %d %q", r.name, m, typ, want)
	}
}

func (r *rawFile) errno(m busMsg, want string) {
	r.t.Helper()
	if m.typ != TypeError || m.body != want {
		r.t.Fatalf("%s: reply %v, want %s", r.name, m, want)
	}
}

// startBus starts a private xenstored of the kind the environment selects
// with small watch and transaction quotas for guests, and guest 7 on a bus.
func startBus(t *testing.T) (*Instance, *GuestBus) {
	t.Helper()
	kind, err := KindFromEnv()
	if err != nil {
		t.Fatal(err)
	}
	cfg := Config{Args: []string{"-W", "8", "-t", "4"}}
	if kind == Oxenstored {
		cfg = Config{Settings: []string{"quota-maxwatch = 8", "quota-transaction = 4"}}
	}
	in := StartWith(t, cfg)
	return in, in.GuestBus(7)
}

// TestGuestBusRequestIDs: two files number their requests alike and
// pipeline them; each gets its own replies under its own ids, and both
// are guest 7 to xenstored.
func TestGuestBusRequestIDs(t *testing.T) {
	t.Parallel()
	in, b := startBus(t)
	in.Run("xenstore-write", "/local/domain/7/a", "A", "/local/domain/7/b", "B", "/local/domain/0/secret", "s")
	in.Run("xenstore-chmod", "/local/domain/7/a", "n7")
	in.Run("xenstore-chmod", "/local/domain/7/b", "n7")
	fa, fb := openRaw(t, b, "file a"), openRaw(t, b, "file b")
	for id := uint32(1); id <= 20; id++ {
		fa.send(TypeRead, id, 0, "a")
		fb.send(TypeRead, id, 0, "b")
	}
	fa.send(TypeRead, 21, 0, "domid")
	fb.send(TypeRead, 21, 0, "/local/domain/0/secret")
	for id := uint32(1); id <= 20; id++ {
		fa.ok(fa.reply(id), TypeRead, "A")
		fb.ok(fb.reply(id), TypeRead, "B")
	}
	fa.ok(fa.reply(21), TypeRead, "7")
	fb.errno(fb.reply(21), "EACCES") // the guest's permissions: dom0's home
	if st := b.Stats(); st.InFlight != 0 || st.Files != 2 {
		t.Errorf("stats %+v after every reply", st)
	}
	if len(fa.got)+len(fb.got) != 0 {
		t.Errorf("messages nobody asked for: %v %v", fa.got, fb.got)
	}
}

// TestGuestBusWatches: two files watch the same path with the same token;
// each gets its events with its token. An UNWATCH ends one file's watch
// only; a closed file's watches are unregistered from xenstored, so the
// domain's watch quota is free again, and fire no more.
func TestGuestBusWatches(t *testing.T) {
	t.Parallel()
	in, b := startBus(t)
	fa, fb := openRaw(t, b, "file a"), openRaw(t, b, "file b")
	fa.send(TypeWatch, 1, 0, "data", "tok")
	fa.ok(fa.reply(1), TypeWatch, "OK")
	fa.event("data", "tok")
	fb.send(TypeWatch, 1, 0, "data", "tok")
	fb.ok(fb.reply(1), TypeWatch, "OK")
	fb.event("data", "tok")
	// As the kernel's device: the same path and token twice on one file
	// are two watches, each under the kernel's own token.
	fb.send(TypeWatch, 2, 0, "data", "tok")
	fb.ok(fb.reply(2), TypeWatch, "OK")
	fb.event("data", "tok")
	if st := b.Stats(); st.Watches != 3 {
		t.Fatalf("stats %+v, want 3 watches", st)
	}

	in.Run("xenstore-write", "/local/domain/7/data/x", "1")
	fa.event("data/x", "tok")
	fb.event("data/x", "tok")
	fb.event("data/x", "tok")

	fb.send(typeUnwatch, 3, 0, "data", "tok")
	fb.ok(fb.reply(3), typeUnwatch, "OK")
	fb.send(typeUnwatch, 4, 0, "data", "no-such-token") // OK too, as the kernel answers
	fb.ok(fb.reply(4), typeUnwatch, "OK")
	in.Run("xenstore-write", "/local/domain/7/data/y", "1")
	fa.event("data/y", "tok")
	if got := fb.events("tok", 300*time.Millisecond); len(got) != 1 || got[0] != "data/y" {
		t.Errorf("file b after one UNWATCH: events %q, want its other watch's data/y", got)
	}

	// File a fills the domain's watch quota; closed, it frees it.
	n := 1 // its first watch
	for i := 0; ; i++ {
		if i > 200 {
			t.Fatal("no watch quota")
		}
		err := fa.write(TypeWatch, uint32(100+i), 0, fmt.Sprintf("data/w%d", i), "q")
		if err != nil {
			// register_xenbus_watch's error is the write's.
			var errno syscall.Errno
			if !errors.As(err, &errno) {
				t.Fatalf("watch over the quota: %v, want an errno", err)
			}
			break
		}
		fa.reply(uint32(100 + i))
		n++
	}
	if st := b.Stats(); st.Watches != n+1 {
		t.Fatalf("stats %+v, want %d watches (file b has 1)", st, n+1)
	}
	fa.f.Close()
	if st := b.Stats(); st.Watches != 1 || st.Files != 1 {
		t.Fatalf("stats %+v after closing file a", st)
	}
	// The release's UNWATCHes are on the ring ahead of these.
	fc := openRaw(t, b, "file c")
	for i := 0; i < n-1; i++ {
		fc.send(TypeWatch, uint32(1+i), 0, fmt.Sprintf("data/c%d", i), "c")
		fc.ok(fc.reply(uint32(1+i)), TypeWatch, "OK")
	}
	in.Run("xenstore-write", "/local/domain/7/data/z", "1")
	fb.event("data/z", "tok")
	if got := fc.events("q", 200*time.Millisecond); len(got) != 0 {
		t.Errorf("file c got file a's events: %q", got)
	}
	if _, err := fa.f.Read(make([]byte, 1)); !errors.Is(err, os.ErrClosed) {
		t.Errorf("read of a closed file: %v", err)
	}
}

// TestGuestBusTransactions: a file may use only its own transactions; a
// closed file's transactions are aborted, so what they wrote never
// appears and the domain's transaction quota is free again.
func TestGuestBusTransactions(t *testing.T) {
	t.Parallel()
	in, b := startBus(t)
	fa, fb := openRaw(t, b, "file a"), openRaw(t, b, "file b")
	fa.send(typeTransactionStart, 1, 0, "")
	m := fa.reply(1)
	fa.ok(m, typeTransactionStart, "")
	var tx uint32
	if _, err := fmt.Sscan(m.body, &tx); err != nil || tx == 0 {
		t.Fatalf("transaction id %q", m.body)
	}
	fa.send(TypeWrite, 2, tx, "data/intx", "v")
	if r := fa.reply(2); r.typ != TypeWrite || r.txID != tx {
		t.Fatalf("reply in a transaction: %v, want tx %d", r, tx)
	}

	// File b cannot touch it.
	fb.send(TypeRead, 1, tx, "data/intx")
	fb.errno(fb.reply(1), "ENOENT")
	fb.send(typeTransactionEnd, 2, tx, "T")
	fb.errno(fb.reply(2), "ENOENT")
	// Nor end it with anything but T or F.
	fa.send(typeTransactionEnd, 3, tx, "X")
	fa.errno(fa.reply(3), "EINVAL")

	// File a takes the rest of the quota.
	n := 1
	for i := uint32(0); ; i++ {
		if i > 100 {
			t.Fatal("no transaction quota")
		}
		fa.send(typeTransactionStart, 10+i, 0, "")
		if r := fa.reply(10 + i); r.typ == TypeError {
			break
		}
		n++
	}
	if st := b.Stats(); st.Transactions != n {
		t.Fatalf("stats %+v, want %d transactions", st, n)
	}
	fb.send(typeTransactionStart, 3, 0, "")
	if r := fb.reply(3); r.typ != TypeError {
		t.Fatalf("file b started a transaction over the domain's quota: %v", r)
	}
	fa.f.Close()
	if st := b.Stats(); st.Transactions != 0 {
		t.Fatalf("stats %+v after closing file a", st)
	}
	for i := 0; i < n; i++ {
		fb.send(typeTransactionStart, uint32(10+i), 0, "")
		fb.ok(fb.reply(uint32(10+i)), typeTransactionStart, "")
	}
	fb.send(TypeRead, 100, 0, "data/intx")
	fb.errno(fb.reply(100), "ENOENT")
	if err := in.Command("xenstore-read", "/local/domain/7/data/intx").Run(); err == nil {
		t.Error("the aborted transaction's write is in the store")
	}
}

// TestGuestBusWrites: the device's write rules. A message in pieces is
// put together, bytes past a write's first message are dropped, an
// oversized message is refused with E2BIG and the file goes on.
func TestGuestBusWrites(t *testing.T) {
	t.Parallel()
	_, b := startBus(t)
	f := openRaw(t, b, "file")
	msg := frame(header{typ: TypeRead, reqID: 1}, []byte("domid\x00"))
	for _, piece := range [][]byte{msg[:3], msg[3:17], msg[17:]} {
		if _, err := f.f.Write(piece); err != nil {
			t.Fatal(err)
		}
	}
	f.ok(f.reply(1), TypeRead, "7")
	two := append(frame(header{typ: TypeRead, reqID: 2}, []byte("domid\x00")),
		frame(header{typ: TypeRead, reqID: 3}, []byte("name\x00"))...)
	if n, err := f.f.Write(two); err != nil || n != len(two) {
		t.Fatalf("write of two messages: %d, %v", n, err)
	}
	f.ok(f.reply(2), TypeRead, "7")
	if m, err := f.next(200 * time.Millisecond); err == nil {
		t.Errorf("the second message of a write was answered: %v", m)
	}
	big := frame(header{typ: TypeWrite, reqID: 4}, make([]byte, xsPayloadMax+1))
	if _, err := f.f.Write(big[:headerSize]); !errors.Is(err, syscall.E2BIG) {
		t.Errorf("oversized message: %v, want E2BIG", err)
	}
	f.send(TypeRead, 5, 0, "name")
	f.ok(f.reply(5), TypeRead, "guest7")
}

// TestGuestBusOverflow: a file whose reader does not read fails once its
// queue is full; the ring's reader never waits for it, so the other files
// go on.
func TestGuestBusOverflow(t *testing.T) {
	t.Parallel()
	in, b := startBus(t)
	b.queueMax = 4096 // before any Open
	slow, fast := openRaw(t, b, "slow"), openRaw(t, b, "fast")
	slow.send(TypeWatch, 1, 0, "data", "s")
	slow.ok(slow.reply(1), TypeWatch, "OK")
	c, err := Dial(in.Socket())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for i := 0; i < 400; i++ { // distinct paths: xenstored merges none
		if err := c.Write(fmt.Sprintf("/local/domain/7/data/n%d", i), "1"); err != nil {
			t.Fatal(err)
		}
	}
	fast.send(TypeRead, 1, 0, "domid")
	fast.ok(fast.reply(1), TypeRead, "7")
	deadline := time.Now().Add(10 * time.Second)
	for {
		_, err := slow.next(time.Second)
		if errors.Is(err, ErrFileOverflow) {
			break
		}
		if err != nil && !errors.Is(err, os.ErrDeadlineExceeded) || time.Now().After(deadline) {
			t.Fatalf("slow file: %v, want ErrFileOverflow", err)
		}
	}
}

// TestGuestBusSocket: libxenstore's clients on the bus socket are
// processes of the guest: relative paths are its home, dom0's nodes are
// refused, and each connection is a file of its own, released when the
// client exits.
func TestGuestBusSocket(t *testing.T) {
	t.Parallel()
	in, b := startBus(t)
	sock, err := b.Socket()
	if err != nil {
		t.Fatal(err)
	}
	in.Run("xenstore-write", "/local/domain/0/secret", "s")
	guest := func(name string, args ...string) (string, error) {
		cmd := in.Command(name, args...)
		cmd.Env = append(cmd.Env, "XENSTORED_PATH="+sock)
		out, err := cmd.CombinedOutput()
		return strings.TrimSpace(string(out)), err
	}
	if out, err := guest("xenstore-write", "data/cli", "hello"); err != nil {
		t.Fatalf("xenstore-write as the guest: %v: %s", err, out)
	}
	if got := in.Run("xenstore-read", "/local/domain/7/data/cli"); got != "hello" {
		t.Errorf("dom0 reads %q", got)
	}
	if out, err := guest("xenstore-read", "domid"); err != nil || out != "7" {
		t.Errorf("xenstore-read domid as the guest: %q, %v", out, err)
	}
	if out, err := guest("xenstore-read", "/local/domain/0/secret"); err == nil {
		t.Errorf("the guest read dom0's node: %q", out)
	}
	// xenstore-watch -n 2: a watch of the guest's on the bus, ended by its
	// exit.
	cmd := in.Command("xenstore-watch", "-n", "2", "data/w")
	cmd.Env = append(cmd.Env, "XENSTORED_PATH="+sock)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	line := make([]byte, 64)
	if n, err := out.Read(line); err != nil || !strings.HasPrefix(string(line[:n]), "data/w") {
		t.Fatalf("xenstore-watch's first event: %q, %v", line[:n], err)
	}
	in.Run("xenstore-write", "/local/domain/7/data/w/x", "1")
	if err := cmd.Wait(); err != nil {
		t.Fatalf("xenstore-watch -n 2: %v", err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for st := b.Stats(); st.Files != 0 || st.Watches != 0; st = b.Stats() {
		if time.Now().After(deadline) {
			t.Fatalf("stats %+v after every client exited", st)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestGuestBusRefused: a bus only for a guest not introduced yet.
func TestGuestBusRefused(t *testing.T) {
	t.Parallel()
	in := Start(t)
	in.CreateDomain(8)
	for _, id := range []domid.ID{0, 8, 32752} {
		if b, err := in.Server().GuestBus(id); err == nil {
			b.Close()
			t.Errorf("GuestBus(%d) succeeded", id)
		}
	}
}

// TestGuestBusCloseInFlight: a file closed with a TRANSACTION_START in
// flight is released once the reply came, as the kernel's reference on the
// file keeps it until then: the transaction it got is aborted, and the
// domain's transaction quota is whole again.
func TestGuestBusCloseInFlight(t *testing.T) {
	t.Parallel()
	_, b := startBus(t)
	quota := func(name string) int {
		f := openRaw(t, b, name)
		n := 0
		for id := uint32(1); ; id++ {
			if id > 100 {
				t.Fatal("no transaction quota")
			}
			f.send(typeTransactionStart, id, 0, "")
			if f.reply(id).typ == TypeError {
				break
			}
			n++
		}
		f.f.Close()
		return n
	}
	released := func() {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for st := b.Stats(); st.InFlight != 0 || st.Transactions != 0 || st.Files != 0; st = b.Stats() {
			if time.Now().After(deadline) {
				t.Fatalf("stats %+v", st)
			}
			time.Sleep(2 * time.Millisecond)
		}
	}
	n := quota("first")
	released()
	for range 3 {
		f, err := b.Open()
		if err != nil {
			t.Fatal(err)
		}
		if _, err := f.Write(frame(header{typ: typeTransactionStart, reqID: 1}, []byte{0})); err != nil {
			t.Fatal(err)
		}
		f.Close()
	}
	released()
	if got := quota("after"); got != n {
		t.Errorf("%d transactions after files closed with a START in flight, want %d", got, n)
	}
}
