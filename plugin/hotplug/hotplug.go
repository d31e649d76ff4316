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
	plugin.Register(plugin.Registration{Name: Name, New: New})
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
	cfg     Config
	log     *logrus.Entry
	store   plugin.Store
	watches plugin.Watcher
	domid   domid.ID
	env     []string // the base environment of scripts
	types   map[string]bool

	life   context.Context // ends at Stop: running scripts are killed
	cancel context.CancelFunc
	reaper sync.WaitGroup

	scripts  *prometheus.CounterVec
	duration *prometheus.HistogramVec

	// pending holds the devices with an event queued: a device never has
	// more than one, however often its guest makes its backend change.
	pmu     sync.Mutex
	pending map[devKey]bool

	mu      sync.Mutex
	devs    map[devKey]*device
	running map[devKey]*RunningScript

	runs, ok, failed, timedOut atomic.Uint64
}

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
		cfg:     cfg,
		log:     ic.Log,
		store:   ic.Store,
		watches: ic.Watches,
		domid:   ic.Domid,
		env:     proc.Env(),
		types:   map[string]bool{},
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
	for _, t := range cfg.Types {
		p.types[t] = true
	}
	p.life, p.cancel = context.WithCancel(context.Background())
	if ic.Metrics != nil {
		for _, c := range []prometheus.Collector{p.scripts, p.duration} {
			if err := ic.Metrics.Register(c); err != nil {
				return nil, fmt.Errorf("hotplug: register metrics: %w", err)
			}
		}
	}
	return p, nil
}

// Start checks xl.conf and watches the backend directory. The watch's
// initial event, at start and again after the agent reconnects to
// xenstored, starts a scan of the devices already there.
func (p *Plugin) Start(ctx context.Context) error {
	if p.cfg.XLConf != "" && p.domid == domid.Dom0 {
		if runs, why := libxlRunsScripts(p.cfg.XLConf); runs {
			p.log.WithField("xl_conf", p.cfg.XLConf).Warnf(
				"libxl runs hotplug scripts itself (%s): with this plugin enabled every script would run twice; set run_hotplug_scripts=0", why)
		}
	}
	if len(p.types) == 0 {
		return nil
	}
	if _, err := p.watches.Watch(ctx, dispatch.WatchConfig{
		Path:    Backend,
		Handler: p.handle,
		Filter:  p.filter,
	}); err != nil {
		return fmt.Errorf("hotplug: watch %s: %w", Backend, err)
	}
	return nil
}

// scan registers one short-lived watch per backend/<type>/<domid> present:
// its initial event runs the domain's resync on the domain's own worker,
// after which the watch is removed. Scanning from the default worker
// instead would make every domain's start-up wait for a hung script.
func (p *Plugin) scan(ctx context.Context) error {
	type target struct {
		typ string
		dom domid.ID
	}
	var targets []target
	for _, typ := range p.cfg.Types {
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
			}
		}
	}
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
				ctx, cancel := context.WithTimeout(p.life, 30*time.Second)
				if err := w.Unwatch(ctx); err != nil {
					p.log.WithError(err).Warn("remove start-up scan watch")
				}
				cancel()
			case <-p.life.Done():
				return // the agent removes the rest after Stop
			}
		}
	}()
	return nil
}

// Stop kills the scripts still running.
func (p *Plugin) Stop(ctx context.Context) error {
	p.cancel()
	done := make(chan struct{})
	go func() { p.reaper.Wait(); close(done) }()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("hotplug: stop: %w", ctx.Err())
	}
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
	if !ok || !p.types[k.typ] {
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
		for _, typ := range p.cfg.Types {
			errs = append(errs, p.resync(typ, ev.Domid, false))
		}
		return errors.Join(errs...)
	}
	if ev.Path == Backend {
		return p.scan(p.life)
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
	ids, err := p.store.Directory(p.life, dir)
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
	b, err := p.store.Read(p.life, path)
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
		if err != nil || dirOK {
			return err // no state yet
		}
		p.forget(k)
		if d != nil && d.added {
			p.run(k, d, false)
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

	if d == nil {
		if st == stateClosed && !scan {
			return nil // already disconnected, or never attached
		}
		_, hs, err := p.read(base + "/hotplug-status")
		if err != nil {
			return err
		}
		d = &device{added: hs}
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

func (p *Plugin) forget(k devKey) {
	p.mu.Lock()
	delete(p.devs, k)
	p.mu.Unlock()
}

// run runs the device's script for add (or online) or remove (offline),
// with libxl's argv and environment (libxl_linux.c: get_hotplug_env,
// libxl__hotplug_disk, libxl__hotplug_nic). A failed add is reported in
// XenStore as libxl expects; a failed remove is only logged, as libxl
// ignores it.
func (p *Plugin) run(k devKey, d *device, add bool) {
	base := k.path()
	action := "remove"
	if add {
		action = "add"
	}
	isVif := k.typ == "vif"
	if isVif {
		action = map[bool]string{true: "online", false: "offline"}[add]
	}
	log := p.log.WithFields(logrus.Fields{"domid": k.dom.String(), "device": base, "action": action})

	fail := func(result, msg string) {
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
	script, ok := node("script", &d.script)
	if !ok {
		fail(resultError, fmt.Sprintf("unable to read script from %s", base))
		return
	}
	prog, err := p.cfg.resolve(script)
	if err != nil {
		fail(resultError, err.Error())
		return
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
		if nt, _ := node("type", &d.nicType); nt == "vif_ioemu" {
			env = proc.SetEnv(env, "INTERFACE", name+"-emu")
		}
		env = proc.SetEnv(env, "vif", name)
		argv = append(argv, "type_if=vif")
	}

	rs := &RunningScript{Domid: k.dom, Device: base, Action: action, Script: prog, Started: time.Now()}
	p.mu.Lock()
	p.running[k] = rs
	p.mu.Unlock()
	log.WithField("script", prog).Debug("running hotplug script")
	res := proc.Run(p.life, proc.Spec{
		Path:    prog,
		Args:    argv,
		Env:     env,
		Timeout: p.cfg.Timeout,
		Grace:   p.cfg.Grace,
		Line: func(stream, line string) {
			log.WithField("stream", stream).Info(line)
		},
	})
	p.mu.Lock()
	delete(p.running, k)
	p.mu.Unlock()
	p.runs.Add(1)
	p.duration.WithLabelValues(k.typ, action).Observe(res.Duration.Seconds())
	log = log.WithFields(logrus.Fields{"script": prog, "exit": res.ExitCode, "duration": res.Duration.Round(time.Millisecond)})
	switch {
	case res.OK():
		p.ok.Add(1)
		p.scripts.WithLabelValues(k.typ, action, resultOK).Inc()
		log.Debug("hotplug script done")
	case res.TimedOut:
		fail(resultTimeout, fmt.Sprintf("%s %s timed out after %v: killed", prog, action, p.cfg.Timeout))
	case res.Cancelled:
		fail(resultError, fmt.Sprintf("%s %s killed: mtwatchd stopping", prog, action))
	case res.ExitCode < 0 && res.Signal == 0:
		fail(resultError, fmt.Sprintf("cannot execute %s: %v", prog, res.Err))
	case res.Signal != 0:
		fail(resultFailed, fmt.Sprintf("%s %s failed: killed by signal %v", prog, action, res.Signal))
	default:
		fail(resultFailed, fmt.Sprintf("%s %s failed: exit status %d", prog, action, res.ExitCode))
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
	ctx, cancel := context.WithTimeout(context.WithoutCancel(p.life), 10*time.Second)
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
	s := Status{Types: p.cfg.Types, Devices: len(p.devs), Running: []RunningScript{}}
	for _, r := range p.running {
		s.Running = append(s.Running, *r)
	}
	p.mu.Unlock()
	slices.SortFunc(s.Running, func(a, b RunningScript) int { return a.Started.Compare(b.Started) })
	s.Runs, s.OK, s.Failed, s.TimedOut = p.runs.Load(), p.ok.Load(), p.failed.Load(), p.timedOut.Load()
	return s
}

var _ plugin.Reporter = (*Plugin)(nil)
