package agent_test

import (
	"context"
	"encoding/json"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/mtwatch/mtwatch/lib/control"
	"github.com/mtwatch/mtwatch/lib/node"
	"github.com/mtwatch/mtwatch/plugin"
)

// staller is a test plugin whose work stalls off the workers: it reports
// the stalls the test sets, those past the threshold the agent asks with.
type staller struct {
	mu        sync.Mutex
	stalls    []plugin.Stall
	threshold time.Duration // the last one asked with
}

func (s *staller) Start(context.Context, plugin.Runtime) error { return nil }
func (s *staller) Stop(context.Context) error                  { return nil }

func (s *staller) Stalls(threshold time.Duration) []plugin.Stall {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.threshold = threshold
	var out []plugin.Stall
	for _, st := range s.stalls {
		if time.Since(st.Started) >= threshold {
			out = append(out, st)
		}
	}
	return out
}

func (s *staller) set(stalls ...plugin.Stall) {
	s.mu.Lock()
	s.stalls = stalls
	s.mu.Unlock()
}

// TestPluginStallsPerDomain: a plugin's stalled work (a hung hotplug
// script) is its domain's, in the domain's entry of /v1/domains and
// /v1/domains/{domid}, whose worker is idle, and in its own metric series:
// never the default worker's. A stall of a domain the agent knows nothing
// else of (its remove script hangs after it went) still has an entry.
func TestPluginStallsPerDomain(t *testing.T) {
	t.Parallel()
	sp := &staller{}
	reg := plugin.Registration{Name: "hp", EnabledByDefault: true,
		New: func(*plugin.InitContext) (plugin.Plugin, error) { return sp, nil }}
	h := start(t, nil, "[agent]\nauto_detect = false\nstall_threshold = \"1s\"\n", nil, reg)
	h.in.CreateDomain(5)
	if err := node.Create(h.ctx, h.c, 5, ""); err != nil {
		t.Fatal(err)
	}
	h.waitWorker(5, control.WorkerLive)
	now := time.Now()
	sp.set(
		plugin.Stall{Domid: 5, Path: "backend/vbd/5/768", Started: now.Add(-90 * time.Second), Detail: "add script"},
		plugin.Stall{Domid: 5, Path: "backend/vif/5/0", Started: now.Add(-3 * time.Second), Detail: "online script"},
		plugin.Stall{Domid: 5, Path: "backend/vif/5/1", Started: now, Detail: "not past the threshold yet"},
		plugin.Stall{Domid: 9, Path: "backend/vbd/9/768", Started: now.Add(-10 * time.Second), Detail: "remove script"},
	)

	want := map[uint16]struct {
		n     int
		minMS int64
		maxMS int64
	}{0: {}, 5: {2, 90000, 100000}, 9: {1, 10000, 20000}}
	doms := h.a.Domains()
	stalls := h.a.Stalls()
	if sp.threshold != time.Second {
		t.Errorf("plugin asked with threshold %v, want the agent's 1s", sp.threshold)
	}
	seen := map[uint16]bool{}
	for _, d := range doms {
		w, ok := want[d.Domid]
		if !ok {
			t.Errorf("unexpected domain %+v", d)
			continue
		}
		seen[d.Domid] = true
		if d.PluginStalls != w.n || d.PluginStallAgeMS < w.minMS || d.PluginStallAgeMS > w.maxMS {
			t.Errorf("domain %d: %d plugin stalls, oldest %d ms; want %d, %d..%d ms", d.Domid, d.PluginStalls, d.PluginStallAgeMS, w.n, w.minMS, w.maxMS)
		}
		if d.Current != nil && d.Current.Stalled {
			t.Errorf("domain %d: a handler stalled: %+v", d.Domid, d.Current)
		}
		if got := d.StallAgeMS(); (w.n == 0) != (got == -1) || (w.n > 0 && got != d.PluginStallAgeMS) {
			t.Errorf("domain %d: StallAgeMS %d", d.Domid, got)
		}
	}
	if len(seen) != len(want) {
		t.Errorf("domains %+v, want %v", doms, want)
	}
	// The same stalls in /v1/stalls: each one's domain has an entry
	// counting it.
	perDom := map[uint16]int{}
	for _, s := range stalls {
		if s.Worker != "plugin" || s.Watch != "hp" {
			t.Errorf("stall %+v", s)
		}
		perDom[s.Domid]++
	}
	if perDom[5] != 2 || perDom[9] != 1 || len(perDom) != 2 || h.a.Status().Stalled != 3 {
		t.Errorf("stalls %+v", stalls)
	}

	for _, tt := range []struct {
		url    string
		code   int
		stalls int
		worker string
	}{
		{"/v1/domains/5", 200, 2, control.WorkerLive},
		{"/v1/domains/9", 200, 1, control.WorkerNone},
		{"/v1/domains/0", 200, 0, control.WorkerDefault},
		{"/v1/domains/11", 404, 0, ""},
	} {
		rw := httptest.NewRecorder()
		control.NewHandler(h.a, nil).ServeHTTP(rw, httptest.NewRequest("GET", tt.url, nil))
		if rw.Code != tt.code {
			t.Errorf("GET %s: %d, want %d", tt.url, rw.Code, tt.code)
			continue
		}
		if tt.code != 200 {
			continue
		}
		var d control.Domain
		if err := json.NewDecoder(rw.Body).Decode(&d); err != nil || d.PluginStalls != tt.stalls || d.Worker != tt.worker {
			t.Errorf("GET %s: %+v, %v", tt.url, d, err)
		}
	}

	s, text := scrape(t, h)
	for series, min := range map[string]float64{
		`mtwatch_domain_plugin_stall_age_seconds{domid="5",plugin="hp"}`: 90,
		`mtwatch_domain_plugin_stall_age_seconds{domid="9",plugin="hp"}`: 10,
		`mtwatch_stalled_handlers`:                                       3,
	} {
		if v, ok := s[series]; !ok || v < min {
			t.Errorf("%s = %v (present %v), want >= %v", series, v, ok, min)
		}
	}
	for _, series := range []string{
		`mtwatch_domain_stall_age_seconds{domid="0"}`, // not the default worker's
		`mtwatch_domain_stall_age_seconds{domid="5"}`, // nor 5's worker's, which is idle
	} {
		if _, ok := s[series]; ok {
			t.Errorf("%s present: a plugin's stall counted as a worker's", series)
		}
	}
	if t.Failed() {
		t.Log(text)
	}

	// Over: the entries and series go with the stalls.
	sp.set()
	if d, ok := h.a.Domain(9); ok {
		t.Errorf("domain 9 still listed without its stall: %+v", d)
	}
	if d, _ := h.a.Domain(5); d.PluginStalls != 0 || d.PluginStallAgeMS != 0 || d.StallAgeMS() != -1 {
		t.Errorf("domain 5 after its stalls ended: %+v", d)
	}
	if s, _ := scrape(t, h); s[`mtwatch_domain_plugin_stall_age_seconds{domid="5",plugin="hp"}`] != 0 {
		t.Error("plugin stall series outlived the stall")
	}
}
