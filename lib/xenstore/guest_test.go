package xenstore_test

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/mtwatch/mtwatch/lib/xenstore"
	"github.com/mtwatch/mtwatch/lib/xenstore/xenstoredtest"
)

// TestGuestClient: a client over a guest's store ring (NewClient) is that
// guest to xenstored: relative paths resolve against its home, it reads and
// writes there, watches work, and dom0's nodes are refused.
func TestGuestClient(t *testing.T) {
	t.Parallel()
	in, dom0 := start(t)
	ctx := testCtx(t)
	mustWrite(t, dom0, "/local/domain/0/secret", "s")

	g := xenstore.NewClient(in.GuestConn(7))
	t.Cleanup(func() { g.Close() })

	if v := mustRead(t, g, "domid"); v != "7" {
		t.Errorf("relative domid = %q, want 7", v)
	}
	w := mustWatch(t, g, "data", "tok")
	expectEvent(t, w, "data") // the registration event
	mustWrite(t, g, "data/a", "1")
	if v := mustRead(t, dom0, "/local/domain/7/data/a"); v != "1" {
		t.Errorf("dom0 reads %q, want 1", v)
	}
	expectEvent(t, w, "data/a")
	// dom0 writing in the guest's home fires the guest's watch too.
	mustWrite(t, dom0, "/local/domain/7/data/b", "2")
	expectEvent(t, w, "data/b")

	// A request larger than the ring goes in pieces.
	big := make([]byte, 1500) // more than the ring, less than a guest's node quota
	for i := range big {
		big[i] = 'a' + byte(i%26)
	}
	if err := g.Write(ctx, "data/big", big); err != nil {
		t.Fatal(err)
	}
	if v := mustRead(t, g, "data/big"); v != string(big) {
		t.Errorf("big value read back wrong (%d bytes)", len(v))
	}

	for _, op := range []struct {
		name string
		do   func() error
	}{
		{"read", func() error { _, err := g.Read(ctx, "/local/domain/0/secret"); return err }},
		{"write", func() error { return g.Write(ctx, "/local/domain/0/secret", []byte("x")) }},
		{"rm", func() error { return g.Rm(ctx, "/local/domain/0/secret") }},
		{"directory", func() error { _, err := g.Directory(ctx, "/local/domain"); return err }},
	} {
		if err := op.do(); !errors.Is(err, syscall.EACCES) || !errors.Is(err, fs.ErrPermission) {
			t.Errorf("guest %s of dom0's node: %v, want EACCES", op.name, err)
		}
	}
	if v := mustRead(t, dom0, "/local/domain/0/secret"); v != "s" {
		t.Errorf("dom0's node = %q after the guest's attempts", v)
	}

	// A second connection for an introduced domain is refused: its ring is
	// mapped once.
	if _, err := in.Server().GuestConn(7); err == nil {
		t.Error("GuestConn of an introduced domain succeeded")
	}
}

// startQuotaBus starts a private xenstored of the kind the environment
// selects with a watch quota of 8 per guest, and guest 7 on a bus. It
// returns dom0's client and the errno a WATCH over the quota fails with on
// the guest's xenbus device: C xenstored answers E2BIG; oxenstored answers
// EQUOTA, a name the kernel does not know and makes EINVAL (xenbus_xs.c:
// get_error).
func startQuotaBus(t *testing.T) (*xenstoredtest.Instance, *xenstoredtest.GuestBus, *xenstore.Client, syscall.Errno) {
	t.Helper()
	kind, err := xenstoredtest.KindFromEnv()
	if err != nil {
		t.Fatal(err)
	}
	cfg, errno := xenstoredtest.Config{Args: []string{"-W", "8"}}, syscall.E2BIG
	if kind == xenstoredtest.Oxenstored {
		cfg, errno = xenstoredtest.Config{Settings: []string{"quota-maxwatch = 8"}}, syscall.EINVAL
	}
	in := xenstoredtest.StartWith(t, cfg)
	return in, in.GuestBus(7), dial(t, in), errno
}

// TestDeviceRefusedWatch: on the xenbus device a WATCH xenstored refuses
// (the guest's watch quota) fails the write(2) with xenstored's errno, the
// file staying usable. The client fails that call only: the watches
// registered before it go on firing, reads work, and a watch fits again
// once another is removed.
func TestDeviceRefusedWatch(t *testing.T) {
	t.Parallel()
	_, bus, dom0, errno := startQuotaBus(t)
	f, err := bus.Open()
	if err != nil {
		t.Fatal(err)
	}
	g := xenstore.NewClient(f)
	t.Cleanup(func() { g.Close() })
	ctx := testCtx(t)

	var ws []*xenstore.Watch
	for i := 0; ; i++ {
		if i > 64 {
			t.Fatal("no watch quota")
		}
		w, err := g.Watch(ctx, fmt.Sprintf("data/w%d", i), "q")
		if err != nil {
			var xe *xenstore.Error
			if !errors.Is(err, errno) || !errors.As(err, &xe) || xe.Op != "watch" {
				t.Fatalf("watch over the quota: %v, want a *xenstore.Error wrapping %v", err, errno)
			}
			if errors.Is(err, xenstore.ErrConnectionLost) {
				t.Fatalf("watch over the quota: %v: the connection counts as lost", err)
			}
			break
		}
		expectEvent(t, w, fmt.Sprintf("data/w%d", i))
		ws = append(ws, w)
	}
	if len(ws) == 0 {
		t.Fatal("no watch fitted the quota")
	}
	if err := g.Err(); err != nil {
		t.Fatalf("client ended after a refused watch: %v", err)
	}
	if v := mustRead(t, g, "domid"); v != "7" {
		t.Errorf("read after a refused watch: %q", v)
	}
	mustWrite(t, dom0, "/local/domain/7/data/w0/x", "1")
	expectEvent(t, ws[0], "data/w0/x")
	if err := ws[len(ws)-1].Unwatch(ctx); err != nil {
		t.Fatal(err)
	}
	w := mustWatch(t, g, "data/again", "q")
	expectEvent(t, w, "data/again")
	if st := bus.Stats(); st.Watches != len(ws) || st.InFlight != 0 {
		t.Errorf("bus %+v, want %d watches and nothing in flight", st, len(ws))
	}

	// A process of the guest on the bus socket (libxenstore's clients,
	// XENSTORED_PATH) sees the refusal as the device's write(2) gives it:
	// an error for that request, the connection kept.
	sock, err := bus.Socket()
	if err != nil {
		t.Fatal(err)
	}
	s, err := xenstore.Dial(ctx, xenstore.WithPath(sock))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	if _, err := s.Watch(ctx, "data/sock", "s"); !errors.Is(err, errno) {
		t.Errorf("watch over the quota on the bus socket: %v, want %v", err, errno)
	}
	if v, err := s.Read(ctx, "domid"); err != nil || string(v) != "7" {
		t.Errorf("read on the bus socket after a refused watch: %q, %v", v, err)
	}
}

// TestDeviceRefusedWatchConcurrent: callers register watches past the
// quota and read at once, their frames written by whichever of them is
// flushing, with few in-flight slots. Each refused WATCH fails its own
// call once and gives its slot back once: as many watches succeed as the
// quota holds, every other fails with the errno, and the slots are all
// free afterwards.
func TestDeviceRefusedWatchConcurrent(t *testing.T) {
	t.Parallel()
	_, bus, _, errno := startQuotaBus(t)
	f, err := bus.Open()
	if err != nil {
		t.Fatal(err)
	}
	const slots = 3
	g := xenstore.NewClient(f, xenstore.WithMaxInflight(slots))
	t.Cleanup(func() { g.Close() })
	ctx := testCtx(t)

	const n = 40
	var wg sync.WaitGroup
	var mu sync.Mutex
	ok, refused := 0, 0
	var others []error
	for i := range n {
		wg.Add(2)
		go func() {
			defer wg.Done()
			_, err := g.Watch(ctx, fmt.Sprintf("data/c%d", i), "c")
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err == nil:
				ok++
			case errors.Is(err, errno) && !errors.Is(err, xenstore.ErrConnectionLost):
				refused++
			default:
				others = append(others, err)
			}
		}()
		go func() {
			defer wg.Done()
			if _, err := g.Read(ctx, "domid"); err != nil {
				mu.Lock()
				others = append(others, err)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if len(others) != 0 {
		t.Fatalf("calls failed otherwise: %v", others)
	}
	if st := bus.Stats(); ok == 0 || refused == 0 || ok+refused != n || st.Watches != ok {
		t.Fatalf("%d watches registered, %d refused, bus %+v", ok, refused, st)
	}
	// Every slot is free: as many calls as slots wait at once for a
	// reply held back by nothing, and more follow.
	var rg sync.WaitGroup
	errs := make(chan error, 4*slots)
	for range 4 * slots {
		rg.Add(1)
		go func() {
			defer rg.Done()
			ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
			defer cancel()
			_, err := g.Read(ctx, "domid")
			errs <- err
		}()
	}
	rg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatalf("read after the refusals: %v", err)
		}
	}
	if err := g.Err(); err != nil {
		t.Fatalf("client ended: %v", err)
	}
}

// TestTransactionQuotaWait: a guest runs more transactions at once than
// its transaction quota (4 here) lets it hold. A start refused for the
// quota (C xenstored: ENOSPC; oxenstored: EQUOTA) waits for one of the
// client's transactions to end: every Transaction commits.
func TestTransactionQuotaWait(t *testing.T) {
	t.Parallel()
	kind, err := xenstoredtest.KindFromEnv()
	if err != nil {
		t.Fatal(err)
	}
	cfg := xenstoredtest.Config{Args: []string{"-t", "4"}}
	if kind == xenstoredtest.Oxenstored {
		cfg = xenstoredtest.Config{Settings: []string{"quota-transaction = 4"}}
	}
	in := xenstoredtest.StartWith(t, cfg)
	f, err := in.GuestBus(7).Open()
	if err != nil {
		t.Fatal(err)
	}
	g := xenstore.NewClient(f)
	t.Cleanup(func() { g.Close() })
	ctx := testCtx(t)

	const n = 24
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs <- g.Transaction(ctx, func(tx *xenstore.Tx) error {
				if err := tx.Write(ctx, fmt.Sprintf("data/t%d", i), []byte("1")); err != nil {
					return err
				}
				time.Sleep(20 * time.Millisecond) // held open: the others pile up
				return nil
			})
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Errorf("transaction: %v", err)
		}
	}
	dom0 := dial(t, in)
	for i := range n {
		if v := mustRead(t, dom0, fmt.Sprintf("/local/domain/7/data/t%d", i)); v != "1" {
			t.Errorf("data/t%d = %q", i, v)
		}
	}
}
