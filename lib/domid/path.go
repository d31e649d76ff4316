package domid

import "strings"

// Path prefixes that mtwatch routes. Relative paths are relative to dom0's
// home, /local/domain/0, as XenStore resolves them for a dom0 connection.
const (
	localDomain = "/local/domain/"
	// MtwatchDir is the directory the toolstack hooks write one node per
	// domain into (relative to dom0's home).
	MtwatchDir = "mtwatch"
	// MtwatchDirAbs is MtwatchDir as an absolute path.
	MtwatchDirAbs = "/local/domain/0/mtwatch"
)

// NodePath returns the absolute path of the mtwatch node of id.
func NodePath(id ID) string { return MtwatchDirAbs + "/" + id.String() }

// FromPath returns the domain a XenStore path belongs to, for routing an event
// to that domain's worker. It recognises
//
//	backend/<type>/<domid>[/...]
//	/local/domain/<backend-domid>/backend/<type>/<domid>[/...]
//	/local/domain/<domid>[/...]
//	mtwatch/<domid>[/...] and /local/domain/0/mtwatch/<domid>[/...]
//
// and reports ok=false for anything else, including malformed or reserved
// domids: such an event runs on the default worker, never on a wrong domain's.
// Dom0 is returned with ok=true; callers route it to the default worker.
func FromPath(p string) (id ID, ok bool) {
	if rest, found := strings.CutPrefix(p, localDomain); found {
		owner, rest, _ := strings.Cut(rest, "/")
		oid, err := Parse(owner)
		if err != nil {
			return 0, false
		}
		if rest == "" {
			return oid, true
		}
		switch {
		case strings.HasPrefix(rest, "backend/"):
			return fromBackend(rest)
		case oid == Dom0 && strings.HasPrefix(rest, MtwatchDir+"/"):
			return fromMtwatch(rest)
		}
		return oid, true
	}
	if strings.HasPrefix(p, "/") {
		return 0, false
	}
	switch {
	case strings.HasPrefix(p, "backend/"):
		return fromBackend(p)
	case strings.HasPrefix(p, MtwatchDir+"/"):
		return fromMtwatch(p)
	}
	return 0, false
}

// fromBackend parses "backend/<type>/<domid>[/...]". A backend path without
// a frontend domid (the type directory itself) belongs to no domain.
func fromBackend(p string) (ID, bool) {
	rest := p[len("backend/"):]
	typ, rest, found := strings.Cut(rest, "/")
	if typ == "" || !found {
		return 0, false
	}
	return leadingID(rest)
}

// fromMtwatch parses "mtwatch/<domid>[/...]".
func fromMtwatch(p string) (ID, bool) {
	return leadingID(p[len(MtwatchDir)+1:])
}

func leadingID(s string) (ID, bool) {
	elem, _, _ := strings.Cut(s, "/")
	id, err := Parse(elem)
	if err != nil {
		return 0, false
	}
	return id, true
}
