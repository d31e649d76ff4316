package agent_test

import (
	"io"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

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
		"mtwatch_events_dispatched_total ",
		"mtwatch_handler_calls_total ",
		`mtwatch_events_discarded_total{reason="dropped"} 0`,
		`mtwatch_handler_failures_total{reason="panic"} 0`,
		"mtwatch_handler_stalls_total 0",
		"mtwatch_handler_duration_seconds_count",
		"mtwatch_workers 1",
		"mtwatch_nodes 1",
		"mtwatch_stalled_handlers 0",
		"mtwatch_xenstore_connected 1",
		"mtwatch_xenstore_reconnects_total 0",
		"mtwatch_guest_events_on_default_worker_total 0",
		`mtwatch_events_unstaged_total{to="flush"} 0`,
		"mtwatch_canary_alarm 0",
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

// scrape returns the agent's /metrics as a map from series to value.
func scrape(t *testing.T, h *harness) (map[string]float64, string) {
	t.Helper()
	w := httptest.NewRecorder()
	h.a.MetricsHandler().ServeHTTP(w, httptest.NewRequest("GET", "/metrics", nil))
	body, _ := io.ReadAll(w.Result().Body)
	series := map[string]float64{}
	for _, l := range strings.Split(string(body), "\n") {
		if l == "" || l[0] == '#' {
			continue
		}
		i := strings.LastIndexByte(l, ' ')
		v, err := strconv.ParseFloat(l[i+1:], 64)
		if err != nil {
			t.Fatalf("metrics line %q: %v", l, err)
		}
		series[l[:i]] = v
	}
	return series, string(body)
}

// TestMetricsEventSums: on an idle agent every event dispatched, and every
// overflow notice, has ended as one handler call or one discard, and the
// series say so: dispatched + overflow notices = handler calls + discarded.
func TestMetricsEventSums(t *testing.T) {
	t.Parallel()
	rec, reg := newRecorder(func(ev dispatch.Event, w domid.ID) bool { return false })
	h := start(t, nil, "[agent]\nauto_detect = false\n", nil, reg)
	if err := node.Create(h.ctx, h.c, 5, ""); err != nil {
		t.Fatal(err)
	}
	for i := range 20 {
		h.write("backend/vif/5/0/state", strconv.Itoa(i))
	}
	h.write("backend/vif/5/0/last", "1")
	rec.expectRun(t, "backend/vif/5/0/last", 5)
	deadline := time.Now().Add(20 * time.Second)
	for {
		s, text := scrape(t, h)
		in := s["mtwatch_events_dispatched_total"] + s["mtwatch_overflow_notices_total"]
		out := s["mtwatch_handler_calls_total"]
		for _, r := range []string{"filtered", "coalesced", "dropped", "purged"} {
			out += s[`mtwatch_events_discarded_total{reason="`+r+`"}`]
		}
		if in > 0 && in == out {
			if _, old := s[`mtwatch_events_total{outcome="processed"}`]; old {
				t.Errorf("the old mixed series is still there:\n%s", text)
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("dispatched + notices = %v, calls + discarded = %v:\n%s", in, out, text)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestMetricsDefaultWorkerStall: a handler stalled on the default worker
// (here with an event of dom0) shows in the stall-age metric as domid 0,
// as a domain worker's stall shows with its domid.
func TestMetricsDefaultWorkerStall(t *testing.T) {
	t.Parallel()
	rec, reg := newRecorder(func(ev dispatch.Event, _ domid.ID) bool {
		return ev.Path == "backend/vif/0/0/state"
	})
	rec.unblock = make(chan struct{})
	h := start(t, nil, "[agent]\nstall_threshold = \"20ms\"\n", nil, reg)
	h.write("backend/vif/0/0/state", "1")
	deadline := time.Now().Add(20 * time.Second)
	for {
		s, text := scrape(t, h)
		if s[`mtwatch_domain_stall_age_seconds{domid="0"}`] > 0 && s["mtwatch_stalled_handlers"] == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no stall age for the default worker:\n%s", text)
		}
		time.Sleep(10 * time.Millisecond)
	}
	close(rec.unblock)
	<-rec.stuck
}
