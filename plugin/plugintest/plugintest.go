// Package plugintest hosts a plugin in a test the way mtwatchd does, as
// net/http/httptest serves a handler with the production server: the host
// is a real lib/agent Agent, on a private C xenstored, with a configuration
// parsed by lib/config. A plugin built on it gets the agent's XenStore
// connection, its watches (events through the agent to its
// dispatcher, a worker per domain) and its metrics registry. Benchmarks,
// which have no testing.TB, start the same agent with StartAgent.
package plugintest

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/mtwatch/mtwatch/lib/agent"
	"github.com/mtwatch/mtwatch/lib/config"
	"github.com/mtwatch/mtwatch/lib/control"
	"github.com/mtwatch/mtwatch/lib/dispatch"
	"github.com/mtwatch/mtwatch/lib/domid"
	"github.com/mtwatch/mtwatch/lib/node"
	"github.com/mtwatch/mtwatch/lib/xenstore"
	"github.com/mtwatch/mtwatch/lib/xenstore/xenstoredtest"
	"github.com/mtwatch/mtwatch/plugin"
)

// Options configure a Host, or an agent started by StartAgent.
type Options struct {
	// Config is the agent's configuration file, parsed by lib/config; ""
	// is the defaults. Its agent.xenstore is the host's xenstored whatever
	// it says.
	Config string
	// SingleWorker and Capacity, when set, override agent.single_worker
	// (every event on the default worker, as Linux's kernel xenwatch thread
	// runs every watch callback) and
	// agent.queue_capacity.
	SingleWorker bool
	Capacity     int
	// Plugins are the registrations the agent builds from Config and
	// starts, as mtwatchd does with the registry; none by default: a test
	// builds its plugin with Build or Start.
	Plugins []plugin.Registration
	// XS is the xenstored to run on; nil starts a private one (New only).
	XS *xenstoredtest.Instance
	// Agent adjusts the agent's options before agent.New (a Dial that
	// holds a reconnection, a logger).
	Agent func(*agent.Options)
	// ShutdownErr gets the error of the agent's shutdown at the test's end
	// (New only); nil fails the test on one. A test that shuts the agent
	// down itself and checks the result sets it.
	ShutdownErr func(error)
}

// StartAgent starts an agent in this process on the xenstored at socket,
// as mtwatchd does: the configuration parsed by lib/config, opts.Plugins
// built from it and started, READY once the watches are registered and the
// workers reconciled. The caller shuts it down.
func StartAgent(ctx context.Context, socket string, opts Options) (*agent.Agent, error) {
	cfg, err := config.Parse("plugintest.toml", []byte(opts.Config))
	if err != nil {
		return nil, err
	}
	cfg.Agent.Xenstore = socket
	if opts.SingleWorker {
		cfg.Agent.SingleWorker = true
	}
	if opts.Capacity > 0 {
		cfg.Agent.QueueCapacity = opts.Capacity
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	ao := agent.Options{
		Config:  cfg,
		Plugins: opts.Plugins,
		Version: "plugintest",
		Dial: func(ctx context.Context) (*xenstore.Client, error) {
			return xenstore.Dial(ctx, xenstore.WithPath(socket))
		},
	}
	if ao.Plugins == nil {
		ao.Plugins = []plugin.Registration{}
	}
	if opts.Agent != nil {
		opts.Agent(&ao)
	}
	a, err := agent.New(ao)
	if err != nil {
		return nil, err
	}
	if err := a.Start(ctx); err != nil {
		a.Shutdown(context.Background())
		return nil, err
	}
	return a, nil
}

// Host is a test's plugin host. Its fields are the real components; tests
// use them directly to drive XenStore and inspect the agent.
type Host struct {
	XS *xenstoredtest.Instance
	// Client is the test's own connection, to write what a toolstack or a
	// guest would; the agent has its own.
	Client     *xenstore.Client
	Agent      *agent.Agent
	Dispatcher *dispatch.Dispatcher
	// Metrics has the metrics of the plugins built by the host.
	Metrics *prometheus.Registry
	// Logs has what the agent and the plugins log, from debug up, for
	// assertions; with go test -v it goes to stderr too.
	Logs *Logs

	t      testing.TB
	single bool
}

// New starts a host for t; everything it started ends with t.
func New(t testing.TB, opts Options) *Host {
	t.Helper()
	in := opts.XS
	if in == nil {
		in = xenstoredtest.Start(t)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := xenstore.Dial(ctx, xenstore.WithPath(in.Socket()))
	if err != nil {
		t.Fatalf("plugintest: dial: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	var agentLog io.Writer = io.Discard
	if testing.Verbose() {
		agentLog = os.Stderr
	}
	logs := &Logs{Level: slog.LevelDebug}
	adjust := opts.Agent
	opts.Agent = func(ao *agent.Options) {
		ao.Logger = slog.New(logs.Handler(slog.NewTextHandler(agentLog, &slog.HandlerOptions{Level: slog.LevelDebug})))
		if adjust != nil {
			adjust(ao)
		}
	}
	a, err := StartAgent(ctx, in.Socket(), opts)
	if err != nil {
		t.Fatalf("plugintest: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		err := a.Shutdown(ctx)
		switch {
		case opts.ShutdownErr != nil:
			opts.ShutdownErr(err)
		case err != nil:
			t.Errorf("plugintest: shutdown: %v", err)
		}
	})
	return &Host{
		XS: in, Client: c, Agent: a, Dispatcher: a.Dispatcher(), Metrics: prometheus.NewRegistry(),
		Logs: logs, t: t, single: a.Config().Agent.SingleWorker,
	}
}

// AddDomain creates guest id in xenstored and writes its mtwatch node as
// the toolstack hooks do, then waits until the agent has seen the node and
// (unless it runs a single worker) given the domain its worker.
func (h *Host) AddDomain(id domid.ID) {
	h.t.Helper()
	h.XS.CreateDomain(id)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := node.Create(ctx, h.Client, id, ""); err != nil {
		h.t.Fatalf("plugintest: mtwatch node of %d: %v", id, err)
	}
	h.Wait(10*time.Second, fmt.Sprintf("the worker of domain %d", id), func() bool {
		d, ok := h.Agent.Domain(uint16(id))
		return ok && d.Node && (h.single || d.Worker == control.WorkerLive)
	})
}

// InitContext returns what the agent builds plugin name from, with cfg as
// its section, but the plugins' metrics in Metrics, a registry of their
// own (the agent's are in Agent.Registry()).
func (h *Host) InitContext(name string, cfg plugin.Section) *plugin.InitContext {
	ic := h.Agent.InitContext(name, cfg)
	ic.Metrics = h.Metrics
	return ic
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
// plugin is stopped when the test ends, and then its watches removed, as
// the agent does.
func (h *Host) Start(name, text string) plugin.Plugin {
	h.t.Helper()
	p, err := h.Build(name, text)
	if err != nil {
		h.t.Fatalf("plugintest: build %s: %v", name, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := p.Start(ctx, h.Agent.Runtime()); err != nil {
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

// Section returns a section of plugin name read by lib/config from text,
// its keys those of [plugins.<name>], kept in a file of the test's
// temporary directory so errors name a real file and line. Text that is
// not TOML gives a section whose Decode returns the error, as a reload of
// such a file would fail.
func (h *Host) Section(name, text string) plugin.Section {
	h.t.Helper()
	file := filepath.Join(h.t.TempDir(), name+".toml")
	if err := os.WriteFile(file, []byte(text), 0o644); err != nil {
		h.t.Fatal(err)
	}
	sec, err := config.ParseSection(file, name, []byte(text))
	if err != nil {
		return unparsed{file, err}
	}
	return sec
}

// unparsed is a section whose text is not TOML.
type unparsed struct {
	file string
	err  error
}

func (u unparsed) Decode(any) error { return u.err }
func (u unparsed) File() string     { return u.file }
func (u unparsed) Errorf(key, format string, args ...any) error {
	return fmt.Errorf("%s: %s: %s", u.file, key, fmt.Sprintf(format, args...))
}

// Watch is a plugin's watch on a Host.
type Watch struct{ plugin.Watch }

// Watches returns the plugin watches registered now.
func (h *Host) Watches() []*Watch {
	var out []*Watch
	for _, w := range h.Agent.Watches() {
		out = append(out, &Watch{w})
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
