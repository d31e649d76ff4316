// Package sim is a toolstack simulator for sandboxes and benchmarks: it
// drives guest domains through the XenStore operations libxl makes, in
// libxl's order (the domain make transaction, INTRODUCE, backend devices
// and their hotplug handshake, teardown, domain death), with the libvirt
// hook's mtwatch node at the points libvirt runs its hooks. It plays the
// toolstack and the kernel's backend and frontend drivers; the hotplug
// scripts are run by a script runner outside it (mtwatchd's hotplug plugin,
// or the real xl devd), as in a driver domain: on a host, libxl runs dom0's
// scripts itself. The simulator measures how long each device waited.
package sim

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io/fs"
	"path"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/mtwatch/mtwatch/lib/domid"
	"github.com/mtwatch/mtwatch/lib/xenstore"
)

// Config describes a simulation.
type Config struct {
	// Domains is the number of guests (default 20), with domids
	// FirstDomid (default 1) onwards.
	Domains    int
	FirstDomid domid.ID
	// Concurrency is how many domains are created or destroyed at once
	// (default 8): libvirtd and xl start domains in parallel. Each slot has
	// its own XenStore connection, as each xl process has.
	Concurrency int
	// Devices lists each domain's backend devices by type, "vbd" or "vif"
	// (default: one of each). libxl adds a domain's disks, then its NICs,
	// all the devices of a type at once (libxl__add_disks and
	// libxl__add_nics in libxl_create.c go through a libxl__multidev), so
	// devices of the same type wait for their scripts side by side.
	Devices []string
	// HangDomain (0: none) gets HangScript as its devices' script: all of
	// them, or its first HangDevices (0: all) in the order of Devices.
	HangDomain  domid.ID
	HangDevices int
	// ScriptsDir is prefixed to script names in the backends' "script"
	// node, as libxl writes absolute paths (default /etc/xen/scripts).
	ScriptsDir string
	// Script names: libxl's defaults "block" and "vif-bridge"; HangScript
	// (default "hang") is the one given to HangDomain's devices.
	BlockScript, VifScript, HangScript string
	// DeviceTimeout bounds the wait for a device's hotplug-status
	// (default 60 s, above libxl's 40 s script timeout, so the script
	// runner's own timeout and error report are what the simulator sees).
	DeviceTimeout time.Duration
	// RemoveTimeout bounds the wait for a closed device's remove script
	// (hotplug-status removed, as xen-hotplug-cleanup does) (default 60 s).
	RemoveTimeout time.Duration
	// Hold is how long every domain stays up between the two phases.
	Hold time.Duration
	// Dial opens a XenStore connection; required.
	Dial func(ctx context.Context) (*xenstore.Client, error)
	// Hypervisor makes domains exist and die; required.
	Hypervisor Hypervisor
	// Hook writes and removes the mtwatch node (nil: no hook).
	Hook Hook
	// Progress, if set, is called after each domain is created or
	// destroyed, from the simulator's goroutines (serialised).
	Progress func(Progress)
	// PhaseDone, if set, is called when every domain has been through a
	// phase: after PhaseCreate (before Hold) and after PhaseDestroy.
	PhaseDone func(phase string)
	// Label names the run in the report (e.g. the agent's mode).
	Label string
}

// Progress reports one finished step.
type Progress struct {
	Phase string // PhaseCreate or PhaseDestroy
	Domid domid.ID
	Err   error
	// Done steps of Total (Total = 2 x Domains: each domain is created
	// and destroyed).
	Done, Total int
}

// Phases.
const (
	PhaseCreate  = "create"
	PhaseDestroy = "destroy"
)

// Device states (xenbus_state).
const (
	stateInitialising = "1"
	stateInitWait     = "2"
	stateInitialised  = "3"
	stateConnected    = "4"
	stateClosing      = "5"
	stateClosed       = "6"
)

// Device outcomes in the report.
const (
	StatusConnected = "connected"
	StatusError     = "error"   // hotplug-status=error (script failed or timed out)
	StatusTimeout   = "timeout" // nothing within DeviceTimeout
	StatusFailed    = "failed"  // the simulator's own XenStore operations failed
)

var errTimeout = errors.New("timed out")

func (cfg *Config) setDefaults() error {
	if cfg.Domains == 0 {
		cfg.Domains = 20
	}
	if cfg.FirstDomid == 0 {
		cfg.FirstDomid = 1
	}
	if cfg.Concurrency <= 0 {
		cfg.Concurrency = 8
	}
	if cfg.ScriptsDir == "" {
		cfg.ScriptsDir = "/etc/xen/scripts"
	}
	if cfg.BlockScript == "" {
		cfg.BlockScript = "block"
	}
	if cfg.VifScript == "" {
		cfg.VifScript = "vif-bridge"
	}
	if cfg.Devices == nil {
		cfg.Devices = []string{"vbd", "vif"}
	}
	for _, k := range cfg.Devices {
		if k != "vbd" && k != "vif" {
			return fmt.Errorf("sim: device type %q: want vbd or vif", k)
		}
	}
	if cfg.HangDevices < 0 || cfg.HangDevices > len(cfg.Devices) {
		return fmt.Errorf("sim: %d hung devices of a domain with %d", cfg.HangDevices, len(cfg.Devices))
	}
	if cfg.HangScript == "" {
		cfg.HangScript = "hang"
	}
	if cfg.DeviceTimeout <= 0 {
		cfg.DeviceTimeout = 60 * time.Second
	}
	if cfg.RemoveTimeout <= 0 {
		cfg.RemoveTimeout = 60 * time.Second
	}
	if cfg.Domains < 0 {
		return fmt.Errorf("sim: %d domains", cfg.Domains)
	}
	last := int(cfg.FirstDomid) + cfg.Domains - 1
	if !cfg.FirstDomid.IsGuest() || last >= int(domid.FirstReserved) {
		return fmt.Errorf("sim: domids %d..%d: %w", cfg.FirstDomid, last, domid.ErrNotGuest)
	}
	if cfg.HangDomain != 0 && (cfg.HangDomain < cfg.FirstDomid || int(cfg.HangDomain) > last) {
		return fmt.Errorf("sim: hang domain %d is not one of the simulated domids %d..%d", cfg.HangDomain, cfg.FirstDomid, last)
	}
	if cfg.Dial == nil || cfg.Hypervisor == nil {
		return errors.New("sim: Dial and Hypervisor are required")
	}
	return nil
}

// Run creates every domain, holds them for cfg.Hold, then destroys them,
// and reports what it measured. If ctx ends during creation or the hold,
// the domains created so far are still torn down (with a fresh deadline),
// so an interrupted run leaves the store as it found it; Run then returns
// the partial report with ctx's error.
func Run(ctx context.Context, cfg Config) (*Report, error) {
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	doms := make([]*domain, cfg.Domains)
	for i := range doms {
		id := cfg.FirstDomid + domid.ID(i)
		doms[i] = &domain{
			id:   id,
			uuid: newUUID(),
			hung: id == cfg.HangDomain,
		}
	}
	r := &runner{cfg: cfg, total: 2 * cfg.Domains}
	start := time.Now()

	err := r.phase(ctx, PhaseCreate, doms, r.create)
	if cfg.PhaseDone != nil {
		cfg.PhaseDone(PhaseCreate)
	}
	if err == nil && cfg.Hold > 0 {
		select {
		case <-ctx.Done():
			err = ctx.Err()
		case <-time.After(cfg.Hold):
		}
	}
	// Teardown runs even after an interruption, on its own deadline: a
	// simulator must not leave domains behind in the sandbox.
	tctx := ctx
	if err != nil {
		var cancel context.CancelFunc
		tctx, cancel = context.WithTimeout(context.WithoutCancel(ctx), cfg.RemoveTimeout+30*time.Second)
		defer cancel()
	}
	if derr := r.phase(tctx, PhaseDestroy, doms, r.destroy); err == nil {
		err = derr
	}
	if cfg.PhaseDone != nil {
		cfg.PhaseDone(PhaseDestroy)
	}
	return newReport(cfg, start, time.Since(start), doms), err
}

type runner struct {
	cfg   Config
	mu    sync.Mutex
	done  int
	total int
}

// phase runs fn for every domain with cfg.Concurrency connections. A
// domain's failure is recorded in its result, not returned: the others go
// on. Only a failure to dial or the end of ctx is returned.
func (r *runner) phase(ctx context.Context, name string, doms []*domain, fn func(context.Context, *xenstore.Client, *domain) error) error {
	work := make(chan *domain)
	errs := make(chan error, r.cfg.Concurrency)
	var wg sync.WaitGroup
	for range min(r.cfg.Concurrency, len(doms)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := r.cfg.Dial(ctx)
			if err != nil {
				errs <- fmt.Errorf("sim: %s: %w", name, err)
				for range work { // let the feeder finish
				}
				return
			}
			defer c.Close()
			for d := range work {
				err := fn(ctx, c, d)
				if err != nil {
					d.fail(name, err)
				}
				r.progress(name, d.id, err)
			}
		}()
	}
feed:
	for _, d := range doms {
		if name == PhaseDestroy && !d.started {
			r.progress(name, d.id, nil)
			continue
		}
		select {
		case work <- d:
		case <-ctx.Done():
			break feed
		}
	}
	close(work)
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		return err
	}
	return ctx.Err()
}

func (r *runner) progress(phase string, id domid.ID, err error) {
	if r.cfg.Progress == nil {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.done++
	r.cfg.Progress(Progress{Phase: phase, Domid: id, Err: err, Done: r.done, Total: r.total})
}

// domain is one simulated guest and what was measured of it. Each field is
// written by the one goroutine handling the domain in a phase; phases are
// ordered by the WaitGroup.
type domain struct {
	id      domid.ID
	uuid    string
	hung    bool
	started bool // creation began: teardown has something to remove
	created time.Duration
	destroy time.Duration
	devices []*device
	errs    []string
}

func (d *domain) fail(phase string, err error) {
	d.errs = append(d.errs, phase+": "+err.Error())
}

func (d *domain) home() string    { return d.id.Home() }
func (d *domain) vmPath() string  { return "/vm/" + d.uuid }
func (d *domain) lxlPath() string { return "/libxl/" + d.id.String() }

type device struct {
	kind   string // vbd or vif
	devid  int
	hung   bool          // given the hang script
	setup  time.Duration // backend InitWait -> hotplug-status=connected
	remove time.Duration // backend Closed -> hotplug-status removed
	status string
	err    string
}

func (v *device) backend(d *domain) string {
	return "/local/domain/0/backend/" + v.kind + "/" + d.id.String() + "/" + strconv.Itoa(v.devid)
}

func (v *device) frontend(d *domain) string {
	return d.home() + "/device/" + v.kind + "/" + strconv.Itoa(v.devid)
}

func (v *device) libxlPath(d *domain) string {
	return d.lxlPath() + "/device/" + v.kind + "/" + strconv.Itoa(v.devid)
}

// create is libxl's domain creation followed by libvirt's "started" hook.
func (r *runner) create(ctx context.Context, c *xenstore.Client, d *domain) error {
	t0 := time.Now()
	d.started = true
	// xc_domain_create: the domain exists before its first XenStore write.
	if err := r.cfg.Hypervisor.Create(d.id); err != nil {
		return err
	}
	if err := domainMake(ctx, c, d); err != nil {
		return fmt.Errorf("domain make transaction for domain %d: %w", d.id, err)
	}
	if err := buildPost(ctx, c, d); err != nil {
		return fmt.Errorf("build of domain %d: %w", d.id, err)
	}
	// libxl adds the disks, then (after the device model) the NICs, the
	// devices of a type at once. A device whose script fails fails the
	// creation, as in libxl, once its siblings are done; the devices added
	// so far are torn down with the domain.
	all := r.devices(d)
	for _, kind := range []string{"vbd", "vif"} {
		var batch []*device
		for _, v := range all {
			if v.kind == kind {
				batch = append(batch, v)
			}
		}
		d.devices = append(d.devices, batch...)
		errs := make([]error, len(batch))
		var wg sync.WaitGroup
		for i, v := range batch {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if errs[i] = r.deviceAdd(ctx, c, d, v); errs[i] != nil {
					v.err = errs[i].Error()
				}
			}()
		}
		wg.Wait()
		if err := errors.Join(errs...); err != nil {
			d.created = time.Since(t0)
			return err
		}
	}
	// libvirt runs "started begin" after libxl_domain_create_new returned
	// and the domain was unpaused.
	if r.cfg.Hook != nil {
		if err := r.cfg.Hook.Started(ctx, d.id, d.uuid); err != nil {
			d.created = time.Since(t0)
			return err
		}
	}
	d.created = time.Since(t0)
	return nil
}

// devices returns d's devices in the order of cfg.Devices, numbered as
// libxl numbers them (vifs from 0, disks xvda, xvdb, ...), the hung domain's
// first HangDevices (or all) marked hung.
func (r *runner) devices(d *domain) []*device {
	var devs []*device
	n := map[string]int{}
	for i, kind := range r.cfg.Devices {
		v := &device{kind: kind, devid: n[kind]}
		if kind == "vbd" {
			v.devid = 51712 + 16*n[kind]
		}
		n[kind]++
		v.hung = d.hung && (r.cfg.HangDevices == 0 || i < r.cfg.HangDevices)
		devs = append(devs, v)
	}
	return devs
}

// libxl's permission sets for a guest's nodes.
func roperm(id domid.ID) xenstore.Perms {
	return xenstore.Perms{{Domid: domid.Dom0, Access: xenstore.AccessNone}, {Domid: id, Access: xenstore.AccessRead}}
}
func rwperm(id domid.ID) xenstore.Perms {
	return xenstore.Perms{{Domid: id, Access: xenstore.AccessNone}}
}

var noperm = xenstore.Perms{{Domid: domid.Dom0, Access: xenstore.AccessNone}}

// domainMake is libxl__domain_make's one transaction.
func domainMake(ctx context.Context, c *xenstore.Client, d *domain) error {
	ro, rw := roperm(d.id), rwperm(d.id)
	home := d.home()
	return transaction(ctx, c, func(tx *xenstore.Tx) error {
		mknod := func(path string, perms xenstore.Perms) error {
			if err := tx.Mkdir(ctx, path); err != nil {
				return err
			}
			return tx.SetPerms(ctx, path, perms)
		}
		for _, p := range []struct {
			path  string
			perms xenstore.Perms
		}{{home, ro}, {d.vmPath(), ro}, {d.lxlPath(), noperm}} {
			if err := tx.Rm(ctx, p.path); err != nil && !errors.Is(err, fs.ErrNotExist) {
				return err
			}
			if err := mknod(p.path, p.perms); err != nil {
				return err
			}
		}
		name := "guest" + d.id.String()
		for _, w := range [][2]string{
			{d.vmPath() + "/uuid", d.uuid},
			{d.vmPath() + "/name", name},
			{d.vmPath() + "/image/ostype", "linux"},
			{home + "/vm", d.vmPath()},
			{home + "/name", name},
			{d.lxlPath() + "/type", "pv"},
		} {
			if err := tx.Write(ctx, w[0], []byte(w[1])); err != nil {
				return err
			}
		}
		for _, n := range []struct {
			sub   string
			perms xenstore.Perms
		}{
			{"cpu", ro}, {"memory", ro}, {"device", ro}, {"control", ro},
			{"control/shutdown", rw}, {"control/feature-poweroff", rw},
			{"control/feature-reboot", rw}, {"control/feature-suspend", rw},
			{"control/sysrq", rw}, {"device/suspend/event-channel", rw},
			{"data", rw}, {"drivers", rw}, {"feature", rw}, {"attr", rw}, {"error", rw},
		} {
			if err := mknod(home+"/"+n.sub, n.perms); err != nil {
				return err
			}
		}
		return nil
	})
}

// buildPost is libxl__build_post: the domain's store and memory entries,
// then xs_introduce_domain, which fires @introduceDomain.
func buildPost(ctx context.Context, c *xenstore.Client, d *domain) error {
	home := d.home()
	err := transaction(ctx, c, func(tx *xenstore.Tx) error {
		for _, w := range [][2]string{
			{home + "/domid", d.id.String()},
			{home + "/memory/static-max", "524288"},
			{home + "/memory/target", "524288"},
			{home + "/store/port", "1"},
			{home + "/store/ring-ref", "1"},
			{home + "/console/port", "2"},
			{home + "/console/ring-ref", "2"},
		} {
			if err := tx.Write(ctx, w[0], []byte(w[1])); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	return c.Introduce(ctx, d.id, 1, 1)
}

func (r *runner) script(v *device) string {
	name := r.cfg.BlockScript
	if v.kind == "vif" {
		name = r.cfg.VifScript
	}
	if v.hung {
		name = r.cfg.HangScript
	}
	return r.cfg.ScriptsDir + "/" + name
}

// deviceAdd is libxl__device_generic_add, the backend driver's probe
// (InitWait), the wait for the hotplug script's hotplug-status, and the
// frontend/backend handshake to Connected.
func (r *runner) deviceAdd(ctx context.Context, c *xenstore.Client, d *domain, v *device) error {
	be, fe := v.backend(d), v.frontend(d)
	bents := [][2]string{
		{"frontend", fe}, {"frontend-id", d.id.String()}, {"online", "1"},
		{"state", stateInitialising}, {"script", r.script(v)},
	}
	fents := [][2]string{
		{"backend", be}, {"backend-id", "0"}, {"state", stateInitialising},
	}
	switch v.kind {
	case "vbd":
		bents = append(bents, [2]string{"params", "/var/lib/xen/images/guest" + d.id.String() + ".img"},
			[2]string{"type", "phy"}, [2]string{"mode", "w"}, [2]string{"dev", "xvda"},
			[2]string{"removable", "0"}, [2]string{"bootable", "1"})
		fents = append(fents, [2]string{"virtual-device", "51712"}, [2]string{"device-type", "disk"})
	case "vif":
		mac := fmt.Sprintf("00:16:3e:%02x:%02x:%02x", byte(d.id>>8), byte(d.id), byte(v.devid))
		bents = append(bents, [2]string{"mac", mac}, [2]string{"bridge", "xenbr0"},
			[2]string{"handle", strconv.Itoa(v.devid)}, [2]string{"type", "vif"})
		fents = append(fents, [2]string{"mac", mac}, [2]string{"handle", strconv.Itoa(v.devid)})
	}
	// Backend readable by the guest, frontend writable by it (owned).
	beperm := xenstore.Perms{{Domid: domid.Dom0, Access: xenstore.AccessNone}, {Domid: d.id, Access: xenstore.AccessRead}}
	feperm := xenstore.Perms{{Domid: d.id, Access: xenstore.AccessNone}, {Domid: domid.Dom0, Access: xenstore.AccessRead}}
	err := transaction(ctx, c, func(tx *xenstore.Tx) error {
		for _, p := range []string{fe, be} {
			if err := tx.Rm(ctx, p); err != nil && !errors.Is(err, fs.ErrNotExist) {
				return err
			}
		}
		if err := tx.Mkdir(ctx, fe); err != nil {
			return err
		}
		if err := tx.SetPerms(ctx, fe, feperm); err != nil {
			return err
		}
		if err := tx.Mkdir(ctx, be); err != nil {
			return err
		}
		if err := tx.SetPerms(ctx, be, beperm); err != nil {
			return err
		}
		for _, e := range bents {
			if err := tx.Write(ctx, be+"/"+e[0], []byte(e[1])); err != nil {
				return err
			}
		}
		for _, e := range fents {
			if err := tx.Write(ctx, fe+"/"+e[0], []byte(e[1])); err != nil {
				return err
			}
		}
		return tx.Write(ctx, v.libxlPath(d)+"/backend", []byte(be))
	})
	if err != nil {
		v.status = StatusFailed
		return fmt.Errorf("add %s %d of domain %d: %w", v.kind, v.devid, d.id, err)
	}

	// The backend driver probes the device and waits for its script.
	t0 := time.Now()
	if err := c.Write(ctx, be+"/state", []byte(stateInitWait)); err != nil {
		v.status = StatusFailed
		return fmt.Errorf("%s: %w", be, err)
	}
	wctx, cancel := context.WithTimeout(ctx, r.cfg.DeviceTimeout)
	var status string
	err = waitNode(wctx, c, be+"/hotplug-status", func(val []byte, err error) bool {
		status = string(val)
		return err == nil && (status == StatusConnected || status == StatusError)
	})
	cancel()
	v.setup = time.Since(t0)
	switch {
	case err == nil && status == StatusConnected:
		v.status = StatusConnected
	case err == nil:
		v.status = StatusError
		msg, _ := c.Read(ctx, be+"/hotplug-error")
		return fmt.Errorf("%s: hotplug-status=error: %s", be, msg)
	case errors.Is(err, errTimeout):
		v.status = StatusTimeout
		return fmt.Errorf("%s: no hotplug-status after %v", be, r.cfg.DeviceTimeout)
	default:
		v.status = StatusFailed
		return fmt.Errorf("%s: %w", be, err)
	}
	// The frontend initialises, the backend connects, the frontend
	// follows.
	for _, w := range [][2]string{{fe, stateInitialised}, {be, stateConnected}, {fe, stateConnected}} {
		if err := c.Write(ctx, w[0]+"/state", []byte(w[1])); err != nil {
			return fmt.Errorf("%s: %w", w[0], err)
		}
	}
	return nil
}

// waitNode watches path and calls done with its value (or read error) at
// registration and after every event, until done returns true. The end of
// ctx's deadline is errTimeout.
func waitNode(ctx context.Context, c *xenstore.Client, path string, done func([]byte, error) bool) error {
	w, err := c.Watch(ctx, path, "sim")
	if err != nil {
		return err
	}
	defer func() {
		uctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		_ = w.Unwatch(uctx)
	}()
	for {
		v, err := c.Read(ctx, path)
		if ctx.Err() == nil && done(v, err) {
			return nil
		}
		select {
		case <-ctx.Done():
			if errors.Is(ctx.Err(), context.DeadlineExceeded) {
				return errTimeout
			}
			return ctx.Err()
		case _, ok := <-w.Events():
			if !ok {
				return w.Err()
			}
		}
	}
}

// destroy is libxl's domain destruction (devices, then the domain's tree,
// then xc_domain_destroy) followed by libvirt's "release" hook.
func (r *runner) destroy(ctx context.Context, c *xenstore.Client, d *domain) error {
	t0 := time.Now()
	var errs []error
	for _, v := range d.devices {
		if err := r.deviceRemove(ctx, c, d, v); err != nil {
			errs = append(errs, err)
		}
	}
	// devices_destroy_cb: the domain's tree goes before the domain.
	err := transaction(ctx, c, func(tx *xenstore.Tx) error {
		for _, p := range []string{d.vmPath(), d.home(), d.lxlPath()} {
			if err := tx.Rm(ctx, p); err != nil && !errors.Is(err, fs.ErrNotExist) {
				return err
			}
		}
		return nil
	})
	if err != nil {
		errs = append(errs, fmt.Errorf("remove the tree of domain %d: %w", d.id, err))
	}
	if err := r.cfg.Hypervisor.Destroy(d.id); err != nil {
		errs = append(errs, err)
	} else if err := waitReleased(ctx, c, d.id); err != nil {
		errs = append(errs, err)
	}
	// libvirt: "stopped end" (the domain is gone), then "release end".
	if r.cfg.Hook != nil {
		if err := r.cfg.Hook.Released(ctx, d.id); err != nil {
			errs = append(errs, err)
		}
	}
	d.destroy = time.Since(t0)
	return errors.Join(errs...)
}

// waitReleased polls until xenstored has noticed the domain's death, as
// libxl's domain destroy completes only once the domain is gone.
func waitReleased(ctx context.Context, c *xenstore.Client, id domid.ID) error {
	ctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	for {
		in, err := c.IsDomainIntroduced(ctx, id)
		if err != nil {
			return err
		}
		if !in {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("domain %d: xenstored did not release it: %w", id, ctx.Err())
		case <-time.After(2 * time.Millisecond):
		}
	}
}

// deviceRemove is libxl__initiate_device_generic_remove (online=0,
// Closing), the backend driver closing, the wait for the remove script,
// and libxl__device_destroy.
func (r *runner) deviceRemove(ctx context.Context, c *xenstore.Client, d *domain, v *device) error {
	be, fe := v.backend(d), v.frontend(d)
	err := transaction(ctx, c, func(tx *xenstore.Tx) error {
		if _, err := tx.Read(ctx, be+"/state"); err != nil {
			return err
		}
		if err := tx.Write(ctx, be+"/online", []byte("0")); err != nil {
			return err
		}
		return tx.Write(ctx, be+"/state", []byte(stateClosing))
	})
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("close %s: %w", be, err)
	}
	var errs []error
	if err == nil {
		for _, w := range [][2]string{{fe, stateClosed}, {be, stateClosed}} {
			if err := c.Write(ctx, w[0]+"/state", []byte(w[1])); err != nil {
				errs = append(errs, fmt.Errorf("%s: %w", w[0], err))
			}
		}
		// The remove script's cleanup removes hotplug-status: only a
		// device whose add script reported something waits for it.
		t0 := time.Now()
		if v.status == StatusConnected || v.status == StatusError {
			wctx, cancel := context.WithTimeout(ctx, r.cfg.RemoveTimeout)
			err := waitNode(wctx, c, be+"/hotplug-status", func(_ []byte, err error) bool {
				return errors.Is(err, fs.ErrNotExist)
			})
			cancel()
			if err != nil {
				errs = append(errs, fmt.Errorf("%s: remove script: %w", be, err))
			}
		}
		v.remove = time.Since(t0)
	}
	// libxl__xs_path_cleanup: the device's paths and their parents left
	// empty (backend/<type>/<domid>).
	err = transaction(ctx, c, func(tx *xenstore.Tx) error {
		for _, p := range []string{fe, be, v.libxlPath(d)} {
			if err := rmCleanup(ctx, tx, p); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		errs = append(errs, fmt.Errorf("destroy %s: %w", be, err))
	}
	return errors.Join(errs...)
}

// rmCleanup removes p, then its parent directories while they are empty,
// up to the domain's own directory.
func rmCleanup(ctx context.Context, tx *xenstore.Tx, p string) error {
	if err := tx.Rm(ctx, p); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	for range 2 {
		p = path.Dir(p)
		kids, err := tx.Directory(ctx, p)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return err
		}
		if len(kids) > 0 {
			return nil
		}
		if err := tx.Rm(ctx, p); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
	}
	return nil
}

// newUUID returns a random (version 4) uuid.
func newUUID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}

// transaction runs fn in a transaction until it commits, as libxl does:
// libxl__xs_transaction_commit (libxl_xshelp.c) answers a conflict with
// "again" and its callers loop without bound. The client's own retries are
// bounded (xenstore.WithTxAttempts); four toolstacks creating domains at
// once beside a CPU hog can conflict past them, and a toolstack does not
// give up a domain for that.
func transaction(ctx context.Context, c *xenstore.Client, fn func(tx *xenstore.Tx) error) error {
	for {
		err := c.Transaction(ctx, fn)
		if !errors.Is(err, syscall.EAGAIN) || ctx.Err() != nil {
			return err
		}
	}
}
