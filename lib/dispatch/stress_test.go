package dispatch

import (
	"context"
	"flag"
	"fmt"
	"math/rand/v2"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mtwatch/mtwatch/lib/domid"
)

var (
	stressSeed = flag.Uint64("dispatch.seed", 0, "seed of TestStress (0: time-based)")
	stressOps  = flag.Int("dispatch.ops", 20000, "operations per TestStress run")
)

// checker verifies the invariants of the package doc from handler calls as
// they happen:
//
//   - I1: a domain's events never run concurrently and run in dispatch order;
//   - I2 is a timing property, tested in TestDomainsDoNotWaitForEachOther;
//   - I3: an event runs on the worker that was live for its domain when it
//     was dispatched, or on the default worker if there was none;
//   - I4: no handler of a watch starts after its Unregister returned, and
//     none is still running then (apart from the caller itself);
//   - I5, at the end: every event of a watch that stayed registered ran
//     exactly once (capacity is large enough that nothing is dropped).
type checker struct {
	mu        sync.Mutex
	lastSeq   map[domid.ID]int64
	inflight  map[domid.ID]int
	running   map[string]int  // token -> handlers running
	leaving   map[string]int  // token -> running handlers that unregister it
	gone      map[string]bool // token -> Unregister returned after waiting
	purged    map[string]bool // token -> Unregister called: events may be lost
	expect    map[int64]expectation
	ran       map[int64]bool
	errs      []string
	maxErrors int
}

type expectation struct {
	dom, worker domid.ID
	token       string
}

func newChecker() *checker {
	return &checker{
		lastSeq:   make(map[domid.ID]int64),
		inflight:  make(map[domid.ID]int),
		running:   make(map[string]int),
		leaving:   make(map[string]int),
		gone:      make(map[string]bool),
		purged:    make(map[string]bool),
		expect:    make(map[int64]expectation),
		ran:       make(map[int64]bool),
		maxErrors: 20,
	}
}

func (c *checker) failf(format string, args ...any) {
	if len(c.errs) < c.maxErrors {
		c.errs = append(c.errs, fmt.Sprintf(format, args...))
	}
}

// dispatched records that event seq of dom was dispatched for token while
// worker was the domain's live worker (dom0: none).
func (c *checker) dispatched(seq int64, dom, worker domid.ID, token string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.expect[seq] = expectation{dom: dom, worker: worker, token: token}
}

func (c *checker) start(seq int64, dom, worker domid.ID, token string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.expect[seq]
	switch {
	case !ok:
		c.failf("I5: event %d ran but was never dispatched", seq)
	case e.dom != dom || e.token != token:
		c.failf("I3: event %d ran as domain %d watch %s, dispatched as domain %d watch %s", seq, dom, token, e.dom, e.token)
	case e.worker != worker:
		c.failf("I3: event %d of domain %d ran on worker %d, want %d", seq, dom, worker, e.worker)
	}
	if c.ran[seq] {
		c.failf("I5: event %d ran twice", seq)
	}
	c.ran[seq] = true
	if n := c.inflight[dom]; n != 0 {
		c.failf("I1: event %d of domain %d runs while %d other events of the domain run", seq, dom, n)
	}
	c.inflight[dom]++
	if last := c.lastSeq[dom]; seq <= last {
		c.failf("I1: domain %d ran event %d after event %d", dom, seq, last)
	}
	c.lastSeq[dom] = seq
	if c.gone[token] {
		c.failf("I4: event %d of watch %s ran after Unregister returned", seq, token)
	}
	c.running[token]++
}

// end records that a handler returned; self is true if it had called
// leave.
func (c *checker) end(dom domid.ID, token string, self bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.inflight[dom]--
	c.running[token]--
	if self {
		c.leaving[token]--
	}
}

// leave records that a handler is about to unregister its own watch.
func (c *checker) leave(token string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.leaving[token]++
}

// unregistered records that Unregister of token returned; self is true if
// it was called from one of the watch's own handlers. Only handlers that
// unregister the watch themselves may still run, unless Unregister returned
// early with its context's error (waited is false).
func (c *checker) unregistered(token string, self, waited bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.purged[token] = true
	if !waited {
		// A handler already taken off the queue may not have reached
		// start yet: only a waiting Unregister orders it.
		return
	}
	c.gone[token] = true
	allowed := 0
	if self {
		allowed = c.leaving[token]
	}
	if n := c.running[token]; n > allowed {
		c.failf("I4: Unregister of %s returned while %d handlers run", token, n-allowed)
	}
	c.gone[token] = true
}

// generations checks I6's bound on worker generations: a domain has at most
// one more than it has events and notices not yet completed.
func (c *checker) generations(d *Dispatcher) {
	d.mu.Lock()
	defer d.mu.Unlock()
	c.mu.Lock()
	defer c.mu.Unlock()
	for id, dom := range d.doms {
		n := 0
		for wk := dom.first; wk != nil; wk = wk.next {
			n++
		}
		if n > dom.items+1 {
			c.failf("I6: domain %d has %d worker generations for %d events", id, n, dom.items)
		}
	}
}

// mayBeGone reports whether token may have been unregistered.
func (c *checker) mayBeGone(token string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.purged[token] || c.leaving[token] > 0
}

// finish checks that every event of a watch that stayed registered ran.
func (c *checker) finish() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for seq, e := range c.expect {
		if !c.ran[seq] && !c.purged[e.token] {
			c.failf("I5: event %d of domain %d (watch %s) never ran", seq, e.dom, e.token)
		}
	}
}

func (c *checker) errors() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]string(nil), c.errs...)
}

// TestCheckerCatchesViolations makes sure the stress test can fail.
func TestCheckerCatchesViolations(t *testing.T) {
	tests := []struct {
		name string
		run  func(c *checker)
		want string
	}{
		{"lifo", func(c *checker) {
			c.dispatched(1, 5, 5, "w")
			c.dispatched(2, 5, 5, "w")
			c.start(2, 5, 5, "w")
			c.end(5, "w", false)
			c.start(1, 5, 5, "w")
			c.end(5, "w", false)
		}, "ran event 1 after event 2"},
		{"concurrent", func(c *checker) {
			c.dispatched(1, 5, 5, "w")
			c.dispatched(2, 5, 5, "w")
			c.start(1, 5, 5, "w")
			c.start(2, 5, 5, "w")
		}, "while 1 other events"},
		{"wrong worker", func(c *checker) {
			c.dispatched(1, 5, 0, "w")
			c.start(1, 5, 5, "w")
		}, "ran on worker 5, want 0"},
		{"twice", func(c *checker) {
			c.dispatched(1, 5, 5, "w")
			c.start(1, 5, 5, "w")
			c.end(5, "w", false)
			c.start(1, 5, 5, "w")
		}, "ran twice"},
		{"after unregister", func(c *checker) {
			c.dispatched(1, 5, 5, "w")
			c.unregistered("w", false, true)
			c.start(1, 5, 5, "w")
		}, "after Unregister returned"},
		{"unregister while running", func(c *checker) {
			c.dispatched(1, 5, 5, "w")
			c.start(1, 5, 5, "w")
			c.unregistered("w", false, true)
		}, "returned while 1 handlers run"},
		{"self-unregister while another runs", func(c *checker) {
			c.dispatched(1, 5, 5, "w")
			c.dispatched(2, 6, 6, "w")
			c.start(1, 5, 5, "w")
			c.start(2, 6, 6, "w")
			c.leave("w")
			c.unregistered("w", true, true)
		}, "returned while 1 handlers run"},
		{"lost", func(c *checker) {
			c.dispatched(1, 5, 5, "w")
			c.finish()
		}, "never ran"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := newChecker()
			tc.run(c)
			errs := c.errors()
			if len(errs) == 0 || !strings.Contains(strings.Join(errs, "\n"), tc.want) {
				t.Fatalf("checker reported %q, want %q", errs, tc.want)
			}
		})
	}
	// And a correct trace passes, including a self-unregistering handler.
	c := newChecker()
	c.dispatched(1, 5, 5, "w")
	c.dispatched(2, 5, 0, "w")
	c.dispatched(3, 6, 6, "v")
	c.start(1, 5, 5, "w")
	c.start(3, 6, 6, "v")
	c.leave("v")
	c.unregistered("v", true, true)
	c.end(6, "v", true)
	c.end(5, "w", false)
	c.start(2, 5, 0, "w")
	c.end(5, "w", false)
	c.finish()
	if errs := c.errors(); len(errs) != 0 {
		t.Fatalf("correct trace flagged: %q", errs)
	}
}

func TestStress(t *testing.T) {
	for _, mode := range []struct{ single, staging bool }{{false, false}, {true, false}, {false, true}} {
		single := mode.single
		t.Run(fmt.Sprintf("single=%v,staging=%v", single, mode.staging), func(t *testing.T) {
			seed := *stressSeed
			if seed == 0 {
				seed = uint64(time.Now().UnixNano())
			}
			t.Logf("seed %d (rerun with -dispatch.seed=%d)", seed, seed)
			ops := *stressOps
			if single {
				ops /= 4
			}
			stress(t, seed, ops, single, mode.staging)
		})
	}
}

// stress runs random interleavings of Dispatch, CreateDomain, DestroyDomain,
// Unregister (from outside and from handlers) and re-Register against
// handlers with random delays, and checks the invariants. With staging, a
// guest's events always run on a worker of the guest (promoted, or flushed
// by FlushStaged or by the short staging timeout), never the default one.
func stress(t *testing.T, seed uint64, ops int, single, staging bool) {
	const (
		domains   = 40
		watchSets = 4
	)
	rng := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	// Capacity is large enough that no event is dropped, so loss is a bug;
	// paths are unique, so nothing coalesces.
	d, err := New(Config{Logger: slogNew(newLogCapture()), Capacity: ops + 1, SingleWorker: single, StallThreshold: time.Second,
		Staging: staging, StagingTimeout: 2 * time.Millisecond, StagingLimit: ops + 1})
	if err != nil {
		t.Fatal(err)
	}
	c := newChecker()

	var (
		wmu     sync.Mutex
		watches = make(map[string]*Registration) // token -> live registration
		tokens  [watchSets]string
		gen     int
	)
	var unregs sync.WaitGroup
	handler := Handler(func(ctx context.Context, ev Event) error {
		elems := strings.Split(ev.Path, "/")
		seq, err := strconv.ParseInt(elems[len(elems)-1], 10, 64)
		if err != nil {
			c.mu.Lock()
			c.failf("bad path %q", ev.Path)
			c.mu.Unlock()
			return nil
		}
		worker, _ := WorkerOf(ctx)
		c.start(seq, ev.Domid, worker, ev.Token)
		self := false
		defer func() { c.end(ev.Domid, ev.Token, self) }()
		// Random delays: mostly none, sometimes a yield, rarely a sleep.
		switch r := seq % 16; {
		case r == 0:
			time.Sleep(time.Duration(seq%7) * 20 * time.Microsecond)
		case r < 4:
			for range seq % 5 {
				runtime.Gosched()
			}
		case r == 5 && seq%800 == 5:
			// Unregister the watch from its own handler.
			wmu.Lock()
			w := watches[ev.Token]
			wmu.Unlock()
			if w != nil {
				self = true
				c.leave(ev.Token)
				uctx := ctx
				if seq%1600 == 5 {
					// The handler's context may be cancelled (domain
					// destroyed); this one still identifies the
					// handler but does not give up waiting.
					uctx = context.WithoutCancel(ctx)
				}
				err := w.Unregister(uctx)
				if err != nil && (uctx != ctx || ctx.Err() == nil) {
					c.mu.Lock()
					c.failf("self-unregister of %s: %v", ev.Token, err)
					c.mu.Unlock()
				}
				c.unregistered(ev.Token, true, err == nil)
			}
		}
		return nil
	})
	registerSet := func(i int) {
		gen++
		token := fmt.Sprintf("w%d.%d", i, gen)
		w, err := d.Register(WatchConfig{Path: "backend", Token: token, Handler: handler})
		if err != nil {
			t.Fatalf("Register: %v", err)
		}
		wmu.Lock()
		watches[token] = w
		wmu.Unlock()
		tokens[i] = token
	}
	for i := range tokens {
		registerSet(i)
	}

	live := make(map[domid.ID]bool)
	holds := make(map[domid.ID]uint64)
	var seq int64
	for op := range ops {
		if op%2000 == 1999 {
			// Let the workers catch up now and then, so that not
			// everything is a backlog that Unregister purges. Held
			// events wait for their release, by design.
			d.ReleaseAll()
			clear(holds)
			waitAtMost(t, d, 50)
		}
		if op%500 == 0 {
			c.generations(d)
		}
		switch r := rng.IntN(100); {
		case r < 5:
			id := domid.ID(1 + rng.IntN(domains))
			err := d.CreateDomain(id)
			if single || !live[id] {
				if err != nil {
					t.Fatalf("CreateDomain(%d): %v", id, err)
				}
				live[id] = !single
			} else if err == nil {
				t.Fatalf("CreateDomain(%d) of a live domain succeeded", id)
			}
		case r < 10:
			id := domid.ID(1 + rng.IntN(domains))
			err := d.DestroyDomain(id)
			if single || live[id] {
				if err != nil {
					t.Fatalf("DestroyDomain(%d): %v", id, err)
				}
				delete(live, id)
			} else if err == nil {
				t.Fatalf("DestroyDomain(%d) of a dead domain succeeded", id)
			}
		case staging && r < 12:
			if _, err := d.FlushStaged(domid.ID(1+rng.IntN(domains)), rng.IntN(2) == 0); err != nil {
				t.Fatalf("FlushStaged: %v", err)
			}
		case staging && r < 14:
			id := domid.ID(1 + rng.IntN(domains))
			if seq, held := holds[id]; held {
				d.Release(id, seq)
				delete(holds, id)
			} else {
				holds[id] = d.Hold(id)
			}
		case r < 11 && rng.IntN(8) == 0:
			i := rng.IntN(watchSets)
			wmu.Lock()
			w := watches[tokens[i]]
			wmu.Unlock()
			if w != nil {
				unregs.Add(1)
				go func() {
					defer unregs.Done()
					if err := w.Unregister(context.Background()); err != nil {
						c.mu.Lock()
						c.failf("Unregister: %v", err)
						c.mu.Unlock()
					}
					c.unregistered(w.Token(), false, true)
				}()
			}
			registerSet(i)
		default:
			seq++
			token := tokens[rng.IntN(watchSets)]
			var path string
			dom := domid.ID(1 + rng.IntN(domains))
			if rng.IntN(10) == 0 {
				dom = domid.Dom0
				path = fmt.Sprintf("/local/domain/0/data/%d", seq)
			} else {
				path = fmt.Sprintf("backend/vif/%d/%d", dom, seq)
			}
			worker := domid.Dom0
			if live[dom] || staging {
				worker = dom
			}
			// Record before dispatching: the handler may run at once.
			c.dispatched(seq, dom, worker, token)
			if err := d.Dispatch(path, token); err != nil {
				// Only a watch unregistered from its own handler can be
				// gone here.
				gone := c.mayBeGone(token)
				c.mu.Lock()
				delete(c.expect, seq)
				c.mu.Unlock()
				if !gone {
					t.Fatalf("Dispatch(%q, %q): %v", path, token, err)
				}
				// Unregistered by its handler: replace it.
				for i := range tokens {
					if tokens[i] == token {
						registerSet(i)
					}
				}
			}
		}
	}
	d.ReleaseAll()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := d.Stop(ctx); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	unregs.Wait()
	c.finish()
	if errs := c.errors(); len(errs) > 0 {
		t.Fatalf("invariants broken (seed %d):\n%s", seed, strings.Join(errs, "\n"))
	}
	s := d.Stats()
	if s.Totals.Processed == 0 || s.Totals.Dropped != 0 || s.Totals.Panics != 0 {
		t.Fatalf("stats after stress: %+v", s.Totals)
	}
	if staging && (s.Totals.GuestOnDefault != 0 || s.Totals.Staged == 0) {
		t.Fatalf("staging: %d guest events ran on the default worker, %d staged", s.Totals.GuestOnDefault, s.Totals.Staged)
	}
	t.Logf("%d ops: %+v", ops, s.Totals)
	noLeak(t)
}
