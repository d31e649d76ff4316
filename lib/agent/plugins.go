package agent

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/mtwatch/mtwatch/lib/control"
	"github.com/mtwatch/mtwatch/lib/dispatch"
	"github.com/mtwatch/mtwatch/lib/domid"
	"github.com/mtwatch/mtwatch/lib/xenstore"
	"github.com/mtwatch/mtwatch/plugin"
)

// hostedPlugin is a plugin the agent runs; it is the plugin's Watcher.
type hostedPlugin struct {
	a       *Agent
	name    string
	reg     plugin.Registration
	enabled bool
	p       plugin.Plugin
	ic      *plugin.InitContext // Domid and Home are set at start
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
		ic := &plugin.InitContext{
			Name:    r.Name,
			Log:     a.opts.Logrus.WithField("plugin", r.Name),
			Config:  sec,
			Store:   store{a},
			Watches: hp,
			Domid:   a.domid,
			Home:    homeOf(a.domid),
			Metrics: a.reg,
		}
		p, err := r.New(ic)
		if err != nil {
			return fmt.Errorf("agent: plugin %s: %w: %w", r.Name, ErrConfig, err)
		}
		if err := sec.Unused(); err != nil {
			return fmt.Errorf("agent: plugin %s: %w: %w", r.Name, ErrConfig, err)
		}
		hp.p, hp.ic = p, ic
	}
	return nil
}

// homeOf is the XenStore home of domain id.
func homeOf(id domid.ID) string { return "/local/domain/" + id.String() }

// stop stops the plugin, then removes the watches it left.
func (p *hostedPlugin) stop(ctx context.Context) error {
	err := p.p.Stop(ctx)
	p.running.Store(false)
	a := p.a
	a.cmu.Lock()
	var mine []*pluginWatch
	for _, w := range a.pw {
		if w.plugin == p {
			mine = append(mine, w)
		}
	}
	a.cmu.Unlock()
	for _, w := range mine {
		err = errors.Join(err, w.Unwatch(ctx))
	}
	if err != nil {
		return fmt.Errorf("stop plugin %s: %w", p.name, err)
	}
	return nil
}

func (p *hostedPlugin) watches() int {
	p.a.cmu.Lock()
	defer p.a.cmu.Unlock()
	n := 0
	for _, w := range p.a.pw {
		if w.plugin == p {
			n++
		}
	}
	return n
}

// Watch implements plugin.Watcher.
func (p *hostedPlugin) Watch(ctx context.Context, cfg dispatch.WatchConfig) (plugin.Watch, error) {
	a := p.a
	a.cmu.Lock()
	if cfg.Token == "" {
		for {
			a.tokenSeq[p.name]++
			cfg.Token = fmt.Sprintf("%s/%d", p.name, a.tokenSeq[p.name])
			if _, dup := a.pw[cfg.Token]; !dup {
				break
			}
		}
	}
	a.cmu.Unlock()
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
	w := &pluginWatch{a: a, plugin: p, path: cfg.Path, token: cfg.Token, reg: reg}
	a.cmu.Lock()
	a.pw[w.token] = w
	c := a.cur
	a.cmu.Unlock()
	if c != nil {
		if err := a.registerXS(ctx, c, w); err != nil && !connLost(err) {
			ctx, cancel := context.WithTimeout(context.Background(), unwatchTimeout)
			w.Unwatch(ctx)
			cancel()
			return nil, fmt.Errorf("plugin %s: %w", p.name, err)
		}
	}
	return w, nil
}

// connLost: the registration will be made again on the next connection.
func connLost(err error) bool {
	return errors.Is(err, xenstore.ErrConnectionLost) || errors.Is(err, xenstore.ErrClosed)
}

// pluginWatch is a plugin's watch: the dispatcher registration, and the
// XenStore watch of the current connection.
type pluginWatch struct {
	a           *Agent
	plugin      *hostedPlugin
	path, token string
	reg         *dispatch.Registration

	// Under a.cmu.
	xw      *xenstore.Watch
	on      *xenstore.Client // the connection xw is (being) registered on
	removed bool
}

// registerXS registers w's XenStore watch on c, its events handed to the
// barrier, and by it to the dispatcher, on the goroutine that reads the
// connection (xenstore.WatchFunc): no queue and no goroutine hand-off
// between xenstored and the domain queues, which took the agent's event
// rate from half the bare libxenstore watcher's (docs/performance.md).
// Neither the barrier nor Dispatch ever waits for a handler, so the
// connection's replies keep flowing to the handlers that make calls. A
// WatchFunc watch does not overflow: the dispatcher's per-domain queues are
// the only bound, and report their own overflows. An event of a connection
// that was just replaced is still dispatched: it only means "look again".
//
// A plugin's Watch and a reconnection's connect can both try to register w
// on the same new connection; the first claims it (w.on), so the second
// neither fails with EEXIST nor registers twice.
func (a *Agent) registerXS(ctx context.Context, c *xenstore.Client, w *pluginWatch) error {
	a.cmu.Lock()
	if w.on == c || w.removed || a.closing {
		a.cmu.Unlock()
		return nil
	}
	w.on = c
	a.cmu.Unlock()
	token := w.token
	xw, err := c.WatchFunc(ctx, w.path, token, func(ev xenstore.Event) {
		a.bar.event(ev.Path, token)
	})
	a.cmu.Lock()
	if err != nil {
		if w.on == c {
			w.on = nil
		}
		a.cmu.Unlock()
		return err
	}
	if w.removed || a.closing || a.cur != c || w.on != c {
		a.cmu.Unlock()
		unwatch(xw)
		return nil
	}
	w.xw = xw
	a.cmu.Unlock()
	return nil
}

// Unwatch implements plugin.Watch.
func (w *pluginWatch) Unwatch(ctx context.Context) error {
	a := w.a
	a.cmu.Lock()
	if a.pw[w.token] == w {
		delete(a.pw, w.token)
	}
	w.removed = true
	xw := w.xw
	w.xw = nil
	a.cmu.Unlock()
	var err error
	if xw != nil {
		if e := xw.Unwatch(ctx); e != nil && !connLost(e) && !errors.Is(e, xenstore.ErrUnwatched) {
			err = e
		}
	}
	return errors.Join(err, w.reg.Unregister(ctx))
}

func (w *pluginWatch) Path() string               { return w.path }
func (w *pluginWatch) Token() string              { return w.token }
func (w *pluginWatch) Stats() dispatch.WatchStats { return w.reg.Stats() }

// store is the plugins' XenStore handle: whatever connection is current.
type store struct{ a *Agent }

var errReconnecting = fmt.Errorf("%w: mtwatchd is reconnecting to xenstored", xenstore.ErrClosed)

func (s store) c() (*xenstore.Client, error) {
	if c := s.a.client(); c != nil {
		return c, nil
	}
	return nil, errReconnecting
}

// wrap makes an error of a lost connection satisfy errors.Is(err,
// xenstore.ErrClosed), as plugin.Store promises.
func wrap(err error) error {
	if err != nil && errors.Is(err, xenstore.ErrConnectionLost) && !errors.Is(err, xenstore.ErrClosed) {
		return fmt.Errorf("%w: %w", xenstore.ErrClosed, err)
	}
	return err
}

func (s store) Read(ctx context.Context, path string) ([]byte, error) {
	c, err := s.c()
	if err != nil {
		return nil, err
	}
	v, err := c.Read(ctx, path)
	return v, wrap(err)
}

func (s store) Write(ctx context.Context, path string, value []byte) error {
	c, err := s.c()
	if err != nil {
		return err
	}
	return wrap(c.Write(ctx, path, value))
}

func (s store) Mkdir(ctx context.Context, path string) error {
	c, err := s.c()
	if err != nil {
		return err
	}
	return wrap(c.Mkdir(ctx, path))
}

func (s store) Rm(ctx context.Context, path string) error {
	c, err := s.c()
	if err != nil {
		return err
	}
	return wrap(c.Rm(ctx, path))
}

func (s store) Directory(ctx context.Context, path string) ([]string, error) {
	c, err := s.c()
	if err != nil {
		return nil, err
	}
	v, err := c.Directory(ctx, path)
	return v, wrap(err)
}

func (s store) GetPerms(ctx context.Context, path string) (xenstore.Perms, error) {
	c, err := s.c()
	if err != nil {
		return nil, err
	}
	v, err := c.GetPerms(ctx, path)
	return v, wrap(err)
}

func (s store) SetPerms(ctx context.Context, path string, perms xenstore.Perms) error {
	c, err := s.c()
	if err != nil {
		return err
	}
	return wrap(c.SetPerms(ctx, path, perms))
}

func (s store) Transaction(ctx context.Context, fn func(tx *xenstore.Tx) error) error {
	c, err := s.c()
	if err != nil {
		return err
	}
	return wrap(c.Transaction(ctx, fn))
}

// pluginStatus lists the plugins for the control API.
func (a *Agent) pluginStatus() []control.PluginStatus {
	out := make([]control.PluginStatus, 0, len(a.plugins))
	for _, p := range a.plugins {
		ps := control.PluginStatus{Name: p.name, Enabled: p.enabled}
		if p.enabled {
			ps.Watches = p.watches()
			if r, ok := p.p.(plugin.Reporter); ok {
				ps.Status = r.Status()
			}
		}
		out = append(out, ps)
	}
	return out
}
