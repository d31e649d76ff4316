package sim

import (
	"github.com/mtwatch/mtwatch/lib/domid"
	"github.com/mtwatch/mtwatch/lib/xenstore/xenstoredtest"
)

// Hypervisor is what the simulator needs from Xen beyond XenStore: making a
// domain exist (xc_domain_create) and making it die (xc_domain_destroy).
type Hypervisor interface {
	// Create makes domain id exist, so xenstored accepts it as a node owner
	// and in INTRODUCE.
	Create(id domid.ID) error
	// Destroy makes domain id disappear; xenstored notices it, fires
	// @releaseDomain and drops the nodes the domain owned.
	Destroy(id domid.ID) error
}

// Xenemu is the Hypervisor of a sandbox xenstored running under the xenemu
// emulation library: the harness that launched it (or attached to it, see
// xenstoredtest.Attach) makes domains live and die. The simulator therefore
// only ever drives sandbox xenstoreds, never a real host's domains.
type Xenemu struct {
	Server *xenstoredtest.Server
}

// Create makes id exist without introducing it: libxl introduces it later.
func (x Xenemu) Create(id domid.ID) error { return x.Server.SetDomainAlive(id, true) }

// Destroy makes id die; the simulator waits for xenstored to release it.
func (x Xenemu) Destroy(id domid.ID) error { return x.Server.SetDomainAlive(id, false) }
