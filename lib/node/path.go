package node

import (
	"strings"

	"github.com/mtwatch/mtwatch/lib/domid"
)

const (
	// Dir is the absolute path of the directory holding the nodes.
	Dir = "/local/domain/0/mtwatch"
	// RelDir is Dir relative to dom0's home, as a dom0 connection's watch
	// on it reports event paths.
	RelDir = "mtwatch"
)

// Path returns the absolute path of the node of domain id.
func Path(id domid.ID) string { return Dir + "/" + id.String() }

// FromPath returns the domain whose node p is: "mtwatch/<domid>" or
// "/local/domain/0/mtwatch/<domid>", exactly, with a canonical guest domid.
// The directory itself, anything below a node and malformed or non-guest
// names report ok=false: none of them starts or stops a domain worker.
func FromPath(p string) (id domid.ID, ok bool) {
	name, found := strings.CutPrefix(p, Dir+"/")
	if !found {
		name, found = strings.CutPrefix(p, RelDir+"/")
	}
	if !found {
		return 0, false
	}
	// ParseGuest refuses any "/" left in name, so deeper paths fail here.
	id, err := domid.ParseGuest(name)
	if err != nil {
		return 0, false
	}
	return id, true
}
