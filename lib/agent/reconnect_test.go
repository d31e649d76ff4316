package agent_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
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
	// The plugin's handle fails meanwhile with ErrClosed, and works again
	// once the agent reconnected.
	if _, err := rec.ic.Store.Read(h.ctx, "/local/domain/5/name"); !errors.Is(err, xenstore.ErrClosed) {
		t.Fatalf("plugin store read while disconnected: %v", err)
	}
	if err := in.Server().Start(context.Background()); err != nil {
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
	if v, err := rec.ic.Store.Read(h.ctx, "/local/domain/5/name"); err != nil || string(v) != "guest5" {
		t.Fatalf("plugin store read after reconnecting: %q %v", v, err)
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

// TestStartWaitsForXenstored: Start retries a failing dial with backoff and
// says so to systemd, then starts normally.
func TestStartWaitsForXenstored(t *testing.T) {
	t.Parallel()
	in := xenstoredtest.Start(t)
	var mu sync.Mutex
	var notes []string
	fails := 0
	h := start(t, in, "", func(o *agent.Options) {
		o.Notify = func(s string) { mu.Lock(); notes = append(notes, s); mu.Unlock() }
		o.Dial = func(ctx context.Context) (*xenstore.Client, error) {
			if fails < 3 {
				fails++
				return nil, errors.New("xenstored is not there yet")
			}
			return xenstore.Dial(ctx, xenstore.WithPath(in.Socket()))
		}
	})
	mu.Lock()
	defer mu.Unlock()
	all := strings.Join(notes, "|")
	unreachable := strings.Index(all, "STATUS=xenstored unreachable: xenstored is not there yet")
	if fails != 3 || unreachable < 0 || strings.Index(all, "READY=1") < unreachable {
		t.Fatalf("fails %d, notes %q", fails, notes)
	}
	if st := h.a.Status(); st.Xenstore.State != "connected" || st.Xenstore.Reconnects != 0 {
		t.Fatalf("status %+v", st.Xenstore)
	}
}

// TestNodeEventFailureRescans: when handling a node event fails (a read
// refused; after a burst, a rescan finding the directory still changing),
// the agent rescans the whole directory with a capped backoff until a
// rescan succeeds, without waiting for another event: the worker the node
// asked for appears anyway.
func TestNodeEventFailureRescans(t *testing.T) {
	t.Parallel()
	h := start(t, nil, "[agent]\nauto_detect = false\n", nil)
	var (
		mu     sync.Mutex
		counts = map[string]int{}
	)
	agent.SetNodeFault(h.a, func(op string) error {
		mu.Lock()
		defer mu.Unlock()
		counts[op]++
		// The node event and the first two rescans fail.
		if op == "node" && counts[op] == 1 || op == "rescan" && counts[op] <= 2 {
			return errors.New("directory kept changing while being listed (injected)")
		}
		return nil
	})
	if err := node.Create(h.ctx, h.c, 5, ""); err != nil {
		t.Fatal(err)
	}
	h.waitWorker(5, control.WorkerLive)
	mu.Lock()
	got := fmt.Sprint(counts)
	mu.Unlock()
	if got != "map[node:1 rescan:3]" {
		t.Fatalf("faults asked %s", got)
	}
	logs := h.logs.String()
	for _, want := range []string{
		`msg="rescanning the mtwatch directory" in=100ms`,
		`msg="rescanning the mtwatch directory" in=200ms`,
		`msg="rescanning the mtwatch directory" in=400ms`,
	} {
		if !strings.Contains(logs, want) {
			t.Errorf("log lacks %s", want)
		}
	}
	// A later success resets the backoff: the rescan after the next failure
	// comes after 100ms again, not after the 800ms the failures above
	// reached. The first rescan logged from here on tells; it need not be
	// the last: a node event handled after a rescan succeeded fails again
	// under this fault and schedules one more, at the reset backoff.
	mark := len(h.logs.String())
	agent.SetNodeFault(h.a, func(op string) error {
		if op == "node" {
			return errors.New("injected")
		}
		return nil
	})
	if err := node.Create(h.ctx, h.c, 6, ""); err != nil {
		t.Fatal(err)
	}
	h.waitWorker(6, control.WorkerLive)
	const rescanning = `msg="rescanning the mtwatch directory" in=`
	later := h.logs.String()[mark:]
	i := strings.Index(later, rescanning)
	if i < 0 {
		t.Fatalf("no rescan after the node event of 6 failed")
	}
	if in, _, _ := strings.Cut(later[i+len(rescanning):], "\n"); in != "100ms" {
		t.Errorf("backoff not reset after a successful rescan: the next rescan in %s", in)
	}
}
