// Package hotplug is mtwatchd's hotplug plugin: it runs the backend device
// scripts (/etc/xen/scripts) with libxl's environment, argv and timeout, as
// xl devd does in a driver domain, each device on its own (a script hung for
// one disk delays no other device, of the same domain or another), exactly
// once across crashes of mtwatchd; or, in dom0 where libxl runs the scripts,
// it only watches and reports devices stuck in set-up or teardown. See
// README.md.
package hotplug

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/mtwatch/mtwatch/lib/dispatch"
	"github.com/mtwatch/mtwatch/lib/domid"
	"github.com/mtwatch/mtwatch/plugin"
	"github.com/mtwatch/mtwatch/plugin/internal/proc"
)

// Name is the plugin's name and configuration section.
const Name = "hotplug"

func init() {
	plugin.Register(plugin.Registration{
		Name: Name, New: New,
		Doc:      "Runs the backend device scripts (/etc/xen/scripts) with libxl's argv, environment and timeout, each device on its own, exactly once across crashes, in place of xl devd in a driver domain; in dom0, where libxl runs the scripts itself whatever run_hotplug_scripts says, it runs nothing and reports devices stuck in set-up or teardown as stalls (plugin/hotplug/README.md). Off by default.",
		Defaults: func() any { return defaults() },
	})
}

// Xenbus states the plugin acts on (xen/include/public/io/xenbus.h).
const (
	stateInitWait = 2
	stateClosing  = 5
	stateClosed   = 6
)

// Backend is the directory watched, relative to the agent's home.
const Backend = "backend"

// qemuTypes are backends served by a QEMU that xl devd starts in a driver
// domain (libxl__spawn_qdisk_backend) and mtwatchd does not.
var qemuTypes = map[string]bool{"qdisk": true, "9pfs": true}

// Plugin runs device scripts, or watches devices.
type Plugin struct {
	log     *slog.Logger
	rt      plugin.Runtime // the domain the agent runs in, set by Start
	store   plugin.Store
	watches plugin.Watcher
	env     []string // the base environment of scripts

	// set is the running configuration. Reload replaces it; the filter (on
	// the Dispatch goroutine) and every script started afterwards use the
	// new one, a script already running keeps the timeout it started with.
	set atomic.Pointer[settings]
	// mode is run or watch, resolved at Start.
	mode string

	// rmu serialises Start and Reload; watch is the backend watch, nil
	// while no type is enabled since start.
	rmu   sync.Mutex
	watch atomic.Pointer[plugin.Watch]

	// group runs the scripts; its context ends at Stop, which kills those
	// running. jobs counts the goroutines of admitted jobs, which end at
	// Stop.
	group *proc.Group
	pool  *pool
	jobs  sync.WaitGroup

	scripts  *prometheus.CounterVec
	duration *prometheus.HistogramVec
	running  prometheus.GaugeFunc
	waiting  prometheus.GaugeFunc

	// maxGrace is the largest grace of any configuration since New: a
	// script keeps the grace it started with across a Reload.
	maxGrace atomic.Int64

	// pending holds the devices with an event queued: a device never has
	// more than one, however often its guest makes its backend change.
	pmu     sync.Mutex
	pending map[devKey]bool

	// scans holds the domains whose next directory event runs as a scan
	// (see scan): at most one mark per type and domain scanned.
	smu   sync.Mutex
	scans map[scanTarget]bool

	mu      sync.Mutex
	devs    map[devKey]*device
	journal map[devKey]record // records found at start, not yet looked at
	watched map[devKey]*watchedDev
	qemu    map[devKey]bool

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

// New validates the section.
func New(ic *plugin.InitContext) (plugin.Plugin, error) {
	cfg, err := parse(ic.Config)
	if err != nil {
		return nil, err
	}
	p := &Plugin{
		log:     ic.Logger,
		store:   ic.Store,
		watches: ic.Watches,
		env:     proc.Env(),
		pending: map[devKey]bool{},
		scans:   map[scanTarget]bool{},
		devs:    map[devKey]*device{},
		journal: map[devKey]record{},
		watched: map[devKey]*watchedDev{},
		qemu:    map[devKey]bool{},
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
	p.group = proc.NewGroup()
	p.pool = newPool(cfg.MaxScripts, p.startJob)
	p.running = prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Namespace: "mtwatch", Subsystem: "hotplug", Name: "scripts_running",
		Help: "Hotplug scripts running now (at most max_scripts).",
	}, func() float64 { r, _, _ := p.pool.counts(); return float64(r) })
	p.waiting = prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Namespace: "mtwatch", Subsystem: "hotplug", Name: "scripts_waiting",
		Help: "Hotplug scripts waiting for one of the max_scripts slots.",
	}, func() float64 { _, w, _ := p.pool.counts(); return float64(w) })
	if err := proc.Register(ic.Metrics, p.scripts, p.duration, p.running, p.waiting); err != nil {
		return nil, fmt.Errorf("hotplug: %w", err)
	}
	return p, nil
}

// resolveMode maps auto to run in a driver domain and to watch in dom0,
// where libxl runs the scripts itself: since Xen 4.6 its device_hotplug
// runs them whatever run_hotplug_scripts says (libxl_create.c only
// defaults c_info.run_hotplug_scripts; libxl__get_hotplug_script_info in
// libxl_linux.c decides alone).
func resolveMode(mode string, self domid.ID) string {
	if mode != ModeAuto {
		return mode
	}
	if self == domid.Dom0 {
		return ModeWatch
	}
	return ModeRun
}

// Start resolves the mode, reads the journal (run mode) and watches the
// backend directory. The watch's initial event, at start and again after
// the agent reconnects to xenstored, starts a scan of the devices there.
func (p *Plugin) Start(ctx context.Context, rt plugin.Runtime) error {
	p.rmu.Lock()
	defer p.rmu.Unlock()
	p.rt = rt
	cfg := p.settings().cfg
	p.mode = resolveMode(cfg.Mode, p.rt.Domid)
	if cfg.XLConf != "" {
		p.log.Warn("xl_conf is ignored: libxl runs hotplug scripts in dom0 whatever run_hotplug_scripts says")
	}
	p.log.Info("hotplug plugin starting", "mode", p.mode, "max_scripts", cfg.MaxScripts)
	if p.mode == ModeRun {
		if err := initJournal(ctx, p.store, p.rt.Domid); err != nil {
			return err
		}
		j, err := loadJournal(ctx, p.store, func(path string, err error) {
			p.log.Warn("hotplug journal record dropped", "record", path, "err", err)
		})
		if err != nil {
			return err
		}
		p.mu.Lock()
		p.journal = j
		p.mu.Unlock()
	}
	if len(cfg.Types) == 0 {
		return nil
	}
	return p.watchBackend(ctx)
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
	p.watch.Store(&w)
	return nil
}

// Reload applies a new section. Timeout, grace, scripts_dir, allowed_dirs
// apply to the scripts started from now on, max_scripts at once, stuck_after
// to the next report; running scripts and what the plugin knows of each
// device are kept. A type taken out of types gets no new event (its queued
// ones still run: they were accepted under the old configuration); a type
// added gets a scan of its backends, as at start. The mode cannot change
// (what the plugin knows differs between them): restart mtwatchd for that.
// On error the running configuration stays.
func (p *Plugin) Reload(ctx context.Context, sec plugin.Section) error {
	cfg, err := parse(sec)
	if err != nil {
		return err
	}
	p.rmu.Lock()
	defer p.rmu.Unlock()
	old := p.settings()
	if resolveMode(cfg.Mode, p.rt.Domid) != p.mode {
		return sec.Errorf("mode", "mode %q would change the running mode %q: restart mtwatchd to change it", cfg.Mode, p.mode)
	}
	var added []string
	for _, t := range cfg.Types {
		if !old.types[t] {
			added = append(added, t)
		}
	}
	p.set.Store(newSettings(cfg))
	p.pool.setCap(cfg.MaxScripts)
	if g := int64(cfg.Grace); g > p.maxGrace.Load() {
		p.maxGrace.Store(g) // Reload is serialised by rmu
	}
	if len(added) == 0 {
		return nil
	}
	if p.watch.Load() == nil {
		// Its initial event scans every enabled type.
		return p.watchBackend(ctx)
	}
	return p.scan(ctx, added)
}

// scan has each backend/<type>/<domid> present looked at by its domain's
// worker: it marks the domain pending a scan and posts an event for its
// directory on the backend watch, whose handler then runs the domain's
// resync as a scan (devices already closed included), on the domain's own
// worker and in order with its events. Scanning from the default worker
// instead would make every domain's start-up wait on one domain's reads;
// and a watch per domain, which an event could reach the worker by as
// well, would take one of the driver domain's watches in xenstored per
// frontend at each start and reconnection: past C xenstored's 128 watches
// per domain (oxenstored's quota-maxwatch, 100) they are refused.
//
// Domains remembered with devices or journal records but whose directory is
// gone (removed while the agent was disconnected from xenstored, or while
// it was not running) are scanned too: their devices get the remove a
// removal event would have run.
func (p *Plugin) scan(ctx context.Context, types []string) error {
	var targets []scanTarget
	seen := map[scanTarget]bool{}
	for _, typ := range types {
		ids, err := p.store.Directory(ctx, Backend+"/"+typ)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return fmt.Errorf("hotplug: scan %s/%s: %w", Backend, typ, err)
		}
		for _, s := range ids {
			if id, err := domid.ParseGuest(s); err == nil && !seen[scanTarget{typ, id}] {
				targets = append(targets, scanTarget{typ, id})
				seen[scanTarget{typ, id}] = true
			}
		}
	}
	p.mu.Lock()
	known := make([]devKey, 0, len(p.devs)+len(p.journal))
	for k := range p.devs {
		known = append(known, k)
	}
	for k := range p.journal {
		known = append(known, k)
	}
	p.mu.Unlock()
	for _, k := range known {
		tg := scanTarget{k.typ, k.dom}
		if !seen[tg] && slices.Contains(types, k.typ) {
			seen[tg] = true
			targets = append(targets, tg)
		}
	}
	w := p.watch.Load()
	if w == nil {
		return nil // no type enabled: nothing to scan
	}
	var errs []error
	for _, tg := range targets {
		// Marked before the post: the handler may run at once.
		p.smu.Lock()
		p.scans[tg] = true
		p.smu.Unlock()
		if err := (*w).Post(tg.dir()); err != nil {
			p.smu.Lock()
			delete(p.scans, tg)
			p.smu.Unlock()
			if errors.Is(err, dispatch.ErrStopped) || errors.Is(err, dispatch.ErrUnknownWatch) {
				return nil // stopping: the next start scans
			}
			errs = append(errs, fmt.Errorf("hotplug: scan %s: %w", tg.dir(), err))
		}
	}
	return errors.Join(errs...)
}

// scanTarget is a domain's backend directory of one type.
type scanTarget struct {
	typ string
	dom domid.ID
}

func (t scanTarget) dir() string { return Backend + "/" + t.typ + "/" + t.dom.String() }

// takeScan reports whether a scan of the domain's backends of typ is
// pending, and clears it: the caller runs it.
func (p *Plugin) takeScan(typ string, dom domid.ID) bool {
	p.smu.Lock()
	defer p.smu.Unlock()
	tg := scanTarget{typ, dom}
	if !p.scans[tg] {
		return false
	}
	delete(p.scans, tg)
	return true
}

// StopGrace implements plugin.StopGracer: Stop may wait that long for a
// script that ignores SIGTERM.
func (p *Plugin) StopGrace() time.Duration { return time.Duration(p.maxGrace.Load()) }

// Stop kills the scripts still running and waits, within ctx, until their
// process groups are gone: mtwatchd must not exit while a script it
// SIGTERMed still has its grace period to run out before the SIGKILL.
// Scripts waiting for a slot never start; their journal records say so.
func (p *Plugin) Stop(ctx context.Context) error {
	p.pool.stop()
	// The group's Stop ends its context, on which the job goroutines
	// return too.
	err := p.group.Stop(ctx)
	if err == nil {
		err = proc.Wait(ctx, &p.jobs)
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

// filter keeps a device's state and online changes (and hotplug-status in
// watch mode), the creation and removal of its directory, and the events
// the plugin posts when a script ended: one pending event per device. It
// runs on the Dispatch goroutine.
func (p *Plugin) filter(path string, _ int) bool {
	if path == Backend {
		return true // the initial event: scan
	}
	k, node, n, ok := parsePath(path)
	if !ok {
		return false
	}
	if !p.settings().types[k.typ] {
		// A QEMU backend is noted (run mode): its directory and state.
		if !qemuTypes[k.typ] || p.mode != ModeRun || n < 3 || (n == 4 && node != "state") {
			return false
		}
	}
	switch n {
	case 2:
		return true // a domain's directory: coalesced per path
	case 3:
	case 4:
		if node != "state" && node != "online" && (node != "hotplug-status" || p.mode != ModeWatch) {
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
	if p.group.Context().Err() != nil {
		return nil // stopped: the next start looks at everything again
	}
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
			// A scan posted and dropped with the overflow runs here.
			errs = append(errs, p.resync(typ, ev.Domid, p.takeScan(typ, ev.Domid)))
		}
		return errors.Join(errs...)
	}
	if ev.Path == Backend {
		return p.scan(p.group.Context(), p.settings().cfg.Types)
	}
	k, _, n, ok := parsePath(ev.Path)
	if !ok {
		return nil
	}
	if n == 2 {
		return p.resync(k.typ, k.dom, p.takeScan(k.typ, k.dom))
	}
	p.pmu.Lock()
	delete(p.pending, k)
	p.pmu.Unlock()
	return p.look(k, false)
}

// look sends a device to what the mode does with it.
func (p *Plugin) look(k devKey, scan bool) error {
	switch {
	case !p.settings().types[k.typ]:
		if qemuTypes[k.typ] && p.mode == ModeRun {
			return p.noteQEMU(k)
		}
		return nil
	case p.mode == ModeWatch:
		return p.watchDevice(k)
	}
	return p.evaluate(k, scan)
}

// resync looks at every device of a domain's backend directory, and at
// those remembered for it that are no longer there.
func (p *Plugin) resync(typ string, dom domid.ID, scan bool) error {
	dir := Backend + "/" + typ + "/" + dom.String()
	ids, err := p.store.Directory(p.group.Context(), dir)
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
	for k := range p.journal {
		if k.typ == typ && k.dom == dom {
			keys[k] = true
		}
	}
	for k := range p.watched {
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
		errs = append(errs, p.look(k, scan))
	}
	return errors.Join(errs...)
}

// read returns a node's value; exists is false for ENOENT.
func (p *Plugin) read(path string) (v string, exists bool, err error) {
	b, err := p.store.Read(p.group.Context(), path)
	if errors.Is(err, os.ErrNotExist) {
		return "", false, nil
	}
	if err != nil {
		return "", false, fmt.Errorf("hotplug: read %s: %w", path, err)
	}
	return string(b), true, nil
}

// noteQEMU keeps the list of qdisk and 9pfs backends, which need the QEMU
// that xl devd starts: mtwatchd runs no QEMU, so xl devd must stay for
// them. Each is logged once.
func (p *Plugin) noteQEMU(k devKey) error {
	_, ok, err := p.read(k.path() + "/state")
	if err != nil {
		return err
	}
	p.mu.Lock()
	known := p.qemu[k]
	if ok {
		p.qemu[k] = true
	} else {
		delete(p.qemu, k)
	}
	p.mu.Unlock()
	if ok && !known {
		p.log.With("domid", k.dom.String(), "device", k.path()).Warn(
			"backend needs a QEMU that xl devd starts and mtwatchd does not: keep xl devd running for " + k.typ + " backends")
	}
	return nil
}

var (
	_ plugin.Reporter = (*Plugin)(nil)
	_ plugin.Staller  = (*Plugin)(nil)
)
