package agent_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mtwatch/mtwatch/lib/control"
	"github.com/mtwatch/mtwatch/lib/domid"
	"github.com/mtwatch/mtwatch/lib/node"
	"github.com/mtwatch/mtwatch/lib/xenstore"
	"github.com/mtwatch/mtwatch/lib/xenstore/xenstoredtest"
)

// TestFloodPastWatchEventQuota: domain 5's paths are flooded by four
// writers at once while domains 7 and 9 go on with their own events.
//
// On oxenstored, quota-maxwatchevents is cut to 4 so the flood is far past
// it. oxenstored drops no event then: it parks the agent's further events
// of the watch in a per-watch queue and stops reading from a writer whose
// event did not fit (connection.ml: BoundedPipe, fire_single_watch_unchecked).
// In 4.17 that queue is drained only when the same watch fires again, and a
// writer's parked event only when that writer has output (connections.ml
// never adds to has_pending_watchevents; process.ml: do_output), so a writer
// can stay blocked, its last event withheld, for good. Whatever the server
// withholds the agent cannot see; each write therefore has a deadline, and
// what oxenstored withheld is logged rather than failed. On the C xenstored
// (no such quota) nothing is withheld, and every event must run.
//
// Either way: nothing runs on another domain's worker; the agent keeps its
// connection; after the flood, events of every domain written on fresh
// connections run on their own worker, domain 5's included; a worker that
// dropped events (its queue holds 16) issued an overflow notice, its resync.
func TestFloodPastWatchEventQuota(t *testing.T) {
	t.Parallel()
	kind, err := xenstoredtest.KindFromEnv()
	if err != nil {
		t.Fatal(err)
	}
	cfg := xenstoredtest.Config{}
	if kind == xenstoredtest.Oxenstored {
		cfg.Settings = []string{"quota-maxwatchevents = 4"}
	}
	in := xenstoredtest.StartWith(t, cfg)
	rec, reg := newRecorder(nil)
	h := start(t, in, `
[agent]
auto_detect = false
queue_capacity = 16
`, nil, reg)
	for _, id := range []domid.ID{5, 7, 9} {
		h.in.CreateDomain(id)
		if err := node.Create(h.ctx, h.c, id, ""); err != nil {
			t.Fatal(err)
		}
		h.waitWorker(id, control.WorkerLive)
	}

	// Collect runs from now on: the recorder drops what nobody reads.
	var mu sync.Mutex
	seen := map[string]bool{}
	var misrouted []string
	overflow5 := false
	collectDone := make(chan struct{})
	ctx, stopCollect := context.WithCancel(h.ctx)
	go func() {
		defer close(collectDone)
		for {
			select {
			case r := <-rec.runs:
				mu.Lock()
				seen[r.path] = true
				var dev string
				var id int
				if _, err := fmt.Sscanf(strings.ReplaceAll(r.path, "/", " "), "backend %s %d", &dev, &id); err == nil && domid.ID(id) != r.worker {
					misrouted = append(misrouted, fmt.Sprintf("%s on worker %d", r.path, r.worker))
				}
				if r.path == "overflow of backend" && r.worker == 5 {
					overflow5 = true
				}
				mu.Unlock()
			case <-ctx.Done():
				return
			}
		}
	}()
	defer func() { stopCollect(); <-collectDone }()

	// write writes with a deadline; false if the server did not answer.
	write := func(c *xenstore.Client, path, value string) (bool, error) {
		ctx, cancel := context.WithTimeout(h.ctx, 2*time.Second)
		defer cancel()
		err := c.Write(ctx, "/local/domain/0/"+path, []byte(value))
		if errors.Is(err, context.DeadlineExceeded) && h.ctx.Err() == nil {
			return false, nil
		}
		return err == nil, err
	}
	dial := func() *xenstore.Client {
		c, err := xenstore.Dial(h.ctx, xenstore.WithPath(in.Socket()))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}

	const writers, perWriter, quiet = 4, 300, 60
	var wg sync.WaitGroup
	errs := make(chan error, writers+1)
	var blockedMu sync.Mutex
	var blocked []string
	noteBlocked := func(who string, at int) {
		blockedMu.Lock()
		blocked = append(blocked, fmt.Sprintf("%s at write %d", who, at))
		blockedMu.Unlock()
	}
	for w := 0; w < writers; w++ {
		c := dial()
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < perWriter; i++ {
				ok, err := write(c, fmt.Sprintf("backend/vif/5/%d/state", w), fmt.Sprint(i))
				if err != nil {
					errs <- fmt.Errorf("flood writer %d: %w", w, err)
					return
				}
				if !ok {
					noteBlocked(fmt.Sprintf("flood writer %d", w), i)
					return
				}
			}
		}()
	}
	// The quiet domains' writes during the flood: those the server
	// answered, up to the last one (its event may be the one withheld).
	var quietDone []string
	qc := dial()
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; i < quiet; i++ {
			for _, id := range []domid.ID{7, 9} {
				p := fmt.Sprintf("backend/vbd/%d/%d/state", id, i)
				ok, err := write(qc, p, "4")
				if err != nil {
					errs <- fmt.Errorf("quiet writer: %w", err)
					return
				}
				if !ok {
					noteBlocked("quiet writer", i)
					return
				}
				quietDone = append(quietDone, p)
			}
		}
	}()
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if len(blocked) > 0 {
		t.Logf("%s withheld events and blocked: %s", kind, strings.Join(blocked, ", "))
		if kind == xenstoredtest.C {
			t.Errorf("the C xenstored blocked writers: %s", strings.Join(blocked, ", "))
		}
	}

	// After the flood, every domain's events run on its own worker.
	var after []string
	for _, id := range []domid.ID{5, 7, 9} {
		p := fmt.Sprintf("backend/vbd/%d/after/state", id)
		if ok, err := write(dial(), p, "1"); !ok || err != nil {
			t.Fatalf("write %s after the flood: %v, %v", p, ok, err)
		}
		after = append(after, p)
	}
	want := after
	if kind == xenstoredtest.C {
		want = append(want, quietDone...)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		var missing []string
		mu.Lock()
		for _, p := range want {
			if !seen[p] {
				missing = append(missing, p)
			}
		}
		mu.Unlock()
		if len(missing) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d events never ran, e.g. %q", len(missing), missing[0])
		}
		time.Sleep(10 * time.Millisecond)
	}
	mu.Lock()
	gotOverflow := overflow5
	if len(misrouted) > 0 {
		t.Errorf("events ran on another domain's worker: %s", strings.Join(misrouted, ", "))
	}
	ranQuiet := 0
	for _, p := range quietDone {
		if seen[p] {
			ranQuiet++
		}
	}
	mu.Unlock()
	d, _ := h.a.Domain(5)
	if d.Dropped > 0 && !gotOverflow {
		t.Errorf("domain 5 dropped %d events without an overflow notice (resync)", d.Dropped)
	}
	for _, id := range []uint16{7, 9} {
		if d, _ := h.a.Domain(id); d.Dropped != 0 || d.Worker != control.WorkerLive {
			t.Errorf("quiet domain %d: %+v", id, d)
		}
	}
	t.Logf("%s: quiet events run %d of %d answered; domain 5 processed %d, dropped %d, overflow notice %v",
		kind, ranQuiet, len(quietDone), d.Processed, d.Dropped, gotOverflow)
}
