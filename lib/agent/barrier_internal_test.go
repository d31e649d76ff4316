package agent

import (
	"bytes"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// sink records what a barrier dispatches.
type sink struct {
	mu  sync.Mutex
	got []string
}

func (s *sink) dispatch(path, _ string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.got = append(s.got, path)
	return nil
}

func (s *sink) list() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.got)
}

func (s *sink) waitLen(t *testing.T, n int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for len(s.list()) < n {
		if time.Now().After(deadline) {
			t.Fatalf("dispatched %q, want %d events", s.list(), n)
		}
		time.Sleep(time.Millisecond)
	}
}

func newTestBarrier(logs *bytes.Buffer) (*barrier, *sink) {
	s := &sink{}
	return newBarrier(s.dispatch, slog.New(slog.NewTextHandler(logs, nil))), s
}

func TestBarrierOrder(t *testing.T) {
	var logs bytes.Buffer
	b, s := newTestBarrier(&logs)
	defer b.stop()
	owner := new(int)
	b.setOwner(owner)
	b.event("a", "t")
	first := b.raise(owner)
	b.event("b", "t")
	b.event("c", "t")
	second := b.raise(owner)
	b.event("d", "t")
	if got := s.list(); !slices.Equal(got, []string{"a"}) {
		t.Fatalf("dispatched past a barrier: %q", got)
	}
	b.release(first)
	if got := s.list(); !slices.Equal(got, []string{"a", "b", "c"}) {
		t.Fatalf("after the first release: %q", got)
	}
	// An event read while a later barrier is up waits behind it, and
	// behind the events already held.
	b.event("e", "t")
	b.release(second)
	b.event("f", "t")
	if got := s.list(); !slices.Equal(got, []string{"a", "b", "c", "d", "e", "f"}) {
		t.Fatalf("after the second release: %q", got)
	}
	if b.timeouts() != 0 || logs.Len() != 0 {
		t.Fatalf("timeouts %d, log %q", b.timeouts(), logs.String())
	}
}

// TestBarrierBounds: a barrier nobody releases holds at most maxHeld
// events, for at most maxWait; then they go in order, counted and logged
// once.
func TestBarrierBounds(t *testing.T) {
	var logs bytes.Buffer
	b, s := newTestBarrier(&logs)
	defer b.stop()
	b.maxHeld, b.maxWait = 3, 50*time.Millisecond
	owner := new(int)
	b.setOwner(owner)

	b.raise(owner)
	start := time.Now()
	b.event("a", "t")
	b.event("b", "t")
	s.waitLen(t, 2)
	if waited := time.Since(start); waited < b.maxWait {
		t.Fatalf("held for %v only", waited)
	}
	if got := s.list(); !slices.Equal(got, []string{"a", "b"}) || b.timeouts() != 1 {
		t.Fatalf("after the wait bound: %q, %d timeouts", got, b.timeouts())
	}
	b.event("c", "t") // the barrier was given up
	if got := s.list(); len(got) != 3 {
		t.Fatalf("held after giving up: %q", got)
	}

	b.maxWait = time.Hour
	b.raise(owner)
	for i := range 4 {
		b.event(fmt.Sprint(i), "t")
	}
	if got := s.list(); !slices.Equal(got, []string{"a", "b", "c", "0", "1", "2", "3"}) || b.timeouts() != 2 {
		t.Fatalf("after the count bound: %q, %d timeouts", got, b.timeouts())
	}
	if n := strings.Count(logs.String(), "level=WARN"); n != 1 {
		t.Fatalf("logged %d times:\n%s", n, logs.String())
	}
}

// TestBarrierOwner: a replaced connection's callbacks raise nothing, and
// dropping the owner releases what is held.
func TestBarrierOwner(t *testing.T) {
	var logs bytes.Buffer
	b, s := newTestBarrier(&logs)
	defer b.stop()
	old, cur := new(int), new(int)
	b.setOwner(cur)
	if seq := b.raise(old); seq != 0 {
		t.Fatalf("a stale owner raised barrier %d", seq)
	}
	b.event("a", "t")
	b.raise(cur)
	b.event("b", "t")
	b.setOwner(nil)
	b.event("c", "t")
	if seq := b.raise(cur); seq != 0 {
		t.Fatalf("raised %d without an owner", seq)
	}
	b.event("d", "t")
	if got := s.list(); !slices.Equal(got, []string{"a", "b", "c", "d"}) {
		t.Fatalf("dispatched %q", got)
	}
}
