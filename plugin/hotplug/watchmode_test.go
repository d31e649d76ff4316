package hotplug

import (
	"strings"
	"testing"
	"time"

	"github.com/mtwatch/mtwatch/plugin/plugintest"
)

// TestWatchMode: in dom0, mode auto watches: no script runs; a backend at
// InitWait without hotplug-status, or Closing, longer than stuck_after is a
// stall with its domain, path, backend and frontend state; it stops being
// one once the device moves on.
func TestWatchMode(t *testing.T) {
	t.Parallel()
	h := plugintest.New(t, plugintest.Options{})
	f := &fixture{t: t, h: h, out: t.TempDir(), scripts: scriptsDir(t)}
	pl := h.Start(Name, "scripts_dir = \""+f.scripts+"\"\nstuck_after = \"300ms\"\n")
	f.p = pl.(*Plugin)
	f.p.env = append(f.p.env, h.XS.Env()...)
	if st := f.p.Status().(Status); st.Mode != ModeWatch {
		t.Fatalf("mode %q in dom0, want watch", st.Mode)
	}
	h.AddDomain(30)
	fe := "/local/domain/30/device/vbd/768"
	setup := f.device("vbd", 30, 768, "connect", "frontend", fe)
	h.Write(fe+"/state", "1")
	teardown := f.device("vif", 30, 0, "connect", "state", "4", "hotplug-status", "connected")
	fine := f.device("vbd", 30, 832, "connect", "state", "2", "hotplug-status", "connected")
	h.Write(setup+"/state", "2", teardown+"/state", "5")
	var stalls map[string]string
	h.Wait(10*time.Second, "two stuck devices", func() bool {
		stalls = map[string]string{}
		for _, s := range f.p.Stalls(time.Hour) {
			if s.Domid != 30 {
				t.Errorf("stall of domain %d", s.Domid)
			}
			stalls[s.Path] = s.Detail
		}
		return len(stalls) == 2
	})
	if d := stalls[setup]; !strings.Contains(d, "stuck in set-up: backend state 2 (at InitWait without hotplug-status), frontend state 1") {
		t.Errorf("set-up stall %q", d)
	}
	if d := stalls[teardown]; !strings.Contains(d, "stuck in teardown: backend state 5 (Closing), frontend state none") {
		t.Errorf("teardown stall %q", d)
	}
	if _, ok := stalls[fine]; ok {
		t.Error("a connected device is a stall")
	}
	if st := f.p.Status().(Status); st.Stuck != 2 || st.Runs != 0 {
		t.Errorf("status %+v", st)
	}
	h.Write(setup+"/hotplug-status", "connected", teardown+"/state", "6")
	h.Wait(10*time.Second, "no stall", func() bool { return len(f.p.Stalls(time.Hour)) == 0 })
	time.Sleep(100 * time.Millisecond)
	if n := f.records(setup, "add"); n != 0 {
		t.Errorf("a script ran in watch mode")
	}
}
