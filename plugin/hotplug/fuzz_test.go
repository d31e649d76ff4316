package hotplug

import (
	"strings"
	"testing"
)

// FuzzParsePath: any event path is either refused or yields a device key
// whose path is a prefix of the event path, with a guest domid.
func FuzzParsePath(f *testing.F) {
	for _, s := range []string{"backend", "backend/vif", "backend/vif/5", "backend/vif/5/0", "backend/vbd/5/51712/state",
		"backend/vif/0/0/state", "backend/vif/32752/0", "backend/vif/5/01/state", "backend/vif/5/0/a/b", "/local/domain/0/backend/vif/5/0"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, path string) {
		k, node, n, ok := parsePath(path)
		if !ok {
			return
		}
		if n < 1 || n > 4 || (n >= 2 && !k.dom.IsGuest()) {
			t.Fatalf("%q: %+v n=%d", path, k, n)
		}
		if n >= 3 {
			if !strings.HasPrefix(path, k.path()) {
				t.Fatalf("%q: device path %q is not its prefix", path, k.path())
			}
			if n == 4 && path != k.path()+"/"+node {
				t.Fatalf("%q: node %q", path, node)
			}
		}
	})
}
