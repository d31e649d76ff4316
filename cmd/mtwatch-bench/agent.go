package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"runtime"
	"time"

	"github.com/mtwatch/mtwatch/lib/agent"
	"github.com/mtwatch/mtwatch/lib/config"
	"github.com/mtwatch/mtwatch/lib/dispatch"
	"github.com/mtwatch/mtwatch/plugin"
	"github.com/mtwatch/mtwatch/plugin/plugintest"
)

// benchWatch is the path the bench plugin watches, relative to dom0's home
// as a backend driver's watch is: events of backend/<type>/<domid>/... go
// to that domain's worker.
const benchWatch = "backend"

// mode is how the agent runs its events.
type mode string

const (
	modeMtwatch mode = "mtwatch"       // a worker per domain
	modeSingle  mode = "single-worker" // every event on the default worker
	// A worker per domain, the Go runtime's default GOMAXPROCS (a thread per
	// CPU) instead of the agent's default of 1.
	modeMtwatchAllCPUs mode = "mtwatch, gomaxprocs=0"
)

// agentLog receives the agent's log (--agent-log); discarded by default.
var agentLog io.Writer = io.Discard

// runAgent starts mtwatchd's core in this process, with mtwatchd's
// GOMAXPROCS, on the xenstored at socket, with one plugin: a watch of
// benchWatch whose events go to handler. It is plugintest's host, the one
// the plugins' tests run on. Auto-detection is off, so workers follow the
// node protocol alone. The returned stop shuts the agent down.
func runAgent(ctx context.Context, socket string, m mode, handler dispatch.Handler) (*agent.Agent, func(), error) {
	text := fmt.Sprintf("[agent]\nauto_detect = false\nsingle_worker = %v\nstall_threshold = \"0s\"\nshutdown_timeout = \"30s\"\n", m == modeSingle)
	if m == modeMtwatchAllCPUs {
		text += "gomaxprocs = 0\n"
	}
	cfg, err := config.Parse("bench.toml", []byte(text))
	if err != nil {
		return nil, nil, err
	}
	// As mtwatchd does (its setGOMAXPROCS): this process is the agent's,
	// and a GOMAXPROCS variable wins.
	switch {
	case os.Getenv("GOMAXPROCS") != "":
	case cfg.Agent.GOMAXPROCS > 0:
		runtime.GOMAXPROCS(cfg.Agent.GOMAXPROCS)
	default:
		runtime.SetDefaultGOMAXPROCS()
	}
	reg := plugin.Registration{
		Name:             "bench",
		EnabledByDefault: true,
		New: func(ic *plugin.InitContext) (plugin.Plugin, error) {
			return &benchPlugin{ic: ic, handler: handler}, nil
		},
	}
	a, err := plugintest.StartAgent(ctx, socket, plugintest.Options{
		Config:  text,
		Plugins: []plugin.Registration{reg},
		Agent: func(o *agent.Options) {
			o.Logger = slog.New(slog.NewTextHandler(agentLog, &slog.HandlerOptions{Level: slog.LevelDebug}))
			o.Version = "bench"
		},
	})
	if err != nil {
		return nil, nil, err
	}
	stop := func() {
		sctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		if err := a.Shutdown(sctx); err != nil {
			logf("agent shutdown: %v", err)
		}
	}
	return a, stop, nil
}

// waitWorkers waits until the agent has n domain workers (live or
// draining).
func waitWorkers(ctx context.Context, a *agent.Agent, n int, poll time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	for {
		if got := a.Dispatcher().Stats().Workers; got == n {
			return nil
		} else if ctx.Err() != nil {
			return fmt.Errorf("agent has %d workers, want %d: %w", got, n, ctx.Err())
		}
		time.Sleep(poll)
	}
}

type benchPlugin struct {
	ic      *plugin.InitContext
	handler dispatch.Handler
}

func (p *benchPlugin) Start(ctx context.Context, _ plugin.Runtime) error {
	_, err := p.ic.Watches.Watch(ctx, dispatch.WatchConfig{Path: benchWatch, Handler: p.handler})
	return err
}

func (p *benchPlugin) Stop(context.Context) error { return nil }
