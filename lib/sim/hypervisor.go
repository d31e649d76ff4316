package sim

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"

	"github.com/mtwatch/mtwatch/lib/domid"
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
// preload library (test/xenemu): a domid listed in the control directory's
// "dead" file does not exist, and a byte written to its "evtchn" FIFO raises
// VIRQ_DOM_EXC, which makes xenstored look at its domains again. This is
// the protocol lib/xenstore/xenstoredtest uses for KillDomain.
type Xenemu struct {
	// Dir is the control directory (XENEMU_DIR, the sandbox's run
	// directory).
	Dir string
	mu  sync.Mutex
}

// ErrNoXenemu is returned when the control directory is not a xenemu one: the
// simulator only drives sandbox xenstoreds, never a real host's.
var ErrNoXenemu = errors.New("not a xenemu control directory")

// NewXenemu checks that dir is a xenemu control directory.
func NewXenemu(dir string) (*Xenemu, error) {
	fi, err := os.Stat(filepath.Join(dir, "evtchn"))
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %v", ErrNoXenemu, dir, err)
	}
	if fi.Mode()&os.ModeNamedPipe == 0 {
		return nil, fmt.Errorf("%w: %s/evtchn is not a FIFO", ErrNoXenemu, dir)
	}
	return &Xenemu{Dir: dir}, nil
}

// Create removes id from the dead list.
func (x *Xenemu) Create(id domid.ID) error { return x.setDead(id, false) }

// Destroy adds id to the dead list and raises VIRQ_DOM_EXC.
func (x *Xenemu) Destroy(id domid.ID) error {
	if err := x.setDead(id, true); err != nil {
		return err
	}
	// Non-blocking: xenstored (through xenemu) holds the FIFO open for
	// reading, so the write never blocks while it runs, and fails with
	// ENXIO if it does not.
	f, err := os.OpenFile(filepath.Join(x.Dir, "evtchn"), os.O_WRONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return fmt.Errorf("destroy domain %d: raise VIRQ_DOM_EXC: %w", id, err)
	}
	defer f.Close()
	if _, err := f.Write([]byte{1}); err != nil {
		return fmt.Errorf("destroy domain %d: raise VIRQ_DOM_EXC: %w", id, err)
	}
	return nil
}

// setDead rewrites the dead list atomically (xenemu reads it on every
// xc_domain_getinfo). The lock only orders this process's writers: the
// simulator must be the only one changing the list while it runs.
func (x *Xenemu) setDead(id domid.ID, dead bool) error {
	path := filepath.Join(x.Dir, "dead")
	x.mu.Lock()
	defer x.mu.Unlock()
	old, err := os.ReadFile(path)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("domain %d: %w", id, err)
	}
	out := make([]string, 0, 8)
	for _, l := range strings.Fields(string(old)) {
		if l != id.String() {
			out = append(out, l)
		}
	}
	if dead {
		out = append(out, id.String())
	}
	tmp := path + ".sim.tmp"
	if err := os.WriteFile(tmp, []byte(strings.Join(out, "\n")+"\n"), 0o644); err != nil {
		return fmt.Errorf("domain %d: %w", id, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("domain %d: %w", id, err)
	}
	return nil
}
