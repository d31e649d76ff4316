package agent_test

import (
	"context"
	"encoding/json"
	"errors"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/mtwatch/mtwatch/lib/agent"
	"github.com/mtwatch/mtwatch/lib/config"
	"github.com/mtwatch/mtwatch/lib/control"
	"github.com/mtwatch/mtwatch/lib/dispatch"
	"github.com/mtwatch/mtwatch/lib/domid"
	"github.com/mtwatch/mtwatch/lib/node"
	"github.com/mtwatch/mtwatch/plugin"
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
	if strings.Contains(h.logs.String(), "handler stalled") {
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
	h.waitLog("handler stalled")
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

// knob is a test plugin with one key; New refuses value "bad", as a real
// plugin refuses a section it cannot run, and Reload records what it
// applied.
type knob struct {
	value   string
	parse   func(plugin.Section) (string, error)
	applied chan string
}

type knobSection struct {
	Value string `toml:"value"`
}

func knobRegistration(name string, k *knob) plugin.Registration {
	parse := func(sec plugin.Section) (string, error) {
		v := knobSection{Value: "default"}
		if err := sec.Decode(&v); err != nil {
			return "", err
		}
		if v.Value == "bad" {
			return "", sec.Errorf("value", "value %q refused", v.Value)
		}
		return v.Value, nil
	}
	return plugin.Registration{
		Name: name, EnabledByDefault: true,
		New: func(ic *plugin.InitContext) (plugin.Plugin, error) {
			v, err := parse(ic.Config)
			if err != nil {
				return nil, err
			}
			k.value = v
			k.parse = parse
			return k, nil
		},
	}
}

func (k *knob) Start(context.Context, plugin.Runtime) error { return nil }
func (k *knob) Stop(context.Context) error                  { return nil }
func (k *knob) Reload(_ context.Context, sec plugin.Section) error {
	v, err := k.parse(sec)
	if err != nil {
		return err
	}
	k.applied <- v
	return nil
}

// TestReloadAllOrNothing: a reload whose section of one plugin is invalid
// changes nothing, neither the agent's keys nor the other plugins'
// sections, and does not say "configuration reloaded".
func TestReloadAllOrNothing(t *testing.T) {
	t.Parallel()
	first, second := &knob{applied: make(chan string, 4)}, &knob{applied: make(chan string, 4)}
	h := start(t, nil, "[agent]\nstall_threshold = \"1h\"\n[plugins.first]\nvalue = \"one\"\n[plugins.second]\nvalue = \"two\"\n", nil,
		knobRegistration("first", first), knobRegistration("second", second))
	cfg, err := config.Parse("test.toml", []byte("[agent]\nstall_threshold = \"20ms\"\n[plugins.first]\nvalue = \"new\"\n[plugins.second]\nvalue = \"bad\"\n"))
	if err != nil {
		t.Fatal(err)
	}
	cfg.Agent.Xenstore = h.in.Socket()
	err = h.a.Reload(context.Background(), cfg)
	if !errors.Is(err, agent.ErrConfig) || !strings.Contains(err.Error(), "test.toml:6: plugins.second.value") {
		t.Fatalf("reload with an invalid section = %v, want ErrConfig naming test.toml:6: plugins.second.value", err)
	}
	select {
	case v := <-first.applied:
		t.Fatalf("the valid section of another plugin was applied (%q)", v)
	default:
	}
	if got := h.a.Dispatcher().StallThreshold(); got != time.Hour {
		t.Fatalf("stall threshold %v after a refused reload, want 1h", got)
	}
	if got := h.a.Config().Agent.StallThreshold.Duration; got != time.Hour {
		t.Fatalf("Config() stall threshold %v after a refused reload", got)
	}
	if strings.Contains(h.logs.String(), "configuration reloaded") {
		t.Fatal(`a refused reload logged "configuration reloaded"`)
	}
	// Corrected, the same reload applies everything.
	cfg, err = config.Parse("test.toml", []byte("[agent]\nstall_threshold = \"20ms\"\n[plugins.first]\nvalue = \"new\"\n[plugins.second]\nvalue = \"fine\"\n"))
	if err != nil {
		t.Fatal(err)
	}
	cfg.Agent.Xenstore = h.in.Socket()
	if err := h.a.Reload(context.Background(), cfg); err != nil {
		t.Fatal(err)
	}
	if v := <-first.applied; v != "new" {
		t.Fatalf("first applied %q", v)
	}
	if v := <-second.applied; v != "fine" {
		t.Fatalf("second applied %q", v)
	}
	h.waitLog("configuration reloaded")
}
