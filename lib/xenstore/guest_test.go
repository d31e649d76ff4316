package xenstore_test

import (
	"errors"
	"io/fs"
	"syscall"
	"testing"

	"github.com/mtwatch/mtwatch/lib/xenstore"
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
