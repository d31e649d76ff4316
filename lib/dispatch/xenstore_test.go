package dispatch_test

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"sync"
	"testing"
	"time"

	"github.com/mtwatch/mtwatch/lib/dispatch"
	"github.com/mtwatch/mtwatch/lib/domid"
	"github.com/mtwatch/mtwatch/lib/node"
	"github.com/mtwatch/mtwatch/lib/xenstore"
	"github.com/mtwatch/mtwatch/lib/xenstore/xenstoredtest"
)

// TestWithRealXenstored wires the dispatcher to a real xenstored the way the
// agent does: one consumer of the client's watch channels calls Dispatch for
// backend events and CreateDomain/DestroyDomain for mtwatch node changes,
// and the nodes are made by lib/node as the hooks make them. A backend
// handler stuck on domain 5 (as on a guest that is dying) must not delay
// domain 7; removing 5's node cancels the stuck handler, and 5's later
// events run on the default worker.
func TestWithRealXenstored(t *testing.T) {
	t.Parallel()
	in := xenstoredtest.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	c, err := xenstore.Dial(ctx, xenstore.WithPath(in.Socket()))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()

	d, err := dispatch.New(dispatch.Config{Capacity: 64})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Stop(context.Background())

	type run struct {
		path   string
		worker domid.ID
	}
	runs := make(chan run, 1024)
	stuck := make(chan error, 1)
	reg, err := d.Register(dispatch.WatchConfig{
		Path: "backend", Token: "be",
		Handler: func(ctx context.Context, ev dispatch.Event) error {
			w, _ := dispatch.WorkerOf(ctx)
			if ev.Overflow {
				runs <- run{"overflow of " + ev.Path, w}
				return nil
			}
			if ev.Path == "backend/vif/5/0/state" && w == 5 {
				<-ctx.Done() // a backend waiting on a guest that never answers
				stuck <- ctx.Err()
				return ctx.Err()
			}
			runs <- run{ev.Path, w}
			return nil
		},
	})
	if err != nil {
		t.Fatal(err)
	}

	// The agent's loop: the single consumer of the client's watches.
	be, err := c.Watch(ctx, "backend", "be")
	if err != nil {
		t.Fatal(err)
	}
	mt, err := c.Watch(ctx, domid.MtwatchDir, "mt")
	if err != nil {
		t.Fatal(err)
	}
	workers := make(chan string, 64)
	var loop sync.WaitGroup
	loop.Add(1)
	go func() {
		defer loop.Done()
		for {
			select {
			case ev, ok := <-be.Events():
				if !ok {
					return
				}
				if err := d.Dispatch(ev.Path, ev.Token); err != nil {
					t.Errorf("dispatch %s: %v", ev.Path, err)
				}
			case ev, ok := <-mt.Events():
				if !ok {
					return
				}
				id, isNode := domid.FromPath(ev.Path)
				if !isNode || !id.IsGuest() {
					continue
				}
				_, err := c.Read(ctx, ev.Path)
				switch {
				case err == nil:
					if err := d.CreateDomain(id); err != nil && !errors.Is(err, dispatch.ErrDomainExists) {
						t.Errorf("create worker %d: %v", id, err)
					}
					workers <- fmt.Sprintf("+%d", id)
				case errors.Is(err, fs.ErrNotExist):
					if err := d.DestroyDomain(id); err != nil && !errors.Is(err, dispatch.ErrNoDomain) {
						t.Errorf("destroy worker %d: %v", id, err)
					}
					workers <- fmt.Sprintf("-%d", id)
				default:
					t.Errorf("read %s: %v", ev.Path, err)
				}
			}
		}
	}()
	defer func() {
		be.Unwatch(context.Background())
		mt.Unwatch(context.Background())
		loop.Wait()
	}()
	expectWorker := func(want string) {
		t.Helper()
		select {
		case got := <-workers:
			if got != want {
				t.Fatalf("worker change %s, want %s", got, want)
			}
		case <-ctx.Done():
			t.Fatalf("no worker change %s", want)
		}
	}
	expectRun := func(path string, worker domid.ID) {
		t.Helper()
		for {
			select {
			case r := <-runs:
				if r.path != path {
					continue // initial and intermediate events
				}
				if r.worker != worker {
					t.Fatalf("%s ran on worker %d, want %d", path, r.worker, worker)
				}
				return
			case <-ctx.Done():
				t.Fatalf("%s never ran", path)
			}
		}
	}
	write := func(path, value string) {
		t.Helper()
		if err := c.Write(ctx, path, []byte(value)); err != nil {
			t.Fatal(err)
		}
	}

	for _, id := range []domid.ID{5, 7} {
		in.CreateDomain(id)
		if err := node.Create(ctx, c, id, ""); err != nil {
			t.Fatal(err)
		}
		expectWorker(fmt.Sprintf("+%d", id))
	}

	write("backend/vif/5/0/state", "5") // domain 5's worker gets stuck
	for i := 0; i < 20; i++ {
		p := fmt.Sprintf("backend/vif/7/%d/state", i)
		write(p, "4")
		expectRun(p, 7) // domain 7 goes on regardless
	}
	write("backend/vif/0/0/state", "4")
	expectRun("backend/vif/0/0/state", domid.Dom0) // dom0's own: default worker

	// A guest flooding its paths cannot grow the queue of its stuck worker
	// beyond the capacity.
	for i := 0; i < 500; i++ {
		write(fmt.Sprintf("backend/vbd/5/%d/state", i), "1")
	}
	write("backend/vif/7/99/state", "4")
	expectRun("backend/vif/7/99/state", 7)
	st, ok := d.DomainStats(5)
	if !ok || st.Queued > 64 || st.Dropped == 0 || st.Current == nil {
		t.Fatalf("domain 5 stats %+v", st)
	}

	// The toolstack removes the node last: the stuck handler is cancelled,
	// the overflow notice and queued events drain, and later events of 5 run
	// on the default worker.
	if err := node.Destroy(ctx, c, 5); err != nil {
		t.Fatal(err)
	}
	expectWorker("-5")
	select {
	case err := <-stuck:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("stuck handler ended with %v", err)
		}
	case <-ctx.Done():
		t.Fatal("stuck handler was not cancelled by the domain's destruction")
	}
	// The overflow notice runs on 5's worker as it drains: the handler
	// learns it must resync domain 5.
	expectRun("overflow of backend", 5)
	for {
		st, _ := d.DomainStats(5)
		if st.Draining == 0 && st.Queued == 0 {
			break
		}
		select {
		case <-ctx.Done():
			t.Fatalf("domain 5's worker did not drain: %+v", st)
		case <-time.After(time.Millisecond):
		}
	}
	write("backend/vif/5/1/state", "6")
	expectRun("backend/vif/5/1/state", domid.Dom0)
	in.KillDomain(5)

	// Every backend event went through the one registration: its counters
	// and the dispatcher's agree, and both saw the flood.
	tot, ws := d.Stats().Totals, reg.Stats()
	if tot.Overflows == 0 || ws.Dropped == 0 {
		t.Errorf("no overflow for the flood: totals %+v, watch %+v", tot, ws)
	}
	if ws.Dispatched != tot.Dispatched || ws.Dropped != tot.Dropped {
		t.Errorf("watch counters %+v disagree with the dispatcher's %+v", ws, tot)
	}
}
