package exec

import (
	"testing"
	"time"

	"github.com/mtwatch/mtwatch/lib/domid"
)

// TestLimiter: burst commands at once, then one per interval; each domain
// has its own bucket, and a full bucket leaves no entry behind a sweep.
func TestLimiter(t *testing.T) {
	const iv = 100 * time.Millisecond
	l := newLimiter(iv, 3)
	t0 := time.Unix(1000, 0)
	for i, want := range []time.Duration{0, 0, 0, iv, 2 * iv} {
		if got := l.reserve(5, t0); got != want {
			t.Fatalf("reservation %d at t0: wait %v, want %v", i, got, want)
		}
	}
	if got := l.reserve(7, t0); got != 0 {
		t.Fatalf("domain 7 waits %v behind domain 5", got)
	}
	// After the waits taken, a token every interval.
	if got := l.reserve(5, t0.Add(3*iv)); got != 0 {
		t.Fatalf("at t0+3iv: wait %v, want 0", got)
	}
	if got := l.reserve(5, t0.Add(3*iv)); got != iv {
		t.Fatalf("second at t0+3iv: wait %v, want %v", got, iv)
	}
	// Idle long enough, the burst is back.
	later := t0.Add(time.Hour)
	for i := range 3 {
		if got := l.reserve(5, later); got != 0 {
			t.Fatalf("reservation %d after an hour: wait %v", i, got)
		}
	}
	// Many domains: entries of full buckets are swept.
	for id := domid.ID(100); id < 1100; id++ {
		l.reserve(id, later.Add(time.Duration(id)*time.Hour))
	}
	if n := len(l.tat); n > 130 {
		t.Fatalf("%d bucket entries kept for domains idle for hours", n)
	}
}
