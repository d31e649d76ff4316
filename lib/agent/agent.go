// Package agent is mtwatchd's core: it watches /local/domain/0/mtwatch and
// the domains introduced to xenstored, keeps one lib/dispatch domain worker
// per domain, hosts the handler plugins and their watches, and survives
// xenstored restarts by redialling, re-registering every watch and
// reconciling. cmd/mtwatchd wraps it in flags, signals and systemd; tests and
// benchmarks run it in-process.
//
// The rule in dom0: a domain has a worker while it has a trusted node, or
// while (with auto-detection) it is introduced to xenstored. In a driver
// domain, which can read neither the nodes nor the introductions: a
// frontend domain has a worker while it has a directory
// backend/<type>/<frontend> under the driver domain's home.
package agent

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/mtwatch/mtwatch/lib/canary"
	"github.com/mtwatch/mtwatch/lib/config"
	"github.com/mtwatch/mtwatch/lib/control"
	"github.com/mtwatch/mtwatch/lib/dispatch"
	"github.com/mtwatch/mtwatch/lib/domid"
	"github.com/mtwatch/mtwatch/lib/node"
	"github.com/mtwatch/mtwatch/lib/xenstore"
	"github.com/mtwatch/mtwatch/plugin"
)

// ErrConfig is returned by New when the configuration is at fault (a plugin
// refusing its section, an unknown plugin): mtwatchd exits 78 (EX_CONFIG)
// on it.
var ErrConfig = errors.New("configuration error")

// Options configure an Agent.
type Options struct {
	// Config is the configuration; nil means config.Default().
	Config *config.Config
	// Logger is where the agent, lib/dispatch and the plugins log; nil
	// means slog.Default().
	Logger *slog.Logger
	// Notify sends an sd_notify state ("READY=1", "STATUS=..."); nil sends
	// none. WatchdogInterval, if positive, is how often WATCHDOG=1 is sent
	// (half of WatchdogSec), each time after a successful XenStore round trip.
	Notify           func(state string)
	WatchdogInterval time.Duration
	// Registry is where the agent's and the plugins' metrics go; nil means a
	// new registry (Agent.Registry returns it).
	Registry *prometheus.Registry
	// Version is reported by the control API.
	Version string
	// Plugins are the plugins the agent knows; nil means plugin.All().
	Plugins []plugin.Registration
	// Dial connects to xenstored; nil means xenstore.Dial with the
	// configured path. Tests use it to hold a reconnection.
	Dial func(ctx context.Context) (*xenstore.Client, error)
}

// Agent is a running mtwatchd: the domain table, the connection to
// xenstored, the dispatcher and the plugins, and the goroutines that tie
// them together. Its methods are safe for concurrent use.
type Agent struct {
	opts    Options
	log     *slog.Logger
	d       *dispatch.Dispatcher
	domains *domainTable
	conn    *connection
	plugins []*hostedPlugin
	// canary times writes of a private node to their watch events; nil
	// when agent.canary_interval is 0.
	canary  *canary.Canary
	reg     *prometheus.Registry
	metrics *metrics
	started time.Time
	notify  func(string)

	// Fixed for the agent's life (a reload that changes them is logged as
	// needing a restart).
	single, auto bool
	xsPath       string
	// domid is the domain the agent runs in, fixed by the configuration
	// or learnt at start (domidFixed false); driver: it is not dom0.
	domid      domid.ID
	domidFixed bool
	driver     bool

	stallAt atomic.Int64 // nanoseconds

	cfgMu sync.Mutex
	cfg   *config.Config

	runCtx    context.Context
	runCancel context.CancelFunc
	wg        sync.WaitGroup // the supervisor and the name reader
	bgCtx     context.Context
	bgCancel  context.CancelFunc
	bg        sync.WaitGroup // the watchdog and status goroutines
	// nodeFault, set by tests only, fails the handling of node events
	// ("node") and the retried rescans ("rescan") where it returns an
	// error: xenstored's own failures there cannot be had on demand.
	nodeFault atomic.Pointer[func(op string) error]
	startOnce sync.Once
	stopOnce  sync.Once
	stopErr   error
}

// New builds an agent and its enabled plugins; nothing runs until Start.
func New(opts Options) (*Agent, error) {
	cfg := opts.Config
	if cfg == nil {
		cfg = config.Default()
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.Registry == nil {
		opts.Registry = prometheus.NewRegistry()
	}
	if opts.Plugins == nil {
		opts.Plugins = plugin.All()
	}
	var (
		err error
		d   *dispatch.Dispatcher
	)
	a := &Agent{
		opts:    opts,
		cfg:     cfg,
		log:     opts.Logger,
		reg:     opts.Registry,
		started: time.Now(),
		notify:  opts.Notify,
	}
	if a.notify == nil {
		a.notify = func(string) {}
	}
	a.single, a.auto, a.xsPath = cfg.Agent.SingleWorker, cfg.Agent.HasSource(config.SourceIntroduce), cfg.Agent.Xenstore
	if a.domid, a.domidFixed, err = cfg.Agent.FixedDomid(); err != nil {
		return nil, fmt.Errorf("agent: %w: %w", ErrConfig, err)
	}
	a.driver = a.domid != domid.Dom0
	a.stallAt.Store(int64(cfg.Agent.StallThreshold.Duration))
	// The domain table is made first: the dispatcher tells it of domids
	// whose events wait for a worker (OnStage).
	a.domains = newDomainTable(a.log, nil, a.auto)
	d, err = dispatch.New(dispatch.Config{
		Logger:         a.log,
		Capacity:       cfg.Agent.QueueCapacity,
		StallThreshold: cfg.Agent.StallThreshold.Duration,
		SingleWorker:   cfg.Agent.SingleWorker,
		// A guest's events wait for its worker instead of running on the
		// default worker, however late the worker's source is handled.
		Staging:        true,
		StagingTimeout: cfg.Agent.StagingTimeout.Duration,
		OnStage:        a.domains.staged,
	})
	if err != nil {
		return nil, fmt.Errorf("agent: %w: %w", ErrConfig, err)
	}
	a.d = d
	a.domains.d = d
	a.domains.setSources(cfg.Agent.HasSource(config.SourceNode), cfg.Agent.HasSource(config.SourceLibxl))
	a.domains.setSelf(a.domid)
	a.domains.setStale(cfg.Agent.StaleGrace.Duration, cfg.Agent.ReapStale)
	dial := opts.Dial
	if dial == nil {
		dial = dialer(a.xsPath)
	}
	a.conn = newConnection(a.log, dial, a.notify, a.dispatch)
	if iv := cfg.Agent.CanaryInterval.Duration; iv > 0 {
		cc := canary.Config{Interval: iv, Threshold: cfg.Agent.CanaryThreshold.Duration, Logger: a.log}
		if a.driver {
			cc.Path, cc.Owner = canaryNode(a.domid)
		}
		if a.canary, err = canary.New(cc); err != nil {
			d.Stop(context.Background())
			return nil, fmt.Errorf("agent: %w: %w", ErrConfig, err)
		}
	}
	a.metrics = newMetrics(a)
	if err := a.reg.Register(a.metrics); err != nil {
		d.Stop(context.Background())
		return nil, fmt.Errorf("agent: metrics: %w", err)
	}
	if a.canary != nil {
		if err := a.reg.Register(a.canary); err != nil {
			a.reg.Unregister(a.metrics)
			d.Stop(context.Background())
			return nil, fmt.Errorf("agent: metrics: %w", err)
		}
	}
	if err := a.buildPlugins(); err != nil {
		d.Stop(context.Background())
		return nil, err
	}
	return a, nil
}

// Dispatcher returns the agent's dispatcher (for benchmarks and tests).
func (a *Agent) Dispatcher() *dispatch.Dispatcher { return a.d }

// dispatch hands a plugin watch's event to the dispatcher, on the
// connection's reading goroutine: it never waits for a handler. An event of
// a guest whose worker does not exist yet waits for it in the dispatcher
// (staging), so nothing here needs to hold events back.
func (a *Agent) dispatch(path, token string) {
	if err := a.d.Dispatch(path, token); err != nil &&
		!errors.Is(err, dispatch.ErrUnknownWatch) && !errors.Is(err, dispatch.ErrStopped) {
		a.log.Error("dispatch failed", "path", path, "watch", token, "err", err)
	}
}

// Registry returns the Prometheus registry the agent's metrics are in.
func (a *Agent) Registry() *prometheus.Registry { return a.reg }

// Config returns the configuration in force.
func (a *Agent) Config() *config.Config {
	a.cfgMu.Lock()
	defer a.cfgMu.Unlock()
	return a.cfg
}

// Start connects to xenstored (retrying with backoff until ctx ends),
// repairs the mtwatch directory, registers the watches, reconciles the
// workers with the nodes and introduced domains, starts the plugins and
// tells systemd READY=1. It returns once all that is done; the agent then
// runs until Shutdown.
func (a *Agent) Start(ctx context.Context) error {
	err := errors.New("agent: started twice")
	a.startOnce.Do(func() { err = a.start(ctx) })
	return err
}

func (a *Agent) start(ctx context.Context) error {
	a.runCtx, a.runCancel = context.WithCancel(context.Background())
	a.notify("STATUS=connecting to xenstored")
	sess, err := a.establish(ctx, true)
	if err != nil {
		a.runCancel()
		return err
	}
	for i, p := range a.plugins {
		if !p.enabled {
			continue
		}
		if err := p.p.Start(ctx, a.Runtime()); err != nil {
			for _, q := range a.plugins[:i] {
				if q.enabled {
					q.stop(ctx)
				}
			}
			sess.close()
			a.conn.forget(sess.c, err)
			a.runCancel()
			return fmt.Errorf("agent: start plugin %s: %w", p.name, err)
		}
		p.running.Store(true)
	}
	// Started once the domid is known: it reads names in dom0 only.
	a.wg.Add(2)
	go func() {
		defer a.wg.Done()
		a.domains.nameReader(a.runCtx, a.conn.client)
	}()
	go a.supervise(sess)
	a.notify("READY=1\nSTATUS=" + a.statusLine())
	a.log.Info("mtwatchd ready", "domains", len(a.Domains())-1, "mode", a.mode(), "domid", a.domid, "home", a.domid.Home(),
		"gomaxprocs", runtime.GOMAXPROCS(0))
	a.bgCtx, a.bgCancel = context.WithCancel(a.runCtx)
	if a.opts.WatchdogInterval > 0 {
		a.bg.Add(1)
		go a.watchdog(a.opts.WatchdogInterval)
	}
	a.bg.Add(1)
	go a.statusLoop()
	return nil
}

// establish connects to xenstored and brings the agent up to date with it:
// it dials with backoff until ctx ends, learns the domain the agent runs in
// (first only), repairs the mtwatch directory (dom0), registers the agent's
// watches and the plugins', and reconciles the workers. The first start and
// every reconnection take this one path, so a reconnection is a start that
// keeps the workers of the domains that still exist. On failure the client
// is forgotten with the reason.
func (a *Agent) establish(ctx context.Context, first bool) (*session, error) {
	c, err := a.conn.dialBackoff(ctx)
	if err != nil {
		return nil, err
	}
	fail := func(err error) (*session, error) {
		a.conn.forget(c, err)
		return nil, err
	}
	if first {
		if err := a.learnDomid(ctx, c); err != nil {
			return fail(err)
		}
	}
	// A driver domain has no mtwatch directory: it is dom0's.
	if !a.driver {
		removed, err := node.Repair(ctx, c)
		for _, p := range removed {
			a.log.Warn("removed an entry that is not a trusted mtwatch node", "path", p)
		}
		switch {
		case err != nil && first:
			return fail(fmt.Errorf("agent: %w", err))
		case err != nil:
			// The rescans that follow put right what a repair would have.
			a.log.Error("cannot repair the mtwatch directory after reconnecting", "err", err)
		}
	}
	s, err := a.connect(ctx, c, !first)
	if err != nil {
		return fail(err)
	}
	return s, nil
}

// supervise runs the session's loop and, when xenstored goes away,
// establishes a new one, as long as the agent runs. Running handlers and
// the workers of domains that still exist are left alone throughout.
func (a *Agent) supervise(s *session) {
	defer a.wg.Done()
	for {
		err := s.run(a.runCtx)
		if a.runCtx.Err() != nil {
			return
		}
		a.conn.forget(s.c, err)
		a.log.Error("lost xenstored; reconnecting", "err", err)
		a.notify("STATUS=xenstored lost, reconnecting: " + err.Error())
		for {
			if s, err = a.establish(a.runCtx, false); err == nil {
				break
			}
			if a.runCtx.Err() != nil {
				return // shutting down
			}
			a.log.Error("reconnect failed", "err", err)
			select {
			case <-a.runCtx.Done():
				return
			case <-time.After(minBackoff):
			}
		}
		a.log.Info("reconnected to xenstored")
		a.notify("STATUS=" + a.statusLine())
	}
}

// Shutdown tells systemd STOPPING=1, stops taking events, lets the workers
// drain their queues, then stops the plugins and removes their watches.
// Draining ends a reserve before ctx's deadline (the largest StopGrace of
// the running plugins plus a second, none if no plugin has one): running handlers are then cancelled and what
// is still queued is discarded, so that the plugins' Stop has the rest of
// the budget to end the processes they started. When ctx ends, Shutdown
// returns an error without waiting for handlers that ignore their
// cancellation.
func (a *Agent) Shutdown(ctx context.Context) error {
	a.stopOnce.Do(func() { a.stopErr = a.shutdown(ctx) })
	return a.stopErr
}

func (a *Agent) shutdown(ctx context.Context) error {
	// No watchdog ping or status after STOPPING=1.
	if a.bgCancel != nil {
		a.bgCancel()
	}
	a.bg.Wait()
	a.notify("STOPPING=1")
	a.log.Info("mtwatchd stopping")
	var errs []error

	// No new events: the agent's own watches end with the session, the
	// plugins' XenStore watches are removed. The connection stays for the
	// plugins' Stop.
	if a.runCancel != nil {
		a.runCancel()
	}
	a.wg.Wait()
	// Once Unwatch returns, its callback is not running and is not called
	// again (WatchFunc): no event is dispatched after this.
	for _, xw := range a.conn.close() {
		xw.Unwatch(ctx)
	}

	// Events already queued run to completion while time allows, less a
	// reserve for the plugins' Stop: a hung script must not use up the
	// budget that Stop needs to SIGTERM, SIGKILL and reap it.
	dctx, dcancel := context.WithCancel(ctx)
	if dl, ok := ctx.Deadline(); ok {
		dcancel()
		dctx, dcancel = context.WithDeadline(ctx, dl.Add(-a.stopReserve()))
	}
	// No worker will come for a staged event any more: they run now, with
	// a cancelled context, rather than wait for the staging timeout.
	a.d.FlushAllStaged()
	a.d.WaitIdle(dctx)
	// Cancels what still runs and, when draining was cut short, discards
	// what is queued; does not wait for handlers that ignore their
	// cancellation (the second Stop below does, within ctx).
	derr := a.d.Stop(dctx)
	dcancel()
	for i := len(a.plugins) - 1; i >= 0; i-- {
		if p := a.plugins[i]; p.running.Load() {
			if err := p.stop(ctx); err != nil {
				errs = append(errs, err)
			}
		}
	}
	if err := a.d.Stop(ctx); err != nil {
		errs = append(errs, err)
	} else if derr != nil {
		errs = append(errs, derr)
	}
	a.conn.closeClient()
	a.reg.Unregister(a.metrics)
	if a.canary != nil {
		a.reg.Unregister(a.canary)
	}
	return errors.Join(errs...)
}

// stopReserve is the part of the shutdown budget kept for the plugins' Stop:
// the largest grace of a running plugin that kills processes, plus a second
// for reaping them and removing the watches; none without such a plugin.
func (a *Agent) stopReserve() time.Duration {
	var (
		g    time.Duration
		some bool
	)
	for _, p := range a.plugins {
		if sg, ok := p.p.(plugin.StopGracer); ok && p.running.Load() {
			g, some = max(g, sg.StopGrace()), true
		}
	}
	if !some {
		return 0
	}
	return g + time.Second
}

// Reload applies cfg where it can change live (stall threshold, stale
// grace, reap_stale, plugin sections of plugins that support it) and logs
// the changes that need a restart (config.Config.Reloaded). Every section
// is checked before anything changes, all or nothing: an error wrapping
// ErrConfig means nothing changed. Other errors are those of plugins that
// accepted their new section but failed to apply it (they keep their
// running one). The log level is the caller's (mtwatchd
// owns the logger).
func (a *Agent) Reload(ctx context.Context, cfg *config.Config) error {
	a.cfgMu.Lock()
	old := a.cfg
	a.cfgMu.Unlock()
	// Checked before anything changes: on such an error nothing does.
	for _, name := range cfg.Plugins() {
		if !a.knownPlugin(name) {
			return fmt.Errorf("agent: reload: %w: %w", ErrConfig, cfg.Errorf("plugins."+name, "unknown plugin %q", name))
		}
	}
	for _, p := range a.plugins {
		sec := cfg.Plugin(p.name)
		on, err := sec.Enabled(p.reg.EnabledByDefault)
		if err != nil {
			return fmt.Errorf("agent: reload: %w: %w", ErrConfig, err)
		}
		if _, reloads := p.p.(plugin.Reloader); on && p.enabled && reloads {
			if err := a.checkSection(p, sec); err != nil {
				return fmt.Errorf("agent: reload: plugin %s: %w: %w", p.name, ErrConfig, err)
			}
		}
	}
	var errs []error
	for _, p := range a.plugins {
		sec := cfg.Plugin(p.name)
		on, _ := sec.Enabled(p.reg.EnabledByDefault)
		if on != p.enabled {
			a.log.Warn("enabling or disabling a plugin needs a restart", "plugin", p.name)
			continue
		}
		if !p.enabled {
			continue
		}
		if r, ok := p.p.(plugin.Reloader); ok {
			if err := r.Reload(ctx, sec); err != nil {
				errs = append(errs, fmt.Errorf("reload plugin %s: %w", p.name, err))
			}
		} else if sec.Present() {
			a.log.Info("plugin cannot reload; its section applies at the next restart", "plugin", p.name)
		}
	}
	keep, restart := old.Reloaded(cfg)
	if len(restart) > 0 {
		a.log.Warn("changes need a restart; the running values stay", "keys", strings.Join(restart, ", "))
	}
	a.stallAt.Store(int64(keep.Agent.StallThreshold.Duration))
	a.d.SetStallThreshold(keep.Agent.StallThreshold.Duration)
	a.domains.setStale(keep.Agent.StaleGrace.Duration, keep.Agent.ReapStale)
	a.cfgMu.Lock()
	a.cfg = keep
	a.cfgMu.Unlock()
	a.log.Info("configuration reloaded", "file", cfg.File)
	return errors.Join(errs...)
}

func (a *Agent) mode() string {
	if a.single {
		return control.ModeSingleWorker
	}
	return control.ModeMultiWorker
}

// learnDomid settles the domain the agent runs in, unless the
// configuration fixed it, from its first connection: the relative node
// "domid" a toolstack writes in every domain's home names it; without it,
// a connection that may list /local/domain is privileged, dom0's. A domain
// that can do neither cannot tell, and is told to set [agent] domid.
// Plugins get the result in their Runtime when they start.
func (a *Agent) learnDomid(ctx context.Context, c *xenstore.Client) error {
	if !a.domidFixed {
		v, err := c.Read(ctx, "domid")
		switch {
		case err == nil:
			id, perr := domid.Parse(string(v))
			if perr != nil {
				return fmt.Errorf("agent: the connection's home names domid %q: %w; set [agent] domid", v, perr)
			}
			a.domid = id
		case errors.Is(err, fs.ErrNotExist):
			// Missing altogether, it is no guest's: a guest's home is in it.
			if _, derr := c.Directory(ctx, "/local/domain"); derr != nil && !errors.Is(derr, fs.ErrNotExist) {
				return fmt.Errorf("agent: cannot tell which domain the agent runs in: no domid node in its home, "+
					"and /local/domain: %w; set [agent] domid", derr)
			}
			a.domid = domid.Dom0
		default:
			return fmt.Errorf("agent: read the connection's domid: %w", err)
		}
		a.driver = a.domid != domid.Dom0
		a.domains.setSelf(a.domid)
		if a.driver && a.canary != nil {
			// Before the first session runs it.
			if err := a.canary.Place(canaryNode(a.domid)); err != nil {
				return fmt.Errorf("agent: %w", err)
			}
		}
	}
	return nil
}

// canaryNode is where a driver domain's canary lives: it cannot write
// dom0's home, so in its own.
func canaryNode(id domid.ID) (string, domid.ID) {
	return id.Home() + "/mtwatch-canary", id
}

// Runtime is what the plugins get at Start: the domain the agent runs in
// and its home. It is settled once Start has returned.
func (a *Agent) Runtime() plugin.Runtime {
	return plugin.Runtime{Domid: a.domid, Home: a.domid.Home()}
}

// pid is the agent's process id, for the control API.
var pid = os.Getpid()
