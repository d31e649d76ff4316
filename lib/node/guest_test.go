package node_test

import (
	"context"
	"errors"
	"slices"
	"syscall"
	"testing"
	"time"

	"github.com/mtwatch/mtwatch/lib/domid"
	"github.com/mtwatch/mtwatch/lib/node"
	"github.com/mtwatch/mtwatch/lib/xenstore"
	"github.com/mtwatch/mtwatch/lib/xenstore/xenstoredtest"
)

// guest is a XenStore connection of a guest domain over its store ring
// (xenstoredtest.GuestConn), so xenstored applies the guest's permissions to
// every request, as on a Xen host.
type guest struct {
	t  *testing.T
	id domid.ID
	c  *xenstore.Client
}

// newGuest creates guest id with a ring the test can speak on.
func newGuest(t *testing.T, in *xenstoredtest.Instance, id domid.ID) *guest {
	t.Helper()
	c := xenstore.NewClient(in.GuestConn(id))
	t.Cleanup(func() { c.Close() })
	return &guest{t: t, id: id, c: c}
}

// Operations of the guest, by what they do.
const (
	xsRead = iota
	xsWrite
	xsRm
)

func (g *guest) request(op int, args ...string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	switch op {
	case xsRead:
		_, err := g.c.Read(ctx, args[0])
		return err
	case xsWrite:
		return g.c.Write(ctx, args[0], []byte(args[1]))
	case xsRm:
		return g.c.Rm(ctx, args[0])
	}
	g.t.Fatalf("unknown operation %d", op)
	return nil
}

// wantRefused checks that xenstored refuses the guest's request with EACCES.
func (g *guest) wantRefused(op int, args ...string) {
	g.t.Helper()
	if err := g.request(op, args...); !errors.Is(err, syscall.EACCES) {
		g.t.Errorf("guest %d: request %d %q = %v, want EACCES", g.id, op, args, err)
	}
}

func (g *guest) wantOK(op int, args ...string) {
	g.t.Helper()
	if err := g.request(op, args...); err != nil {
		g.t.Fatalf("guest %d: request %d %q: %v", g.id, op, args, err)
	}
}

// TestGuestShutOut: a real guest connection cannot touch the directory as
// create leaves it, and what it made while the directory was loosened is
// removed or taken from it by the next create.
func TestGuestShutOut(t *testing.T) {
	t.Parallel()
	in, c, ctx := setup(t)
	g := newGuest(t, in, 100)
	in.CreateDomain(5)
	g.wantOK(xsWrite, "/local/domain/100/data", "x") // the ring works

	if err := node.Create(ctx, c, 5, uuidOf(5)); err != nil {
		t.Fatal(err)
	}
	g.wantRefused(xsWrite, node.Dir+"/100", "")
	g.wantRefused(xsRead, node.Path(5))
	g.wantRefused(xsWrite, node.Path(5), "forged")
	g.wantRefused(xsRm, node.Path(5))

	// An administrator loosens the directory and node 5; the guest
	// helps itself.
	in.Run("xenstore-chmod", node.Dir, "b0")
	in.Run("xenstore-chmod", node.Path(5), "b0")
	for _, p := range []string{"/100", "/3", "/abc", "/5/child"} {
		g.wantOK(xsWrite, node.Dir+p, "forged")
	}
	g.wantOK(xsWrite, node.Path(5), uuidOf(99))
	if _, err := node.Get(ctx, c, 5); !errors.Is(err, node.ErrUntrusted) {
		t.Errorf("Get of a node the guest can write = %v, want ErrUntrusted", err)
	}
	if nodes, err := node.List(ctx, c); err != nil || len(nodes) != 0 {
		t.Errorf("List = %v, %v; want no trusted node", nodes, err)
	}

	// The next hook, for any domain, repairs it all.
	if err := node.Create(ctx, c, 7, uuidOf(7)); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{"/101", "/100", "/5/child", "/7/child"} {
		g.wantRefused(xsWrite, node.Dir+p, "forged")
	}
	for _, p := range []string{"/100", "/5", "/7"} {
		g.wantRefused(xsRm, node.Dir+p)
		g.wantRefused(xsRead, node.Dir+p)
	}
	nodes, err := node.List(ctx, c)
	if err != nil {
		t.Fatal(err)
	}
	// Node 7 has no domain, but was written by create once the directory
	// was private again. 100's node is its domain's own; its value is what
	// the guest wrote (see the package doc).
	want := []node.Node{{Domid: 5, UUID: uuidOf(99)}, {Domid: 7, UUID: uuidOf(7)}, {Domid: 100, UUID: "forged"}}
	if !slices.Equal(nodes, want) {
		t.Errorf("List = %v, want %v", nodes, want)
	}
	wantClean(t, in, "5", "7", "100")
}
