package node_test

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mtwatch/mtwatch/lib/domid"
	"github.com/mtwatch/mtwatch/lib/node"
	"github.com/mtwatch/mtwatch/lib/xenstore"
	"github.com/mtwatch/mtwatch/lib/xenstore/xenstoredtest"
)

func setup(t *testing.T) (*xenstoredtest.Instance, *xenstore.Client, context.Context) {
	t.Helper()
	in := xenstoredtest.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	c, err := xenstore.Dial(ctx, xenstore.WithPath(in.Socket()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return in, c, ctx
}

func uuidOf(i int) string { return fmt.Sprintf("00000000-0000-0000-0000-%012d", i) }

// TestConcurrentCreates: creates racing from separate connections conflict
// in xenstored and are retried; every node ends up there, private to dom0.
func TestConcurrentCreates(t *testing.T) {
	t.Parallel()
	in, c, ctx := setup(t)
	const n = 24
	var wg sync.WaitGroup
	for i := 1; i <= n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ci, err := xenstore.Dial(ctx, xenstore.WithPath(in.Socket()))
			if err != nil {
				t.Error(err)
				return
			}
			defer ci.Close()
			if err := node.Create(ctx, ci, domid.ID(i), uuidOf(i%3)); err != nil {
				t.Errorf("create %d: %v", i, err)
			}
		}()
	}
	wg.Wait()
	nodes, err := node.List(ctx, c)
	if err != nil {
		t.Fatal(err)
	}
	if len(nodes) != n {
		t.Fatalf("%d nodes, want %d: %v", len(nodes), n, nodes)
	}
	for i, nd := range nodes {
		if nd.Domid != domid.ID(i+1) || nd.UUID != uuidOf((i+1)%3) {
			t.Errorf("node %d = %+v", i, nd)
		}
		perms, err := c.GetPerms(ctx, node.Path(nd.Domid))
		if err != nil || perms.String() != "n0" {
			t.Errorf("perms of %d = %v, %v", nd.Domid, perms, err)
		}
	}
	removed, err := node.DestroyByUUID(ctx, c, uuidOf(1))
	if err != nil {
		t.Fatal(err)
	}
	if len(removed) != n/3 {
		t.Fatalf("removed %v, want %d nodes", removed, n/3)
	}
	nodes, _ = node.List(ctx, c)
	for _, nd := range nodes {
		if nd.UUID == uuidOf(1) {
			t.Errorf("node %d of the destroyed vm remains", nd.Domid)
		}
	}
	if len(nodes) != n-n/3 {
		t.Errorf("%d nodes left, want %d", len(nodes), n-n/3)
	}
}

func TestRejects(t *testing.T) {
	t.Parallel()
	in, c, ctx := setup(t)
	before := in.Run("xenstore-ls", "-f", "-p", "/")
	for _, id := range []domid.ID{domid.Dom0, domid.Self, domid.Invalid, domid.Idle} {
		if err := node.Create(ctx, c, id, ""); !errors.Is(err, domid.ErrNotGuest) {
			t.Errorf("Create(%d) = %v", id, err)
		}
		if err := node.Destroy(ctx, c, id); !errors.Is(err, domid.ErrNotGuest) {
			t.Errorf("Destroy(%d) = %v", id, err)
		}
	}
	if err := node.Create(ctx, c, 5, "not-a-uuid"); !errors.Is(err, node.ErrBadUUID) {
		t.Errorf("Create with bad uuid = %v", err)
	}
	if _, err := node.DestroyByUUID(ctx, c, "x/../y"); !errors.Is(err, node.ErrBadUUID) {
		t.Errorf("DestroyByUUID with bad uuid = %v", err)
	}
	if after := in.Run("xenstore-ls", "-f", "-p", "/"); after != before {
		t.Errorf("store changed:\n%s", after)
	}
}

// TestListSkipsForeignEntries: whatever else appears in the directory is
// not a domain.
func TestListSkipsForeignEntries(t *testing.T) {
	t.Parallel()
	in, c, ctx := setup(t)
	if err := node.Create(ctx, c, 3, ""); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"03", "0", "32752", "abc"} {
		in.Run("xenstore-write", node.Dir+"/"+name, "x")
	}
	nodes, err := node.List(ctx, c)
	if err != nil {
		t.Fatal(err)
	}
	if len(nodes) != 1 || nodes[0].Domid != 3 {
		t.Fatalf("List = %+v", nodes)
	}
}

func TestValidUUID(t *testing.T) {
	for s, want := range map[string]bool{
		"4dea22b3-1d52-d8f3-2516-782e98ab3fa0": true,
		"4DEA22B3-1D52-D8F3-2516-782E98AB3FA0": true,
		"4dea22b3-1d52-d8f3-2516-782e98ab3fa":  false,
		"4dea22b31d52-d8f3-2516-782e98ab3fa0-": false,
		"4dea22b3-1d52-d8f3-2516-782e98ab3fg0": false,
		"":                                     false,
	} {
		if node.ValidUUID(s) != want {
			t.Errorf("ValidUUID(%q) = %v", s, !want)
		}
	}
}

func TestCanonicalUUID(t *testing.T) {
	for in, want := range map[string]string{
		"4dea22b3-1d52-d8f3-2516-782e98ab3fa0": "4dea22b3-1d52-d8f3-2516-782e98ab3fa0",
		"4DEA22B3-1D52-D8F3-2516-782E98AB3FA0": "4dea22b3-1d52-d8f3-2516-782e98ab3fa0",
		"4dea22b3-1d52-d8f3-2516-782e98ab3fa":  "",
		"../x":                                 "",
	} {
		got, err := node.CanonicalUUID(in)
		if want == "" {
			if !errors.Is(err, node.ErrBadUUID) || !strings.Contains(err.Error(), strconv.Quote(in)) {
				t.Errorf("CanonicalUUID(%q) error %v, want ErrBadUUID quoting the input", in, err)
			}
			continue
		}
		if err != nil || got != want {
			t.Errorf("CanonicalUUID(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
}

// TestCreateKeepsRecordedUUID: a create that knows no uuid keeps the one a
// hook recorded earlier; a different known uuid replaces it.
func TestCreateKeepsRecordedUUID(t *testing.T) {
	t.Parallel()
	_, c, ctx := setup(t)
	for _, step := range []struct {
		uuid, want string
	}{
		{"", ""},
		{uuidOf(1), uuidOf(1)},
		{"", uuidOf(1)},
		{uuidOf(2), uuidOf(2)},
		{"", uuidOf(2)},
	} {
		if err := node.Create(ctx, c, 5, step.uuid); err != nil {
			t.Fatal(err)
		}
		if n, err := node.Get(ctx, c, 5); err != nil || n.UUID != step.want {
			t.Fatalf("after Create(5, %q): %+v, %v; want uuid %q", step.uuid, n, err, step.want)
		}
	}
}

// TestDestroyIf: destroy of a domid for a given VM removes the node only if
// it is that VM's (or of no known VM).
func TestDestroyIf(t *testing.T) {
	t.Parallel()
	_, c, ctx := setup(t)
	for _, tt := range []struct {
		recorded, uuid string
		removed        bool
	}{
		{uuidOf(1), uuidOf(1), true},
		{uuidOf(1), strings.ToUpper("abcdefab-0000-0000-0000-000000000001"), false},
		{"abcdefab-0000-0000-0000-000000000001", strings.ToUpper("abcdefab-0000-0000-0000-000000000001"), true},
		{uuidOf(1), uuidOf(2), false},
		{"", uuidOf(2), true},
	} {
		if err := node.Create(ctx, c, 7, tt.recorded); err != nil {
			t.Fatal(err)
		}
		removed, err := node.DestroyIf(ctx, c, 7, tt.uuid)
		if err != nil || removed != tt.removed {
			t.Errorf("DestroyIf(7, %s) of a node of %q = %v, %v; want %v", tt.uuid, tt.recorded, removed, err, tt.removed)
		}
		_, err = node.Get(ctx, c, 7)
		if gone := errors.Is(err, fs.ErrNotExist); gone != tt.removed {
			t.Errorf("after DestroyIf(7, %s) of a node of %q: Get = %v", tt.uuid, tt.recorded, err)
		}
		node.Destroy(ctx, c, 7)
	}
	if removed, err := node.DestroyIf(ctx, c, 7, uuidOf(1)); err != nil || removed {
		t.Errorf("DestroyIf of a missing node = %v, %v", removed, err)
	}
	if _, err := node.DestroyIf(ctx, c, 7, "x"); !errors.Is(err, node.ErrBadUUID) {
		t.Errorf("DestroyIf with a bad uuid = %v", err)
	}
}

// TestMixedBurst: creates, destroys and destroys by uuid of distinct
// domains, each on its own connection as separate hooks are, all succeed
// and leave exactly the nodes that were not destroyed.
func TestMixedBurst(t *testing.T) {
	t.Parallel()
	in, c, ctx := setup(t)
	const n = 120 // domids 1..n; a third of each kind
	for i := 1; i <= n; i++ {
		if i%3 != 0 {
			if err := node.Create(ctx, c, domid.ID(i), uuidOf(i)); err != nil {
				t.Fatal(err)
			}
		}
	}
	var wg sync.WaitGroup
	for i := 1; i <= n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ci, err := xenstore.Dial(ctx, xenstore.WithPath(in.Socket()))
			if err != nil {
				t.Error(err)
				return
			}
			defer ci.Close()
			switch i % 3 {
			case 0:
				err = node.Create(ctx, ci, domid.ID(i), uuidOf(i))
			case 1:
				err = node.Destroy(ctx, ci, domid.ID(i))
			case 2:
				var removed []domid.ID
				removed, err = node.DestroyByUUID(ctx, ci, uuidOf(i))
				if err == nil && (len(removed) != 1 || removed[0] != domid.ID(i)) {
					err = fmt.Errorf("removed %v", removed)
				}
			}
			if err != nil {
				t.Errorf("domain %d: %v", i, err)
			}
		}()
	}
	wg.Wait()
	nodes, err := node.List(ctx, c)
	if err != nil {
		t.Fatal(err)
	}
	var want []node.Node
	for i := 3; i <= n; i += 3 {
		want = append(want, node.Node{Domid: domid.ID(i), UUID: uuidOf(i)})
	}
	if !slices.Equal(nodes, want) {
		t.Errorf("List = %v, want %v", nodes, want)
	}
}

// TestUUIDIndex: destroy by uuid finds nodes through the index create keeps,
// and without it; no entry outlives its node; a stale or forged entry
// removes nothing that is not the VM's.
func TestUUIDIndex(t *testing.T) {
	t.Parallel()
	in, c, ctx := setup(t)
	const index = "/local/domain/0/mtwatch-vm"
	indexEntries := func() string {
		out, err := in.Command("xenstore-ls", index).Output()
		if err != nil {
			return "" // no index directory at all
		}
		return strings.TrimSpace(string(out))
	}
	u, v := uuidOf(1), uuidOf(2)
	for _, id := range []domid.ID{5, 6, 7} {
		if err := node.Create(ctx, c, id, u); err != nil {
			t.Fatal(err)
		}
	}
	if err := node.Destroy(ctx, c, 5); err != nil {
		t.Fatal(err)
	}
	if removed, err := node.DestroyIf(ctx, c, 6, u); err != nil || !removed {
		t.Fatalf("DestroyIf = %v, %v", removed, err)
	}
	if removed, err := node.DestroyByUUID(ctx, c, u); err != nil || !slices.Equal(removed, []domid.ID{7}) {
		t.Fatalf("DestroyByUUID = %v, %v", removed, err)
	}
	if e := indexEntries(); e != "" {
		t.Errorf("index entries left after every node went:\n%s", e)
	}

	// A node without an entry (written by an earlier version, or by hand).
	in.Run("xenstore-write", node.Path(8), u)
	in.Run("xenstore-chmod", node.Path(8), "n0")
	if removed, err := node.DestroyByUUID(ctx, c, u); err != nil || !slices.Equal(removed, []domid.ID{8}) {
		t.Fatalf("DestroyByUUID without an index entry = %v, %v", removed, err)
	}

	// An entry naming a node of another VM: that node stays.
	if err := node.Create(ctx, c, 9, v); err != nil {
		t.Fatal(err)
	}
	in.Run("xenstore-write", index+"/"+u+"/9", "")
	if removed, err := node.DestroyByUUID(ctx, c, u); err != nil || len(removed) != 0 {
		t.Fatalf("DestroyByUUID with a stale entry = %v, %v", removed, err)
	}
	if n, err := node.Get(ctx, c, 9); err != nil || n.UUID != v {
		t.Errorf("node of the other vm: %+v, %v", n, err)
	}
}
