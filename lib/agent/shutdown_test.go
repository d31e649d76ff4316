package agent_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/mtwatch/mtwatch/lib/control"
	"github.com/mtwatch/mtwatch/lib/dispatch"
	"github.com/mtwatch/mtwatch/lib/domid"
	"github.com/mtwatch/mtwatch/lib/node"
)

// TestShutdownDrains: events queued when Shutdown starts still run, in
// order, and Shutdown returns nil once they have.
func TestShutdownDrains(t *testing.T) {
	t.Parallel()
	rec, reg := newRecorder(func(ev dispatch.Event, w domid.ID) bool {
		if strings.HasPrefix(ev.Path, "backend/vif/5/") {
			time.Sleep(20 * time.Millisecond) // a slow backend
		}
		return false
	})
	h := start(t, nil, "[agent]\nauto_detect = false\n", nil, reg)
	if err := node.Create(h.ctx, h.c, 5, ""); err != nil {
		t.Fatal(err)
	}
	h.waitWorker(5, control.WorkerLive)
	for i := 0; i < 10; i++ {
		h.write(fmt.Sprintf("backend/vif/5/%d/state", i), "1")
	}
	h.waitDomain(5, "queued", func(d control.Domain, _ bool) bool { return d.Dispatched == 10 && d.Queued > 0 })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	h.shutDown = true
	if err := h.a.Shutdown(ctx); err != nil {
		t.Fatalf("shutdown: %v", err)
	}
	for i := 0; i < 10; i++ {
		select {
		case r := <-rec.runs:
			if !strings.HasPrefix(r.path, "backend/vif/5/") {
				i--
				continue // the watch's initial event
			}
			if want := fmt.Sprintf("backend/vif/5/%d/state", i); r.path != want || r.worker != 5 {
				t.Fatalf("run %d: %+v, want %s on 5", i, r, want)
			}
		default:
			t.Fatalf("only %d of 10 queued events ran before Shutdown returned", i)
		}
	}
}

// TestShutdownCancelsHungHandler: a handler that never returns is cancelled
// when the shutdown's context ends, and Shutdown reports it.
func TestShutdownCancelsHungHandler(t *testing.T) {
	t.Parallel()
	rec, reg := newRecorder(func(ev dispatch.Event, w domid.ID) bool {
		return ev.Path == "backend/vif/9/0/state"
	})
	h := start(t, nil, "[agent]\nauto_detect = false\n", nil, reg)
	if err := node.Create(h.ctx, h.c, 9, ""); err != nil {
		t.Fatal(err)
	}
	h.waitWorker(9, control.WorkerLive)
	h.write("backend/vif/9/0/state", "1")
	h.waitDomain(9, "running", func(d control.Domain, _ bool) bool { return d.Current != nil })
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	begin := time.Now()
	h.shutDown = true
	err := h.a.Shutdown(ctx)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("shutdown with a hung handler: %v", err)
	}
	if took := time.Since(begin); took > 5*time.Second {
		t.Fatalf("shutdown took %v", took)
	}
	// Cancelled by then; Shutdown does not wait for a handler that
	// ignores its context, so the return itself may come just after.
	select {
	case err := <-rec.stuck:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("hung handler ended with %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("hung handler not cancelled by Shutdown")
	}
}

// TestShutdownWithHungXenstored: xenstored stops answering (SIGSTOP) but
// keeps its socket open; Shutdown still returns, within its deadline plus
// the bounded removal of the agent's watches, instead of waiting forever
// for an UNWATCH reply.
func TestShutdownWithHungXenstored(t *testing.T) {
	t.Parallel()
	h := start(t, nil, "", nil)
	pid := h.in.Pid()
	if pid == 0 {
		t.Fatal("xenstored's pid is unknown")
	}
	if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	defer syscall.Kill(pid, syscall.SIGCONT)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	done := make(chan error, 1)
	begin := time.Now()
	h.shutDown = true // its error, if the deadline passed, is not the point
	go func() { done <- h.a.Shutdown(ctx) }()
	select {
	case <-done:
		t.Logf("Shutdown returned after %v", time.Since(begin))
	case <-time.After(15 * time.Second):
		syscall.Kill(pid, syscall.SIGCONT)
		t.Fatal("Shutdown hung on a stopped xenstored")
	}
}
