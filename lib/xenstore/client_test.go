package xenstore_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/mtwatch/mtwatch/lib/domid"
	"github.com/mtwatch/mtwatch/lib/xenstore"
	"github.com/mtwatch/mtwatch/lib/xenstore/xenstoredtest"
)

func TestReadWrite(t *testing.T) {
	t.Parallel()
	in, c := start(t)
	ctx := testCtx(t)
	// The largest value (see MaxValue): oxenstored refuses one byte more
	// with E2BIG.
	max := in.MaxValue("/rw/max")
	if in.Kind() == xenstoredtest.Oxenstored {
		err := c.Write(ctx, "/rw/over", bytes.Repeat([]byte("v"), max+1))
		if !errors.Is(err, syscall.E2BIG) {
			t.Errorf("write of %d bytes: %v, want E2BIG", max+1, err)
		}
	}
	for _, tc := range []struct {
		name  string
		value []byte
	}{
		{"text", []byte("hello")},
		{"empty", []byte{}},
		{"binary", []byte{0, 1, 2, 0xff, 0, '\n'}},
		{"max", bytes.Repeat([]byte("v"), max)},
	} {
		path := "/rw/" + tc.name
		if err := c.Write(ctx, path, tc.value); err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		got, err := c.Read(ctx, path)
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if !bytes.Equal(got, tc.value) {
			t.Errorf("%s: read %q, want %q", tc.name, got, tc.value)
		}
	}
	mustWrite(t, c, "/rw/text", "again")
	if got := mustRead(t, c, "/rw/text"); got != "again" {
		t.Errorf("overwrite: read %q", got)
	}
	// Intermediate nodes exist with empty values.
	if got := mustRead(t, c, "/rw"); got != "" {
		t.Errorf("parent value %q", got)
	}
	_, err := c.Read(ctx, "/rw/missing")
	if !errors.Is(err, fs.ErrNotExist) || !errors.Is(err, syscall.ENOENT) {
		t.Errorf("read missing: %v, want ENOENT", err)
	}
	if err == nil || !strings.Contains(err.Error(), "/rw/missing") {
		t.Errorf("error %q does not name the path", err)
	}
	var xe *xenstore.Error
	if !errors.As(err, &xe) || xe.Op != "read" || xe.Path != "/rw/missing" {
		t.Errorf("error %#v is not a *xenstore.Error for read /rw/missing", err)
	}
}

func TestMkdirRmDirectory(t *testing.T) {
	t.Parallel()
	_, c := start(t)
	ctx := testCtx(t)
	if err := c.Mkdir(ctx, "/d/sub/leaf"); err != nil {
		t.Fatal(err)
	}
	if got := mustRead(t, c, "/d/sub/leaf"); got != "" {
		t.Errorf("mkdir'd node has value %q", got)
	}
	mustWrite(t, c, "/d/v", "x")
	if err := c.Mkdir(ctx, "/d/v"); err != nil {
		t.Errorf("mkdir on existing node: %v", err)
	}
	if got := mustRead(t, c, "/d/v"); got != "x" {
		t.Errorf("mkdir changed an existing value to %q", got)
	}
	names, err := c.Directory(ctx, "/d")
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(names)
	if !slices.Equal(names, []string{"sub", "v"}) {
		t.Errorf("directory /d = %q", names)
	}
	names, err = c.Directory(ctx, "/d/sub/leaf")
	if err != nil || len(names) != 0 {
		t.Errorf("directory of a leaf = %q, %v", names, err)
	}
	if _, err := c.Directory(ctx, "/nope"); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("directory of missing node: %v", err)
	}
	if err := c.Rm(ctx, "/d/sub"); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Read(ctx, "/d/sub/leaf"); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("descendant survived rm: %v", err)
	}
	names, _ = c.Directory(ctx, "/d")
	if !slices.Equal(names, []string{"v"}) {
		t.Errorf("directory after rm = %q", names)
	}
	// Root lists the top-level nodes.
	root, err := c.Directory(ctx, "/")
	if err != nil || !slices.Contains(root, "d") {
		t.Errorf("directory / = %q, %v", root, err)
	}
}

// TestDirectoryLarge lists 3000 children: far over one 4096-byte reply, so
// DIRECTORY fails with E2BIG and the client must page with DIRECTORY_PART.
func TestDirectoryLarge(t *testing.T) {
	t.Parallel()
	in, c := start(t)
	ctx := testCtx(t)
	const n = 3000
	want := make([]string, n)
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range want {
		want[i] = fmt.Sprintf("child-%05d", i)
	}
	// Pipelined writes: 16 writers on the one connection.
	for g := 0; g < 16; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := g; i < n; i += 16 {
				if err := c.Write(ctx, "/big/"+want[i], nil); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	got, err := c.Directory(ctx, "/big")
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(got)
	if !slices.Equal(got, want) {
		t.Fatalf("directory has %d entries, want %d", len(got), n)
	}
	if in.Kind() == xenstoredtest.Oxenstored {
		// oxenstored answers in one reply over 4096 bytes, which
		// libxenstore refuses (tools/libs/store/xs.c, read_message:
		// E2BIG): the C client cannot list this directory at all.
		if err := in.Command("xenstore-list", "/big").Run(); err == nil {
			t.Error("xenstore-list of an oversized directory succeeded against oxenstored")
		}
	} else {
		// The C client agrees.
		cli := strings.Split(in.Run("xenstore-list", "/big"), "\n")
		slices.Sort(cli)
		if !slices.Equal(cli, want) {
			t.Errorf("xenstore-list shows %d entries, want %d", len(cli), n)
		}
	}
	// Inside a transaction too.
	err = c.Transaction(ctx, func(tx *xenstore.Tx) error {
		got, err := tx.Directory(ctx, "/big")
		if err == nil && len(got) != n {
			err = fmt.Errorf("directory in transaction: %d entries", len(got))
		}
		return err
	})
	if err != nil {
		t.Error(err)
	}
}

func TestPerms(t *testing.T) {
	t.Parallel()
	in, c := start(t)
	ctx := testCtx(t)
	in.CreateDomain(5)
	mustWrite(t, c, "/p/node", "x")
	ps, err := c.GetPerms(ctx, "/p/node")
	if err != nil {
		t.Fatal(err)
	}
	if ps.String() != "n0" {
		t.Errorf("default perms %q, want n0", ps)
	}
	want := xenstore.Perms{{Domid: 0, Access: xenstore.AccessNone}, {Domid: 5, Access: xenstore.AccessRead}}
	if err := c.SetPerms(ctx, "/p/node", want); err != nil {
		t.Fatal(err)
	}
	got, err := c.GetPerms(ctx, "/p/node")
	if err != nil || !slices.Equal(got, want) {
		t.Errorf("perms = %v, %v; want %v", got, err, want)
	}
	// The C tools see the same list.
	if out := in.Run("xenstore-ls", "-p", "/p"); !strings.Contains(out, "(n0,r5)") {
		t.Errorf("xenstore-ls -p:\n%s", out)
	}
	// And we see what they set.
	in.Run("xenstore-chmod", "/p/node", "b5", "w0")
	got, err = c.GetPerms(ctx, "/p/node")
	if err != nil || got.String() != "b5,w0" || got.Owner() != 5 {
		t.Errorf("perms after xenstore-chmod = %v, %v", got, err)
	}
	// Owner change through a transaction.
	err = c.Transaction(ctx, func(tx *xenstore.Tx) error {
		if err := tx.SetPerms(ctx, "/p/node", xenstore.Perms{{Domid: 5, Access: xenstore.AccessNone}}); err != nil {
			return err
		}
		ps, err := tx.GetPerms(ctx, "/p/node")
		if err == nil && ps.String() != "n5" {
			err = fmt.Errorf("in transaction: perms %v", ps)
		}
		return err
	})
	if err != nil {
		t.Error(err)
	}
	if err := c.SetPerms(ctx, "/p/missing", want); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("set-perms on a missing node: %v", err)
	}
	if err := c.SetPerms(ctx, "/p/node", nil); !errors.Is(err, syscall.EINVAL) {
		t.Errorf("empty perms: %v", err)
	}
}

func TestRelativePaths(t *testing.T) {
	t.Parallel()
	in, c := start(t)
	ctx := testCtx(t)
	w := mustWatch(t, c, "mtwatch", "rel")
	if ev := next(t, w); ev.Path != "mtwatch" {
		t.Errorf("initial event of a relative watch: %q, want mtwatch", ev.Path)
	}
	mustWrite(t, c, "mtwatch/7", "x")
	if got := in.Run("xenstore-read", "/local/domain/0/mtwatch/7"); got != "x" {
		t.Errorf("relative write landed elsewhere: %q", got)
	}
	expectEvent(t, w, "mtwatch/7")
	in.Run("xenstore-write", "/local/domain/0/mtwatch/8", "y")
	expectEvent(t, w, "mtwatch/8")
	if got := mustRead(t, c, "mtwatch/8"); got != "y" {
		t.Errorf("relative read %q", got)
	}
	names, err := c.Directory(ctx, "mtwatch")
	slices.Sort(names)
	if err != nil || !slices.Equal(names, []string{"7", "8"}) {
		t.Errorf("relative directory %q, %v", names, err)
	}
	// An absolute watch on the same node reports absolute paths.
	wa := mustWatch(t, c, "/local/domain/0/mtwatch", "abs")
	expectEvent(t, wa, "/local/domain/0/mtwatch")
	if err := c.Rm(ctx, "mtwatch/7"); err != nil {
		t.Fatal(err)
	}
	expectEvent(t, w, "mtwatch/7")
	expectEvent(t, wa, "/local/domain/0/mtwatch/7")
}

func TestWatch(t *testing.T) {
	t.Parallel()
	in, c := start(t)
	ctx := testCtx(t)
	w := mustWatch(t, c, "/w/a/b", "tok")
	if ev := next(t, w); ev != (xenstore.Event{Path: "/w/a/b", Token: "tok"}) {
		t.Errorf("initial event %v", ev)
	}
	mustWrite(t, c, "/w/a/b", "1")
	expectEvent(t, w, "/w/a/b")
	mustWrite(t, c, "/w/a/b/c/d", "2")
	expectEvent(t, w, "/w/a/b/c/d")
	// A sibling does not fire.
	mustWrite(t, c, "/w/a/bb", "3")
	noEvent(t, w)
	// Removing an ancestor fires for the watched node.
	if err := c.Rm(ctx, "/w/a"); err != nil {
		t.Fatal(err)
	}
	expectEvent(t, w, "/w/a/b")
	// Changes by another client (the C CLI) are seen.
	in.Run("xenstore-write", "/w/a/b", "cli")
	expectEvent(t, w, "/w/a/b")

	// Same path and token twice is refused, as xenstored does.
	if _, err := c.Watch(ctx, "/w/a/b", "tok"); !errors.Is(err, fs.ErrExist) {
		t.Errorf("duplicate watch: %v", err)
	}
	// The same token on another path is a different watch; events are
	// never delivered to the wrong one although tokens are equal.
	w2 := mustWatch(t, c, "/w/a", "tok")
	expectEvent(t, w2, "/w/a")
	mustWrite(t, c, "/w/a/x", "")
	expectEvent(t, w2, "/w/a/x")
	noEvent(t, w)

	if err := w.Unwatch(ctx); err != nil {
		t.Fatal(err)
	}
	if err := waitEnd(t, w); !errors.Is(err, xenstore.ErrUnwatched) {
		t.Errorf("Err after unwatch: %v", err)
	}
	mustWrite(t, c, "/w/a/b", "after")
	expectEvent(t, w2, "/w/a/b")
	if err := w.Unwatch(ctx); err != nil {
		t.Errorf("second unwatch: %v", err)
	}
	// The pair may be registered again after unwatch.
	w3 := mustWatch(t, c, "/w/a/b", "tok")
	expectEvent(t, w3, "/w/a/b")
}

// TestWatchFunc: a WatchFunc watch gets its events, in order, on the
// reading goroutine, next to a channel watch and calls on the same
// connection; after Unwatch its function is never called again.
func TestWatchFunc(t *testing.T) {
	t.Parallel()
	in, c := start(t)
	ctx := testCtx(t)
	if _, err := c.WatchFunc(ctx, "/wf", "tok", nil); !errors.Is(err, syscall.EINVAL) {
		t.Errorf("nil function: %v", err)
	}
	got := make(chan xenstore.Event, 64) // fn must not block: room for all
	var calls atomic.Int32
	w, err := c.WatchFunc(ctx, "/wf", "tok", func(ev xenstore.Event) {
		calls.Add(1)
		got <- ev
	})
	if err != nil {
		t.Fatal(err)
	}
	other := mustWatch(t, c, "/wf", "other")
	expectEvent(t, other, "/wf")
	recv := func(path string) {
		t.Helper()
		select {
		case ev := <-got:
			if ev != (xenstore.Event{Path: path, Token: "tok"}) {
				t.Fatalf("event %v, want %s", ev, path)
			}
		case <-time.After(testTimeout):
			t.Fatalf("no event for %s", path)
		}
	}
	recv("/wf")
	for i := 0; i < 20; i++ {
		mustWrite(t, c, fmt.Sprintf("/wf/%d", i), "v")
	}
	for i := 0; i < 20; i++ {
		recv(fmt.Sprintf("/wf/%d", i))
		expectEvent(t, other, fmt.Sprintf("/wf/%d", i))
	}
	in.Run("xenstore-write", "/wf/cli", "x")
	recv("/wf/cli")
	expectEvent(t, other, "/wf/cli")
	select {
	case ev, ok := <-w.Events():
		t.Fatalf("Events of a WatchFunc watch yielded %v, %v", ev, ok)
	default:
	}

	if err := w.Unwatch(ctx); err != nil {
		t.Fatal(err)
	}
	if err := waitEnd(t, w); !errors.Is(err, xenstore.ErrUnwatched) {
		t.Errorf("Err after unwatch: %v", err)
	}
	n := calls.Load()
	mustWrite(t, c, "/wf/after", "v")
	expectEvent(t, other, "/wf/after") // read after any event for w would be
	if calls.Load() != n {
		t.Errorf("function called after Unwatch returned")
	}
}

func TestSpecialWatchesAndDomains(t *testing.T) {
	t.Parallel()
	in, c := start(t)
	ctx := testCtx(t)
	intro := mustWatch(t, c, "@introduceDomain", "intro")
	expectEvent(t, intro, "@introduceDomain")
	rel := mustWatch(t, c, "@releaseDomain", "rel")
	expectEvent(t, rel, "@releaseDomain")

	in.CreateDomain(7)
	expectEvent(t, intro, "@introduceDomain")
	ok, err := c.IsDomainIntroduced(ctx, 7)
	if err != nil || !ok {
		t.Errorf("is-domain-introduced 7 = %v, %v", ok, err)
	}
	p, err := c.GetDomainPath(ctx, 7)
	if err != nil || p != "/local/domain/7" {
		t.Errorf("get-domain-path 7 = %q, %v", p, err)
	}
	if got := mustRead(t, c, "/local/domain/7/name"); got != "guest7" {
		t.Errorf("name %q", got)
	}
	in.KillDomain(7)
	expectEvent(t, rel, "@releaseDomain")
	if ok, err := c.IsDomainIntroduced(ctx, 7); err != nil || ok {
		t.Errorf("after kill, is-domain-introduced 7 = %v, %v", ok, err)
	}
	if _, err := c.Read(ctx, "/local/domain/7/name"); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("nodes of the dead domain survive: %v", err)
	}

	// Our own INTRODUCE and RELEASE (xenemu accepts any ring address).
	if err := c.Introduce(ctx, 9, 1, 1); err != nil {
		t.Fatal(err)
	}
	expectEvent(t, intro, "@introduceDomain")
	if ok, _ := c.IsDomainIntroduced(ctx, 9); !ok {
		t.Error("domain 9 not introduced")
	}
	if err := c.Resume(ctx, 9); err != nil {
		t.Errorf("resume: %v", err)
	}
	// The release shows in IS_DOMAIN_INTRODUCED (and fires
	// @releaseDomain: TestReleaseFiresReleaseDomain).
	if err := c.Release(ctx, 9); err != nil {
		t.Fatal(err)
	}
	if ok, _ := c.IsDomainIntroduced(ctx, 9); ok {
		t.Error("domain 9 still introduced after release")
	}
	in.CreateDomain(10)
	in.CreateDomain(11)
	if err := c.SetTarget(ctx, 11, 10); err != nil {
		t.Errorf("set-target: %v", err)
	}
	// The C xenstored refuses to release a domain it does not know with
	// ENOENT; oxenstored fails it with EINVAL.
	wantErr := syscall.ENOENT
	if in.Kind() == xenstoredtest.Oxenstored {
		wantErr = syscall.EINVAL
	}
	if err := c.Release(ctx, 12); !errors.Is(err, wantErr) {
		t.Errorf("release of an unknown domain: %v, want %v", err, wantErr)
	}
	if err := c.Introduce(ctx, domid.Invalid, 1, 1); !errors.Is(err, syscall.EINVAL) {
		t.Errorf("introduce of a reserved domid: %v", err)
	}
}

func TestControlAndFeatures(t *testing.T) {
	t.Parallel()
	in, c := start(t)
	ctx := testCtx(t)
	if in.Kind() == xenstoredtest.Oxenstored {
		// oxenstored's CONTROL (process.ml: do_debug) knows a few
		// commands, "quota <domid>" among them, and acknowledges any
		// other with OK rather than refusing it.
		q, err := c.Control(ctx, "quota", "0")
		if err != nil || !bytes.HasPrefix(q, []byte("dom0 quota:")) {
			t.Errorf("control quota 0 = %q, %v", q, err)
		}
		if r, err := c.Control(ctx, "no-such-command"); err != nil || string(r) != "OK" {
			t.Errorf("unknown control command: %q, %v, want OK", r, err)
		}
	} else {
		help, err := c.Control(ctx, "help")
		if err != nil || !bytes.Contains(help, []byte("quota")) {
			t.Errorf("control help = %q, %v", help, err)
		}
		if _, err := c.Control(ctx, "no-such-command"); !errors.Is(err, syscall.EINVAL) {
			t.Errorf("unknown control command: %v", err)
		}
	}
	// Neither xenstored 4.17 has GET_FEATURE/SET_FEATURE.
	_, err := c.GetFeature(ctx, 0)
	if !errors.Is(err, xenstore.ErrNotSupported) || !errors.Is(err, syscall.ENOSYS) {
		t.Errorf("get-feature: %v, want ErrNotSupported", err)
	}
	if err := c.SetFeature(ctx, 0, 1); !errors.Is(err, xenstore.ErrNotSupported) {
		t.Errorf("set-feature: %v, want ErrNotSupported", err)
	}
}

func TestTransaction(t *testing.T) {
	t.Parallel()
	in, c := start(t)
	ctx := testCtx(t)
	w := mustWatch(t, c, "/tx", "tx")
	expectEvent(t, w, "/tx")
	err := c.Transaction(ctx, func(tx *xenstore.Tx) error {
		if err := tx.Write(ctx, "/tx/a", []byte("1")); err != nil {
			return err
		}
		if err := tx.Mkdir(ctx, "/tx/d"); err != nil {
			return err
		}
		// Not visible outside before commit, and no event yet.
		if _, err := c.Read(ctx, "/tx/a"); !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("uncommitted write visible: %v", err)
		}
		v, err := tx.Read(ctx, "/tx/a")
		if err != nil || string(v) != "1" {
			return fmt.Errorf("read in transaction %q, %v", v, err)
		}
		names, err := tx.Directory(ctx, "/tx")
		slices.Sort(names)
		if err != nil || !slices.Equal(names, []string{"a", "d"}) {
			return fmt.Errorf("directory in transaction %q, %v", names, err)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	expectEvent(t, w, "/tx/a")
	if got := in.Run("xenstore-read", "/tx/a"); got != "1" {
		t.Errorf("committed value %q", got)
	}

	// fn's error aborts.
	boom := errors.New("boom")
	var kept *xenstore.Tx
	err = c.Transaction(ctx, func(tx *xenstore.Tx) error {
		kept = tx
		if err := tx.Write(ctx, "/tx/kept", nil); err != nil {
			return err
		}
		return tx.Rm(ctx, "/tx/a")
	})
	if err != nil {
		t.Fatal(err)
	}
	err = c.Transaction(ctx, func(tx *xenstore.Tx) error {
		if err := tx.Write(ctx, "/tx/aborted", nil); err != nil {
			return err
		}
		return boom
	})
	if !errors.Is(err, boom) {
		t.Errorf("transaction returned %v, want fn's error", err)
	}
	if _, err := c.Read(ctx, "/tx/aborted"); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("aborted write visible: %v", err)
	}
	if _, err := c.Read(ctx, "/tx/a"); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("committed rm not applied: %v", err)
	}
	if err := kept.Write(ctx, "/tx/late", nil); !errors.Is(err, xenstore.ErrTxDone) {
		t.Errorf("write after commit: %v", err)
	}

	// Explicit Begin/Abort.
	tx, err := c.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := tx.Write(ctx, "/tx/explicit", nil); err != nil {
		t.Fatal(err)
	}
	if err := tx.Abort(ctx); err != nil {
		t.Fatal(err)
	}
	if err := tx.Commit(ctx); !errors.Is(err, xenstore.ErrTxDone) {
		t.Errorf("commit after abort: %v", err)
	}
	if _, err := c.Read(ctx, "/tx/explicit"); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("aborted write visible: %v", err)
	}
}

// TestTransactionConflict races read-modify-write transactions from two
// connections on one counter: conflicts must be retried until every
// increment lands exactly once.
func TestTransactionConflict(t *testing.T) {
	t.Parallel()
	in, a := start(t, xenstore.WithTxAttempts(1000))
	b := dial(t, in, xenstore.WithTxAttempts(1000))
	ctx := testCtx(t)
	mustWrite(t, a, "/counter", "0")
	const perWorker, workers = 25, 4
	var mu sync.Mutex
	attempts := 0
	var wg sync.WaitGroup
	errs := make(chan error, 2*workers)
	for _, c := range []*xenstore.Client{a, b} {
		for g := 0; g < workers; g++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := 0; i < perWorker; i++ {
					err := c.Transaction(ctx, func(tx *xenstore.Tx) error {
						mu.Lock()
						attempts++
						mu.Unlock()
						v, err := tx.Read(ctx, "/counter")
						if err != nil {
							return err
						}
						n, err := strconv.Atoi(string(v))
						if err != nil {
							return err
						}
						return tx.Write(ctx, "/counter", []byte(strconv.Itoa(n+1)))
					})
					if err != nil {
						errs <- err
						return
					}
				}
			}()
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	want := strconv.Itoa(2 * workers * perWorker)
	if got := mustRead(t, a, "/counter"); got != want {
		t.Errorf("counter = %s, want %s", got, want)
	}
	if attempts <= 2*workers*perWorker {
		t.Errorf("%d attempts for %d transactions: no conflict was exercised", attempts, 2*workers*perWorker)
	}
	t.Logf("%d attempts for %d transactions", attempts, 2*workers*perWorker)
}

// TestTransactionAttemptsBounded checks that a transaction that always
// conflicts gives up with EAGAIN after the configured attempts.
func TestTransactionAttemptsBounded(t *testing.T) {
	t.Parallel()
	in, c := start(t, xenstore.WithTxAttempts(3))
	other := dial(t, in)
	ctx := testCtx(t)
	mustWrite(t, c, "/hot", "0")
	runs := 0
	err := c.Transaction(ctx, func(tx *xenstore.Tx) error {
		runs++
		if _, err := tx.Read(ctx, "/hot"); err != nil {
			return err
		}
		if err := tx.Write(ctx, "/hot", []byte("mine")); err != nil {
			return err
		}
		// A conflicting commit from another connection.
		return other.Write(ctx, "/hot", []byte(strconv.Itoa(runs)))
	})
	if !errors.Is(err, syscall.EAGAIN) {
		t.Fatalf("err = %v, want EAGAIN", err)
	}
	if runs != 3 {
		t.Errorf("fn ran %d times, want 3", runs)
	}
}

func TestCLIInterop(t *testing.T) {
	t.Parallel()
	in, c := start(t)
	// xenstore-write, then our Read.
	in.Run("xenstore-write", "/interop/from-c", "c-value")
	if got := mustRead(t, c, "/interop/from-c"); got != "c-value" {
		t.Errorf("read of a C write: %q", got)
	}
	// Our Write, then xenstore-read and xenstore-list.
	mustWrite(t, c, "/interop/from-go", "go-value")
	if got := in.Run("xenstore-read", "/interop/from-go"); got != "go-value" {
		t.Errorf("xenstore-read of our write: %q", got)
	}
	if got := in.Run("xenstore-list", "/interop"); got != "from-c\nfrom-go" {
		t.Errorf("xenstore-list: %q", got)
	}
	// xenstore-write seen by our watch.
	w := mustWatch(t, c, "/interop", "i")
	expectEvent(t, w, "/interop")
	in.Run("xenstore-write", "/interop/watched", "1")
	expectEvent(t, w, "/interop/watched")
	in.Run("xenstore-rm", "/interop/from-go")
	expectEvent(t, w, "/interop/from-go")
	if _, err := c.Read(testCtx(t), "/interop/from-go"); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("read after xenstore-rm: %v", err)
	}
}

// TestPyxsInterop cross-checks with a third, independent client.
func TestPyxsInterop(t *testing.T) {
	t.Parallel()
	in, c := start(t)
	mustWrite(t, c, "/py/v", "from-go")
	script := `
import sys
from pyxs import Client
with Client(unix_socket_path=sys.argv[1]) as c:
    print(c[b"/py/v"].decode())
    c[b"/py/w"] = b"from-python"
`
	out, err := in.Command("/usr/bin/python3", "-c", script, in.Socket()).CombinedOutput()
	if err != nil {
		t.Fatalf("pyxs: %v\n%s", err, out)
	}
	if got := strings.TrimSpace(string(out)); got != "from-go" {
		t.Errorf("pyxs read %q", got)
	}
	if got := mustRead(t, c, "/py/w"); got != "from-python" {
		t.Errorf("read of pyxs write: %q", got)
	}
}

func TestValidation(t *testing.T) {
	t.Parallel()
	in, c := start(t)
	ctx := testCtx(t)
	long := "/" + strings.Repeat("a", xenstore.AbsPathMax)
	for _, p := range []string{"", "//a", "/a//b", "/a/", "a/", "/a b", "/a\x00b", "/ä", "/a.b", long, strings.Repeat("r", xenstore.RelPathMax+1)} {
		_, err := c.Read(ctx, p)
		if !errors.Is(err, syscall.EINVAL) {
			t.Errorf("read %q: %v, want EINVAL", p, err)
		}
		if err := c.Write(ctx, p, nil); !errors.Is(err, syscall.EINVAL) {
			t.Errorf("write %q: %v, want EINVAL", p, err)
		}
	}
	if err := c.Write(ctx, "/v", make([]byte, xenstore.PayloadMax)); !errors.Is(err, syscall.EINVAL) {
		t.Errorf("oversized value: %v", err)
	} else if !strings.Contains(err.Error(), "/v") {
		t.Errorf("error %q does not name the path", err)
	}
	if _, err := c.Watch(ctx, "/w", "bad\x00token"); !errors.Is(err, syscall.EINVAL) {
		t.Errorf("NUL in token: %v", err)
	}
	if _, err := c.Watch(ctx, "/w/", "t"); !errors.Is(err, syscall.EINVAL) {
		t.Errorf("watch on invalid path: %v", err)
	}
	// Nothing reached the server: the store still has no /v and the
	// connection is healthy.
	if _, err := c.Read(ctx, "/v"); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("after rejected writes: %v", err)
	}
	if out := in.Run("xenstore-ls", "/"); strings.Contains(out, "a b") {
		t.Errorf("invalid node reached the store:\n%s", out)
	}
	// The largest valid paths are accepted.
	maxAbs := "/" + strings.Repeat("a", xenstore.AbsPathMax-1)
	if err := xenstore.ValidatePath(maxAbs); err != nil {
		t.Errorf("max absolute path: %v", err)
	}
}

func TestDiscovery(t *testing.T) {
	in := xenstoredtest.Start(t)
	ctx := testCtx(t)
	t.Setenv("XENSTORED_PATH", in.Socket())
	t.Setenv("XENSTORED_RUNDIR", "/nonexistent")
	c, err := xenstore.Dial(ctx)
	if err != nil {
		t.Fatal(err)
	}
	mustWrite(t, c, "/disc", "1")
	if c.Path() != in.Socket() {
		t.Errorf("Path() = %q, want %q", c.Path(), in.Socket())
	}
	c.Close()

	t.Setenv("XENSTORED_PATH", "")
	t.Setenv("XENSTORED_RUNDIR", in.Dir())
	if p := xenstore.Paths(); p[0] != filepath.Join(in.Dir(), "socket") {
		t.Errorf("paths %q", p)
	}
	c, err = xenstore.Dial(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if got := mustRead(t, c, "/disc"); got != "1" {
		t.Errorf("read %q", got)
	}
	// The candidate that answered, not "" for "the default".
	if c.Path() != filepath.Join(in.Dir(), "socket") {
		t.Errorf("Path() = %q, want %q", c.Path(), filepath.Join(in.Dir(), "socket"))
	}
	c.Close()

	_, err = xenstore.Dial(ctx, xenstore.WithPath(filepath.Join(t.TempDir(), "none")))
	if err == nil || !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("dial of a missing socket: %v", err)
	}
}

// TestDialBurst: xenstored listens with a backlog of one, so a burst of
// simultaneous connects (hooks of domains started together) overflows it;
// Dial must wait as libxenstore's blocking connect does, not fail.
func TestDialBurst(t *testing.T) {
	t.Parallel()
	in := xenstoredtest.Start(t)
	ctx := testCtx(t)
	const n = 64
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			c, err := xenstore.Dial(ctx, xenstore.WithPath(in.Socket()))
			if err != nil {
				t.Errorf("dial: %v", err)
				return
			}
			defer c.Close()
			if _, err := c.Read(ctx, "/tool/xenstored"); err != nil && !errors.Is(err, fs.ErrNotExist) {
				t.Errorf("read: %v", err)
			}
		}()
	}
	close(start)
	wg.Wait()
}

// TestDeviceFraming runs the xenbus-device write mode (one message per
// write) over the socket: the rest of the code path is the one the device
// uses.
func TestDeviceFraming(t *testing.T) {
	t.Parallel()
	in := xenstoredtest.Start(t)
	conn, err := net.Dial("unix", in.Socket())
	if err != nil {
		t.Fatal(err)
	}
	c := xenstore.NewClientForTest(conn, true)
	defer c.Close()
	ctx := testCtx(t)
	var wg sync.WaitGroup
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 50; i++ {
				p := fmt.Sprintf("/dev/%d/%d", g, i)
				if err := c.Write(ctx, p, []byte(p)); err != nil {
					t.Error(err)
					return
				}
				if v, err := c.Read(ctx, p); err != nil || string(v) != p {
					t.Errorf("read %s = %q, %v", p, v, err)
					return
				}
			}
		}()
	}
	wg.Wait()
}

// pidOf returns the pid of the instance's xenstored.
func pidOf(t *testing.T, in *xenstoredtest.Instance) int {
	t.Helper()
	pid := in.Pid()
	if pid == 0 {
		t.Fatal("xenstored not running")
	}
	return pid
}

// TestServerRestart kills xenstored while calls are outstanding (it is
// stopped first, so the calls are certainly pending): every call fails with
// ErrConnectionLost, watches end with it, and a new client works after the
// restart.
func TestServerRestart(t *testing.T) {
	t.Parallel()
	in, c := start(t)
	ctx := testCtx(t)
	w := mustWatch(t, c, "/r", "r")
	expectEvent(t, w, "/r")
	pid := pidOf(t, in)
	if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	const n = 16
	errs := make(chan error, n)
	for i := 0; i < n; i++ {
		go func() {
			_, err := c.Read(ctx, "/r")
			errs <- err
		}()
	}
	time.Sleep(50 * time.Millisecond) // let the requests reach the socket
	syscall.Kill(pid, syscall.SIGKILL)
	in.Restart()
	for i := 0; i < n; i++ {
		if err := <-errs; !errors.Is(err, xenstore.ErrConnectionLost) {
			t.Errorf("pending read: %v, want ErrConnectionLost", err)
		}
	}
	if err := waitEnd(t, w); !errors.Is(err, xenstore.ErrConnectionLost) {
		t.Errorf("watch ended with %v", err)
	}
	if _, err := c.Read(ctx, "/r"); !errors.Is(err, xenstore.ErrConnectionLost) {
		t.Errorf("read after loss: %v", err)
	}
	if _, err := c.Watch(ctx, "/r", "again"); !errors.Is(err, xenstore.ErrConnectionLost) {
		t.Errorf("watch after loss: %v", err)
	}
	select {
	case <-c.Done():
	default:
		t.Error("Done not closed after loss")
	}
	c2 := dial(t, in)
	mustWrite(t, c2, "/r", "back")
}

// TestContextCancel abandons calls to a stopped server, then checks that
// their late replies are dropped cleanly and the connection stays usable.
// TestReaderHandOver: a caller reading for everyone (the elected reader)
// whose context ends must hand reading over, so that the calls still
// waiting get their replies and the abandoned reply is consumed.
func TestReaderHandOver(t *testing.T) {
	t.Parallel()
	in, c := start(t)
	mustWrite(t, c, "/ho", "v")
	pid := pidOf(t, in)
	if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	defer syscall.Kill(pid, syscall.SIGCONT)

	// The first caller finds nobody reading and reads itself; the others
	// queue behind it.
	short, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	firstErr := make(chan error, 1)
	go func() {
		_, err := c.Read(short, "/ho")
		firstErr <- err
	}()
	waitReader(t, c, "caller")
	const waiters = 4
	results := make(chan string, waiters)
	for i := 0; i < waiters; i++ {
		go func() {
			v, err := c.Read(testCtx(t), "/ho")
			if err != nil {
				results <- "error: " + err.Error()
				return
			}
			results <- string(v)
		}()
	}
	if err := <-firstErr; !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("first read: %v, want DeadlineExceeded", err)
	}
	// The waiters' requests are still unanswered: the first caller handed
	// reading over to the background reader.
	waitReader(t, c, "background")
	syscall.Kill(pid, syscall.SIGCONT)
	for i := 0; i < waiters; i++ {
		if got := <-results; got != "v" {
			t.Fatalf("waiting read: %s", got)
		}
	}
	if got := mustRead(t, c, "/ho"); got != "v" {
		t.Fatalf("read after hand-over: %q", got)
	}
	if err := c.Err(); err != nil {
		t.Fatalf("connection ended: %v", err)
	}
}

func TestContextCancel(t *testing.T) {
	t.Parallel()
	in, c := start(t)
	mustWrite(t, c, "/cc", "v")
	pid := pidOf(t, in)
	if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	continued := false
	defer func() {
		if !continued {
			syscall.Kill(pid, syscall.SIGCONT)
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	_, err := c.Read(ctx, "/cc")
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("read: %v, want DeadlineExceeded", err)
	}
	// Each with a fresh context, so that the request is sent.
	ctx, cancel = context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if _, err := c.Watch(ctx, "/cc", "abandoned"); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("watch: %v", err)
	}
	ctx, cancel = context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if _, err := c.Begin(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("begin: %v", err)
	}
	done, cancel2 := context.WithCancel(context.Background())
	cancel2()
	if _, err := c.Read(done, "/cc"); !errors.Is(err, context.Canceled) {
		t.Errorf("read with a cancelled context: %v", err)
	}
	syscall.Kill(pid, syscall.SIGCONT)
	continued = true
	if got := mustRead(t, c, "/cc"); got != "v" {
		t.Errorf("read after abandoned calls: %q", got)
	}
	// The server did start the abandoned transaction and register the
	// abandoned watch once it resumed; the client undid both (xenstored's
	// trace shows the requests).
	// oxenstored's access log is the trace there: it names the requests
	// but not a transaction end's argument.
	txEnd, unwatch := []byte("TRANSACTION_END (F )"), []byte("UNWATCH (/cc ")
	if in.Kind() == xenstoredtest.Oxenstored {
		txEnd, unwatch = []byte(" t end"), []byte(" unwatch   /cc ")
	}
	deadline := time.Now().Add(testTimeout)
	for {
		trace, err := os.ReadFile(in.TracePath())
		if err != nil {
			t.Fatal(err)
		}
		if bytes.Contains(trace, txEnd) && bytes.Contains(trace, unwatch) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("abandoned transaction or watch not undone on the server")
		}
		time.Sleep(5 * time.Millisecond)
	}
	w := mustWatch(t, c, "/cc", "abandoned")
	expectEvent(t, w, "/cc")
	if c.Err() != nil {
		t.Errorf("connection broken: %v", c.Err())
	}
}

// TestConcurrency drives one connection from many goroutines (run with
// -race): writes, reads, directories, transactions and watches interleave.
func TestConcurrency(t *testing.T) {
	t.Parallel()
	_, c := start(t)
	ctx := testCtx(t)
	const goroutines, iters = 32, 40
	w := mustWatch(t, c, "/conc", "conc")
	expectEvent(t, w, "/conc")
	seen := make(chan int, 1)
	go func() {
		n := 0
		for range w.Events() {
			n++
		}
		seen <- n
	}()
	var wg sync.WaitGroup
	for g := 0; g < goroutines; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < iters; i++ {
				p := fmt.Sprintf("/conc/%d/%d", g, i)
				want := []byte(p)
				if err := c.Write(ctx, p, want); err != nil {
					t.Error(err)
					return
				}
				got, err := c.Read(ctx, p)
				if err != nil || !bytes.Equal(got, want) {
					t.Errorf("read %s = %q, %v", p, got, err)
					return
				}
				if i%10 == 0 {
					names, err := c.Directory(ctx, fmt.Sprintf("/conc/%d", g))
					if i > 0 {
						names = slices.DeleteFunc(names, func(s string) bool { return s == "tx" })
					}
					if err != nil || len(names) != i+1 {
						t.Errorf("directory: %d names, %v", len(names), err)
						return
					}
					err = c.Transaction(ctx, func(tx *xenstore.Tx) error {
						return tx.Write(ctx, fmt.Sprintf("/conc/%d/tx", g), want)
					})
					if err != nil {
						t.Error(err)
						return
					}
					w2, err := c.Watch(ctx, p, "inner")
					if err != nil {
						t.Error(err)
						return
					}
					if err := awaitEvent(w2, p); err != nil {
						t.Error(err)
						return
					}
					if err := w2.Unwatch(ctx); err != nil {
						t.Error(err)
						return
					}
				}
			}
		}()
	}
	wg.Wait()
	if err := w.Unwatch(ctx); err != nil {
		t.Fatal(err)
	}
	if n := <-seen; n == 0 {
		t.Error("watch saw no events")
	}
}
