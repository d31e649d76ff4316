package xenstore_test

import (
	"errors"
	"fmt"
	"slices"
	"syscall"
	"testing"

	"github.com/mtwatch/mtwatch/lib/xenstore"
	"github.com/mtwatch/mtwatch/lib/xenstore/xenstoredtest"
)

// Where the C xenstored and oxenstored answer differently (see
// docs/testing.md): each test states what each daemon does.

// TestSpecialNodes: oxenstored keeps @introduceDomain and @releaseDomain as
// nodes at the root of its tree (xenstored.ml writes Store.Path.specials
// at start), so a listing of / shows them; for the C xenstored they are
// only names a watch can be registered on.
func TestSpecialNodes(t *testing.T) {
	t.Parallel()
	in, c := start(t)
	ctx := testCtx(t)
	root, err := c.Directory(ctx, "/")
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"@introduceDomain", "@releaseDomain"} {
		listed := slices.Contains(root, name)
		if want := in.Kind() == xenstoredtest.Oxenstored; listed != want {
			t.Errorf("%s: / lists %q: %v, want %v (root %q)", in.Kind(), name, listed, want, root)
		}
	}
}

// TestReleaseFiresReleaseDomain: RELEASE of a known domain fires
// @releaseDomain on both daemons (process.ml: do_release; xenstored_domain.c:
// do_release frees the domain's connection, which owns the domain, and
// destroy_domain fires it).
func TestReleaseFiresReleaseDomain(t *testing.T) {
	t.Parallel()
	in, c := start(t)
	ctx := testCtx(t)
	w := mustWatch(t, c, "@releaseDomain", "rel")
	expectEvent(t, w, "@releaseDomain")
	in.IntroduceDomain(9)
	if err := c.Release(ctx, 9); err != nil {
		t.Fatal(err)
	}
	expectEvent(t, w, "@releaseDomain")
}

// TestGuestQuotas: a guest may hold a bounded number of watches and of
// open transactions, dom0 is exempt. The C xenstored's defaults are 128
// watches and 10 transactions, oxenstored's quota-maxwatch (100) and
// quota-transaction (10); both compare the count before adding to it
// (xenstored_watch.c: do_watch, xenstored_transaction.c:
// do_transaction_start; connection.ml: add_watch, process.ml:
// do_transaction_start), so one more than the quota is accepted. The C
// xenstored refuses the next watch with E2BIG and transaction with ENOSPC,
// oxenstored both with EQUOTA (EDQUOT here).
func TestGuestQuotas(t *testing.T) {
	t.Parallel()
	in, dom0 := start(t)
	ctx := testCtx(t)
	g := xenstore.NewClient(in.GuestConn(7))
	t.Cleanup(func() { g.Close() })

	maxWatch, maxTx := 128+1, 10+1
	watchErr, txErr := syscall.E2BIG, syscall.ENOSPC
	if in.Kind() == xenstoredtest.Oxenstored {
		maxWatch = 100 + 1
		watchErr, txErr = syscall.EDQUOT, syscall.EDQUOT
	}
	var watches []*xenstore.Watch
	var werr error
	for i := 0; i <= maxWatch+2; i++ {
		w, err := g.Watch(ctx, fmt.Sprintf("data/w%d", i), "tok")
		if err != nil {
			werr = err
			break
		}
		watches = append(watches, w)
	}
	if len(watches) != maxWatch || !errors.Is(werr, watchErr) {
		t.Errorf("%s: guest registered %d watches (then %v), want %d (then %v)", in.Kind(), len(watches), werr, maxWatch, watchErr)
	}
	for _, w := range watches {
		w.Unwatch(ctx)
	}

	var txs []*xenstore.Tx
	var terr error
	for i := 0; i <= maxTx+2; i++ {
		tx, err := g.Begin(ctx)
		if err != nil {
			terr = err
			break
		}
		txs = append(txs, tx)
	}
	if len(txs) != maxTx || !errors.Is(terr, txErr) {
		t.Errorf("%s: guest opened %d transactions (then %v), want %d (then %v)", in.Kind(), len(txs), terr, maxTx, txErr)
	}
	for _, tx := range txs {
		tx.Abort(ctx)
	}

	// dom0 is held to neither.
	for i := 0; i <= maxWatch; i++ {
		if _, err := dom0.Watch(ctx, fmt.Sprintf("/d0/w%d", i), "tok"); err != nil {
			t.Fatalf("dom0 watch %d: %v", i, err)
		}
	}
	for i := 0; i <= maxTx; i++ {
		tx, err := dom0.Begin(ctx)
		if err != nil {
			t.Fatalf("dom0 transaction %d: %v", i, err)
		}
		defer tx.Abort(ctx)
	}
}

// TestTransactionConflicts: a transaction that read a node another
// connection then changed fails with EAGAIN on both daemons. One that only
// wrote such a node fails on the C xenstored too, while oxenstored, which
// tries to merge a transaction into the changed store rather than fail it
// (transaction.ml: commit, can_coalesce; merge-activate on, as Debian
// ships it), commits it: the transaction's write wins.
func TestTransactionConflicts(t *testing.T) {
	t.Parallel()
	in, a := start(t)
	b := dial(t, in)
	ctx := testCtx(t)
	mustWrite(t, a, "/tx/a", "0")
	mustWrite(t, a, "/tx/b", "0")
	tx, err := a.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Read(ctx, "/tx/a"); err != nil {
		t.Fatal(err)
	}
	mustWrite(t, b, "/tx/a", "1")
	if err := tx.Write(ctx, "/tx/b", []byte("from tx")); err != nil {
		t.Fatal(err)
	}
	if err := tx.Commit(ctx); !errors.Is(err, syscall.EAGAIN) {
		t.Errorf("%s: commit after a node read changed: %v, want EAGAIN", in.Kind(), err)
	}

	tx, err = a.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := tx.Write(ctx, "/tx/a", []byte("from tx")); err != nil {
		t.Fatal(err)
	}
	mustWrite(t, b, "/tx/a", "2")
	err = tx.Commit(ctx)
	if in.Kind() == xenstoredtest.Oxenstored {
		if err != nil {
			t.Errorf("oxenstored: commit of a write-only conflict: %v, want it merged", err)
		}
		if v := mustRead(t, a, "/tx/a"); v != "from tx" {
			t.Errorf("oxenstored: /tx/a = %q after the merged commit", v)
		}
	} else if !errors.Is(err, syscall.EAGAIN) {
		t.Errorf("C xenstored: commit of a write-only conflict: %v, want EAGAIN", err)
	}
}

// TestTransactionConflictScope: a transaction reads /tx/a and /tx/b and
// writes /tx/a while another connection writes /tx/c, a node the
// transaction never touched: both daemons commit it (a change beside the
// nodes a transaction used is no conflict on either).
func TestTransactionConflictScope(t *testing.T) {
	t.Parallel()
	in, a := start(t)
	b := dial(t, in)
	ctx := testCtx(t)
	for _, p := range []string{"/tx/a", "/tx/b", "/tx/c"} {
		mustWrite(t, a, p, "0")
	}
	tx, err := a.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{"/tx/a", "/tx/b"} {
		if _, err := tx.Read(ctx, p); err != nil {
			t.Fatal(err)
		}
	}
	mustWrite(t, b, "/tx/c", "1")
	if err := tx.Write(ctx, "/tx/a", []byte("from tx")); err != nil {
		t.Fatal(err)
	}
	if err := tx.Commit(ctx); err != nil {
		t.Errorf("%s: commit after a sibling changed: %v, want success", in.Kind(), err)
	}
}
