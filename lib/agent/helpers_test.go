package agent_test

import (
	"bytes"
	"context"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mtwatch/mtwatch/lib/agent"
	"github.com/mtwatch/mtwatch/lib/control"
	"github.com/mtwatch/mtwatch/lib/dispatch"
	"github.com/mtwatch/mtwatch/lib/domid"
	"github.com/mtwatch/mtwatch/lib/xenstore"
	"github.com/mtwatch/mtwatch/lib/xenstore/xenstoredtest"
	"github.com/mtwatch/mtwatch/plugin"
	"github.com/mtwatch/mtwatch/plugin/plugintest"
)

// run is one handler call seen by the recording plugin.
type run struct {
	path   string
	worker domid.ID
}

// recorder is a test plugin: it watches "backend" and records every event
// with the worker it ran on; hang decides which events block until their
// context ends (a backend waiting on a guest that never answers).
type recorder struct {
	ic      *plugin.InitContext
	runs    chan run
	hang    func(ev dispatch.Event, worker domid.ID) bool
	stuck   chan error
	unblock chan struct{} // closed by a test to end hung handlers
	w       plugin.Watch
	stopped bool
}

func (r *recorder) Start(ctx context.Context, _ plugin.Runtime) error {
	w, err := r.ic.Watches.Watch(ctx, dispatch.WatchConfig{
		Path: "backend",
		Handler: func(ctx context.Context, ev dispatch.Event) error {
			wk, _ := dispatch.WorkerOf(ctx)
			if ev.Overflow {
				r.runs <- run{"overflow of " + ev.Path, wk}
				return nil
			}
			if r.hang != nil && r.hang(ev, wk) {
				select {
				case <-ctx.Done():
				case <-r.unblock: // nil unless the test set it
				}
				r.stuck <- ctx.Err()
				return ctx.Err()
			}
			select {
			case r.runs <- run{ev.Path, wk}:
			default: // the test stopped reading
			}
			return nil
		},
	})
	r.w = w
	return err
}

func (r *recorder) Stop(ctx context.Context) error { r.stopped = true; return nil }

func newRecorder(hang func(dispatch.Event, domid.ID) bool) (*recorder, plugin.Registration) {
	r := &recorder{runs: make(chan run, 4096), stuck: make(chan error, 16), hang: hang}
	return r, plugin.Registration{
		Name:             "rec",
		EnabledByDefault: true,
		New: func(ic *plugin.InitContext) (plugin.Plugin, error) {
			r.ic = ic
			return r, nil
		},
	}
}

// expectRun waits for path to run, skipping other runs, and checks its
// worker.
func (r *recorder) expectRun(t *testing.T, path string, worker domid.ID) {
	t.Helper()
	r.expectRunWithin(t, path, worker, 20*time.Second)
}

// expectRunWithin is expectRun with a deadline.
func (r *recorder) expectRunWithin(t *testing.T, path string, worker domid.ID, within time.Duration) {
	t.Helper()
	deadline := time.After(within)
	for {
		select {
		case got := <-r.runs:
			if got.path != path {
				continue
			}
			if got.worker != worker {
				t.Fatalf("%s ran on worker %d, want %d", path, got.worker, worker)
			}
			return
		case <-deadline:
			t.Fatalf("%s did not run within %v", path, within)
		}
	}
}

// syncBuffer is a log sink safe for concurrent writes.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

type harness struct {
	t    *testing.T
	in   *xenstoredtest.Instance
	c    *xenstore.Client
	a    *agent.Agent
	logs *syncBuffer
	ctx  context.Context
	// shutDown: the test called Shutdown itself and checked its result.
	shutDown bool
}

// start runs an agent in-process against a private xenstored (in, if not
// nil), on plugintest's host: the agent mtwatchd runs, its configuration
// parsed by lib/config.
func start(t *testing.T, in *xenstoredtest.Instance, cfgText string, mutate func(*agent.Options), regs ...plugin.Registration) *harness {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	t.Cleanup(cancel)
	logs := &syncBuffer{}
	h := &harness{t: t, logs: logs, ctx: ctx}
	// Registered first, so it runs last: after the shutdown.
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("agent log:\n%s", logs.String())
		}
	})
	host := plugintest.New(t, plugintest.Options{
		XS:      in,
		Config:  cfgText,
		Plugins: regs,
		Agent: func(o *agent.Options) {
			o.Logger = slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
			o.Version = "test"
			if mutate != nil {
				mutate(o)
			}
		},
		ShutdownErr: func(err error) {
			if err != nil && !h.shutDown {
				t.Errorf("shutdown: %v", err)
			}
		},
	})
	h.in, h.c, h.a = host.XS, host.Client, host.Agent
	return h
}

// waitDomain waits until domain id's entry satisfies ok.
func (h *harness) waitDomain(id domid.ID, what string, ok func(d control.Domain, found bool) bool) control.Domain {
	h.t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		d, found := h.a.Domain(uint16(id))
		if ok(d, found) {
			return d
		}
		if time.Now().After(deadline) {
			h.t.Fatalf("domain %d: %s: last %+v (found %v)", id, what, d, found)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

func (h *harness) waitWorker(id domid.ID, worker string) control.Domain {
	h.t.Helper()
	return h.waitDomain(id, "worker "+worker, func(d control.Domain, found bool) bool {
		if worker == control.WorkerNone && !found {
			return true
		}
		return found && d.Worker == worker
	})
}

func (h *harness) write(path, value string) {
	h.t.Helper()
	if err := h.c.Write(h.ctx, path, []byte(value)); err != nil {
		h.t.Fatal(err)
	}
}

func (h *harness) waitLog(substr string) {
	h.t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !strings.Contains(h.logs.String(), substr) {
		if time.Now().After(deadline) {
			h.t.Fatalf("log never said %q", substr)
		}
		time.Sleep(2 * time.Millisecond)
	}
}
