package agent_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/mtwatch/mtwatch/lib/agent"
	"github.com/mtwatch/mtwatch/lib/control"
	"github.com/mtwatch/mtwatch/lib/dispatch"
	"github.com/mtwatch/mtwatch/lib/domid"
	"github.com/mtwatch/mtwatch/lib/node"
	"github.com/mtwatch/mtwatch/lib/xenstore"
	"github.com/mtwatch/mtwatch/lib/xenstore/xenstoredtest"
)

// TestStuckDomainDoesNotDelayOthers is the design's promise end to end, with
// the seed's node-only rule: nodes made by lib/node as the hooks make them
// start domain workers; a backend handler stuck on domain 5 (as on a dying
// guest) delays neither domain 7 nor dom0 and shows in the stalls; a flood
// of 5's paths stays within the queue bound; removing 5's node cancels the
// stuck handler and 5's later events run on the default worker.
func TestStuckDomainDoesNotDelayOthers(t *testing.T) {
	t.Parallel()
	rec, reg := newRecorder(func(ev dispatch.Event, w domid.ID) bool {
		return ev.Path == "backend/vif/5/0/state" && w == 5
	})
	h := start(t, nil, `
[agent]
auto_detect = false
queue_capacity = 64
stall_threshold = "50ms"
`, nil, reg)
	for _, id := range []domid.ID{5, 7} {
		h.in.CreateDomain(id)
		if err := node.Create(h.ctx, h.c, id, ""); err != nil {
			t.Fatal(err)
		}
		h.waitWorker(id, control.WorkerLive)
	}

	h.write("backend/vif/5/0/state", "5") // domain 5's worker gets stuck
	for i := 0; i < 20; i++ {
		p := fmt.Sprintf("backend/vif/7/%d/state", i)
		h.write(p, "4")
		rec.expectRun(t, p, 7) // domain 7 goes on regardless
	}
	h.write("backend/vif/0/0/state", "4")
	rec.expectRun(t, "backend/vif/0/0/state", domid.Dom0)

	// Only domain 5 stalls, and the control API says so.
	deadline := time.Now().Add(10 * time.Second)
	for {
		st := h.a.Stalls()
		if len(st) == 1 && st[0].Domid == 5 && st[0].Path == "backend/vif/5/0/state" && st[0].Worker == "domain" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("stalls %+v", st)
		}
		time.Sleep(5 * time.Millisecond)
	}
	// The same through the control API's handler, as mtwatch stalls sees it.
	rw := httptest.NewRecorder()
	control.NewHandler(h.a, nil).ServeHTTP(rw, httptest.NewRequest("GET", "/v1/stalls", nil))
	var stalls []control.Stall
	if err := json.NewDecoder(rw.Body).Decode(&stalls); err != nil || rw.Code != 200 || len(stalls) != 1 || stalls[0].Domid != 5 {
		t.Fatalf("GET /v1/stalls: %d %+v %v", rw.Code, stalls, err)
	}
	if d, _ := h.a.Domain(5); d.Current == nil || !d.Current.Stalled {
		t.Fatalf("domain 5 %+v", d)
	}
	if d, _ := h.a.Domain(7); d.Current != nil && d.Current.Stalled {
		t.Fatalf("domain 7 stalled: %+v", d)
	}

	// A guest flooding its paths cannot grow its stuck worker's queue
	// beyond the capacity.
	for i := 0; i < 500; i++ {
		h.write(fmt.Sprintf("backend/vbd/5/%d/state", i), "1")
	}
	h.write("backend/vif/7/99/state", "4")
	rec.expectRun(t, "backend/vif/7/99/state", 7)
	if d, _ := h.a.Domain(5); d.Queued > 64 || d.Dropped == 0 || d.Current == nil {
		t.Fatalf("domain 5 %+v", d)
	}

	// The toolstack removes the node last.
	if err := node.Destroy(h.ctx, h.c, 5); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-rec.stuck:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("stuck handler ended with %v", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("stuck handler was not cancelled by the node's removal")
	}
	rec.expectRun(t, "overflow of backend", 5)
	h.waitWorker(5, control.WorkerNone)
	// Domain 5 still exists but no source gives it a worker (node-only):
	// its events run on a worker of their own, never the default one.
	h.write("backend/vif/5/1/state", "6")
	rec.expectRun(t, "backend/vif/5/1/state", 5)
	if got := h.a.Status().Totals.Overflows; got == 0 {
		t.Error("no overflow notice was issued for the flood")
	}
	if d, _ := h.a.Domain(7); !d.Node || d.Worker != control.WorkerLive || d.Processed < 21 {
		t.Fatalf("domain 7 %+v", d)
	}
}

// TestStartupReconcile: nodes present before the agent starts have workers
// by the time Start returns (before READY=1), and xenstore-write's nodes
// count like lib/node's.
func TestStartupReconcile(t *testing.T) {
	t.Parallel()
	in := xenstoredtest.Start(t)
	in.Run("xenstore-write", node.Dir+"/3", "")
	in.Run("xenstore-chmod", node.Dir+"/3", "n0")
	c, err := xenstore.Dial(context.Background(), xenstore.WithPath(in.Socket()))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := node.Create(context.Background(), c, 4, "6f1c3d2e-0000-4000-8000-000000000004"); err != nil {
		t.Fatal(err)
	}
	var notes []string
	h := start(t, in, "[agent]\nauto_detect = false\n", func(o *agent.Options) {
		o.Notify = func(s string) { notes = append(notes, s) } // before Start returns: no race
	})
	for _, id := range []domid.ID{3, 4} {
		d, ok := h.a.Domain(uint16(id))
		if !ok || d.Worker != control.WorkerLive || !d.Node {
			t.Fatalf("domain %d not reconciled at start: %+v", id, d)
		}
	}
	if d, _ := h.a.Domain(4); d.UUID != "6f1c3d2e-0000-4000-8000-000000000004" {
		t.Fatalf("uuid %q", d.UUID)
	}
	if len(notes) == 0 || !strings.HasPrefix(notes[len(notes)-1], "READY=1") {
		t.Fatalf("notifications before Start returned: %q", notes)
	}
	doms := h.a.Domains()
	if len(doms) != 3 || doms[0].Domid != 0 || doms[0].Worker != control.WorkerDefault || doms[1].Domid != 3 {
		t.Fatalf("domains %+v", doms)
	}
}

// TestAutoDetect checks the rule: a domain has a worker while it has a node,
// or while it is introduced.
func TestAutoDetect(t *testing.T) {
	t.Parallel()
	h := start(t, nil, "", nil)
	h.in.CreateDomain(9) // INTRODUCE, no node yet: libvirt's hook runs later
	d := h.waitWorker(9, control.WorkerLive)
	if d.Node || !d.Introduced {
		t.Fatalf("domain 9 %+v", d)
	}
	h.waitDomain(9, "name", func(d control.Domain, _ bool) bool { return d.Name == "guest9" })
	if err := node.Create(h.ctx, h.c, 9, ""); err != nil {
		t.Fatal(err)
	}
	h.waitDomain(9, "node", func(d control.Domain, _ bool) bool { return d.Node && d.Worker == control.WorkerLive })
	// Dead (released, its home gone) before any hook removed the node, as
	// after a guest-initiated shutdown under xl: provably dead, so the
	// node and the worker go at once, not after stale_grace.
	h.in.KillDomain(9)
	h.waitWorker(9, control.WorkerNone)
	if _, err := node.Get(h.ctx, h.c, 9); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("node of dead domain 9: %v", err)
	}
	h.waitLog("removed the mtwatch node of a dead domain")

	// Introduced, node removed: the worker stays until release.
	h.in.CreateDomain(11)
	if err := node.Create(h.ctx, h.c, 11, ""); err != nil {
		t.Fatal(err)
	}
	h.waitDomain(11, "node", func(d control.Domain, _ bool) bool { return d.Node })
	if err := node.Destroy(h.ctx, h.c, 11); err != nil {
		t.Fatal(err)
	}
	d = h.waitDomain(11, "node gone", func(d control.Domain, _ bool) bool { return !d.Node })
	if d.Worker != control.WorkerLive {
		t.Fatalf("introduced domain 11 lost its worker: %+v", d)
	}
	h.in.KillDomain(11)
	h.waitWorker(11, control.WorkerNone)
}

// TestNodeOnlyIgnoresIntroduction: --auto-detect=false is the seed's
// behaviour.
func TestNodeOnlyIgnoresIntroduction(t *testing.T) {
	t.Parallel()
	h := start(t, nil, "[agent]\nauto_detect = false\n", nil)
	h.in.CreateDomain(12)
	d := h.waitDomain(12, "introduced", func(d control.Domain, _ bool) bool { return d.Introduced })
	if d.Worker != control.WorkerNone {
		t.Fatalf("worker without a node in node-only mode: %+v", d)
	}
}

// TestStaleNodes: a node whose domain is gone is reported after the grace
// period and, with reap_stale, removed; a node of an introduced domain
// never is.
func TestStaleNodes(t *testing.T) {
	t.Parallel()
	h := start(t, nil, "[agent]\nstale_grace = \"200ms\"\nreap_stale = true\n", nil)
	h.in.CreateDomain(21)
	if err := node.Create(h.ctx, h.c, 21, ""); err != nil {
		t.Fatal(err)
	}
	// Never introduced, but its home exists: not provably dead, so only
	// stale_grace removes its node.
	h.write("/local/domain/22/name", "half-built")
	if err := node.Create(h.ctx, h.c, 22, ""); err != nil {
		t.Fatal(err)
	}
	h.waitLog("removed stale mtwatch node")
	if _, err := node.Get(h.ctx, h.c, 22); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("stale node 22: %v", err)
	}
	h.waitWorker(22, control.WorkerNone)
	time.Sleep(500 * time.Millisecond) // > grace: 21 is introduced and must stay
	if _, err := node.Get(h.ctx, h.c, 21); err != nil {
		t.Fatalf("node of introduced domain 21: %v", err)
	}
	if d, _ := h.a.Domain(21); d.Stale || d.Worker != control.WorkerLive {
		t.Fatalf("domain 21 %+v", d)
	}
}

// TestStaleReportedNotReaped: without reap_stale the node stays, marked.
func TestStaleReportedNotReaped(t *testing.T) {
	t.Parallel()
	h := start(t, nil, "[agent]\nstale_grace = \"100ms\"\n", nil)
	h.write("/local/domain/23/name", "half-built") // not provably dead
	if err := node.Create(h.ctx, h.c, 23, ""); err != nil {
		t.Fatal(err)
	}
	h.waitDomain(23, "stale", func(d control.Domain, _ bool) bool { return d.Stale })
	if st := h.a.Status(); st.Stale != 1 || st.Nodes != 1 {
		t.Fatalf("status %+v", st)
	}
	if _, err := node.Get(h.ctx, h.c, 23); err != nil {
		t.Fatalf("node removed without reap_stale: %v", err)
	}
}

// TestBadInput: entries that are not trusted nodes of canonical guest domids
// are logged once and change nothing.
func TestBadInput(t *testing.T) {
	t.Parallel()
	h := start(t, nil, "[agent]\nauto_detect = false\n", nil)
	if err := node.Create(h.ctx, h.c, 5, ""); err != nil {
		t.Fatal(err)
	}
	h.waitWorker(5, control.WorkerLive)
	junk := strings.Repeat("x", h.in.MaxValue(node.Dir+"/5")) // the largest value
	for _, name := range []string{"abc", "0", "32752", "007", "65535"} {
		h.in.Run("xenstore-write", node.Dir+"/"+name, "")
		h.in.Run("xenstore-write", node.Dir+"/"+name, "again")
	}
	h.write(node.Dir+"/5", junk) // junk value on a live node
	h.write(node.Dir+"/6", junk) // junk value on a new node
	h.in.Run("xenstore-write", node.Dir+"/8", "")
	h.in.Run("xenstore-chmod", node.Dir+"/8", "n8") // a node a guest owns
	h.waitLog(node.Dir + "/8")
	h.waitLog(node.Dir + "/6")
	// Sync on a later good node so every earlier event was handled.
	if err := node.Create(h.ctx, h.c, 30, ""); err != nil {
		t.Fatal(err)
	}
	h.waitWorker(30, control.WorkerLive)
	doms := h.a.Domains()
	var ids []uint16
	for _, d := range doms {
		ids = append(ids, d.Domid)
	}
	if fmt.Sprint(ids) != "[0 5 30]" {
		t.Fatalf("domains %v", ids)
	}
	if d, _ := h.a.Domain(5); d.Worker != control.WorkerLive || d.UUID != "" {
		t.Fatalf("domain 5 changed: %+v", d)
	}
	logs := h.logs.String()
	for _, name := range []string{"abc", "0", "32752", "007", "65535", "6", "8"} {
		if n := strings.Count(logs, "path="+node.Dir+"/"+name+" "); n != 1 {
			t.Errorf("%s logged %d times, want once", name, n)
		}
	}
	if n := strings.Count(logs, "path="+node.Dir+"/5 "); n != 1 {
		t.Errorf("junk value of node 5 logged %d times, want once", n)
	}
}

// TestRenamedDomain: `xl rename` writes /local/domain/<id>/name and fires no
// event the agent watches; the control API shows the new name within the
// periodic refresh (10 s), and about a second after another domain's
// introduction.
func TestRenamedDomain(t *testing.T) {
	t.Parallel()
	h := start(t, nil, "", nil)
	h.in.CreateDomain(9)
	h.waitDomain(9, "name", func(d control.Domain, _ bool) bool { return d.Name == "guest9" })
	named := func(want string) func(control.Domain, bool) bool {
		return func(control.Domain, bool) bool {
			for _, d := range h.a.Domains() {
				if d.Domid == 9 {
					return d.Name == want
				}
			}
			return false
		}
	}
	begin := time.Now()
	h.write("/local/domain/9/name", "renamed9")
	h.waitDomain(9, "name after rename", named("renamed9"))
	if took := time.Since(begin); took > 12*time.Second {
		t.Fatalf("new name shown after %v, over the 10 s refresh", took)
	}
	// Well before the periodic refresh: the introduction triggers it.
	h.write("/local/domain/9/name", "again9")
	begin = time.Now()
	h.in.CreateDomain(10)
	h.waitDomain(9, "name after an introduction", named("again9"))
	if took := time.Since(begin); took > 3*time.Second {
		t.Fatalf("new name shown %v after another domain's introduction", took)
	}
	// No introduction now: only the periodic refresh can show it.
	h.write("/local/domain/9/name", "third9")
	begin = time.Now()
	h.waitDomain(9, "name after the periodic refresh", named("third9"))
	if took := time.Since(begin); took > 11*time.Second {
		t.Fatalf("new name shown after %v, over the 10 s refresh", took)
	}
}
