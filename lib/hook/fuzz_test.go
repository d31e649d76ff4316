package hook

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/mtwatch/mtwatch/lib/node"
)

// FuzzParseLibvirt: whatever libvirt's stdin holds, the parser returns an
// error or an action on a guest domid or a valid uuid, never a panic.
// Seeds: the XML files in testdata and testdata/fuzz/FuzzParseLibvirt.
func FuzzParseLibvirt(f *testing.F) {
	files, _ := filepath.Glob(filepath.Join("testdata", "*.xml"))
	for _, name := range files {
		data, err := os.ReadFile(name)
		if err != nil {
			f.Fatal(err)
		}
		f.Add("started", data)
		f.Add("stopped", data)
	}
	f.Fuzz(func(t *testing.T, op string, xml []byte) {
		ops := map[string]string{"started": "begin", "stopped": "end", "release": "end", "reconnect": "begin"}
		subop, ok := ops[op]
		if !ok {
			return
		}
		a, err := ParseLibvirt([]string{"d", op, subop, "-"}, strings.NewReader(string(xml)))
		if err != nil {
			return
		}
		switch a.Kind {
		case KindCreate, KindDestroy:
			if !a.Domid.IsGuest() {
				t.Fatalf("action %+v on a non-guest domid", a)
			}
		case KindDestroyUUID:
			if !node.ValidUUID(a.UUID) {
				t.Fatalf("action %+v without a valid uuid", a)
			}
		default:
			t.Fatalf("action %+v for %s %s", a, op, subop)
		}
		if a.UUID != "" && !node.ValidUUID(a.UUID) {
			t.Fatalf("action %+v with a malformed uuid", a)
		}
	})
}
