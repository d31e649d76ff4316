// Package plugintest hosts a plugin in a test the way mtwatchd does, on real
// components: a private C xenstored, a *xenstore.Client, a
// *dispatch.Dispatcher with one worker per domain (or a single worker), a
// plugin.Watcher wiring the client's watch events into the dispatcher, and a
// plugin.Section read from a TOML snippet. It is for plugins' in-process
// tests; the agent's own configuration loader and watch manager are tested
// through bin/mtwatchd.
package plugintest

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/sirupsen/logrus"
	"github.com/sirupsen/logrus/hooks/test"

	"github.com/mtwatch/mtwatch/lib/dispatch"
	"github.com/mtwatch/mtwatch/lib/domid"
	"github.com/mtwatch/mtwatch/lib/node"
	"github.com/mtwatch/mtwatch/lib/xenstore"
	"github.com/mtwatch/mtwatch/lib/xenstore/xenstoredtest"
	"github.com/mtwatch/mtwatch/plugin"
)

// Options configure a Host.
type Options struct {
	// SingleWorker runs every event on the default worker, as xl devd does.
	SingleWorker bool
	// Capacity bounds each domain's pending events (0: the dispatcher's
	// default).
	Capacity int
}

// Host is a test's plugin host. Its fields are the real components; tests
// use them directly to drive XenStore and inspect the dispatcher.
type Host struct {
	XS         *xenstoredtest.Instance
	Client     *xenstore.Client
	Dispatcher *dispatch.Dispatcher
	Metrics    *prometheus.Registry
	Logger     *logrus.Logger
	LogHook    *test.Hook // every log entry, for assertions

	t  testing.TB
	mu sync.Mutex
	ws map[*Watch]struct{}
}

// New starts a host for t; everything it started ends with t.
func New(t testing.TB, opts Options) *Host {
	t.Helper()
	in := xenstoredtest.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := xenstore.Dial(ctx, xenstore.WithPath(in.Socket()))
	if err != nil {
		t.Fatalf("plugintest: dial: %v", err)
	}
	d, err := dispatch.New(dispatch.Config{SingleWorker: opts.SingleWorker, Capacity: opts.Capacity, StallThreshold: -1})
	if err != nil {
		c.Close()
		t.Fatalf("plugintest: %v", err)
	}
	log, hook := test.NewNullLogger()
	log.SetLevel(logrus.DebugLevel)
	if testing.Verbose() {
		log.SetOutput(os.Stderr)
	}
	h := &Host{XS: in, Client: c, Dispatcher: d, Metrics: prometheus.NewRegistry(), Logger: log, LogHook: hook, t: t, ws: map[*Watch]struct{}{}}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		for _, w := range h.Watches() {
			w.Unwatch(ctx)
		}
		if err := d.Stop(ctx); err != nil {
			t.Errorf("plugintest: stop dispatcher: %v", err)
		}
		c.Close()
	})
	return h
}

// AddDomain creates guest id in xenstored, writes its mtwatch node as the
// toolstack hooks do and gives it a domain worker, as the agent does on the
// node's watch event.
func (h *Host) AddDomain(id domid.ID) {
	h.t.Helper()
	h.XS.CreateDomain(id)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := node.Create(ctx, h.Client, id, ""); err != nil {
		h.t.Fatalf("plugintest: mtwatch node of %d: %v", id, err)
	}
	if err := h.Dispatcher.CreateDomain(id); err != nil {
		h.t.Fatalf("plugintest: worker of %d: %v", id, err)
	}
}

// InitContext returns what the agent would build plugin name from, with
// cfg as its section.
func (h *Host) InitContext(name string, cfg plugin.Section) *plugin.InitContext {
	return &plugin.InitContext{
		Name:    name,
		Log:     h.Logger.WithField("plugin", name),
		Config:  cfg,
		Store:   h.Client,
		Watches: &watcher{h: h, plugin: name},
		Domid:   domid.Dom0,
		Home:    "/local/domain/0",
		Metrics: h.Metrics,
	}
}

// Build builds plugin name from the registry with the section text (keys
// relative to [plugins.<name>]).
func (h *Host) Build(name, text string) (plugin.Plugin, error) {
	return h.BuildSection(name, h.Section(name, text))
}

// BuildSection builds plugin name from the registry with sec.
func (h *Host) BuildSection(name string, sec plugin.Section) (plugin.Plugin, error) {
	reg, ok := plugin.Lookup(name)
	if !ok {
		return nil, fmt.Errorf("plugintest: no plugin %q registered", name)
	}
	return reg.New(h.InitContext(name, sec))
}

// Start builds and starts plugin name, failing the test on error; the
// plugin is stopped when the test ends.
func (h *Host) Start(name, text string) plugin.Plugin {
	h.t.Helper()
	p, err := h.Build(name, text)
	if err != nil {
		h.t.Fatalf("plugintest: build %s: %v", name, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := p.Start(ctx); err != nil {
		h.t.Fatalf("plugintest: start %s: %v", name, err)
	}
	h.t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		if err := p.Stop(ctx); err != nil {
			h.t.Errorf("plugintest: stop %s: %v", name, err)
		}
	})
	return p
}

// Section returns a section of plugin name read from text, kept in a file
// of the test's temporary directory so errors name a real file.
func (h *Host) Section(name, text string) *Section {
	h.t.Helper()
	file := filepath.Join(h.t.TempDir(), name+".toml")
	if err := os.WriteFile(file, []byte(text), 0o644); err != nil {
		h.t.Fatal(err)
	}
	return &Section{file: file, name: name, text: text}
}

// Watches returns the plugin watches registered now.
func (h *Host) Watches() []*Watch {
	h.mu.Lock()
	defer h.mu.Unlock()
	out := make([]*Watch, 0, len(h.ws))
	for w := range h.ws {
		out = append(out, w)
	}
	return out
}

// Wait polls cond until it holds or the timeout passes.
func (h *Host) Wait(timeout time.Duration, what string, cond func() bool) {
	h.t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			h.t.Fatalf("plugintest: %s: not within %v", what, timeout)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// Read reads path, "" with ok=false when it does not exist.
func (h *Host) Read(path string) (string, bool) {
	h.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	v, err := h.Client.Read(ctx, path)
	if errors.Is(err, os.ErrNotExist) {
		return "", false
	}
	if err != nil {
		h.t.Fatalf("plugintest: read %s: %v", path, err)
	}
	return string(v), true
}

// Write writes pairs of path and value.
func (h *Host) Write(kv ...string) {
	h.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for i := 0; i+1 < len(kv); i += 2 {
		if err := h.Client.Write(ctx, kv[i], []byte(kv[i+1])); err != nil {
			h.t.Fatalf("plugintest: write %s: %v", kv[i], err)
		}
	}
}

// Rm removes path.
func (h *Host) Rm(path string) {
	h.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := h.Client.Rm(ctx, path); err != nil {
		h.t.Fatalf("plugintest: rm %s: %v", path, err)
	}
}

type watcher struct {
	h      *Host
	plugin string
	mu     sync.Mutex
	n      int
}

// Watch registers cfg with the dispatcher, then the XenStore watch whose
// events a goroutine of the watch hands to Dispatch, as the agent's reader
// does.
func (w *watcher) Watch(ctx context.Context, cfg dispatch.WatchConfig) (plugin.Watch, error) {
	if cfg.Token == "" {
		w.mu.Lock()
		w.n++
		cfg.Token = fmt.Sprintf("%s/%d", w.plugin, w.n)
		w.mu.Unlock()
	}
	reg, err := w.h.Dispatcher.Register(cfg)
	if err != nil {
		return nil, err
	}
	xw, err := w.h.Client.Watch(ctx, cfg.Path, cfg.Token)
	if err != nil {
		reg.Unregister(context.WithoutCancel(ctx))
		return nil, err
	}
	pw := &Watch{h: w.h, reg: reg, xw: xw, done: make(chan struct{})}
	go func() {
		defer close(pw.done)
		for ev := range xw.Events() {
			if err := w.h.Dispatcher.Dispatch(ev.Path, ev.Token); err != nil &&
				!errors.Is(err, dispatch.ErrUnknownWatch) && !errors.Is(err, dispatch.ErrStopped) {
				w.h.t.Errorf("plugintest: dispatch %s: %v", ev.Path, err)
			}
		}
	}()
	w.h.mu.Lock()
	w.h.ws[pw] = struct{}{}
	w.h.mu.Unlock()
	return pw, nil
}

// Watch is a plugin's watch on a Host.
type Watch struct {
	h    *Host
	reg  *dispatch.Registration
	xw   *xenstore.Watch
	done chan struct{}
}

// Unwatch removes the XenStore watch, then the dispatcher registration.
func (w *Watch) Unwatch(ctx context.Context) error {
	w.h.mu.Lock()
	delete(w.h.ws, w)
	w.h.mu.Unlock()
	err := w.xw.Unwatch(ctx)
	<-w.done
	return errors.Join(err, w.reg.Unregister(ctx))
}

func (w *Watch) Path() string               { return w.reg.Path() }
func (w *Watch) Token() string              { return w.reg.Token() }
func (w *Watch) Stats() dispatch.WatchStats { return w.reg.Stats() }
