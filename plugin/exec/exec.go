// Package exec is mtwatchd's exec plugin: each rule watches a XenStore path
// pattern and runs a command when a node matching it changes, on the worker
// of the domain whose {domid} the path holds, so a slow command for one
// domain never delays another's. See README.md.
package exec

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/mtwatch/mtwatch/lib/dispatch"
	"github.com/mtwatch/mtwatch/plugin"
	"github.com/mtwatch/mtwatch/plugin/internal/proc"
)

// Name is the plugin's name and configuration section.
const Name = "exec"

func init() {
	plugin.Register(plugin.Registration{
		Name: Name, New: New,
		Doc:      "Runs a command when a XenStore node matching a rule changes, on the worker of the domain named by the rule's {domid} (plugin/exec/README.md). Off by default.",
		Defaults: func() any { return Config{Grace: DefaultGrace, LogLines: DefaultLogLines} },
	})
}

// Plugin runs the rules' commands.
type Plugin struct {
	log     *slog.Logger
	store   plugin.Store
	watches plugin.Watcher
	env     []string // the base environment of commands

	// cmds runs the commands; Stop kills them. Not under mu: Reload holds
	// it while it waits for a running command.
	cmds *proc.Group

	runs     *prometheus.CounterVec
	duration *prometheus.HistogramVec
	limited  *prometheus.CounterVec

	// maxGrace is the largest grace of any configuration since New: a
	// command keeps the grace it started with across a Reload.
	maxGrace atomic.Int64

	mu      sync.Mutex // serialises Start and Reload
	rules   []*rule
	running map[string]*active // by rule name, once started
	// snap is what Status reports, replaced after each change: Status must
	// not wait for a Reload that waits for a rule's running command.
	snap atomic.Pointer[[]*active]
}

// active is a started rule.
type active struct {
	r     *rule
	watch plugin.Watch
	lim   *limiter
	c     counters

	// retired: a reload removed the rule; a command of it still running
	// updates no metric (its series are gone). Under mu.
	mu      sync.Mutex
	retired bool
}

type counters struct {
	runs, ok, failed, timedOut, startErrors, overflows atomic.Uint64
	rateLimited, linesDropped                          atomic.Uint64
	lastNanos                                          atomic.Int64
}

// New validates the section and registers the plugin's metrics.
func New(ic *plugin.InitContext) (plugin.Plugin, error) {
	rules, err := parse(ic.Config)
	if err != nil {
		return nil, err
	}
	warnDeprecated(ic.Logger, rules)
	p := &Plugin{
		log:     ic.Logger,
		store:   ic.Store,
		watches: ic.Watches,
		env:     proc.Env(),
		cmds:    proc.NewGroup(),
		rules:   rules,
		running: map[string]*active{},
		runs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "mtwatch", Subsystem: "exec", Name: "runs_total",
			Help: "Commands run by exec rules, by rule and result (ok, failed, timeout, error).",
		}, []string{"rule", "result"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: "mtwatch", Subsystem: "exec", Name: "duration_seconds",
			Help:    "Run time of the commands of exec rules.",
			Buckets: prometheus.ExponentialBuckets(0.005, 4, 9),
		}, []string{"rule"}),
		limited: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "mtwatch", Subsystem: "exec", Name: "rate_limited_total",
			Help: "Commands of exec rules that waited for their domain's rate bound (min_interval, burst).",
		}, []string{"rule"}),
	}
	p.noteGrace(rules)
	if err := proc.Register(ic.Metrics, p.runs, p.duration, p.limited); err != nil {
		return nil, fmt.Errorf("exec: %w", err)
	}
	return p, nil
}

// Start registers one watch per rule.
func (p *Plugin) Start(ctx context.Context, _ plugin.Runtime) error {
	if dir, err := proc.Confinement(); dir != "" {
		p.log.Info("commands are confined by cgroup v2", "cgroup", dir)
	} else {
		p.log.Warn("commands are confined by their process group only: a process that calls setsid() can outlive its command's timeout and the agent's stop", "err", err)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	defer p.publish()
	for _, r := range p.rules {
		if err := p.startRule(ctx, r); err != nil {
			return err
		}
	}
	return nil
}

// publish refreshes the status snapshot; p.mu is held.
func (p *Plugin) publish() {
	var s []*active
	for _, r := range p.rules {
		if a := p.running[r.name]; a != nil {
			s = append(s, a)
		}
	}
	p.snap.Store(&s)
}

func (p *Plugin) startRule(ctx context.Context, r *rule) error {
	a := &active{r: r, lim: newLimiter(r.minInterval, r.burst)}
	w, err := p.watches.Watch(ctx, dispatch.WatchConfig{
		Path:     r.watch,
		Handler:  func(ctx context.Context, ev dispatch.Event) error { return p.handle(ctx, a, ev) },
		DomainOf: r.domainOf,
		Coalesce: r.coalesce,
		// The event of the watch's registration, at start, reload and
		// reconnection, is no change: a rule on a fixed path would run
		// for it every time, even for a node that never existed.
		SkipInitial: true,
		Filter: func(path string, _ int) bool {
			_, _, _, ok := r.match(path)
			return ok
		},
	})
	if err != nil {
		return fmt.Errorf("exec: rule %s: watch %s: %w", r.name, r.watch, err)
	}
	a.watch = w
	p.running[r.name] = a
	return nil
}

// Stop kills the commands still running and waits for them within ctx;
// the agent then removes the watches.
func (p *Plugin) Stop(ctx context.Context) error {
	if err := p.cmds.Stop(ctx); err != nil {
		return fmt.Errorf("exec: stop: %w", err)
	}
	return nil
}

// StopGrace implements plugin.StopGracer: Stop may wait that long for a
// command that ignores SIGTERM.
func (p *Plugin) StopGrace() time.Duration { return time.Duration(p.maxGrace.Load()) }

func (p *Plugin) noteGrace(rules []*rule) {
	for _, r := range rules {
		for {
			cur := p.maxGrace.Load()
			if int64(r.grace) <= cur || p.maxGrace.CompareAndSwap(cur, int64(r.grace)) {
				break
			}
		}
	}
}

// Reload applies a new section. Rules whose configuration did not change
// keep their watch, so their queued events stay queued; changed and removed
// rules lose theirs (and their queued events) before the new rules'
// watches are registered.
func (p *Plugin) Reload(ctx context.Context, sec plugin.Section) error {
	rules, err := parse(sec)
	if err != nil {
		return err
	}
	warnDeprecated(p.log, rules)
	p.mu.Lock()
	defer p.mu.Unlock()
	defer p.publish()
	keep := map[string]bool{}
	for _, r := range rules {
		if a := p.running[r.name]; a != nil && a.r.equal(r) {
			keep[r.name] = true
		}
	}
	var errs []error
	for name, a := range p.running {
		if keep[name] {
			continue
		}
		// A command of the rule that runs now is left to finish: waiting
		// for it would hold this reload, and every later one, as long as
		// the command runs. Its result is counted nowhere.
		var err error
		if d, ok := a.watch.(plugin.Detacher); ok {
			err = d.Detach(ctx)
		} else {
			err = a.watch.Unwatch(ctx)
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("exec: rule %s: %w", name, err))
		}
		a.mu.Lock()
		a.retired = true
		a.mu.Unlock()
		delete(p.running, name)
		p.runs.DeletePartialMatch(prometheus.Labels{"rule": name})
		p.duration.DeletePartialMatch(prometheus.Labels{"rule": name})
		p.limited.DeletePartialMatch(prometheus.Labels{"rule": name})
	}
	for _, r := range rules {
		if keep[r.name] {
			continue
		}
		if err := p.startRule(ctx, r); err != nil {
			errs = append(errs, err)
		}
	}
	p.rules = rules
	p.noteGrace(rules)
	if err := errors.Join(errs...); err != nil {
		return err
	}
	p.log.Info("exec rules reloaded", "rules", len(rules))
	return nil
}

// handle runs the rule's command for one event. The command's context is
// the plugin's, not the event's: the domain worker's destruction cancels the
// event context, and a rule reacting to a domain going away must still
// run to its end.
func (p *Plugin) handle(_ context.Context, a *active, ev dispatch.Event) error {
	r := a.r
	id, xsPath := ev.Domid, ev.Path
	var extra []string
	if ev.Overflow {
		xsPath = r.pathOf(id)
		extra = []string{"MTWATCH_OVERFLOW=" + strconv.Itoa(ev.Dropped)}
		a.c.overflows.Add(1)
	} else {
		var ancestor, ok bool
		id, xsPath, ancestor, ok = r.match(ev.Path)
		if !ok {
			return nil
		}
		if ancestor {
			// Only the removal of the subtree holding the node concerns
			// the rule (xenstored fires a watch on the node itself then);
			// the ancestor's creation or change does not.
			_, err := p.store.Read(p.cmds.Context(), ev.Path)
			if err == nil {
				return nil
			}
			if !errors.Is(err, os.ErrNotExist) {
				return fmt.Errorf("exec: rule %s: read %s: %w", r.name, ev.Path, err)
			}
		}
	}
	d := ""
	if r.dom >= 0 {
		d = id.String()
	}
	env := slices.Clone(p.env)
	for k, v := range r.env {
		env = proc.SetEnv(env, k, v)
	}
	env = proc.SetEnv(env, "DOMID", d)
	env = proc.SetEnv(env, "XS_PATH", xsPath)
	env = proc.SetEnv(env, "XS_TOKEN", ev.Token)
	env = proc.SetEnv(env, "MTWATCH_RULE", r.name)
	env = append(env, extra...)

	log := p.log.With("rule", r.name, "domid", d)
	argv := r.argv(id, xsPath)
	// The rate bound waits on the domain's own worker: a guest that makes
	// a rule fire faster only delays itself, while the dispatcher
	// coalesces its events behind the wait. Stopping ends the wait.
	if wait := a.lim.reserve(id, time.Now()); wait > 0 {
		a.c.rateLimited.Add(1)
		a.metric(func() { p.limited.WithLabelValues(r.name).Inc() })
		t := time.NewTimer(wait)
		select {
		case <-t.C:
		case <-p.cmds.Context().Done():
			t.Stop()
		}
	}
	var logged atomic.Int64 // Line runs on two goroutines at once
	// Once stopping, the command does not start: counted as an error.
	res := p.cmds.Run(proc.Spec{
		Path:    argv[0],
		Args:    argv,
		Env:     env,
		Timeout: r.timeout,
		Grace:   r.grace,
		Line: func(stream, line string) {
			if logged.Add(1) <= int64(r.logLines) {
				log.Info(line, "stream", stream)
			}
		},
	})
	if n := logged.Load() - int64(r.logLines); n > 0 {
		a.c.linesDropped.Add(uint64(n))
		log.Warn("output beyond log_lines not logged", "lines", n)
	}
	a.c.runs.Add(1)
	a.c.lastNanos.Store(int64(res.Duration))
	a.metric(func() { p.duration.WithLabelValues(r.name).Observe(res.Duration.Seconds()) })
	outcome := res.Outcome()
	switch outcome {
	case proc.OutcomeOK:
		a.c.ok.Add(1)
	case proc.OutcomeTimeout:
		a.c.timedOut.Add(1)
	case proc.OutcomeFailed:
		a.c.failed.Add(1)
	default:
		a.c.startErrors.Add(1)
	}
	a.metric(func() { p.runs.WithLabelValues(r.name, string(outcome)).Inc() })
	attrs := []any{"path", xsPath, "exit", res.ExitCode, "duration", res.Duration.Round(time.Millisecond)}
	if res.Signal != 0 {
		attrs = append(attrs, "signal", res.Signal.String())
	}
	if res.OK() {
		log.Debug("command done", attrs...)
		return nil
	}
	log.Warn("command failed", append(attrs, "err", res.Err)...)
	return fmt.Errorf("exec: rule %s domid %s: %w", r.name, d, res.Err)
}

// metric updates a metric of the rule unless a reload retired it.
func (a *active) metric(update func()) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if !a.retired {
		update()
	}
}

// RuleStatus is one rule in Status.
type RuleStatus struct {
	Name        string `json:"name"`
	Path        string `json:"path"`
	Watch       string `json:"watch"`
	Runs        uint64 `json:"runs"`
	OK          uint64 `json:"ok"`
	Failed      uint64 `json:"failed"`
	TimedOut    uint64 `json:"timed_out"`
	StartErrors uint64 `json:"start_errors"`
	Overflows   uint64 `json:"overflows"`
	RateLimited uint64 `json:"rate_limited"`
	// LinesNotLogged counts output lines beyond log_lines.
	LinesNotLogged uint64              `json:"lines_not_logged"`
	LastRun        string              `json:"last_duration,omitempty"`
	Events         dispatch.WatchStats `json:"events"`
}

// Status is what the plugin reports in the control API.
type Status struct {
	Rules []RuleStatus `json:"rules"`
}

// Status reports each rule's counters.
func (p *Plugin) Status() any {
	out := Status{Rules: []RuleStatus{}}
	snap := p.snap.Load()
	if snap == nil {
		return out
	}
	for _, a := range *snap {
		r := a.r
		s := RuleStatus{
			Name: r.name, Path: r.path, Watch: r.watch,
			Runs: a.c.runs.Load(), OK: a.c.ok.Load(), Failed: a.c.failed.Load(),
			TimedOut: a.c.timedOut.Load(), StartErrors: a.c.startErrors.Load(), Overflows: a.c.overflows.Load(),
			RateLimited: a.c.rateLimited.Load(), LinesNotLogged: a.c.linesDropped.Load(),
			Events: a.watch.Stats(),
		}
		if n := a.c.lastNanos.Load(); n > 0 {
			s.LastRun = time.Duration(n).String()
		}
		out.Rules = append(out.Rules, s)
	}
	return out
}

var (
	_ plugin.Reloader = (*Plugin)(nil)
	_ plugin.Reporter = (*Plugin)(nil)
)
