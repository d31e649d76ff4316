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

	processed := func() uint64 {
		dom, err := cl.Domain(context.Background(), 5)
		if err != nil {
			return 0
		}
		return dom.Processed
	}
	var last uint64
	for round := 1; round <= 3; round++ {
		// The log plugin watches backend: each write is an event of domain 5.
		for i := range 4 {
			in.Run("xenstore-write", fmt.Sprintf("backend/vif/5/0/r%d-%d", round, i), "x")
		}
		deadline := time.Now().Add(10 * time.Second)
		for processed() < last+4 {
			if time.Now().After(deadline) {
				t.Fatalf("round %d: domain 5 processed %d, want at least %d", round, processed(), last+4)
			}
			time.Sleep(10 * time.Millisecond)
		}
		// Idle again: still counted.
		time.Sleep(50 * time.Millisecond)
		got := processed()
		if got < last+4 {
			t.Fatalf("round %d: domain 5 processed went back to %d from %d", round, got, last)
		}
		last = got
	}
	d.Stop()
}
