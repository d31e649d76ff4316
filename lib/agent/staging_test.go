package agent_test

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/mtwatch/mtwatch/lib/dispatch"
	"github.com/mtwatch/mtwatch/lib/domid"
	"github.com/mtwatch/mtwatch/lib/xenstore"
)

// TestIntroducedDomainEventsRunOnItsWorker: libxl introduces a domain
// before it writes its backend devices, so @introduceDomain precedes the
// domain's device events in the agent's event stream. However quickly they
// follow, every backend event runs on its own domain's worker, never on the
// default worker: events read before the agent has created the new
// workers wait for them in the dispatcher (staging).
func TestIntroducedDomainEventsRunOnItsWorker(t *testing.T) {
	t.Parallel()
	rec, reg := newRecorder(nil)
	h := start(t, nil, "", nil, reg)
	const n = 40
	for i := range n {
		id := domid.ID(100 + i)
		h.in.CreateDomain(id) // INTRODUCE
		h.write(fmt.Sprintf("backend/vif/%d/0/state", id), "1")
	}
	got := map[string]domid.ID{}
	deadline := time.After(20 * time.Second)
	for len(got) < n {
		select {
		case r := <-rec.runs:
			if strings.HasSuffix(r.path, "/0/state") {
				got[r.path] = r.worker
			}
		case <-deadline:
			t.Fatalf("%d of %d backend events ran", len(got), n)
		}
	}
	var wrong []string
	for i := range n {
		id := domid.ID(100 + i)
		p := fmt.Sprintf("backend/vif/%d/0/state", id)
		if w := got[p]; w != id {
			wrong = append(wrong, fmt.Sprintf("%s on worker %d", p, w))
		}
	}
	if len(wrong) > 0 {
		t.Fatalf("%d of %d events of just-introduced domains ran on another worker: %s", len(wrong), n, strings.Join(wrong, ", "))
	}
	if st := h.a.Dispatcher().Stats(); st.Totals.GuestOnDefault != 0 {
		t.Errorf("%d guest events ran on the default worker", st.Totals.GuestOnDefault)
	}
}

// TestHungNewDomainDoesNotDelayAnother: the first device event of a
// just-introduced domain hangs (a hotplug script waiting on a dead
// target); the events of domains introduced right after it still run at
// once, on their own workers. Were the hung event to land on the default
// worker, everything queued there, and the workers created behind it,
// would wait.
func TestHungNewDomainDoesNotDelayAnother(t *testing.T) {
	t.Parallel()
	rec, reg := newRecorder(func(ev dispatch.Event, _ domid.ID) bool {
		return strings.HasSuffix(ev.Path, "/hang")
	})
	h := start(t, nil, "", nil, reg)
	for i := range 8 {
		hung, ok := domid.ID(200+2*i), domid.ID(201+2*i)
		h.in.CreateDomain(hung)
		h.write(fmt.Sprintf("backend/vbd/%d/51712/hang", hung), "1")
		h.in.CreateDomain(ok)
		p := fmt.Sprintf("backend/vif/%d/0/state", ok)
		h.write(p, "1")
		start := time.Now()
		rec.expectRunWithin(t, p, ok, 5*time.Second)
		t.Logf("domain %d's event ran after %v", ok, time.Since(start))
	}
	// dom0's own events are not held up either: the hung handlers run
	// on their domains' workers.
	h.write("backend/vif/0/0/state", "4")
	rec.expectRunWithin(t, "backend/vif/0/0/state", domid.Dom0, 5*time.Second)
	// The hung domains die: their workers go and cancel the handlers.
	for i := range 8 {
		h.in.KillDomain(domid.ID(200 + 2*i))
	}
	for range 8 {
		select {
		case <-rec.stuck:
		case <-time.After(20 * time.Second):
			t.Fatal("a hung handler was not cancelled when its domain died")
		}
	}
}

// TestStagingAfterReconnect: after xenstored restarts, a domain introduced
// on the new xenstored gets its device events on its own worker, as before.
func TestStagingAfterReconnect(t *testing.T) {
	t.Parallel()
	rec, reg := newRecorder(nil)
	h := start(t, nil, "", nil, reg)
	h.in.Restart()
	deadline := time.Now().Add(20 * time.Second)
	for h.a.Status().Xenstore.Reconnects == 0 || h.a.Status().Xenstore.State != "connected" {
		if time.Now().After(deadline) {
			t.Fatalf("no reconnection: %+v", h.a.Status().Xenstore)
		}
		time.Sleep(5 * time.Millisecond)
	}
	c, err := xenstore.Dial(h.ctx, xenstore.WithPath(h.in.Socket()))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for i := range 20 {
		id := domid.ID(300 + i)
		h.in.CreateDomain(id)
		p := fmt.Sprintf("backend/vif/%d/0/state", id)
		if err := c.Write(h.ctx, p, []byte("1")); err != nil {
			t.Fatal(err)
		}
		rec.expectRun(t, p, id)
	}
}
