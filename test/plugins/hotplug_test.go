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

	"github.com/mtwatch/mtwatch/internal/proctest"
	"github.com/mtwatch/mtwatch/lib/control"
	"github.com/mtwatch/mtwatch/lib/domid"
	"github.com/mtwatch/mtwatch/lib/xenstore"
	"github.com/mtwatch/mtwatch/lib/xenstore/xenstoredtest"
	"github.com/mtwatch/mtwatch/plugin/plugintest"
)

var scriptsDir = func() string { d, _ := filepath.Abs("../../plugin/hotplug/testdata/scripts"); return d }()

// hotplugAgent starts bin/mtwatchd with the hotplug plugin on, scripts from
// the plugin's testdata, and extra section lines.
func hotplugAgent(t *testing.T, in *xenstoredtest.Instance, extra string, args ...string) (*agent, string) {
	t.Helper()
	out := t.TempDir()
	cfg := fmt.Sprintf("[plugins.hotplug]\nenabled = true\nscripts_dir = %q\nmode = \"run\"\n%s\n", scriptsDir, extra)
	a := newAgent(t, in, cfg, args...)
	a.Cmd.Env = append(a.Cmd.Env, "OUT="+out)
	return a, out
}

// device creates a backend directory as libxl does (plugintest.WriteBackend).
func (a *agent) device(typ string, dom domid.ID, devid int, script string, extra ...string) string {
	a.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	base, err := plugintest.WriteBackend(ctx, a.c, typ, dom, devid, script, extra...)
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
	if proctest.Alive(pid) {
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
// vbd complete, with a worker per domain and with --single-worker alike: a
// script does not occupy its domain's worker. The hung script is a stall
// with its device path in mtwatch's stalls.
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
			a, out := hotplugAgent(t, in, "timeout = \"30s\"\ngrace = \"100ms\"\n[agent]\nstall_threshold = \"300ms\"\nshutdown_timeout = \"1s\"", args...)
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
			if aStatus, aDone := a.read(hung + "/hotplug-status"); aDone {
				t.Fatalf("B waited for A's hung script (A: %q)", aStatus)
			}
			var st []control.Stall
			a.wait(10*time.Second, "a stall", func() bool {
				var err error
				st, err = a.ctl.Stalls(t.Context())
				return err == nil && len(st) > 0
			})
			if len(st) != 1 || st[0].Worker != "plugin" || st[0].Watch != "hotplug" || st[0].Path != hung || st[0].Domid != 20 ||
				!strings.Contains(st[0].Detail, "add script") {
				t.Errorf("stalls %+v, want A's hung add", st)
			}
		})
	}
}

// redial gives the test a new connection after a xenstored restart.
func (a *agent) redial() {
	a.t.Helper()
	a.c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := xenstore.Dial(ctx, xenstore.WithPath(a.in.Socket()))
	if err != nil {
		a.t.Fatal(err)
	}
	a.c = c
	a.t.Cleanup(func() { c.Close() })
}

func recordN(a *agent, out, base, action string, n int) string {
	got := waitFile(a, filepath.Join(out, fmt.Sprintf("%s.%s.%d", strings.ReplaceAll(base, "/", "_"), action, n)))
	return strings.ReplaceAll(got, scriptsDir, "SCRIPTS")
}

// TestHotplugReload: SIGHUP through bin/mtwatchd enables a type (its device
// already waiting gets its script) and changes the timeout of the scripts
// started afterwards.
func TestHotplugReload(t *testing.T) {
	t.Parallel()
	in := xenstoredtest.Start(t)
	a, _ := hotplugAgent(t, in, "types = [\"vbd\"]\ntimeout = \"30s\"\ngrace = \"100ms\"")
	a.run()
	a.domain(7)
	vif := a.device("vif", 7, 0, "connect")
	a.write(vif+"/state", "2")
	time.Sleep(200 * time.Millisecond)
	if _, ok := a.read(vif + "/hotplug-status"); ok {
		t.Fatal("vif handled before it was enabled")
	}
	cfg := fmt.Sprintf("[plugins.hotplug]\nenabled = true\nscripts_dir = %q\nmode = \"run\"\ntypes = [\"vbd\", \"vif\"]\ntimeout = \"500ms\"\ngrace = \"100ms\"\n", scriptsDir)
	if err := os.WriteFile(a.config, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	a.Signal(syscall.SIGHUP)
	if s := a.hotplugStatus(vif); s != "connected" {
		t.Errorf("vif after SIGHUP: hotplug-status %q", s)
	}
	hang := a.device("vbd", 7, 768, "hang")
	a.write(hang+"/state", "2")
	if s := a.hotplugStatus(hang); s != "error" {
		t.Fatalf("hung script: hotplug-status %q", s)
	}
	if e, _ := a.read(hang + "/hotplug-error"); !strings.Contains(e, "timed out after 500ms") {
		t.Errorf("hotplug-error %q, want the reloaded timeout", e)
	}
	if ps := pluginStatus(t, a, "hotplug"); !strings.Contains(fmt.Sprint(ps.Status), "vif") {
		t.Errorf("status after reload: %+v", ps.Status)
	}
}

// TestHotplugReconnect: after xenstored restarts, the backend watch's new
// initial event rescans: devices gone with the old xenstored get their
// remove, and a device created again at InitWait gets its add again,
// although the plugin had run an add for the same path before.
func TestHotplugReconnect(t *testing.T) {
	t.Parallel()
	in := xenstoredtest.Start(t)
	a, out := hotplugAgent(t, in, "")
	a.run()
	a.domain(5)
	a.domain(6)
	vbd := a.device("vbd", 5, 768, "connect")
	vif := a.device("vif", 6, 0, "connect")
	a.write(vbd+"/state", "2", vif+"/state", "2")
	a.hotplugStatus(vbd)
	a.hotplugStatus(vif)

	in.Restart() // a fresh xenstored: no domains, no backends
	a.wait(30*time.Second, "reconnection", func() bool {
		st := a.status()
		return st.Xenstore.Reconnects >= 1 && st.Xenstore.State == "connected"
	})
	a.redial()
	recordN(a, out, vbd, "remove", 0)
	recordN(a, out, vif, "offline", 0)

	a.domain(5)
	a.device("vbd", 5, 768, "connect", "state", "2")
	if s := a.hotplugStatus(vbd); s != "connected" {
		t.Errorf("device created again: hotplug-status %q", s)
	}
	recordN(a, out, vbd, "add", 1)
	if n := pluginStatus(t, a, "hotplug").Watches; n != 1 {
		t.Errorf("hotplug holds %d watches, want the backend watch only (the scans take none)", n)
	}
}

func rss(t *testing.T, pid int) int {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "VmRSS:"); ok {
			kb, _ := strconv.Atoi(strings.TrimSuffix(strings.TrimSpace(v), " kB"))
			return kb
		}
	}
	t.Fatal("no VmRSS")
	return 0
}

// TestHotplugFlood: a domain whose device's backend and frontend paths are
// rewritten in a tight loop, while another of its devices has a hung
// script, queues at most one event per device (control API and /metrics),
// the agent's memory stays bounded, and another domain's devices connect
// meanwhile. The flood is a number of writes and of events the agent read,
// not a time: a loaded machine writes more slowly, and C xenstored merges
// an event with an identical one still queued for the connection
// (xenstored_core.c: send_event), so a slow reader sees fewer events than
// there were writes.
func TestHotplugFlood(t *testing.T) {
	t.Parallel()
	in := xenstoredtest.Start(t)
	// The log plugin, on by default, keeps one pending event per path that
	// changed (bounded by the domain's queue capacity): off, so that the
	// queue holds hotplug's events only.
	// A short shutdown: the hung script is not worth waiting for.
	a, _ := hotplugAgent(t, in, "timeout = \"120s\"\ngrace = \"100ms\"\n[plugins.log]\nenabled = false\n[agent]\nshutdown_timeout = \"1s\"")
	a.run()
	a.domain(40)
	a.domain(41)
	busy := a.device("vbd", 40, 768, "hang")
	a.write(busy+"/state", "2")
	// The flooded device's own script may run beside it: the hung one is
	// looked for by its device.
	hung := func() bool {
		for _, r := range pluginStatus(t, a, "hotplug").Status.(map[string]any)["running"].([]any) {
			if r.(map[string]any)["device"] == busy {
				return true
			}
		}
		return false
	}
	a.wait(20*time.Second, "hung script running", hung)
	flood := a.device("vif", 40, 0, "connect")
	fe := "/local/domain/40/device/vif/0"
	before := rss(t, a.Pid())
	domain40 := func() control.Domain {
		d, err := a.ctl.Domain(t.Context(), 40)
		if err != nil {
			t.Fatal(err)
		}
		return d
	}
	start := domain40().Dispatched

	// The flood lasts until the agent has read this many of domain 40's
	// events: what two seconds of it gave on an idle machine, and several
	// times what the domain's queue holds (queue_capacity, 1024), so that
	// a lost bound shows as drops too. Domain 41 connects at a round inside
	// it, the same whatever the machine's speed.
	const minEvents, connectAt = 5000, 1000
	// Well under the script's timeout: the flood runs while it hangs.
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	writes := 0
	var maxQueued int
	var got uint64
	for i := 0; i <= connectAt || got < minEvents; i++ {
		v := []byte(strconv.Itoa(i))
		for _, p := range []string{flood + "/state", flood + "/online", flood + "/feature-x", fe + "/state", fe + "/tx-ring-ref"} {
			if err := a.c.Write(ctx, p, v); err != nil {
				t.Fatalf("not a flood: %d writes, %d events of domain 40 read, then: %v", writes, got, err)
			}
			writes++
		}
		if i%50 == 0 {
			d := domain40()
			maxQueued = max(maxQueued, d.Queued)
			got = d.Dispatched - start
		}
		if i == connectAt {
			// Another domain's devices connect during the flood.
			vif := a.device("vif", 41, 0, "connect")
			vbd := a.device("vbd", 41, 768, "connect")
			a.write(vif+"/state", "2", vbd+"/state", "2")
			a.hotplugStatus(vif)
			a.hotplugStatus(vbd)
		}
	}
	if !hung() {
		t.Fatal("the hung script ended before the flood did")
	}
	// The events still buffered in the agent's connection reach the
	// dispatcher before a later one: a device of domain 41 connecting after
	// the flood.
	last := a.device("vif", 41, 1, "connect")
	a.write(last+"/state", "2")
	a.hotplugStatus(last)
	d := domain40()
	if maxQueued > 2 || d.Queued > 2 {
		t.Errorf("domain 40 queued up to %d events (now %d), want at most one per device: %+v", maxQueued, d.Queued, d)
	}
	if d.Dropped != 0 {
		t.Errorf("events dropped for overflow: %+v", d)
	}
	m, err := a.ctl.Metrics(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	var q int
	for _, l := range strings.Split(m, "\n") {
		if v, ok := strings.CutPrefix(l, `mtwatch_domain_queued_events{domid="40"} `); ok {
			q, _ = strconv.Atoi(v)
		}
	}
	if q > 2 {
		t.Errorf("mtwatch_domain_queued_events for 40 is %d", q)
	}
	if after := rss(t, a.Pid()); after-before > 32<<10 {
		t.Errorf("RSS grew from %d kB to %d kB during the flood", before, after)
	}
	t.Logf("%d writes; %d events of domain 40 read; max queued %d; domain 40 %+v", writes, d.Dispatched-start, maxQueued, d)
}

// TestHotplugScriptInherits: a script started by bin/mtwatchd gets stdin,
// stdout and stderr and no other descriptor: not the agent's own
// (xenstored's socket, the control socket, the pipes of another script
// running meanwhile), not one mtwatchd inherited without close-on-exec;
// and no blocked or ignored signal.
func TestHotplugScriptInherits(t *testing.T) {
	t.Parallel()
	in := xenstoredtest.Start(t)
	a, out := hotplugAgent(t, in, "[agent]\nshutdown_timeout = \"1s\"")
	stray, err := os.Open(os.DevNull)
	if err != nil {
		t.Fatal(err)
	}
	defer stray.Close()
	a.Cmd.ExtraFiles = []*os.File{stray} // fd 3 of mtwatchd, not close-on-exec
	a.run()
	a.domain(9)
	a.domain(10)
	hang := a.device("vbd", 10, 768, "hang") // another domain's script's pipes are open meanwhile
	a.write(hang+"/state", "2")
	record(a, out, hang, "add")
	dev := a.device("vbd", 9, 768, "fds")
	a.write(dev+"/state", "2")
	a.hotplugStatus(dev)
	got := waitFile(a, filepath.Join(out, "fds"))
	fds := 0
	for _, l := range strings.Split(strings.TrimSpace(got), "\n") {
		f := strings.Fields(l)
		if left, target, ok := strings.Cut(l, " -> "); ok {
			fds++
			lf := strings.Fields(left)
			fd := lf[len(lf)-1]
			// ls's own: the directory it lists.
			if n, _ := strconv.Atoi(fd); n > 2 && !(strings.HasPrefix(target, "/proc/") && strings.HasSuffix(target, "/fd")) {
				t.Errorf("script inherited fd %s -> %s\n%s", fd, target, got)
			}
			if fd == "0" && target != "/dev/null" {
				t.Errorf("stdin is %s", target)
			}
			continue
		}
		switch {
		case strings.HasPrefix(l, "total"):
		case len(f) == 2 && (f[0] == "SigBlk:" || f[0] == "SigIgn:"):
			// Signals 32 and 33 belong to the C library (thread
			// cancellation and set*id broadcast): a script never sends or
			// handles them, and their state was seen to vary between
			// runs of the same dash. Every other signal must be neither
			// blocked nor ignored.
			mask, err := strconv.ParseUint(f[1], 16, 64)
			if err != nil {
				t.Errorf("%s %q: %v", f[0], f[1], err)
			}
			if mask &^= 3 << 31; mask != 0 {
				t.Errorf("script has %s %s", f[0], f[1])
			}
		default:
			t.Errorf("unexpected line %q", l)
		}
	}
	if fds < 3 {
		t.Errorf("%d descriptors recorded:\n%s", fds, got)
	}
}

// run is one run of the slowadd script, from its own log.
type run struct {
	pid        int
	start, end int64 // ns; end 0: it never ended
}

// starter returns a start of bin/mtwatchd with cfg, its scripts writing
// under out: each call runs a new process on the same xenstored, as a
// restart after a crash does.
func starter(t *testing.T, in *xenstoredtest.Instance, cfg, out string) func() *agent {
	return func() *agent {
		a := newAgent(t, in, cfg)
		a.Cmd.Env = append(a.Cmd.Env, "OUT="+out)
		a.run()
		return a
	}
}

// killRunning kills n of the slowadd scripts still running (by their
// process groups), as a crash of the whole host's processes would, and
// returns n; fewer running fails the test.
func killRunning(t *testing.T, logFile string, n int) int {
	t.Helper()
	killed := 0
	for _, rs := range readRuns(t, logFile) {
		if r := rs[0]; r.end == 0 && killed < n && proctest.Alive(r.pid) {
			syscall.Kill(-r.pid, syscall.SIGKILL)
			killed++
		}
	}
	if killed < n {
		t.Fatalf("only %d scripts were running at the crash", killed)
	}
	return killed
}

// checkExactlyOnce checks, from the slowadd scripts' log, the runs of
// devices whose agent was killed at crashed (Unix ns) while killed of their
// scripts died with it: no two runs of a device overlap, every device has
// exactly one run that ended, the killed adds ran again, and at least one
// script left running by the crash was waited for.
func checkExactlyOnce(t *testing.T, logFile string, devs []string, crashed int64, killed int) {
	t.Helper()
	runs := readRuns(t, logFile)
	var again, once, waited int
	for _, dev := range devs {
		rs := runs[dev]
		ended := 0
		for i, r := range rs {
			if r.end != 0 {
				ended++
			}
			if i > 0 {
				prevEnd := rs[i-1].end
				if prevEnd == 0 {
					prevEnd = crashed // killed after the crash, before the restart
				}
				if r.start < prevEnd {
					t.Errorf("%s: run %d (pid %d) started while run %d (pid %d) still ran", dev, i, r.pid, i-1, rs[i-1].pid)
				}
			}
		}
		if ended != 1 {
			t.Errorf("%s: %d runs ended, want exactly 1: %+v", dev, ended, rs)
		}
		switch {
		case len(rs) == 2:
			again++
		case len(rs) == 1 && rs[0].start < crashed && rs[0].end > crashed:
			waited++
		case len(rs) == 1:
			once++
		default:
			t.Errorf("%s: %d runs", dev, len(rs))
		}
	}
	if again != killed {
		t.Errorf("%d adds ran again, want the %d interrupted ones", again, killed)
	}
	if waited == 0 {
		t.Error("no script left running by the crash was waited for")
	}
	t.Logf("%d devices: %d ran again after the crash, %d waited for, %d ran once", len(devs), again, waited, once)
}

// readRuns parses the slowadd scripts' log: the runs of each device.
func readRuns(t *testing.T, file string) map[string][]*run {
	t.Helper()
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string][]*run{}
	for _, l := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		f := strings.Fields(l)
		if len(f) != 4 {
			t.Fatalf("bad line %q", l)
		}
		pid, _ := strconv.Atoi(f[2])
		ns, _ := strconv.ParseInt(f[3], 10, 64)
		switch f[0] {
		case "start":
			out[f[1]] = append(out[f[1]], &run{pid: pid, start: ns})
		case "end":
			found := false
			for _, r := range out[f[1]] {
				if r.pid == pid && r.end == 0 {
					r.end, found = ns, true
				}
			}
			if !found {
				t.Fatalf("end without start: %q", l)
			}
		}
	}
	return out
}

// TestHotplugCrashExactlyOnce: mtwatchd is killed with SIGKILL in the
// middle of 100 slow adds (2 s each, 40 at a time): some have ended, some
// run on as orphans, some never started. Ten of the orphans are then killed
// too, as the crash might have taken them. The restarted mtwatchd, from its
// journal, waits for the orphans still running, runs the ten interrupted
// adds once more and the ones never started once, and runs no completed
// add again. The scripts' own log proves it: no two runs of a device
// overlap, every device has exactly one run that ended, and every device
// ends with hotplug-status=connected.
func TestHotplugCrashExactlyOnce(t *testing.T) {
	t.Parallel()
	in := xenstoredtest.Start(t)
	out := t.TempDir()
	cfg := fmt.Sprintf("[plugins.hotplug]\nenabled = true\nscripts_dir = %q\nmode = \"run\"\nmax_scripts = 40\ntimeout = \"60s\"\n"+
		"[plugins.log]\nenabled = false\n[agent]\nshutdown_timeout = \"2s\"\n", scriptsDir)
	start := starter(t, in, cfg, out)
	a := start()
	var devs []string
	for d := 1; d <= 25; d++ {
		a.domain(domid.ID(d))
		for i := range 4 {
			devs = append(devs, a.device("vbd", domid.ID(d), 768+16*i, "slowadd"))
		}
	}
	for _, dev := range devs {
		a.write(dev+"/state", "2")
	}
	logFile := filepath.Join(out, "runs")
	count := func(word string) int {
		b, _ := os.ReadFile(logFile)
		return strings.Count(string(b), word+" ")
	}
	a.wait(60*time.Second, "40 adds done and the next 40 running", func() bool { return count("end") >= 40 && count("start") >= 80 })
	a.Cmd.Process.Kill()
	<-a.Exited()
	crashed := time.Now().UnixNano()

	// Ten of the scripts still running die with it.
	killed := killRunning(t, logFile, 10)
	b := start()
	for _, dev := range devs {
		if s := b.hotplugStatus(dev); s != "connected" {
			t.Errorf("%s: hotplug-status %q", dev, s)
		}
	}
	b.wait(30*time.Second, "every script ended", func() bool {
		return len(pluginStatus(t, b, "hotplug").Status.(map[string]any)["running"].([]any)) == 0
	})
	checkExactlyOnce(t, logFile, devs, crashed, killed)
}

// TestHotplugAdoptedEscapeKilled: a script left running by a mtwatchd
// killed with SIGKILL is adopted by the next one and, at its timeout,
// ended with its whole cgroup: the grandchild it started, which left its
// process group and session (setsid after a double fork), dies with it,
// where a kill of the process group would leave it running.
func TestHotplugAdoptedEscapeKilled(t *testing.T) {
	t.Parallel()
	in := xenstoredtest.Start(t)
	out := t.TempDir()
	cfg := fmt.Sprintf("[plugins.hotplug]\nenabled = true\nscripts_dir = %q\nmode = \"run\"\ntimeout = \"4s\"\ngrace = \"200ms\"\n"+
		"[agent]\nshutdown_timeout = \"2s\"\n", scriptsDir)
	start := starter(t, in, cfg, out)
	a := start()
	a.domain(5)
	dev := a.device("vbd", 5, 768, "escape")
	a.write(dev+"/state", "2")
	escaped, _ := strconv.Atoi(strings.TrimSpace(waitFile(a, filepath.Join(out, "backend_vbd_5_768.escaped"))))
	t.Cleanup(func() { syscall.Kill(escaped, syscall.SIGKILL) })
	journal := "/local/domain/0/data/mtwatch-hotplug/vbd/5/768"
	a.wait(10*time.Second, "the script's pid in the journal", func() bool {
		v, _ := a.read(journal)
		return strings.Contains(v, `"pid":`)
	})
	cg := cgroupDir(t, escaped)
	if !strings.HasPrefix(filepath.Base(cg), "mtwatch-") {
		t.Fatalf("the script runs in cgroup %s, not in one of its own", cg)
	}
	a.Cmd.Process.Kill()
	<-a.Exited()
	if !proctest.Alive(escaped) {
		t.Fatalf("the escaped grandchild %d died with mtwatchd", escaped)
	}

	b := start()
	// While it is waited for, the status shows it adopted, with the
	// cgroup that will end it.
	b.wait(10*time.Second, "the adopted script in the status", func() bool {
		for _, r := range pluginStatus(t, b, "hotplug").Status.(map[string]any)["running"].([]any) {
			m := r.(map[string]any)
			conf, _ := m["confinement"].(string)
			dv, _ := m["device"].(string)
			if dv != "" && strings.HasSuffix(dev, dv) && m["adopted"] == true && m["pid"] != nil &&
				strings.HasPrefix(conf, "cgroup ") && strings.HasSuffix(conf, "/"+filepath.Base(cg)) {
				return true
			}
		}
		return false
	})
	if s := b.hotplugStatus(dev); s != "error" {
		t.Errorf("hotplug-status %q, want error", s)
	}
	if e, _ := b.read(dev + "/hotplug-error"); !strings.Contains(e, "left running by an earlier mtwatchd) timed out after 4s") {
		t.Errorf("hotplug-error %q", e)
	}
	b.wait(10*time.Second, "the escaped grandchild's end", func() bool { return !proctest.Alive(escaped) })
	b.wait(10*time.Second, "the removal of the script's cgroup", func() bool {
		_, err := os.Stat(cg)
		return os.IsNotExist(err)
	})
}

// cgroupDir returns the directory of process pid's cgroup v2: its path in
// /proc/<pid>/cgroup below the cgroup2 mount that holds it.
func cgroupDir(t *testing.T, pid int) string {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
	if err != nil {
		t.Fatal(err)
	}
	var p string
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "0::"); ok {
			p = v
		}
	}
	mi, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(mi), "\n") {
		pre, post, _ := strings.Cut(l, " - ")
		f := strings.Fields(pre)
		if !strings.HasPrefix(post, "cgroup2 ") || len(f) < 5 {
			continue
		}
		if rel, ok := strings.CutPrefix(p, f[3]); ok {
			return filepath.Join(f[4], rel)
		}
	}
	t.Fatalf("process %d: no cgroup2 mount holds %q", pid, p)
	return ""
}

// TestHotplugLateInitWait: a backend that reaches InitWait 11 s after its
// directory appeared still gets its add (xl devd gives up on a device that
// takes more than 10 s to get there, and then ignores it).
func TestHotplugLateInitWait(t *testing.T) {
	t.Parallel()
	in := xenstoredtest.Start(t)
	a, _ := hotplugAgent(t, in, "")
	a.run()
	a.domain(8)
	dev := a.device("vbd", 8, 768, "connect")
	time.Sleep(11 * time.Second)
	a.write(dev+"/state", "2")
	if s := a.hotplugStatus(dev); s != "connected" {
		t.Errorf("hotplug-status %q", s)
	}
}
