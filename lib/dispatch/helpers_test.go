package dispatch

import (
	"context"
	"log/slog"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mtwatch/mtwatch/lib/domid"
)

// waitLimit bounds every wait of a test, so that a broken dispatcher fails
// the test instead of hanging it. Correct code never gets near it.
const waitLimit = 10 * time.Second

func newDispatcher(t testing.TB, cfg Config) *Dispatcher {
	t.Helper()
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	d, err := New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), waitLimit)
		defer cancel()
		if err := d.Stop(ctx); err != nil {
			t.Errorf("Stop: %v", err)
		}
	})
	return d
}

func register(t testing.TB, d *Dispatcher, cfg WatchConfig) *Registration {
	t.Helper()
	if cfg.Path == "" {
		cfg.Path = "backend"
	}
	if cfg.Token == "" {
		cfg.Token = cfg.Path
	}
	w, err := d.Register(cfg)
	if err != nil {
		t.Fatalf("Register(%q): %v", cfg.Token, err)
	}
	return w
}

func dispatch(t testing.TB, d *Dispatcher, path, token string) {
	t.Helper()
	if err := d.Dispatch(path, token); err != nil {
		t.Fatalf("Dispatch(%q, %q): %v", path, token, err)
	}
}

func recv[T any](t testing.TB, ch <-chan T, what string) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(waitLimit):
		t.Fatalf("timed out waiting for %s", what)
		panic("unreachable")
	}
}

// notWithin asserts that ch yields nothing for a short while. It can only
// miss a bug, never flag correct code.
func notWithin[T any](t testing.TB, ch <-chan T, what string) {
	t.Helper()
	select {
	case <-ch:
		t.Fatalf("%s happened too early", what)
	case <-time.After(50 * time.Millisecond):
	}
}

// noRunsBeyond asserts that no handler call beyond the first n starts for
// a short while. It counts recorded calls, not started tokens: waitRuns may
// return before it has consumed the token of a call already recorded.
func (r *recorder) noRunsBeyond(t testing.TB, n int, what string) {
	t.Helper()
	time.Sleep(50 * time.Millisecond)
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.runs) > n {
		t.Fatalf("%s happened too early: %+v", what, r.runs[n:])
	}
}

// run is one handler call as seen by a recorder.
type run struct {
	Path   string
	Worker domid.ID
	Domid  domid.ID
	Event  Event
}

// recorder is a handler that records every call in order and may block
// calls whose path is in block until it is released.
type recorder struct {
	mu      sync.Mutex
	runs    []run
	started chan run
	block   map[string]chan struct{}
}

func newRecorder() *recorder {
	return &recorder{started: make(chan run, 1024), block: make(map[string]chan struct{})}
}

// blockOn makes the call for path wait until the returned func is called.
func (r *recorder) blockOn(path string) (release func()) {
	ch := make(chan struct{})
	r.mu.Lock()
	r.block[path] = ch
	r.mu.Unlock()
	var once sync.Once
	return func() { once.Do(func() { close(ch) }) }
}

func (r *recorder) handle(ctx context.Context, ev Event) error {
	wk, _ := WorkerOf(ctx)
	rn := run{Path: ev.Path, Worker: wk, Domid: ev.Domid, Event: ev}
	r.mu.Lock()
	r.runs = append(r.runs, rn)
	ch := r.block[ev.Path]
	r.mu.Unlock()
	r.started <- rn
	if ch != nil {
		<-ch
	}
	return nil
}

func (r *recorder) paths() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var ps []string
	for _, rn := range r.runs {
		ps = append(ps, rn.Path)
	}
	return ps
}

// waitRuns waits until n calls have started and returns them.
func (r *recorder) waitRuns(t testing.TB, n int) []run {
	t.Helper()
	deadline := time.After(waitLimit)
	for {
		r.mu.Lock()
		if len(r.runs) >= n {
			runs := append([]run(nil), r.runs...)
			r.mu.Unlock()
			return runs
		}
		r.mu.Unlock()
		select {
		case <-r.started:
		case <-deadline:
			t.Fatalf("timed out waiting for %d handler calls; got %v", n, r.paths())
		}
	}
}

// waitAtMost waits until at most n events and notices are left in d: 0 to
// wait until d has run everything.
func waitAtMost(t testing.TB, d *Dispatcher, n int) {
	t.Helper()
	deadline := time.Now().Add(waitLimit)
	for {
		d.mu.Lock()
		left := d.items
		d.mu.Unlock()
		if left <= n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("dispatcher still has %d events, want at most %d", left, n)
		}
		time.Sleep(200 * time.Microsecond)
	}
}

// packageGoroutines returns the stacks of goroutines running code of this
// package's dispatcher (not test code).
func packageGoroutines() []string {
	buf := make([]byte, 1<<20)
	buf = buf[:runtime.Stack(buf, true)]
	var out []string
	for _, g := range strings.Split(string(buf), "\n\n") {
		if strings.Contains(g, "lib/dispatch.(*Dispatcher)") {
			out = append(out, g)
		}
	}
	return out
}

// noLeak waits briefly for goroutines that are returning, then fails if a
// goroutine of the dispatcher is left.
func noLeak(t testing.TB) {
	t.Helper()
	deadline := time.Now().Add(waitLimit)
	for {
		gs := packageGoroutines()
		if len(gs) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d dispatcher goroutines left:\n%s", len(gs), strings.Join(gs, "\n\n"))
		}
		time.Sleep(time.Millisecond)
	}
}

// logCapture is a slog.Handler that keeps records and signals them.
type logCapture struct {
	mu      sync.Mutex
	records []slog.Record
	ch      chan slog.Record
}

func newLogCapture() *logCapture { return &logCapture{ch: make(chan slog.Record, 256)} }

func (l *logCapture) Enabled(context.Context, slog.Level) bool { return true }
func (l *logCapture) Handle(_ context.Context, r slog.Record) error {
	l.mu.Lock()
	l.records = append(l.records, r)
	l.mu.Unlock()
	select {
	case l.ch <- r:
	default:
	}
	return nil
}
func (l *logCapture) WithAttrs([]slog.Attr) slog.Handler { return l }
func (l *logCapture) WithGroup(string) slog.Handler      { return l }

// waitMessage waits for a record whose message contains msg.
func (l *logCapture) waitMessage(t testing.TB, msg string) slog.Record {
	t.Helper()
	for {
		r := recv(t, l.ch, "log "+msg)
		if strings.Contains(r.Message, msg) {
			return r
		}
	}
}

func attrs(r slog.Record) map[string]slog.Value {
	m := make(map[string]slog.Value)
	r.Attrs(func(a slog.Attr) bool {
		m[a.Key] = a.Value
		return true
	})
	return m
}

func slogNew(h slog.Handler) *slog.Logger { return slog.New(h) }
