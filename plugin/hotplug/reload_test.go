package hotplug

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/mtwatch/mtwatch/plugin"
	"github.com/mtwatch/mtwatch/plugin/plugintest"
)

var _ plugin.Reloader = (*Plugin)(nil)

// reload applies a section made of the fixture's fixed lines and extra.
func (f *fixture) reload(extra string) error {
	f.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	return f.p.Reload(ctx, f.h.Section(Name, fmt.Sprintf("scripts_dir = %q\nmode = \"run\"\n%s\n", f.scripts, extra)))
}

// TestReload: SIGHUP's Reload changes the timeout, the types, the allowed
// directories and scripts_dir for the scripts started afterwards; a script
// running keeps going; a type taken out gets no new event and one put back
// is scanned; what the plugin knows of each device is kept; a bad section
// changes nothing.
func TestReload(t *testing.T) {
	t.Parallel()
	f := start(t, plugintest.Options{}, "types = [\"vbd\"]\ntimeout = \"10s\"")
	f.h.AddDomain(30)
	other := t.TempDir()
	for _, s := range []string{"connect", "common.sh"} {
		if err := os.Symlink(filepath.Join(f.scripts, s), filepath.Join(other, s)); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Symlink(filepath.Join(f.scripts, "connect"), filepath.Join(other, "only-here")); err != nil {
		t.Fatal(err)
	}

	// Before: vifs are not handled, other's scripts are refused.
	vif := f.device("vif", 30, 0, "connect")
	f.h.Write(vif+"/state", "2")
	refused := f.device("vbd", 30, 768, filepath.Join(other, "connect"))
	f.h.Write(refused+"/state", "2")
	f.status(refused, 20*time.Second)
	if e, _ := f.h.Read(refused + "/hotplug-error"); !strings.Contains(e, "outside") {
		t.Fatalf("hotplug-error %q", e)
	}
	slow := f.device("vbd", 30, 832, "slow")
	f.h.Write(slow+"/state", "2")
	f.record(slow, "add", 0) // runs across the reload

	bad := "types = [\"vbd\", \"vbd\"]\n"
	if err := f.reload(bad); err == nil || !strings.Contains(err.Error(), "types[1]") {
		t.Fatalf("reload of a bad section: %v", err)
	}
	if f.records(vif, "online") != 0 {
		t.Fatal("a refused reload enabled vif")
	}

	if err := f.reload(fmt.Sprintf("types = [\"vbd\", \"vif\"]\ntimeout = \"300ms\"\ngrace = \"100ms\"\nallowed_dirs = [%q]", other)); err != nil {
		t.Fatal(err)
	}
	// The slow add started under a 10s timeout finishes.
	if s := f.status(slow, 20*time.Second); s != "connected" {
		t.Errorf("script running across the reload: hotplug-status %q", s)
	}
	// vif is scanned: the device waiting at InitWait gets its script.
	if s := f.status(vif, 20*time.Second); s != "connected" {
		t.Errorf("vif after reload: hotplug-status %q", s)
	}
	allowed := f.device("vbd", 30, 896, filepath.Join(other, "connect"))
	hang := f.device("vbd", 30, 960, "hang")
	f.h.Write(allowed+"/state", "2", hang+"/state", "2")
	if s := f.status(allowed, 20*time.Second); s != "connected" {
		t.Errorf("script in a newly allowed directory: hotplug-status %q", s)
	}
	f.status(hang, 20*time.Second)
	if e, _ := f.h.Read(hang + "/hotplug-error"); !strings.Contains(e, "timed out after 300ms") {
		t.Errorf("new timeout: hotplug-error %q", e)
	}

	// vif taken out: its devices get no new event, but are remembered.
	if err := f.reload(fmt.Sprintf("types = [\"vbd\"]\nscripts_dir = %q", other)); err == nil {
		t.Fatal("scripts_dir twice accepted")
	}
	sec := f.h.Section(Name, fmt.Sprintf("scripts_dir = %q\nmode = \"run\"\ntypes = [\"vbd\"]\n", other))
	if err := f.p.Reload(t.Context(), sec); err != nil {
		t.Fatal(err)
	}
	late := f.device("vif", 30, 1, "connect")
	f.h.Write(late+"/state", "2", vif+"/online", "0", vif+"/state", "6")
	only := f.device("vbd", 30, 1024, "only-here")
	f.h.Write(only+"/state", "2")
	if s := f.status(only, 20*time.Second); s != "connected" {
		t.Errorf("script of the new scripts_dir: hotplug-status %q", s)
	}
	time.Sleep(200 * time.Millisecond)
	if f.records(late, "online") != 0 || f.records(vif, "offline") != 0 {
		t.Errorf("a disabled type got events:\n%s", f.log())
	}
	if st := f.p.Status().(Status); strings.Join(st.Types, ",") != "vbd" {
		t.Errorf("status types %v", st.Types)
	}

	// vif back: the scan catches up with what happened meanwhile.
	if err := f.reload("types = [\"vbd\", \"vif\"]"); err != nil {
		t.Fatal(err)
	}
	f.record(vif, "offline", 0)
	f.status(late, 20*time.Second)
}

// TestReloadFromNoTypes: a plugin started with no type has no watch; a
// reload that enables one registers it, and its initial event scans.
func TestReloadFromNoTypes(t *testing.T) {
	t.Parallel()
	f := start(t, plugintest.Options{}, "types = []")
	if n := len(f.h.Watches()); n != 0 {
		t.Fatalf("%d watches with no type", n)
	}
	f.h.AddDomain(31)
	dev := f.device("vbd", 31, 768, "connect", "state", "2")
	if err := f.reload(""); err != nil {
		t.Fatal(err)
	}
	if s := f.status(dev, 20*time.Second); s != "connected" {
		t.Errorf("hotplug-status %q", s)
	}
	if err := f.reload("types = []"); err != nil {
		t.Fatal(err)
	}
	if err := f.reload(""); err != nil {
		t.Fatal(err)
	}
	// The scans take no watch: one backend watch.
	if n := len(f.h.Watches()); n != 1 {
		t.Errorf("%d watches after enabling types twice, want 1", n)
	}
}

var _ plugin.StopGracer = (*Plugin)(nil)

// TestStopGrace: StopGrace is the largest grace since start, so the agent's
// shutdown reserve covers a script still running with an older one.
func TestStopGrace(t *testing.T) {
	t.Parallel()
	f := start(t, plugintest.Options{}, "grace = \"3s\"")
	if g := f.p.StopGrace(); g != 3*time.Second {
		t.Fatalf("StopGrace %v, want 3s", g)
	}
	if err := f.reload("grace = \"1s\""); err != nil {
		t.Fatal(err)
	}
	if g := f.p.StopGrace(); g != 3*time.Second {
		t.Fatalf("StopGrace %v after a reload to 1s, want 3s", g)
	}
	if err := f.reload("grace = \"6s\""); err != nil {
		t.Fatal(err)
	}
	if g := f.p.StopGrace(); g != 6*time.Second {
		t.Fatalf("StopGrace %v after a reload to 6s, want 6s", g)
	}
}
