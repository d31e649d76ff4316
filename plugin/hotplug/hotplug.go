// Package hotplug is mtwatchd's hotplug plugin: it runs the backend device
// scripts (/etc/xen/scripts) with libxl's environment, argv and timeout, as
// the udev path and xl devd do, but each device's scripts run on the worker
// of its frontend's domain, so a script hung for one domain never delays
// another domain's devices. See README.md.
package hotplug

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/sirupsen/logrus"

	"github.com/mtwatch/mtwatch/lib/dispatch"
	"github.com/mtwatch/mtwatch/lib/domid"
	"github.com/mtwatch/mtwatch/lib/xenstore"
	"github.com/mtwatch/mtwatch/plugin"
	"github.com/mtwatch/mtwatch/plugin/internal/proc"
)

// Name is the plugin's name and configuration section.
const Name = "hotplug"

func init() {
	plugin.Register(plugin.Registration{
		Name: Name, New: New,
		Doc:      "Runs the backend device scripts (/etc/xen/scripts) per domain, with libxl's argv, environment and timeout (plugin/hotplug/README.md). Off by default. Only with run_hotplug_scripts=0 in xl.conf: otherwise libxl runs every script too. dom0's backends only: mtwatchd runs in dom0 and cannot take the place of xl devd in a driver domain.",
		Defaults: func() any { return defaults() },
	})
}

// Xenbus states the plugin acts on (xen/include/public/io/xenbus.h).
const (
	stateInitWait = 2
	stateClosed   = 6
)

// Backend is the directory watched, relative to the agent's home.
const Backend = "backend"

// Plugin runs device scripts.
type Plugin struct {
	log     *logrus.Entry
	store   plugin.Store
	watches plugin.Watcher
	ic      *plugin.InitContext // Domid is final at Start
	env     []string            // the base environment of scripts

	// set is the running configuration. Reload replaces it; the filter (on
	// the Dispatch goroutine) and every script started afterwards use the
	// new one, a script already running keeps the timeout it started with.
	set atomic.Pointer[settings]

	// rmu serialises Start and Reload; watch is the backend watch, nil
	// while no type is enabled since start.
	rmu   sync.Mutex
	watch plugin.Watch

	// scriptGroup runs the scripts; its context ends at Stop, which kills
	// those running. reaper counts the goroutine removing the start-up scan
	// watches, which also ends at Stop.
	scriptGroup *proc.Group
	reaper      sync.WaitGroup

	scripts  *prometheus.CounterVec
	duration *prometheus.HistogramVec

	// maxGrace is the largest grace of any configuration since New: a
	// script keeps the grace it started with across a Reload.
	maxGrace atomic.Int64

	// pending holds the devices with an event queued: a device never has
	// more than one, however often its guest makes its backend change.
	pmu     sync.Mutex
	pending map[devKey]bool

	mu      sync.Mutex
	devs    map[devKey]*device
	running map[devKey]*RunningScript

	runs, ok, failed, timedOut atomic.Uint64
}

// settings is one configuration with its set of types.
type settings struct {
	cfg   Config
	types map[string]bool
}

func newSettings(cfg Config) *settings {
	s := &settings{cfg: cfg, types: map[string]bool{}}
	for _, t := range cfg.Types {
		s.types[t] = true
	}
	return s
}

func (p *Plugin) settings() *settings { return p.set.Load() }

type devKey struct {
	typ   string
	dom   domid.ID
	devid string
}

func (k devKey) path() string {
	return Backend + "/" + k.typ + "/" + k.dom.String() + "/" + k.devid
}

// device is what the plugin remembers of a device it has seen.
type device struct {
	added bool // the add (online) script ran, here or before (hotplug-status)
	// The nodes the remove script needs, as they were at add: libxl runs
	// remove before it removes the directory, but a directory removed
	// under us leaves only these.
	script, gatewaydev, nicType string
}

// RunningScript describes a script running now.
type RunningScript struct {
	Domid   domid.ID  `json:"domid"`
	Device  string    `json:"device"`
	Action  string    `json:"action"`
	Script  string    `json:"script"`
	Started time.Time `json:"started"`
}

// New validates the section; it checks xl.conf at Start.
func New(ic *plugin.InitContext) (plugin.Plugin, error) {
	cfg, err := parse(ic.Config)
	if err != nil {
		return nil, err
	}
	p := &Plugin{
		log:     ic.Log,
		store:   ic.Store,
		watches: ic.Watches,
		ic:      ic,
		env:     proc.Env(),
		pending: map[devKey]bool{},
		devs:    map[devKey]*device{},
		running: map[devKey]*RunningScript{},
		scripts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "mtwatch", Subsystem: "hotplug", Name: "scripts_total",
			Help: "Hotplug scripts run, by backend type, action and result (ok, failed, timeout, error).",
		}, []string{"type", "action", "result"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: "mtwatch", Subsystem: "hotplug", Name: "script_duration_seconds",
			Help:    "Run time of hotplug scripts, by backend type and action.",
			Buckets: prometheus.ExponentialBuckets(0.01, 3, 9),
		}, []string{"type", "action"}),
	}
	p.set.Store(newSettings(cfg))
	p.maxGrace.Store(int64(cfg.Grace))
	p.scriptGroup = proc.NewGroup()
	if err := proc.Register(ic.Metrics, p.scripts, p.duration); err != nil {
		return nil, fmt.Errorf("hotplug: %w", err)
	}
	return p, nil
}

// Start checks xl.conf and watches the backend directory. The watch's
// initial event, at start and again after the agent reconnects to
// xenstored, starts a scan of the devices already there.
func (p *Plugin) Start(ctx context.Context) error {
	p.rmu.Lock()
	defer p.rmu.Unlock()
	cfg := p.settings().cfg
	p.checkXLConf(cfg.XLConf)
	if len(cfg.Types) == 0 {
		return nil
	}
	return p.watchBackend(ctx)
}

func (p *Plugin) checkXLConf(file string) {
	if file == "" || p.ic.Domid != domid.Dom0 {
		return
	}
	if runs, why := libxlRunsScripts(file); runs {
		p.log.WithField("xl_conf", file).Warnf(
			"libxl runs hotplug scripts itself (%s): with this plugin enabled every script would run twice; set run_hotplug_scripts=0", why)
	}
}

// watchBackend registers the backend watch; rmu is held.
func (p *Plugin) watchBackend(ctx context.Context) error {
	w, err := p.watches.Watch(ctx, dispatch.WatchConfig{
		Path:    Backend,
		Handler: p.handle,
		Filter:  p.filter,
	})
	if err != nil {
		return fmt.Errorf("hotplug: watch %s: %w", Backend, err)
	}
	p.watch = w
	return nil
}

// Reload applies a new section. Timeout, grace, scripts_dir and
// allowed_dirs apply to the scripts started from now on; running scripts
// and what the plugin knows of each device are kept. A type taken out of
// types gets no new event (its queued ones still run: they were accepted
// under the old configuration); a type added gets a scan of its backends,
// as at start. On error the running configuration stays.
func (p *Plugin) Reload(ctx context.Context, sec plugin.Section) error {
	cfg, err := parse(sec)
	if err != nil {
		return err
	}
	p.rmu.Lock()
	defer p.rmu.Unlock()
	old := p.settings()
	if cfg.XLConf != old.cfg.XLConf {
		p.checkXLConf(cfg.XLConf)
	}
	var added []string
	for _, t := range cfg.Types {
		if !old.types[t] {
			added = append(added, t)
		}
	}
	p.set.Store(newSettings(cfg))
	if g := int64(cfg.Grace); g > p.maxGrace.Load() {
		p.maxGrace.Store(g) // Reload is serialised by rmu
	}
	if len(added) == 0 {
		return nil
	}
	if p.watch == nil {
		// Its initial event scans every enabled type.
		return p.watchBackend(ctx)
	}
	return p.scan(ctx, added)
}

// scan registers one short-lived watch per backend/<type>/<domid> present:
// its initial event runs the domain's resync on the domain's own worker,
// after which the watch is removed. Scanning from the default worker
// instead would make every domain's start-up wait for a hung script.
//
// Domains remembered with devices but whose directory is gone (removed
// while the agent was disconnected from xenstored) are scanned too: their
// devices get the remove a removal event would have run.
func (p *Plugin) scan(ctx context.Context, types []string) error {
	type target struct {
		typ string
		dom domid.ID
	}
	var targets []target
	seen := map[target]bool{}
	for _, typ := range types {
		ids, err := p.store.Directory(ctx, Backend+"/"+typ)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return fmt.Errorf("hotplug: scan %s/%s: %w", Backend, typ, err)
		}
		for _, s := range ids {
			if id, err := domid.ParseGuest(s); err == nil {
				targets = append(targets, target{typ, id})
				seen[target{typ, id}] = true
			}
		}
	}
	p.mu.Lock()
	for k := range p.devs {
		tg := target{k.typ, k.dom}
		if !seen[tg] && slices.Contains(types, k.typ) {
			seen[tg] = true
			targets = append(targets, tg)
		}
	}
	p.mu.Unlock()
	done := make(chan plugin.Watch, len(targets))
	var regs []plugin.Watch
	for _, tg := range targets {
		dir := Backend + "/" + tg.typ + "/" + tg.dom.String()
		var once sync.Once
		var w plugin.Watch
		ready := make(chan struct{})
		var err error
		w, err = p.watches.Watch(ctx, dispatch.WatchConfig{
			Path:   dir,
			Filter: func(path string, _ int) bool { return path == dir },
			Handler: func(ctx context.Context, ev dispatch.Event) error {
				first := false
				once.Do(func() { first = true })
				if !first {
					return nil
				}
				err := p.resync(tg.typ, tg.dom, true)
				<-ready
				if w != nil {
					done <- w
				}
				return err
			},
		})
		close(ready)
		if err != nil {
			return fmt.Errorf("hotplug: scan watch %s: %w", dir, err)
		}
		regs = append(regs, w)
	}
	if len(regs) == 0 {
		return nil
	}
	p.reaper.Add(1)
	go func() {
		defer p.reaper.Done()
		for range regs {
			select {
			case w := <-done:
				ctx, cancel := context.WithTimeout(p.scriptGroup.Context(), 30*time.Second)
				if err := w.Unwatch(ctx); err != nil {
					p.log.WithError(err).Warn("remove start-up scan watch")
				}
				cancel()
			case <-p.scriptGroup.Context().Done():
				return // the agent removes the rest after Stop
			}
		}
	}()
	return nil
}

// StopGrace implements plugin.StopGracer: Stop may wait that long for a
// script that ignores SIGTERM.
func (p *Plugin) StopGrace() time.Duration { return time.Duration(p.maxGrace.Load()) }

// Stop kills the scripts still running and waits, within ctx, until their
// process groups are gone: mtwatchd must not exit while a script it
// SIGTERMed still has its grace period to run out before the SIGKILL.

func (p *Plugin) Stop(ctx context.Context) error {
	// The group's Stop ends its context, on which the reaper returns too.
	err := p.scriptGroup.Stop(ctx)
	if err == nil {
		err = proc.Wait(ctx, &p.reaper)
	}
	if err != nil {
		return fmt.Errorf("hotplug: stop: %w", err)
	}
	return nil
}

// parsePath splits an event path under backend/: n is the number of
// elements after "backend" (1: type dir, 2: domain dir, 3: device dir, 4: a
// node of the device, named by node).
func parsePath(path string) (k devKey, node string, n int, ok bool) {
	rest, found := strings.CutPrefix(path, Backend+"/")
	if !found {
		return k, "", 0, false
	}
	s := strings.Split(rest, "/")
	if len(s) > 4 {
		return k, "", 0, false
	}
	k.typ = s[0]
	if len(s) >= 2 {
		id, err := domid.ParseGuest(s[1])
		if err != nil {
			return k, "", 0, false
		}
		k.dom = id
	}
	if len(s) >= 3 {
		if n, err := strconv.ParseUint(s[2], 10, 31); err != nil || strconv.FormatUint(n, 10) != s[2] {
			return k, "", 0, false
		}
		k.devid = s[2]
	}
	if len(s) == 4 {
		node = s[3]
	}
	return k, node, len(s), true
}

// filter keeps a device's state and online changes and the removal of its
// directory, one pending event per device; it runs on the Dispatch
// goroutine.
func (p *Plugin) filter(path string, _ int) bool {
	if path == Backend {
		return true // the initial event: scan
	}
	k, node, n, ok := parsePath(path)
	if !ok || !p.settings().types[k.typ] {
		return false
	}
	switch n {
	case 2:
		return true // a domain's directory: coalesced per path
	case 3:
	case 4:
		if node != "state" && node != "online" {
			return false
		}
	default:
		return false
	}
	p.pmu.Lock()
	defer p.pmu.Unlock()
	if p.pending[k] {
		return false
	}
	p.pending[k] = true
	return true
}

func (p *Plugin) handle(_ context.Context, ev dispatch.Event) error {
	if ev.Overflow {
		// Events were dropped, maybe after filter marked them pending:
		// forget the marks and look at every device of the domain.
		p.pmu.Lock()
		for k := range p.pending {
			if k.dom == ev.Domid {
				delete(p.pending, k)
			}
		}
		p.pmu.Unlock()
		var errs []error
		for _, typ := range p.settings().cfg.Types {
			errs = append(errs, p.resync(typ, ev.Domid, false))
		}
		return errors.Join(errs...)
	}
	if ev.Path == Backend {
		return p.scan(p.scriptGroup.Context(), p.settings().cfg.Types)
	}
	k, _, n, ok := parsePath(ev.Path)
	if !ok {
		return nil
	}
	if n == 2 {
		return p.resync(k.typ, k.dom, false)
	}
	p.pmu.Lock()
	delete(p.pending, k)
	p.pmu.Unlock()
	return p.evaluate(k, false)
}

// resync evaluates every device of a domain's backend directory, and the
// devices remembered for it that are no longer there.
func (p *Plugin) resync(typ string, dom domid.ID, scan bool) error {
	dir := Backend + "/" + typ + "/" + dom.String()
	ids, err := p.store.Directory(p.scriptGroup.Context(), dir)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("hotplug: list %s: %w", dir, err)
	}
	keys := map[devKey]bool{}
	for _, id := range ids {
		k := devKey{typ, dom, id}
		if _, _, _, ok := parsePath(k.path()); ok {
			keys[k] = true
		}
	}
	p.mu.Lock()
	for k := range p.devs {
		if k.typ == typ && k.dom == dom {
			keys[k] = true
		}
	}
	p.mu.Unlock()
	sorted := make([]devKey, 0, len(keys))
	for k := range keys {
		sorted = append(sorted, k)
	}
	slices.SortFunc(sorted, func(a, b devKey) int {
		x, _ := strconv.Atoi(a.devid)
		y, _ := strconv.Atoi(b.devid)
		return x - y
	})
	var errs []error
	for _, k := range sorted {
		errs = append(errs, p.evaluate(k, scan))
	}
	return errors.Join(errs...)
}

// read returns a node's value; exists is false for ENOENT.
func (p *Plugin) read(path string) (v string, exists bool, err error) {
	b, err := p.store.Read(p.scriptGroup.Context(), path)
	if errors.Is(err, os.ErrNotExist) {
		return "", false, nil
	}
	if err != nil {
		return "", false, fmt.Errorf("hotplug: read %s: %w", path, err)
	}
	return string(b), true, nil
}

// evaluate applies libxl's rules to one device: add at InitWait once,
// remove at Closed with online 0 or when the directory is gone, if the add
// ran. It runs on the device's domain worker, so a device's scripts run one
// at a time and in the order of its state changes.
//
// A scan (at start, after a reconnection to xenstored, for a type enabled
// by a reload) trusts XenStore over memory: a device at InitWait without
// hotplug-status gets its add even if one ran before, as it does when the
// backend was created again while the agent was away.
func (p *Plugin) evaluate(k devKey, scan bool) error {
	base := k.path()
	p.mu.Lock()
	d := p.devs[k]
	p.mu.Unlock()

	state, ok, err := p.read(base + "/state")
	if err != nil {
		return err
	}
	if !ok {
		_, dirOK, err := p.read(base)
		if err != nil {
			return err
		}
		if dirOK && (d == nil || !d.added) {
			return nil // no state yet
		}
		// Gone; or, for a device whose add ran, removed and partly written
		// again: a script still running when the toolstack removed the
		// directory writes its nodes (hotplug-status, physical-device) into
		// a new one. Either way the device is gone and gets its remove.
		p.forget(k)
		if d != nil && d.added {
			p.run(k, d, false)
			if dirOK {
				p.removeLeftover(base)
			}
		}
		return nil
	}
	online, ok, err := p.read(base + "/online")
	if err != nil || !ok {
		return err // as xl devd: a backend without online is not ready
	}
	st, _ := strconv.Atoi(state)
	on, _ := strconv.Atoi(online)
	closed := st == stateClosed && on == 0

	if d == nil || scan {
		if d == nil && st == stateClosed && !scan {
			return nil // already disconnected, or never attached
		}
		_, hs, err := p.read(base + "/hotplug-status")
		if err != nil {
			return err
		}
		if d == nil {
			d = &device{}
		}
		d.added = hs || (d.added && st != stateInitWait)
		// What a remove needs once the directory is gone.
		p.remember(k, d)
		p.mu.Lock()
		p.devs[k] = d
		p.mu.Unlock()
	}
	switch {
	case st == stateInitWait && !d.added:
		d.added = true
		p.run(k, d, true)
	case closed:
		p.forget(k)
		if d.added {
			p.run(k, d, false)
		}
	}
	return nil
}

// remember keeps the nodes a remove reads, for a directory removed before
// its remove runs.
func (p *Plugin) remember(k devKey, d *device) {
	base := k.path()
	for _, n := range []struct {
		name string
		v    *string
	}{{"script", &d.script}, {"gatewaydev", &d.gatewaydev}, {"type", &d.nicType}} {
		if n.name != "script" && k.typ != "vif" {
			continue
		}
		if v, ok, err := p.read(base + "/" + n.name); err == nil && ok {
			*n.v = v
		}
	}
}

func (p *Plugin) forget(k devKey) {
	p.mu.Lock()
	delete(p.devs, k)
	p.mu.Unlock()
}

// libxl's nic types (libxl_types.idl), as libxl_nic_type_from_string parses
// a vif backend's type node: case-insensitively.
const (
	nicUnknown = iota
	nicIOEmu
	nicVif
)

func parseNicType(s string) (int, bool) {
	switch {
	case strings.EqualFold(s, "unknown"):
		return nicUnknown, true
	case strings.EqualFold(s, "vif_ioemu"):
		return nicIOEmu, true
	case strings.EqualFold(s, "vif"):
		return nicVif, true
	}
	return 0, false
}

// atoi is C's: leading blanks, a sign, then digits up to the first other
// character; 0 without digits.
func atoi(s string) int {
	s = strings.TrimLeft(s, " \t\n\v\f\r")
	neg := false
	if s != "" && (s[0] == '-' || s[0] == '+') {
		neg = s[0] == '-'
		s = s[1:]
	}
	n := 0
	for i := 0; i < len(s) && s[i] >= '0' && s[i] <= '9' && n < 1<<31; i++ {
		n = n*10 + int(s[i]-'0')
	}
	if neg {
		return -n
	}
	return n
}

// run runs the device's scripts for add (online) or remove (offline) as
// libxl's device_hotplug does (libxl_device.c), with the argv and
// environment of libxl__get_hotplug_script_info (libxl_linux.c): one
// execution for a block device; for a vif of type vif_ioemu (an HVM guest's
// emulated nic) a second one, `<script> add|remove type_if=tap`, unless the
// guest has a stub domain (its device model, in the stubdom, owns the tap).
// A failed add ends there and is reported in XenStore as libxl expects; a
// failed remove is only logged and the second execution still runs, as
// libxl ignores errors on removal.
func (p *Plugin) run(k devKey, d *device, add bool) {
	for n := 0; ; n++ {
		more, ok := p.exec(k, d, add, n)
		if !more || (!ok && add) {
			return
		}
	}
}

// exec runs execution num_exec (libxl's name) of the device's script. It
// returns whether libxl would look for one more execution, and whether this
// one succeeded.
func (p *Plugin) exec(k devKey, d *device, add bool, numExec int) (more, ok bool) {
	set := p.settings()
	base := k.path()
	action := "remove"
	if add {
		action = "add"
	}
	isVif := k.typ == "vif"
	if isVif && numExec == 0 {
		action = map[bool]string{true: "online", false: "offline"}[add]
	}
	log := p.log.WithFields(logrus.Fields{"domid": k.dom.String(), "device": base, "action": action})

	// fail reports a failure. Only a script that ran and failed lets a
	// remove go on to the next execution: libxl's device_hotplug ends the
	// device's hotplug on any error before the script runs.
	ran := false
	fail := func(result, msg string) (bool, bool) {
		p.scripts.WithLabelValues(k.typ, action, result).Inc()
		if result == resultTimeout {
			p.timedOut.Add(1)
		} else {
			p.failed.Add(1)
		}
		log.Warn(msg)
		if add {
			p.reportError(base, msg, log)
		}
		return isVif && ran, false
	}
	// node reads a node of the device, or its value at add once gone.
	node := func(name string, kept *string) (string, bool) {
		v, ok, err := p.read(base + "/" + name)
		if err != nil {
			return "", false
		}
		if ok {
			*kept = v
			return v, true
		}
		return *kept, !add && *kept != ""
	}
	if numExec > 0 {
		// libxl__get_hotplug_script_info: block devices run once; a vif
		// at most twice, and once with a stub domain.
		if !isVif || numExec > 1 {
			return false, true
		}
		dm, _, _ := p.read(fmt.Sprintf("/local/domain/%d/image/device-model-domid", k.dom))
		if atoi(dm) != 0 {
			return false, true
		}
	}
	script, ok := node("script", &d.script)
	if !ok {
		return fail(resultError, fmt.Sprintf("unable to read script from %s", base))
	}
	nic := nicVif
	if isVif {
		nt, ok := node("type", &d.nicType)
		if !ok {
			return fail(resultError, fmt.Sprintf("unable to read nictype from %s", base))
		}
		if nic, ok = parseNicType(nt); !ok {
			return fail(resultError, fmt.Sprintf("unable to parse nictype %q from %s", nt, base))
		}
		if nic == nicVif && numExec != 0 {
			return false, true
		}
		if nic == nicUnknown {
			return fail(resultError, fmt.Sprintf("unable to get args/env to execute hotplug script for device %s: nic type unknown", base))
		}
	}
	prog, err := set.cfg.resolve(script)
	if err != nil {
		return fail(resultError, err.Error())
	}
	env := slices.Clone(p.env)
	env = proc.SetEnv(env, "script", prog)
	env = proc.SetEnv(env, "XENBUS_TYPE", k.typ)
	env = proc.SetEnv(env, "XENBUS_PATH", base)
	env = proc.SetEnv(env, "XENBUS_BASE_PATH", Backend)
	argv := []string{prog, action}
	if isVif {
		gw, _ := node("gatewaydev", &d.gatewaydev)
		env = proc.SetEnv(env, "netdev", gw)
		name := "vif" + k.dom.String() + "." + k.devid
		if nic == nicIOEmu {
			// Both names in both executions: the script learns which one
			// it is from type_if.
			env = proc.SetEnv(env, "INTERFACE", name+"-emu")
		}
		env = proc.SetEnv(env, "vif", name)
		if numExec > 0 {
			argv = append(argv, "type_if=tap")
		} else {
			argv = append(argv, "type_if=vif")
		}
	}

	rs := &RunningScript{Domid: k.dom, Device: base, Action: action, Script: prog, Started: time.Now()}
	if p.scriptGroup.Context().Err() != nil {
		// Stopping: no new script, and nothing written for the device.
		log.Warn("hotplug script not run: mtwatchd stopping")
		return false, false
	}
	p.mu.Lock()
	p.running[k] = rs
	p.mu.Unlock()
	log.WithField("script", prog).Debug("running hotplug script")
	res := p.scriptGroup.Run(proc.Spec{
		Path:    prog,
		Args:    argv,
		Env:     env,
		Timeout: set.cfg.Timeout,
		Grace:   set.cfg.Grace,
		Line: func(stream, line string) {
			log.WithField("stream", stream).Info(line)
		},
	})
	p.mu.Lock()
	delete(p.running, k)
	p.mu.Unlock()
	if errors.Is(res.Err, proc.ErrStopping) {
		// Stop came between the check above and the start: the same.
		log.Warn("hotplug script not run: mtwatchd stopping")
		return false, false
	}
	ran = res.ExitCode >= 0 || res.Signal != 0
	p.runs.Add(1)
	p.duration.WithLabelValues(k.typ, action).Observe(res.Duration.Seconds())
	log = log.WithFields(logrus.Fields{"script": prog, "exit": res.ExitCode, "duration": res.Duration.Round(time.Millisecond)})
	switch {
	case res.OK():
		p.ok.Add(1)
		p.scripts.WithLabelValues(k.typ, action, resultOK).Inc()
		log.Debug("hotplug script done")
		return isVif, true
	case res.TimedOut:
		return fail(resultTimeout, fmt.Sprintf("%s %s timed out after %v: killed", prog, action, set.cfg.Timeout))
	case res.Cancelled:
		// Not the device's failure: nothing is written, so that the next
		// start's scan runs the add again for a device still at InitWait.
		p.scripts.WithLabelValues(k.typ, action, resultError).Inc()
		p.failed.Add(1)
		log.Warn("hotplug script killed: mtwatchd stopping")
		return false, false
	case res.ExitCode < 0 && res.Signal == 0:
		return fail(resultError, fmt.Sprintf("cannot execute %s: %v", prog, res.Err))
	case res.Signal != 0:
		return fail(resultFailed, fmt.Sprintf("%s %s failed: killed by signal %v", prog, action, res.Signal))
	default:
		return fail(resultFailed, fmt.Sprintf("%s %s failed: exit status %d", prog, action, res.ExitCode))
	}
}

// Results counted in mtwatch_hotplug_scripts_total.
const (
	resultOK      = "ok"
	resultFailed  = "failed"
	resultTimeout = "timeout"
	resultError   = "error"
)

// reportError writes hotplug-error and hotplug-status=error, as a script's
// fatal() does, unless the device is gone (writing would recreate it). A
// message the script wrote itself is kept.
func (p *Plugin) reportError(base, msg string, log *logrus.Entry) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(p.scriptGroup.Context()), 10*time.Second)
	defer cancel()
	err := p.store.Transaction(ctx, func(tx *xenstore.Tx) error {
		if _, err := tx.Read(ctx, base); err != nil {
			return err
		}
		if st, err := tx.Read(ctx, base+"/hotplug-status"); err != nil || string(st) != "error" {
			if err := tx.Write(ctx, base+"/hotplug-error", []byte(msg)); err != nil {
				return err
			}
		} else if _, err := tx.Read(ctx, base+"/hotplug-error"); errors.Is(err, os.ErrNotExist) {
			if err := tx.Write(ctx, base+"/hotplug-error", []byte(msg)); err != nil {
				return err
			}
		}
		return tx.Write(ctx, base+"/hotplug-status", []byte("error"))
	})
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		log.WithError(err).Error("cannot write hotplug-status=error")
	}
}

// removeLeftover removes what scripts wrote into a device directory after
// the toolstack had removed it, as xen-hotplug-cleanup removes
// $XENBUS_PATH after a remove on the udev path. A directory that has a
// state node again is a new device and is left alone.
func (p *Plugin) removeLeftover(base string) {
	ctx, cancel := context.WithTimeout(p.scriptGroup.Context(), 10*time.Second)
	defer cancel()
	err := p.store.Transaction(ctx, func(tx *xenstore.Tx) error {
		if _, err := tx.Read(ctx, base+"/state"); !errors.Is(err, os.ErrNotExist) {
			return err
		}
		return tx.Rm(ctx, base)
	})
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		p.log.WithError(err).WithField("device", base).Warn("cannot remove what scripts left of a removed device")
	}
}

// Status is what the plugin reports in the control API.
type Status struct {
	Types    []string        `json:"types"`
	Devices  int             `json:"devices"`
	Runs     uint64          `json:"runs"`
	OK       uint64          `json:"ok"`
	Failed   uint64          `json:"failed"`
	TimedOut uint64          `json:"timed_out"`
	Running  []RunningScript `json:"running"`
}

// Status reports the counters and the scripts running now.
func (p *Plugin) Status() any {
	p.mu.Lock()
	s := Status{Types: p.settings().cfg.Types, Devices: len(p.devs), Running: []RunningScript{}}
	for _, r := range p.running {
		s.Running = append(s.Running, *r)
	}
	p.mu.Unlock()
	slices.SortFunc(s.Running, func(a, b RunningScript) int { return a.Started.Compare(b.Started) })
	s.Runs, s.OK, s.Failed, s.TimedOut = p.runs.Load(), p.ok.Load(), p.failed.Load(), p.timedOut.Load()
	return s
}

var _ plugin.Reporter = (*Plugin)(nil)
