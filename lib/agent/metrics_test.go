package agent_test

import (
	"io"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/mtwatch/mtwatch/lib/control"
	"github.com/mtwatch/mtwatch/lib/dispatch"
	"github.com/mtwatch/mtwatch/lib/domid"
	"github.com/mtwatch/mtwatch/lib/node"
)

// TestMetrics: the counters, the histogram and per-domain gauges for live
// domains only, in the Prometheus text format.
func TestMetrics(t *testing.T) {
	t.Parallel()
	rec, reg := newRecorder(func(ev dispatch.Event, w domid.ID) bool { return false })
	h := start(t, nil, "[agent]\nauto_detect = false\n", nil, reg)
	if err := node.Create(h.ctx, h.c, 5, ""); err != nil {
		t.Fatal(err)
	}
	if err := node.Create(h.ctx, h.c, 6, ""); err != nil {
		t.Fatal(err)
	}
	h.waitWorker(6, control.WorkerLive)
	h.write("backend/vif/5/0/state", "1")
	rec.expectRun(t, "backend/vif/5/0/state", 5)
	if err := node.Destroy(h.ctx, h.c, 6); err != nil {
		t.Fatal(err)
	}
	h.waitWorker(6, control.WorkerNone)

	w := httptest.NewRecorder()
	h.a.MetricsHandler().ServeHTTP(w, httptest.NewRequest("GET", "/metrics", nil))
	body, _ := io.ReadAll(w.Result().Body)
	text := string(body)
	for _, want := range []string{
		`mtwatch_events_total{outcome="processed"}`,
		`mtwatch_events_total{outcome="dropped"} 0`,
		"mtwatch_handler_duration_seconds_count",
		"mtwatch_workers 1",
		"mtwatch_nodes 1",
		"mtwatch_stalled_handlers 0",
		"mtwatch_xenstore_connected 1",
		"mtwatch_xenstore_reconnects_total 0",
		"mtwatch_barrier_timeouts_total 0",
		`mtwatch_domain_queued_events{domid="5"} 0`,
	} {
		if !strings.Contains(text, want) {
			t.Errorf("metrics lack %q", want)
		}
	}
	if strings.Contains(text, `domid="6"`) {
		t.Error("a retired domain still has series: cardinality must follow the live domains")
	}
	if t.Failed() {
		t.Log(text)
	}
}
