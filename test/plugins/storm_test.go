package plugins_test

import (
	"context"
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/mtwatch/mtwatch/lib/sim"
	"github.com/mtwatch/mtwatch/lib/xenstore"
	"github.com/mtwatch/mtwatch/lib/xenstore/xenstoredtest"
)

// stormHang is the dom0 path whose exec rule occupies the default worker.
const stormHang = "/local/domain/0/storm/hang"

var stormDomains = 100

// demoScripts are the sandbox's block and vif-bridge: they report success
// and, on removal, clean up hotplug-status as xen-hotplug-cleanup does.
var demoScripts = func() string { d, _ := filepath.Abs("../../test/demo/scripts"); return d }()

// stormResult is what one storm measured.
type stormResult struct {
	report         *sim.Report
	guestOnDefault uint64
	staged         uint64
	wall           time.Duration
}

// storm runs bin/mtwatchd with the hotplug plugin (no hook, no wrapper:
// workers come from /libxl/<domid>) and an exec rule whose command hangs
// dom0's default worker, with a CPU hog beside it, and boots then
// destroys 100 domains from 4 concurrent libxl-order toolstacks (lib/sim).
// The handler would run for 10 minutes (at least the 60 s asked for, and
// longer than a run on a loaded host); storm returns once every domain's
// devices were set up and torn down, and the agent's shutdown ends it.
func storm(t testing.TB) stormResult {
	in := xenstoredtest.Start(t)
	out := t.TempDir()
	cfg := fmt.Sprintf(`[plugins.hotplug]
enabled = true
scripts_dir = %q
mode = "run"
timeout = "40s"

[plugins.exec]
enabled = true
grace = "100ms"

[[plugins.exec.rule]]
name = "hang"
path = %q
command = ["/bin/sleep", "600"]
timeout = "11m"
`, demoScripts, stormHang)
	a := newAgent(t, in, cfg)
	a.Cmd.Env = append(a.Cmd.Env, "OUT="+out)
	a.run()

	// One CPU hog per CPU of this 2-vCPU host would starve the other
	// tests run in parallel; one is the load the agent must route under.
	hog := exec.Command("/bin/sh", "-c", "while :; do :; done")
	if err := hog.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { hog.Process.Signal(syscall.SIGKILL); hog.Wait() })

	a.write(stormHang, "1")
	a.wait(10*time.Second, "the default worker hung", func() bool {
		c := a.status().DefaultWorker.Current
		return c != nil && c.Path == stormHang
	})

	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	rep, err := sim.Run(ctx, sim.Config{
		Domains:     stormDomains,
		Concurrency: 4,
		Dial: func(ctx context.Context) (*xenstore.Client, error) {
			return xenstore.Dial(ctx, xenstore.WithPath(in.Socket()))
		},
		Hypervisor:    sim.Xenemu{Server: in.Server()},
		ScriptsDir:    demoScripts,
		DeviceTimeout: 45 * time.Second,
		RemoveTimeout: 45 * time.Second,
		Label:         "storm",
	})
	wall := time.Since(start)
	if err != nil {
		t.Fatalf("sim: %v", err)
	}
	st := a.status()
	// The default worker was hung the whole time: its handler still runs.
	if c := st.DefaultWorker.Current; c == nil || c.Path != stormHang {
		t.Fatalf("the default worker was not hung throughout: %+v", st.DefaultWorker)
	}
	return stormResult{report: rep, guestOnDefault: st.Totals.GuestOnDefault, staged: st.Totals.Staged, wall: wall}
}

// TestStormHungDefaultWorker: with dom0's default worker hung, every one of
// 100 domains booted by 4 concurrent toolstacks gets its devices set up
// and torn down (the hotplug plugin runs each script on the domain's
// worker), and none of their events runs on the default worker.
func TestStormHungDefaultWorker(t *testing.T) {
	t.Parallel()
	r := storm(t)
	var bad []string
	devices := 0
	for _, d := range r.report.Results {
		for _, v := range d.Devices {
			devices++
			if v.Status != sim.StatusConnected {
				bad = append(bad, fmt.Sprintf("domain %d %s %d: %s %s", d.Domid, v.Type, v.Devid, v.Status, v.Error))
			}
		}
		for _, e := range d.Errors {
			bad = append(bad, fmt.Sprintf("domain %d: %s", d.Domid, e))
		}
	}
	if len(bad) > 0 || devices != 200 || r.report.Summary.Failed != 0 {
		t.Fatalf("%d devices, %d failed domains:\n%s", devices, r.report.Summary.Failed, strings.Join(bad, "\n"))
	}
	if r.guestOnDefault != 0 {
		t.Fatalf("%d guest events ran on the default worker", r.guestOnDefault)
	}
	t.Logf("100 domains in %v; device setup p50 %d µs p99 %d µs; %d events staged",
		r.wall, r.report.Summary.HealthySetup.P50US, r.report.Summary.HealthySetup.P99US, r.staged)
}

// BenchmarkStorm repeats the storm: guest-on-default/op must stay 0 (the
// goal is 0 over 10 runs: go test -bench Storm -benchtime 10x).
func BenchmarkStorm(b *testing.B) {
	var onDefault, staged uint64
	var setupP99 int64
	for range b.N {
		r := storm(b)
		onDefault += r.guestOnDefault
		staged += r.staged
		setupP99 = max(setupP99, r.report.Summary.HealthySetup.P99US)
		if r.report.Summary.Failed != 0 {
			b.Fatalf("%d domains failed", r.report.Summary.Failed)
		}
	}
	b.ReportMetric(float64(onDefault)/float64(b.N), "guest-on-default/op")
	b.ReportMetric(float64(staged)/float64(b.N), "staged/op")
	b.ReportMetric(float64(setupP99)/1000, "worst-setup-p99-ms")
}
