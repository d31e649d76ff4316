package main

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/mtwatch/mtwatch/internal/daemontest"
	"github.com/mtwatch/mtwatch/lib/control"
	"github.com/mtwatch/mtwatch/lib/node"
	"github.com/mtwatch/mtwatch/lib/xenstore/xenstoredtest"
)

// TestDaemonSingleWorkerCountersMonotonic: with --single-worker a domain
// has no worker, but its counters in /v1/domains must only grow while it
// exists: mtwatch top computes rates from two snapshots, and a counter back
// at zero once the domain's events have all run reads as a negative rate.
func TestDaemonSingleWorkerCountersMonotonic(t *testing.T) {
	t.Parallel()
	in := xenstoredtest.Start(t)
	sock := daemontest.SocketPath(t)
	d := spawn(t, in, sock, nil, "--single-worker", "--auto-detect=false")
	d.WaitReady()
	cl := control.NewClient(sock)
	defer cl.Close()
	in.Run("xenstore-write", node.Dir+"/5", "")
	in.Run("xenstore-chmod", node.Dir+"/5", "n0")

	domain := func() (control.Domain, bool) {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		dom, err := cl.Domain(ctx, 5)
		return dom, err == nil
	}
	// The domain exists for the agent once it has read the node: only then
	// is it created, and only a created domain keeps its counters. Its
	// events that ran on the default worker before that (the agent reads
	// the node while the writes below go on) count for a record forgotten
	// once they have run, as a domain's without a worker always do.
	waitFor(t, "domain 5's node taken in", func() bool {
		dom, ok := domain()
		return ok && dom.Node
	})
	var last uint64
	for round := 1; round <= 3; round++ {
		// The log plugin watches backend: each write is an event of domain 5.
		for i := range 4 {
			in.Run("xenstore-write", fmt.Sprintf("backend/vif/5/0/r%d-%d", round, i), "x")
		}
		deadline := time.Now().Add(30 * time.Second)
		dom, ok := domain()
		for !ok || dom.Processed < last+4 || dom.Queued > 0 {
			if time.Now().After(deadline) {
				t.Fatalf("round %d: domain 5 processed %d with %d queued (listed %v), want at least %d and idle", round, dom.Processed, dom.Queued, ok, last+4)
			}
			time.Sleep(10 * time.Millisecond)
			dom, ok = domain()
		}
		// Idle again, its events all run: still counted, and still there
		// on the next look.
		got, ok := domain()
		if !ok || got.Processed < dom.Processed {
			t.Fatalf("round %d: domain 5 processed went back to %d (listed %v) from %d", round, got.Processed, ok, dom.Processed)
		}
		last = got.Processed
	}
	d.Stop()
}
