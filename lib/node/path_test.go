package node_test

import (
	"testing"

	"github.com/mtwatch/mtwatch/lib/domid"
	"github.com/mtwatch/mtwatch/lib/node"
)

func TestPath(t *testing.T) {
	if got := node.Path(5); got != "/local/domain/0/mtwatch/5" {
		t.Errorf("Path(5) = %q", got)
	}
	if node.Dir != "/local/domain/0/"+node.RelDir {
		t.Errorf("Dir %q and RelDir %q disagree", node.Dir, node.RelDir)
	}
}

func TestFromPath(t *testing.T) {
	tests := []struct {
		path   string
		want   domid.ID
		wantOK bool
	}{
		{"mtwatch/5", 5, true},
		{"/local/domain/0/mtwatch/5", 5, true},
		{"mtwatch/32751", 32751, true},
		{"/local/domain/0/mtwatch/1", 1, true},
		{"mtwatch/5/extra", 0, false}, // a sub-node is no node
		{"/local/domain/0/mtwatch/5/extra", 0, false},
		{"mtwatch", 0, false},
		{"mtwatch/", 0, false},
		{"/local/domain/0/mtwatch", 0, false},
		{"/local/domain/0/mtwatch/", 0, false},
		{"mtwatch/0", 0, false}, // dom0 has no node
		{"mtwatch/32752", 0, false},
		{"mtwatch/05", 0, false},
		{"mtwatch/0x5", 0, false},
		{"mtwatch/-5", 0, false},
		{"mtwatch/5x", 0, false},
		{"/local/domain/4/mtwatch/5", 0, false}, // only dom0's directory
		{"/mtwatch/5", 0, false},
		{"local/domain/0/mtwatch/5", 0, false},
		{"mtwatchx/5", 0, false},
		{"backend/vif/5/0", 0, false},
		{"", 0, false},
	}
	for _, tt := range tests {
		got, ok := node.FromPath(tt.path)
		if ok != tt.wantOK || got != tt.want {
			t.Errorf("FromPath(%q) = %v, %v; want %v, %v", tt.path, got, ok, tt.want, tt.wantOK)
		}
	}
}

// FuzzFromPath: any domid FromPath reports is a guest's, spelled exactly as
// the last element of the path, at the one depth nodes live at.
func FuzzFromPath(f *testing.F) {
	for _, s := range []string{"mtwatch/5", "/local/domain/0/mtwatch/9", "mtwatch/5/x", "mtwatch/007"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, p string) {
		id, ok := node.FromPath(p)
		if !ok {
			return
		}
		if !id.IsGuest() {
			t.Fatalf("FromPath(%q) = %d, not a guest", p, id)
		}
		if p != node.Path(id) && p != node.RelDir+"/"+id.String() {
			t.Fatalf("FromPath(%q) = %d, but the path is not its node", p, id)
		}
	})
}
