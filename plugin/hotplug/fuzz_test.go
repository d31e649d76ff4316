package hotplug

import (
	"errors"
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

// FuzzParseRecord: a journal record either parses into one that encodes
// and parses back to itself, or is refused with ErrJournal: a record
// damaged in XenStore never makes the plugin act on a guess.
func FuzzParseRecord(f *testing.F) {
	for _, s := range []string{
		`{"action":"add","phase":"running","inc":"0123456789abcdef","pid":42,"start":1234,"began":1700000000,"script":"block"}`,
		`{"action":"remove","phase":"running","inc":"0123456789abcdef","script":"vif-bridge","gatewaydev":"eth0","type":"vif"}`,
		`{"action":"add","phase":"done","inc":"0123456789abcdef"}`,
		`{"action":"add","phase":"done","inc":"short"}`, `{"action":"rm"}`, `{"pid":-1}`, ``, `null`, `[]`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := parseRecord(b)
		if err != nil {
			if !errors.Is(err, ErrJournal) {
				t.Fatalf("%q: %v does not wrap ErrJournal", b, err)
			}
			return
		}
		r2, err := parseRecord(r.encode())
		if err != nil || r2 != r {
			t.Fatalf("%q: %+v encodes to %q, which parses to %+v, %v", b, r, r.encode(), r2, err)
		}
	})
}
