package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/mtwatch/mtwatch/lib/config"
	"github.com/mtwatch/mtwatch/lib/control"
	"github.com/mtwatch/mtwatch/lib/dispatch"
	"github.com/mtwatch/mtwatch/plugin"
)

// hostedPlugin is a plugin the agent runs; it is the plugin's Watcher.
type hostedPlugin struct {
	a       *Agent
	name    string
	reg     plugin.Registration
	enabled bool
	p       plugin.Plugin
	running atomic.Bool
}

func (a *Agent) knownPlugin(name string) bool {
	for _, r := range a.opts.Plugins {
		if r.Name == name {
			return true
		}
	}
	return false
}

// buildPlugins builds every enabled plugin from its section.
func (a *Agent) buildPlugins() error {
	cfg := a.cfg
	for _, name := range cfg.Plugins() {
		if !a.knownPlugin(name) {
			return fmt.Errorf("agent: %w: %w", ErrConfig, cfg.Errorf("plugins."+name, "unknown plugin %q", name))
		}
	}
	for _, r := range a.opts.Plugins {
		sec := cfg.Plugin(r.Name)
		on, err := sec.Enabled(r.EnabledByDefault)
		if err != nil {
			return fmt.Errorf("agent: %w: %w", ErrConfig, err)
		}
		hp := &hostedPlugin{a: a, name: r.Name, reg: r, enabled: on}
		a.plugins = append(a.plugins, hp)
		if !on {
			continue
		}
		ic := a.initContext(hp, sec)
		p, err := r.New(ic)
		if err != nil {
			return fmt.Errorf("agent: plugin %s: %w: %w", r.Name, ErrConfig, err)
		}
		if err := sec.Unused(); err != nil {
			return fmt.Errorf("agent: plugin %s: %w: %w", r.Name, ErrConfig, err)
		}
		hp.p = p
	}
	return nil
}

// initContext is what the agent builds hosted plugin hp from, sec its
// section.
func (a *Agent) initContext(hp *hostedPlugin, sec plugin.Section) *plugin.InitContext {
	return &plugin.InitContext{
		Name:    hp.name,
		Logger:  a.log.With("plugin", hp.name),
		Config:  sec,
		Store:   store{a.conn},
		Watches: hp,
		Metrics: a.reg,
	}
}

// InitContext returns what the agent would build plugin name from, with
// sec as its section: its XenStore connection, its watches (kept across
// reconnections, their events to the dispatcher), its
// logger and its metrics registry. plugin/plugintest builds the plugin
// under test from it on a running agent; a plugin built this way is the
// caller's to start (with Runtime) and stop, and is not in the control
// API's status.
func (a *Agent) InitContext(name string, sec plugin.Section) *plugin.InitContext {
	return a.initContext(&hostedPlugin{a: a, name: name, enabled: true}, sec)
}

// Watches returns the plugins' watches registered now.
func (a *Agent) Watches() []plugin.Watch {
	var out []plugin.Watch
	for _, w := range a.conn.watchesOf(nil) {
		out = append(out, w)
	}
	return out
}

// checkSection checks a plugin's new section the way New checks it at
// start, without touching the running plugin: it builds a second instance
// that is never started, its metrics in a registry of its own and its
// watches refused (New starts no work, the plugin contract says).
func (a *Agent) checkSection(p *hostedPlugin, sec *config.Section) error {
	ic := &plugin.InitContext{
		Name:    p.name,
		Logger:  slog.New(slog.DiscardHandler),
		Config:  sec,
		Store:   store{a.conn},
		Watches: refuseWatches{},
		Metrics: prometheus.NewRegistry(),
	}
	if _, err := p.reg.New(ic); err != nil {
		return err
	}
	return sec.Unused()
}

// refuseWatches is the Watcher of an instance built only to check its
// section.
type refuseWatches struct{}

func (refuseWatches) Watch(context.Context, dispatch.WatchConfig) (plugin.Watch, error) {
	return nil, errors.New("agent: a plugin built to check its section cannot watch")
}

// stop stops the plugin, then removes the watches it left.
func (p *hostedPlugin) stop(ctx context.Context) error {
	err := p.p.Stop(ctx)
	p.running.Store(false)
	for _, w := range p.a.conn.watchesOf(p) {
		err = errors.Join(err, w.Unwatch(ctx))
	}
	if err != nil {
		return fmt.Errorf("stop plugin %s: %w", p.name, err)
	}
	return nil
}

// Watch implements plugin.Watcher: the dispatcher registration, its
// handler timed for mtwatch_handler_duration_seconds, and the XenStore
// watch, kept registered by the connection.
func (p *hostedPlugin) Watch(ctx context.Context, cfg dispatch.WatchConfig) (plugin.Watch, error) {
	a := p.a
	if cfg.Token == "" {
		cfg.Token = a.conn.newToken(p.name)
	}
	cfg.Plugin = p.name
	if h := cfg.Handler; h != nil {
		hist := a.metrics.latency
		cfg.Handler = func(ctx context.Context, ev dispatch.Event) error {
			t := time.Now()
			err := h(ctx, ev)
			hist.Observe(time.Since(t).Seconds())
			return err
		}
	}
	reg, err := a.d.Register(cfg)
	if err != nil {
		return nil, fmt.Errorf("plugin %s: %w", p.name, err)
	}
	w := &pluginWatch{cn: a.conn, plugin: p, path: cfg.Path, token: cfg.Token, reg: reg, skipInitial: cfg.SkipInitial}
	if err := a.conn.add(ctx, w); err != nil {
		ctx, cancel := context.WithTimeout(context.Background(), unwatchTimeout)
		w.Unwatch(ctx)
		cancel()
		return nil, fmt.Errorf("plugin %s: %w", p.name, err)
	}
	return w, nil
}

// pluginStatus lists the plugins for the control API.
func (a *Agent) pluginStatus() []control.PluginStatus {
	out := make([]control.PluginStatus, 0, len(a.plugins))
	for _, p := range a.plugins {
		ps := control.PluginStatus{Name: p.name, Enabled: p.enabled}
		if p.enabled {
			ps.Watches = len(a.conn.watchesOf(p))
			if r, ok := p.p.(plugin.Reporter); ok {
				ps.Status = r.Status()
			}
		}
		out = append(out, ps)
	}
	return out
}
