package fanout

import (
	"context"
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func TestEach(t *testing.T) {
	boom := errors.New("boom")
	tests := []struct {
		name      string
		n, width  int
		failAt    int // -1: none
		wantCalls func(calls int) bool
		wantErr   error
	}{
		{"none", 0, 4, -1, func(c int) bool { return c == 0 }, nil},
		{"fewer than width", 3, 64, -1, func(c int) bool { return c == 3 }, nil},
		{"many", 1000, 8, -1, func(c int) bool { return c == 1000 }, nil},
		{"width below one", 5, 0, -1, func(c int) bool { return c == 5 }, nil},
		// One at a time, nothing starts after the failing call.
		{"stops after an error, width one", 1000, 1, 10, func(c int) bool { return c == 10+1 }, boom},
		// Wider, the calls in flight still finish, and the others may take
		// more indices while the failing call waits for a CPU between
		// being taken and running: the bound is "stops", not failAt+width.
		{"stops after an error", 1000, 4, 10, func(c int) bool { return c > 10 && c < 1000 }, boom},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var calls atomic.Int64
			seen := make([]atomic.Bool, tt.n)
			err := Each(context.Background(), tt.n, tt.width, func(i int) error {
				calls.Add(1)
				if seen[i].Swap(true) {
					t.Errorf("fn(%d) called twice", i)
				}
				if i == tt.failAt {
					return boom
				}
				return nil
			})
			if !errors.Is(err, tt.wantErr) || (tt.wantErr == nil && err != nil) {
				t.Fatalf("err = %v, want %v", err, tt.wantErr)
			}
			if c := int(calls.Load()); !tt.wantCalls(c) {
				t.Fatalf("%d calls", c)
			}
		})
	}
}

// TestEachWidth: never more than width calls at once, and width of them
// do run at once (the point is to pipeline).
func TestEachWidth(t *testing.T) {
	const width = 8
	var (
		mu        sync.Mutex
		cur, peak int
	)
	err := Each(context.Background(), 200, width, func(int) error {
		mu.Lock()
		cur++
		peak = max(peak, cur)
		mu.Unlock()
		time.Sleep(time.Millisecond)
		mu.Lock()
		cur--
		mu.Unlock()
		return nil
	})
	if err != nil || peak != width {
		t.Fatalf("err %v, peak %d calls at once, want %d", err, peak, width)
	}
}

// TestEachDistinctErrors: a failure shared by every call in flight (a lost
// connection) is reported once; different failures are all kept.
func TestEachDistinctErrors(t *testing.T) {
	var start sync.WaitGroup
	start.Add(4)
	err := Each(context.Background(), 4, 4, func(i int) error {
		start.Done()
		start.Wait() // all four in flight before any fails
		if i%2 == 0 {
			return errors.New("connection lost")
		}
		return errors.New("permission denied")
	})
	msg := err.Error()
	if strings.Count(msg, "connection lost") != 1 || strings.Count(msg, "permission denied") != 1 {
		t.Fatalf("err %q", msg)
	}
}

func TestEachContext(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	var calls atomic.Int64
	err := Each(ctx, 100, 1, func(i int) error {
		if calls.Add(1) == 5 {
			cancel()
		}
		return nil
	})
	if !errors.Is(err, context.Canceled) || calls.Load() != 5 {
		t.Fatalf("err %v after %d calls", err, calls.Load())
	}
}
