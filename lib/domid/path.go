package domid

import "strings"

const (
	localDomain = "/local/domain/"
	libxlRoot   = "/libxl/"
)

// FromPath returns the domain a XenStore path belongs to, for routing an event
// to that domain's worker. It recognises
//
//	backend/<type>/<domid>[/...]                               frontend <domid>
//	device-model/<domid>[/...]                                 guest <domid>
//	/local/domain/<d>/backend/<type>/<domid>[/...]             frontend <domid>
//	/local/domain/<d>/backend/<type>/0[/...], d a guest        driver domain d
//	/local/domain/<d>/device-model/<domid>[/...]               guest <domid>
//	/local/domain/<domid>[/...]                                <domid>
//	/libxl/<domid>[/...]                                       <domid>
//
// and reports ok=false for anything else, including malformed or reserved
// domids: such an event runs on the default worker, never on a wrong domain's.
// Dom0 is returned with ok=true; callers route it to the default worker.
// The mtwatch nodes are lib/node's to recognise (node.FromPath).
//
// Why these: a backend path is about its frontend, except when the frontend
// is dom0 itself (dom0 using a device of driver domain d), where the only
// guest involved is d, so a hung driver domain stalls its own worker and not
// dom0's. The device model of guest g lives under
// /local/domain/<dm-domid>/device-model/<g> (libxl's DEVICE_MODEL_XS_PATH,
// xen tools/libs/light/libxl_internal.h) and serves g alone. /libxl/<g> is
// libxl's and xenopsd's private record of guest g (created in
// libxl__domain_make, tools/libs/light/libxl_create.c; Domain.make in
// xen-api ocaml/xenopsd/xc/domain.ml). /vm/<uuid> names no domid (a VM keeps
// its uuid across domids), so it is not routed here: it stays on the default
// worker, which is safe because guests can only read it (libxl_create.c
// gives it roperm).
func FromPath(p string) (id ID, ok bool) {
	if rest, found := strings.CutPrefix(p, localDomain); found {
		owner, rest, _ := strings.Cut(rest, "/")
		oid, err := Parse(owner)
		if err != nil {
			return 0, false
		}
		switch {
		case strings.HasPrefix(rest, "backend/"):
			fe, ok := fromBackend(rest)
			if ok && fe == Dom0 && oid.IsGuest() {
				return oid, true
			}
			return fe, ok
		case strings.HasPrefix(rest, "device-model/"):
			return firstElem(rest[len("device-model/"):])
		}
		return oid, true
	}
	switch {
	case strings.HasPrefix(p, "backend/"):
		return fromBackend(p)
	case strings.HasPrefix(p, "device-model/"):
		return firstElem(p[len("device-model/"):])
	case strings.HasPrefix(p, libxlRoot):
		return firstElem(p[len(libxlRoot):])
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
	return firstElem(rest)
}

// firstElem parses the domid that is the first element of p.
func firstElem(p string) (ID, bool) {
	elem, _, _ := strings.Cut(p, "/")
	id, err := Parse(elem)
	if err != nil {
		return 0, false
	}
	return id, true
}
