package exec

import (
	"sync"
	"time"

	"github.com/mtwatch/mtwatch/lib/domid"
)

// limiter is a rule's rate bound: one token bucket per domain, burst tokens
// deep, one token back every interval. It is kept as a theoretical arrival
// time per domain (GCRA): a command may start once tat - (burst-1)*interval
// has passed. A domain whose bucket is full again needs no entry.
type limiter struct {
	interval time.Duration
	burst    int

	mu        sync.Mutex
	tat       map[domid.ID]time.Time
	nextSweep int
}

func newLimiter(interval time.Duration, burst int) *limiter {
	return &limiter{interval: interval, burst: burst, tat: map[domid.ID]time.Time{}, nextSweep: 64}
}

// reserve takes the next token of id's bucket and returns how long to wait
// until it is there; 0 when it is there now.
func (l *limiter) reserve(id domid.ID, now time.Time) time.Duration {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.tat) >= l.nextSweep {
		// Amortised: a sweep at most every doubling of the map.
		for k, t := range l.tat {
			if !t.After(now) {
				delete(l.tat, k)
			}
		}
		l.nextSweep = max(64, 2*len(l.tat))
	}
	tat, ok := l.tat[id]
	if !ok || tat.Before(now) {
		tat = now
	}
	wait := tat.Add(-time.Duration(l.burst-1) * l.interval).Sub(now)
	l.tat[id] = tat.Add(l.interval)
	return max(wait, 0)
}
