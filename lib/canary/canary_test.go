package canary

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/mtwatch/mtwatch/lib/domid"
	"github.com/mtwatch/mtwatch/lib/xenstore"
	"github.com/mtwatch/mtwatch/lib/xenstore/xenstoredtest"
)

// waitLimit bounds every wait; correct code never gets near it.
const waitLimit = 10 * time.Second

// logs keeps the messages logged.
type logs struct {
	mu   sync.Mutex
	msgs []string
}

func (l *logs) Enabled(context.Context, slog.Level) bool { return true }
func (l *logs) Handle(_ context.Context, r slog.Record) error {
	l.mu.Lock()
	l.msgs = append(l.msgs, r.Message)
	l.mu.Unlock()
	return nil
}
func (l *logs) WithAttrs([]slog.Attr) slog.Handler { return l }
func (l *logs) WithGroup(string) slog.Handler      { return l }
func (l *logs) count(sub string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, m := range l.msgs {
		if strings.Contains(m, sub) {
			n++
		}
	}
	return n
}

// start runs a canary against a private xenstored until the test ends.
func start(t *testing.T, cfg Config) (*Canary, *xenstoredtest.Instance, *logs, *xenstore.Client) {
	t.Helper()
	in := xenstoredtest.Start(t)
	ctx, cancel := context.WithCancel(context.Background())
	xs, err := xenstore.Dial(ctx, xenstore.WithPath(in.Socket()))
	if err != nil {
		t.Fatal(err)
	}
	l := &logs{}
	cfg.Logger = slog.New(l)
	c, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx, xs) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; !errors.Is(err, context.Canceled) {
			t.Errorf("Run: %v", err)
		}
		xs.Close()
	})
	return c, in, l, xs
}

func waitFor(t *testing.T, what string, cond func(Status) bool, c *Canary) Status {
	t.Helper()
	deadline := time.Now().Add(waitLimit)
	for {
		s := c.Status()
		if cond(s) {
			return s
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s: %+v", what, s)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestCanaryMeasuresAndIsPrivate(t *testing.T) {
	c, _, l, xs := start(t, Config{Interval: 20 * time.Millisecond, Threshold: 2 * time.Second})
	s := waitFor(t, "5 samples", func(s Status) bool { return s.Samples >= 5 }, c)
	if s.LastLatency <= 0 || s.MaxLatency < s.LastLatency || s.Alarm || s.Alarms != 0 {
		t.Fatalf("status %+v", s)
	}
	perms, err := xs.GetPerms(context.Background(), DefaultPath)
	if err != nil {
		t.Fatal(err)
	}
	if perms.String() != "n0" {
		t.Fatalf("canary perms %s, want n0", perms)
	}
	if n := l.count("canary:"); n != 0 {
		t.Fatalf("%d canary messages logged on a healthy xenstored", n)
	}
}

// TestCanaryAlarmWhileXenstoredStopped: SIGSTOP of xenstored raises the alarm
// within about the threshold, and SIGCONT ends it.
func TestCanaryAlarmWhileXenstoredStopped(t *testing.T) {
	const threshold = 200 * time.Millisecond
	c, in, l, _ := start(t, Config{Interval: 20 * time.Millisecond, Threshold: threshold})
	waitFor(t, "a first sample", func(s Status) bool { return s.Samples >= 1 }, c)
	pid := in.Pid()
	if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	stopped := time.Now()
	cont := sync.OnceFunc(func() { syscall.Kill(pid, syscall.SIGCONT) })
	t.Cleanup(cont)
	s := waitFor(t, "the alarm", func(s Status) bool { return s.Alarm }, c)
	if s.Alarms != 1 || l.count("no watch event yet") != 1 {
		t.Fatalf("status %+v, logs %v", s, l.msgs)
	}
	if since := time.Since(stopped); since < threshold {
		t.Fatalf("alarm after %v, before the threshold", since)
	}
	time.Sleep(700 * time.Millisecond) // still one episode, however long
	if s := c.Status(); s.Alarms != 1 || s.PendingFor < 500*time.Millisecond {
		t.Fatalf("status while stopped %+v", s)
	}
	cont()
	s = waitFor(t, "the alarm's end", func(s Status) bool { return !s.Alarm }, c)
	if s.MaxLatency < 700*time.Millisecond || l.count("on time again") != 1 {
		t.Fatalf("status after SIGCONT %+v, logs %v", s, l.msgs)
	}
}

func TestNewRejectsBadConfig(t *testing.T) {
	for _, cfg := range []Config{{Interval: -1}, {Threshold: -time.Second}, {Owner: domid.Invalid}} {
		if _, err := New(cfg); !errors.Is(err, ErrConfig) {
			t.Errorf("New(%+v) = %v, want ErrConfig", cfg, err)
		}
	}
	c, err := New(Config{})
	if err != nil {
		t.Fatal(err)
	}
	if s := c.Status(); s.Interval != DefaultInterval || s.Threshold != DefaultThreshold {
		t.Fatalf("defaults %+v", s)
	}
}

// TestPlaceRejectsBadNode: Place, as New, refuses a reserved owner, and an
// empty path, and then leaves the canary where it was.
func TestPlaceRejectsBadNode(t *testing.T) {
	c, err := New(Config{})
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		path  string
		owner domid.ID
	}{{"", 5}, {"/local/domain/5/mtwatch-canary", domid.Invalid}} {
		if err := c.Place(tt.path, tt.owner); !errors.Is(err, ErrConfig) {
			t.Errorf("Place(%q, %d) = %v, want ErrConfig", tt.path, tt.owner, err)
		}
	}
	if c.cfg.Path != DefaultPath || c.cfg.Owner != domid.Dom0 {
		t.Errorf("node %q owned by %d after refused placements", c.cfg.Path, c.cfg.Owner)
	}
	if err := c.Place("/local/domain/5/mtwatch-canary", 5); err != nil || c.cfg.Path != "/local/domain/5/mtwatch-canary" || c.cfg.Owner != 5 {
		t.Errorf("Place: %v, node %q owned by %d", err, c.cfg.Path, c.cfg.Owner)
	}
}
