package agent_test

import (
	"context"
	"encoding/json"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/mtwatch/mtwatch/lib/config"
	"github.com/mtwatch/mtwatch/lib/control"
	"github.com/mtwatch/mtwatch/lib/dispatch"
	"github.com/mtwatch/mtwatch/lib/domid"
	"github.com/mtwatch/mtwatch/lib/node"
)

// TestDom0ShowsDefaultWorkersHandler: dom0's worker is the default worker;
// GET /v1/domains/0 (mtwatch list's dom0 row) shows its running handler.
func TestDom0ShowsDefaultWorkersHandler(t *testing.T) {
	t.Parallel()
	rec, reg := newRecorder(func(ev dispatch.Event, _ domid.ID) bool {
		return ev.Path == "backend/vif/0/0/state"
	})
	rec.unblock = make(chan struct{})
	h := start(t, nil, "[agent]\nstall_threshold = \"20ms\"\n", nil, reg)
	h.write("backend/vif/0/0/state", "1")
	get := func() control.Domain {
		rw := httptest.NewRecorder()
		control.NewHandler(h.a, nil).ServeHTTP(rw, httptest.NewRequest("GET", "/v1/domains/0", nil))
		var d control.Domain
		if err := json.NewDecoder(rw.Body).Decode(&d); err != nil || rw.Code != 200 {
			t.Fatalf("GET /v1/domains/0: %d %v", rw.Code, err)
		}
		return d
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		d := get()
		if c := d.Current; c != nil && c.Stalled {
			if d.Worker != control.WorkerDefault || c.Path != "backend/vif/0/0/state" || c.Watch != "backend" {
				t.Fatalf("dom0 %+v, current %+v", d, c)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("dom0 never showed its stalled handler: %+v", d)
		}
		time.Sleep(5 * time.Millisecond)
	}
	// Counted once: as the default worker's stall, not again as dom0's.
	if st := h.a.Stalls(); len(st) != 1 || st[0].Worker != "default" {
		t.Fatalf("stalls %+v", st)
	}
	close(rec.unblock)
	<-rec.stuck
}

// TestReloadStallThreshold: a reload's stall_threshold reaches the
// dispatcher's own stall monitor, not only the agent's view.
func TestReloadStallThreshold(t *testing.T) {
	t.Parallel()
	rec, reg := newRecorder(func(ev dispatch.Event, w domid.ID) bool {
		return ev.Path == "backend/vif/5/0/state" && w == 5
	})
	h := start(t, nil, "[agent]\nauto_detect = false\nstall_threshold = \"1h\"\n", nil, reg)
	if err := node.Create(h.ctx, h.c, 5, ""); err != nil {
		t.Fatal(err)
	}
	h.waitWorker(5, control.WorkerLive)
	h.write("backend/vif/5/0/state", "1")
	h.waitDomain(5, "running", func(d control.Domain, _ bool) bool { return d.Current != nil })
	time.Sleep(50 * time.Millisecond)
	if strings.Contains(h.logs.String(), "watch callback stalled") {
		t.Fatal("stalled before the reload")
	}
	cfg, err := config.Parse("test.toml", []byte("[agent]\nauto_detect = false\nstall_threshold = \"20ms\"\n"))
	if err != nil {
		t.Fatal(err)
	}
	cfg.Agent.Xenstore = h.in.Socket()
	if err := h.a.Reload(context.Background(), cfg); err != nil {
		t.Fatal(err)
	}
	if got := h.a.Dispatcher().StallThreshold(); got != 20*time.Millisecond {
		t.Fatalf("dispatcher's threshold %v after the reload", got)
	}
	h.waitLog("watch callback stalled")
	if !strings.Contains(h.logs.String(), "path=backend/vif/5/0/state") {
		t.Fatal("the stall log does not name the path")
	}
	if st := h.a.Status(); st.Totals.Stalls != 1 || st.StallThresholdMS != 20 {
		t.Fatalf("status %+v", st)
	}
	// Turned off (0 in the file): the dispatcher stops looking too.
	cfg.Agent.StallThreshold.Duration = 0
	if err := h.a.Reload(context.Background(), cfg); err != nil {
		t.Fatal(err)
	}
	if got := h.a.Dispatcher().StallThreshold(); got >= 0 {
		t.Fatalf("dispatcher's threshold %v after turning it off", got)
	}
	if err := node.Destroy(h.ctx, h.c, 5); err != nil {
		t.Fatal(err)
	}
	<-rec.stuck // cancelled with its worker
}
