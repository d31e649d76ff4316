package node_test

import (
	"errors"
	"io/fs"
	"slices"
	"strings"
	"testing"

	"github.com/mtwatch/mtwatch/lib/domid"
	"github.com/mtwatch/mtwatch/lib/node"
	"github.com/mtwatch/mtwatch/lib/xenstore/xenstoredtest"
)

// guestLitter leaves in the directory what a guest can create there once
// its perms were loosened: nodes it owns (of its own domid, of domids with
// no domain, non-canonical) and sub-nodes under the node of an existing
// domain whose perms it was given. A guest's writes make nodes it owns; the harness's dom0 socket
// makes them and hands them over with SET_PERMS, which gives the same
// store.
func guestLitter(t *testing.T, in *xenstoredtest.Instance) {
	t.Helper()
	in.CreateDomain(100)
	in.CreateDomain(7)
	d := node.Dir
	in.Run("xenstore-write", d+"/7", "")
	in.Run("xenstore-chmod", d, "b0")
	in.Run("xenstore-chmod", d+"/7", "n0", "b100")
	for _, p := range []string{"/7/child", "/100", "/3", "/abc", "/007", "/0", "/32752", "/9/x/y"} {
		in.Run("xenstore-write", d+p, "forged")
		in.Run("xenstore-chmod", d+p, "b100")
	}
}

// wantClean checks the store as Repair promises to leave it: a dom0-private
// directory holding only dom0-private, childless nodes of guest domids.
func wantClean(t *testing.T, in *xenstoredtest.Instance, ids ...string) {
	t.Helper()
	out := in.Run("xenstore-ls", "-p", node.Dir)
	var got []string
	for _, line := range strings.Split(out, "\n") {
		if line == "" {
			continue
		}
		if strings.HasPrefix(line, " ") {
			t.Errorf("sub-node left: %q\n%s", line, out)
			continue
		}
		name, rest, _ := strings.Cut(line, " = ")
		if !strings.HasSuffix(rest, "(n0)") {
			t.Errorf("node %s not private to dom0: %q", name, line)
		}
		got = append(got, name)
	}
	slices.Sort(got)
	slices.Sort(ids)
	if !slices.Equal(got, ids) {
		t.Errorf("nodes %v, want %v:\n%s", got, ids, out)
	}
	if dir := in.Run("xenstore-ls", "-p", "/local/domain/0"); !dirPermsN0(dir) {
		t.Errorf("directory not private to dom0:\n%s", dir)
	}
}

func dirPermsN0(ls string) bool {
	for _, line := range strings.Split(ls, "\n") {
		if strings.HasPrefix(line, "mtwatch = ") {
			return strings.HasSuffix(line, "(n0)")
		}
	}
	return false
}

// TestCreateRepairsLoosenedDirectory: the first create after the directory
// was loosened leaves no guest-made entry behind, and no guest access to the
// nodes of canonical domids.
func TestCreateRepairsLoosenedDirectory(t *testing.T) {
	t.Parallel()
	in, c, ctx := setup(t)
	guestLitter(t, in)
	if err := node.Create(ctx, c, 5, uuidOf(5)); err != nil {
		t.Fatal(err)
	}
	wantClean(t, in, "5", "7", "100")
	nodes, err := node.List(ctx, c)
	if err != nil {
		t.Fatal(err)
	}
	want := []node.Node{{5, uuidOf(5)}, {7, ""}, {100, "forged"}}
	if !slices.Equal(nodes, want) {
		t.Errorf("List = %v, want %v", nodes, want)
	}
}

// TestRepair: what the agent runs at start-up, whatever the directory's
// perms: here they were tightened again by hand after guests wrote there.
func TestRepair(t *testing.T) {
	t.Parallel()
	in, c, ctx := setup(t)
	guestLitter(t, in)
	in.Run("xenstore-chmod", node.Dir, "n0")
	removed, err := node.Repair(ctx, c)
	if err != nil {
		t.Fatal(err)
	}
	d := node.Dir + "/"
	want := []string{d + "0", d + "007", d + "3", d + "32752", d + "7/child", d + "9", d + "abc"}
	if !slices.Equal(removed, want) {
		t.Errorf("removed %v, want %v", removed, want)
	}
	wantClean(t, in, "7", "100")
	// A second repair has nothing to do.
	if removed, err := node.Repair(ctx, c); err != nil || len(removed) != 0 {
		t.Errorf("second Repair = %v, %v", removed, err)
	}
}

// TestRepairCreatesDirectory: on a fresh host Repair makes the directory.
func TestRepairCreatesDirectory(t *testing.T) {
	t.Parallel()
	in, c, ctx := setup(t)
	if removed, err := node.Repair(ctx, c); err != nil || len(removed) != 0 {
		t.Fatalf("Repair = %v, %v", removed, err)
	}
	wantClean(t, in)
}

// TestCreateRepairsOwnNode: with the directory private but a node left
// loosened, create fixes the node it was asked for (perms and sub-nodes).
func TestCreateRepairsOwnNode(t *testing.T) {
	t.Parallel()
	in, c, ctx := setup(t)
	guestLitter(t, in)
	if _, err := node.Repair(ctx, c); err != nil {
		t.Fatal(err)
	}
	in.Run("xenstore-chmod", node.Dir+"/7", "b100")
	in.Run("xenstore-write", node.Dir+"/7/child", "x")
	if err := node.Create(ctx, c, 7, ""); err != nil {
		t.Fatal(err)
	}
	wantClean(t, in, "7", "100")
}

func TestGet(t *testing.T) {
	t.Parallel()
	in, c, ctx := setup(t)
	if _, err := node.Get(ctx, c, 5); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Get of a missing node = %v", err)
	}
	if _, err := node.Get(ctx, c, domid.Dom0); !errors.Is(err, domid.ErrNotGuest) {
		t.Errorf("Get(0) = %v", err)
	}
	if err := node.Create(ctx, c, 5, uuidOf(5)); err != nil {
		t.Fatal(err)
	}
	if n, err := node.Get(ctx, c, 5); err != nil || n != (node.Node{Domid: 5, UUID: uuidOf(5)}) {
		t.Errorf("Get = %+v, %v", n, err)
	}
	for _, perms := range [][]string{{"b5"}, {"n0", "r5"}, {"r0"}, {"n5", "n0"}} {
		in.Run("xenstore-chmod", append([]string{node.Path(5)}, perms...)...)
		_, err := node.Get(ctx, c, 5)
		if !errors.Is(err, node.ErrUntrusted) {
			t.Errorf("Get with perms %v = %v, want ErrUntrusted", perms, err)
			continue
		}
		if !strings.Contains(err.Error(), node.Path(5)) || !strings.Contains(err.Error(), perms[0]) {
			t.Errorf("error does not name path and perms: %v", err)
		}
	}
}

// TestScanIgnored: every entry that is not a trusted node is named, with the
// reason, and none of them is listed.
func TestScanIgnored(t *testing.T) {
	t.Parallel()
	in, c, ctx := setup(t)
	guestLitter(t, in)
	in.Run("xenstore-write", node.Path(11), uuidOf(11))
	in.Run("xenstore-chmod", node.Path(11), "n0")
	l, err := node.Scan(ctx, c)
	if err != nil {
		t.Fatal(err)
	}
	if want := []node.Node{{11, uuidOf(11)}}; !slices.Equal(l.Nodes, want) {
		t.Errorf("Nodes = %v, want %v", l.Nodes, want)
	}
	reasons := map[string]string{
		"0": "not a guest", "007": "syntax", "100": "not private", "3": "b100", "32752": "reserved",
		"7": "n0,b100", "9": "b0", "abc": "syntax",
	}
	if len(l.Ignored) != len(reasons) {
		t.Errorf("Ignored = %v", l.Ignored)
	}
	for _, ig := range l.Ignored {
		if want, ok := reasons[ig.Name]; !ok || !strings.Contains(ig.Reason, want) {
			t.Errorf("ignored %q for %q, want a reason containing %q", ig.Name, ig.Reason, want)
		}
	}
	if nodes, err := node.List(ctx, c); err != nil || !slices.Equal(nodes, l.Nodes) {
		t.Errorf("List = %v, %v", nodes, err)
	}
}
