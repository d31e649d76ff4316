package agent_test

import (
	"context"
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

// TestReconnectKeepsWorkers: xenstored goes away while domain 5's handler is
// stuck. The agent redials (held here until the new xenstored has domain 5
// and its node again), re-registers its own and the plugin's watches and
// reconciles: the stuck handler was not cancelled, 5's worker is the same
// (its queue intact), 6, whose node did not come back, lost its worker, and
// the plugin's watch works on the new connection.
func TestReconnectKeepsWorkers(t *testing.T) {
	t.Parallel()
	in := xenstoredtest.Start(t)
	gate := make(chan struct{})
	dials := 0
	rec, reg := newRecorder(func(ev dispatch.Event, w domid.ID) bool {
		return ev.Path == "backend/vif/5/0/state" && w == 5
	})
	h := start(t, in, "[agent]\nauto_detect = false\nstall_threshold = \"20ms\"\n", func(o *agent.Options) {
		o.Dial = func(ctx context.Context) (*xenstore.Client, error) {
			dials++ // only the agent's goroutines dial, one at a time
			if dials > 1 {
				select {
				case <-gate:
				case <-ctx.Done():
					return nil, ctx.Err()
				}
			}
			return xenstore.Dial(ctx, xenstore.WithPath(in.Socket()))
		}
	}, reg)
	for _, id := range []domid.ID{5, 6} {
		in.CreateDomain(id)
		if err := node.Create(h.ctx, h.c, id, ""); err != nil {
			t.Fatal(err)
		}
		h.waitWorker(id, control.WorkerLive)
	}
	h.write("backend/vif/5/0/state", "1") // stuck
	h.write("backend/vif/5/1/state", "1") // queued behind it
	h.waitDomain(5, "stuck with one queued", func(d control.Domain, _ bool) bool {
		return d.Current != nil && d.Queued == 1
	})

	in.Stop()
	h.waitLog("lost xenstored")
	if st := h.a.Status(); st.Xenstore.State != "disconnected" {
		t.Fatalf("status while xenstored is gone: %+v", st.Xenstore)
	}
	if err := in.Server.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	c, err := xenstore.Dial(h.ctx, xenstore.WithPath(in.Socket()))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	in.CreateDomain(5)
	if err := node.Create(h.ctx, c, 5, ""); err != nil {
		t.Fatal(err)
	}
	close(gate)
	h.waitLog("reconnected to xenstored")
	h.waitWorker(6, control.WorkerNone)
	d, _ := h.a.Domain(5)
	if d.Worker != control.WorkerLive || d.Current == nil || d.Current.Path != "backend/vif/5/0/state" || d.Queued != 1 {
		t.Fatalf("domain 5 after reconnection: %+v", d)
	}
	select {
	case err := <-rec.stuck:
		t.Fatalf("running handler ended across the reconnection: %v", err)
	default:
	}
	st := h.a.Status()
	if st.Xenstore.Reconnects != 1 || st.Xenstore.State != "connected" || st.Plugins[0].Watches != 1 {
		t.Fatalf("status %+v", st)
	}
	// The plugin's watch is registered on the new connection.
	if err := c.Write(h.ctx, "backend/vbd/0/9/state", []byte("1")); err != nil {
		t.Fatal(err)
	}
	rec.expectRun(t, "backend/vbd/0/9/state", domid.Dom0)
	// And the node watch: 5's node removal retires it, cancelling the handler.
	if err := node.Destroy(h.ctx, c, 5); err != nil {
		t.Fatal(err)
	}
	select {
	case <-rec.stuck:
	case <-time.After(20 * time.Second):
		t.Fatal("stuck handler not cancelled by its node's removal")
	}
	rec.expectRun(t, "backend/vif/5/1/state", 5) // its queue drained in order
	h.waitWorker(5, control.WorkerNone)
	if !strings.Contains(h.logs.String(), "reconnect") {
		t.Fatal("no reconnection logged")
	}
}
