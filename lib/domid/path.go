package domid

import "strings"

const localDomain = "/local/domain/"

// FromPath returns the domain a XenStore path belongs to, for routing an event
// to that domain's worker. It recognises
//
//	backend/<type>/<domid>[/...]
//	/local/domain/<backend-domid>/backend/<type>/<domid>[/...]
//	/local/domain/<domid>[/...]
//
// and reports ok=false for anything else, including malformed or reserved
// domids: such an event runs on the default worker, never on a wrong domain's.
// Dom0 is returned with ok=true; callers route it to the default worker.
// The mtwatch nodes are lib/node's to recognise (node.FromPath).
func FromPath(p string) (id ID, ok bool) {
	if rest, found := strings.CutPrefix(p, localDomain); found {
		owner, rest, _ := strings.Cut(rest, "/")
		oid, err := Parse(owner)
		if err != nil {
			return 0, false
		}
		if strings.HasPrefix(rest, "backend/") {
			return fromBackend(rest)
		}
		return oid, true
	}
	if strings.HasPrefix(p, "backend/") {
		return fromBackend(p)
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
	elem, _, _ := strings.Cut(rest, "/")
	id, err := Parse(elem)
	if err != nil {
		return 0, false
	}
	return id, true
}
