package exec

import (
	"strings"
	"testing"
)

// FuzzRule: a path pattern is accepted or refused without panicking; for an
// accepted one, match never routes an event to a non-guest domain, and the
// rule's path for a matched domain matches itself.
func FuzzRule(f *testing.F) {
	for _, s := range [][2]string{
		{"/local/domain/{domid}/memory/target", "/local/domain/5/memory/target"},
		{"/local/domain/{domid}/memory/target", "/local/domain/5"},
		{"/local/domain/{domid}", "/local/domain/0/x"},
		{"backend/vif/{domid}/0/state", "backend/vif/7/0/state/x"},
		{"/x/dom{domid}", "/x/dom5"},
		{"/a/b", "/a/b/c"},
		{"{domid}", "5"},
	} {
		f.Add(s[0], s[1])
	}
	f.Fuzz(func(t *testing.T, pattern, path string) {
		r := &rule{path: pattern}
		if err := r.parsePath(); err != nil {
			return
		}
		if r.watch == "" {
			t.Fatalf("%q: empty watch path", pattern)
		}
		id, xs, _, ok := r.match(path)
		if !ok || r.dom < 0 {
			return
		}
		if !id.IsGuest() {
			t.Fatalf("%q on %q: domid %d", pattern, path, id)
		}
		if !strings.HasPrefix(path, r.watch) {
			t.Fatalf("%q on %q: outside the watch %q", pattern, path, r.watch)
		}
		if id2, xs2, anc, ok := r.match(r.pathOf(id)); !ok || anc || id2 != id || xs2 != r.pathOf(id) {
			t.Fatalf("%q: own path %q of %d does not match itself (%q)", pattern, r.pathOf(id), id, xs)
		}
	})
}
