// Package log is mtwatchd's built-in log plugin: it logs every event of its
// configured paths with the domain it belongs to and the worker it ran on.
// It is the smallest real plugin, used by tests and demos to see the
// dispatcher at work; it logs at debug by default, so it is silent unless
// asked.
package log

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"sync"

	"github.com/mtwatch/mtwatch/lib/dispatch"
	"github.com/mtwatch/mtwatch/lib/xenstore"
	"github.com/mtwatch/mtwatch/plugin"
)

// Name is the plugin's name and configuration section, [plugins.log].
const Name = "log"

func init() {
	plugin.Register(plugin.Registration{
		Name: Name, EnabledByDefault: true, New: New,
		Doc:      "Logs every event of its paths with the domain it belongs to and the worker it ran on. On by default; it logs at debug, so it is silent unless log.level or its own level says otherwise.",
		Defaults: func() any { return defaults() },
	})
}

// Config is the [plugins.log] section.
type Config struct {
	// Level of the event entries: "debug" (default) or "info".
	Level string `toml:"level" doc:"Level of the event entries: debug or info."`
	// Paths watched, relative to /local/domain/0 or absolute; default
	// ["backend"].
	Paths []string `toml:"paths" doc:"Paths watched (relative to the agent's home, or absolute)."`
}

// defaults is the section at its defaults.
func defaults() Config { return Config{Level: "debug", Paths: []string{"backend"}} }

// Plugin is the log plugin.
type Plugin struct {
	ic *plugin.InitContext

	mu      sync.Mutex
	cfg     Config
	level   slog.Level
	watches []plugin.Watch
}

// New builds the plugin from its section.
func New(ic *plugin.InitContext) (plugin.Plugin, error) {
	cfg, level, err := parse(ic.Config)
	if err != nil {
		return nil, err
	}
	return &Plugin{ic: ic, cfg: cfg, level: level}, nil
}

func parse(sec plugin.Section) (Config, slog.Level, error) {
	cfg := defaults()
	if err := sec.Decode(&cfg); err != nil {
		return cfg, 0, err
	}
	var level slog.Level
	switch cfg.Level {
	case "debug":
		level = slog.LevelDebug
	case "info":
		level = slog.LevelInfo
	default:
		return cfg, 0, sec.Errorf("level", "level %q: want debug or info", cfg.Level)
	}
	seen := map[string]bool{}
	for i, p := range cfg.Paths {
		if err := xenstore.ValidatePath(p); err != nil && p != "@introduceDomain" && p != "@releaseDomain" {
			return cfg, 0, sec.Errorf(fmt.Sprintf("paths[%d]", i), "path %q: %v", p, err)
		}
		if seen[p] {
			return cfg, 0, sec.Errorf(fmt.Sprintf("paths[%d]", i), "path %q listed twice", p)
		}
		seen[p] = true
	}
	return cfg, level, nil
}

// Start registers a watch per path.
func (p *Plugin) Start(ctx context.Context, _ plugin.Runtime) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.watch(ctx, p.cfg.Paths)
}

// watch registers paths; p.mu held.
func (p *Plugin) watch(ctx context.Context, paths []string) error {
	for _, path := range paths {
		w, err := p.ic.Watches.Watch(ctx, dispatch.WatchConfig{Path: path, Handler: func(ctx context.Context, ev dispatch.Event) error {
			return p.handle(ctx, path, ev)
		}})
		if err != nil {
			return err
		}
		p.watches = append(p.watches, w)
	}
	return nil
}

func (p *Plugin) handle(ctx context.Context, watch string, ev dispatch.Event) error {
	worker, _ := dispatch.WorkerOf(ctx)
	p.mu.Lock()
	level := p.level
	p.mu.Unlock()
	attrs := []any{"domid", ev.Domid, "worker", worker, "path", ev.Path, "watch", watch, "token", ev.Token}
	if ev.Overflow {
		p.ic.Logger.Warn("events dropped: the domain's queue was full", append(attrs, "dropped", ev.Dropped)...)
		return nil
	}
	p.ic.Logger.Log(ctx, level, "event", attrs...)
	return nil
}

// Stop does nothing: the agent removes the watches.
func (p *Plugin) Stop(ctx context.Context) error { return nil }

// Reload applies a new level at once and watches a changed path list.
func (p *Plugin) Reload(ctx context.Context, sec plugin.Section) error {
	cfg, level, err := parse(sec)
	if err != nil {
		return err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.level, p.cfg.Level = level, cfg.Level
	if slices.Equal(cfg.Paths, p.cfg.Paths) {
		return nil
	}
	for _, w := range p.watches {
		if err := w.Unwatch(ctx); err != nil {
			return err
		}
	}
	p.watches = nil
	p.cfg.Paths = cfg.Paths
	return p.watch(ctx, cfg.Paths)
}

// Status reports the paths and level for GET /v1/status.
func (p *Plugin) Status() any {
	p.mu.Lock()
	defer p.mu.Unlock()
	return map[string]any{"level": p.cfg.Level, "paths": p.cfg.Paths}
}
