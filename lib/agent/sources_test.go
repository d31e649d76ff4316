package agent_test

import (
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/mtwatch/mtwatch/lib/control"
	"github.com/mtwatch/mtwatch/lib/domid"
	"github.com/mtwatch/mtwatch/lib/xenstore"
)

// TestLibxlSource: a dom0-only /libxl/<domid> gives its domain a worker, as
// libxl__domain_make's first transaction creates it, and its removal takes
// the worker away; one a guest can read gives nothing.
func TestLibxlSource(t *testing.T) {
	t.Parallel()
	rec, reg := newRecorder(nil)
	h := start(t, nil, "[agent]\nsources = [\"libxl\"]\n", nil, reg)
	if st := h.a.Status(); strings.Join(st.Sources, ",") != "libxl" {
		t.Fatalf("sources %v", st.Sources)
	}
	if err := h.c.Transaction(h.ctx, func(tx *xenstore.Tx) error {
		for _, p := range []string{"/libxl/40", "/libxl/40/device", "/local/domain/40"} {
			if err := tx.Mkdir(h.ctx, p); err != nil {
				return err
			}
		}
		return tx.Write(h.ctx, "/local/domain/40/vm", []byte("/vm/6f1c3d2e-0000-4000-8000-000000000040"))
	}); err != nil {
		t.Fatal(err)
	}
	d := h.waitWorker(40, control.WorkerLive)
	if !d.Libxl || d.Node || d.Introduced || d.UUID != "6f1c3d2e-0000-4000-8000-000000000040" {
		t.Fatalf("domain 40 %+v", d)
	}
	h.write("backend/vif/40/0/state", "1")
	rec.expectRun(t, "backend/vif/40/0/state", 40)
	// libxl's own records below it change nothing.
	h.write("/libxl/40/device/vif/0/backend", "/local/domain/0/backend/vif/40/0")
	if d, _ := h.a.Domain(40); d.Worker != control.WorkerLive {
		t.Fatalf("domain 40 %+v", d)
	}

	// Readable by the guest: not the toolstack's private record.
	h.in.CreateDomain(41)
	if err := h.c.Mkdir(h.ctx, "/libxl/41"); err != nil {
		t.Fatal(err)
	}
	if err := h.c.SetPerms(h.ctx, "/libxl/41", xenstore.Perms{{Domid: domid.Dom0, Access: xenstore.AccessNone}, {Domid: 41, Access: xenstore.AccessRead}}); err != nil {
		t.Fatal(err)
	}
	h.waitLog("ignoring a /libxl entry that is not dom0's alone")
	if d, _ := h.a.Domain(41); d.Worker == control.WorkerLive || d.Libxl {
		t.Fatalf("untrusted /libxl/41 gave a worker: %+v", d)
	}

	// libxl removes it last, in devices_destroy_cb.
	if err := h.c.Rm(h.ctx, "/libxl/40"); err != nil {
		t.Fatal(err)
	}
	h.waitWorker(40, control.WorkerNone)
}

// TestStagedEventsOfNoDomain: an event of a domid that is no domain (a dead
// domain's late write) waits for no worker: it runs at once on a worker of
// its own, not after the staging timeout, and never on the default worker.
func TestStagedEventsOfNoDomain(t *testing.T) {
	t.Parallel()
	rec, reg := newRecorder(nil)
	h := start(t, nil, "[agent]\nstaging_timeout = \"1m\"\n", nil, reg)
	h.write("backend/vif/50/0/state", "6")
	rec.expectRunWithin(t, "backend/vif/50/0/state", 50, 10*time.Second)
	st := h.a.Status()
	if st.Totals.Flushed != 1 || st.Totals.GuestOnDefault != 0 {
		t.Fatalf("totals %+v", st.Totals)
	}
}

// TestCanaryAlarmWhileXenstoredStopped: xenstored stopped (SIGSTOP) for 3 s
// raises the canary's alarm, and no handler is reported stalled: the canary
// tells a slow xenstored from a stuck handler. It ends when xenstored runs
// again, on the same connection.
func TestCanaryAlarmWhileXenstoredStopped(t *testing.T) {
	t.Parallel()
	h := start(t, nil, "[agent]\ncanary_interval = \"100ms\"\ncanary_threshold = \"500ms\"\nstall_threshold = \"1s\"\n", nil)
	waitCanary := func(what string, ok func(*control.Canary) bool) *control.Canary {
		t.Helper()
		deadline := time.Now().Add(20 * time.Second)
		for {
			c := h.a.Status().Canary
			if c != nil && ok(c) {
				return c
			}
			if time.Now().After(deadline) {
				t.Fatalf("canary: %s: %+v", what, c)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	waitCanary("samples", func(c *control.Canary) bool { return c.Samples >= 2 && !c.Alarm })
	pid := h.in.Pid()
	if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	cont := sync.OnceFunc(func() { syscall.Kill(pid, syscall.SIGCONT) })
	t.Cleanup(cont)
	stopped := time.Now()
	c := waitCanary("alarm", func(c *control.Canary) bool { return c.Alarm })
	if c.PendingMS < 400 {
		t.Fatalf("alarm with the write pending %d ms", c.PendingMS)
	}
	time.Sleep(3*time.Second - time.Since(stopped))
	if st := h.a.Status(); st.Stalled != 0 || len(h.a.Stalls()) != 0 {
		t.Fatalf("a handler reported stalled while xenstored was stopped: %+v", h.a.Stalls())
	}
	cont()
	c = waitCanary("alarm over", func(c *control.Canary) bool { return !c.Alarm })
	if c.Alarms != 1 || c.MaxLatencyUS < 2_500_000 {
		t.Fatalf("canary after SIGCONT %+v", c)
	}
	if st := h.a.Status(); st.Xenstore.State != "connected" || st.Xenstore.Reconnects != 0 {
		t.Fatalf("xenstore %+v", st.Xenstore)
	}
	h.waitLog("canary: no watch event yet")
}
