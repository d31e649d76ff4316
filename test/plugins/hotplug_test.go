package plugins_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/mtwatch/mtwatch/lib/domid"
	"github.com/mtwatch/mtwatch/lib/xenstore"
	"github.com/mtwatch/mtwatch/lib/xenstore/xenstoredtest"
)

var scriptsDir = func() string { d, _ := filepath.Abs("../../plugin/hotplug/testdata/scripts"); return d }()

// hotplugAgent starts bin/mtwatchd with the hotplug plugin on, scripts from
// the plugin's testdata, and extra section lines.
func hotplugAgent(t *testing.T, in *xenstoredtest.Instance, extra string, args ...string) (*agent, string) {
	t.Helper()
	out := t.TempDir()
	cfg := fmt.Sprintf("[plugins.hotplug]\nenabled = true\nscripts_dir = %q\nxl_conf = \"\"\n%s\n", scriptsDir, extra)
	a := newAgent(t, in, cfg, args...)
	a.cmd.Env = append(a.cmd.Env, "OUT="+out)
	return a, out
}

// device creates a backend directory in one transaction, as libxl does.
func (a *agent) device(typ string, dom domid.ID, devid int, script string, extra ...string) string {
	a.t.Helper()
	base := fmt.Sprintf("backend/%s/%d/%d", typ, dom, devid)
	kv := []string{"frontend-id", dom.String(), "online", "1", "state", "1", "script", script}
	if typ == "vif" {
		kv = append(kv, "type", "vif") // libxl writes it for every nic
	}
	kv = append(kv, extra...)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err := a.c.Transaction(ctx, func(tx *xenstore.Tx) error {
		for i := 0; i+1 < len(kv); i += 2 {
			if err := tx.Write(ctx, base+"/"+kv[i], []byte(kv[i+1])); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		a.t.Fatal(err)
	}
	return base
}

func (a *agent) hotplugStatus(base string) string {
	a.t.Helper()
	var v string
	a.wait(30*time.Second, base+"/hotplug-status", func() bool {
		var ok bool
		v, ok = a.read(base + "/hotplug-status")
		return ok
	})
	return v
}

func record(a *agent, out, base, action string) string {
	got := waitFile(a, filepath.Join(out, strings.ReplaceAll(base, "/", "_")+"."+action+".0"))
	return strings.ReplaceAll(got, scriptsDir, "SCRIPTS")
}

// TestHotplug: through bin/mtwatchd, scripts get libxl's argv and
// environment (the in-process golden files), devices already waiting at
// start get their script, a hung script is killed with its process group at
// the timeout and reported in XenStore.
func TestHotplug(t *testing.T) {
	t.Parallel()
	in := xenstoredtest.Start(t)
	a, out := hotplugAgent(t, in, "timeout = \"1s\"\ngrace = \"200ms\"")
	// Before the agent starts: a device waiting for its script.
	in.CreateDomain(4)
	in.Run("xenstore-write", "backend/vbd/4/768/frontend-id", "4", "backend/vbd/4/768/online", "1",
		"backend/vbd/4/768/state", "2", "backend/vbd/4/768/script", "connect")
	a.run()
	if s := a.hotplugStatus("backend/vbd/4/768"); s != "connected" {
		t.Errorf("start-up scan: hotplug-status %q", s)
	}

	a.domain(5)
	vif := a.device("vif", 5, 0, scriptsDir+"/connect", "gatewaydev", "eth0", "mac", "00:16:3e:00:00:01")
	vbd := a.device("vbd", 5, 51712, "connect", "params", "/dev/vg/guest")
	a.write(vif+"/state", "2", vbd+"/state", "2")
	a.hotplugStatus(vif)
	a.hotplugStatus(vbd)
	golden(t, filepath.Join(root, "plugin/hotplug/testdata/golden/vif-online.txt"), record(a, out, vif, "online"))
	golden(t, filepath.Join(root, "plugin/hotplug/testdata/golden/vbd-add.txt"), record(a, out, vbd, "add"))
	a.write(vif+"/online", "0", vif+"/state", "6", vbd+"/online", "0", vbd+"/state", "6")
	golden(t, filepath.Join(root, "plugin/hotplug/testdata/golden/vif-offline.txt"), record(a, out, vif, "offline"))
	golden(t, filepath.Join(root, "plugin/hotplug/testdata/golden/vbd-remove.txt"), record(a, out, vbd, "remove"))

	a.domain(6)
	hang := a.device("vbd", 6, 768, "hang")
	a.write(hang+"/state", "2")
	if s := a.hotplugStatus(hang); s != "error" {
		t.Errorf("hung script: hotplug-status %q", s)
	}
	if e, _ := a.read(hang + "/hotplug-error"); !strings.Contains(e, "timed out after 1s") {
		t.Errorf("hotplug-error %q", e)
	}
	b, err := os.ReadFile(filepath.Join(out, "backend_vbd_6_768.grandchild"))
	if err != nil {
		t.Fatal(err)
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	if alive(pid) {
		syscall.Kill(pid, syscall.SIGKILL)
		t.Fatalf("grandchild %d of the hung script survived", pid)
	}
	m, err := a.ctl.Metrics(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		`mtwatch_hotplug_scripts_total{action="online",result="ok",type="vif"} 1`,
		`mtwatch_hotplug_scripts_total{action="add",result="timeout",type="vbd"} 1`,
	} {
		if !strings.Contains(m, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
	if ps := pluginStatus(t, a, "hotplug"); ps.Watches != 1 {
		t.Errorf("hotplug has %d watches after its start-up scan, want 1", ps.Watches)
	}
}

// TestHotplugHungDomain: a script hung for domain A while domain B's vif and
// vbd complete with a worker per domain, and wait for A's timeout with
// --single-worker, as under xl devd. The same test in both modes.
func TestHotplugHungDomain(t *testing.T) {
	t.Parallel()
	for _, single := range []bool{false, true} {
		t.Run(map[bool]string{false: "multi-worker", true: "single-worker"}[single], func(t *testing.T) {
			t.Parallel()
			in := xenstoredtest.Start(t)
			var args []string
			if single {
				args = append(args, "--single-worker")
			}
			a, out := hotplugAgent(t, in, "timeout = \"5s\"\ngrace = \"100ms\"", args...)
			a.run()
			a.domain(20)
			a.domain(21)
			hung := a.device("vbd", 20, 768, "hang")
			a.write(hung+"/state", "2")
			record(a, out, hung, "add") // A's script hangs from now on
			vif := a.device("vif", 21, 0, "connect")
			vbd := a.device("vbd", 21, 768, "connect")
			a.write(vif+"/state", "2", vbd+"/state", "2")
			a.hotplugStatus(vif)
			a.hotplugStatus(vbd)
			aStatus, aDone := a.read(hung + "/hotplug-status")
			if single && (!aDone || aStatus != "error") {
				t.Fatalf("single worker: B connected before A's hung script ended (A: %q)", aStatus)
			}
			if !single && aDone {
				t.Fatalf("multi-worker: B waited for A's hung script (A: %q)", aStatus)
			}
		})
	}
}
