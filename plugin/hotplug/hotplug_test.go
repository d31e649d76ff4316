package hotplug

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/mtwatch/mtwatch/internal/goldenfile"
	"github.com/mtwatch/mtwatch/internal/proctest"
	"github.com/mtwatch/mtwatch/lib/domid"
	"github.com/mtwatch/mtwatch/plugin/plugintest"
)

type fixture struct {
	t       testing.TB
	h       *plugintest.Host
	p       *Plugin
	out     string
	scripts string
}

func scriptsDir(t testing.TB) string {
	d, err := filepath.Abs("testdata/scripts")
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// build builds the plugin on a new host with scripts from testdata and the
// section's extra lines; start starts it.
func build(t testing.TB, opts plugintest.Options, extra string) *fixture {
	t.Helper()
	h := plugintest.New(t, opts)
	f := &fixture{t: t, h: h, out: t.TempDir(), scripts: scriptsDir(t)}
	text := fmt.Sprintf("scripts_dir = %q\nmode = \"run\"\n%s\n", f.scripts, extra)
	pl, err := h.Build(Name, text)
	if err != nil {
		t.Fatal(err)
	}
	f.p = pl.(*Plugin)
	// The scripts' xenstore-write must reach the test's xenstored, as
	// mtwatchd's environment reaches the real one.
	f.p.env = append(f.p.env, h.XS.Env()...)
	f.p.env = append(f.p.env, "OUT="+f.out)
	return f
}

func (f *fixture) start() {
	f.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := f.p.Start(ctx, f.h.Agent.Runtime()); err != nil {
		f.t.Fatal(err)
	}
	f.t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := f.p.Stop(ctx); err != nil {
			f.t.Error(err)
		}
	})
}

func start(t testing.TB, opts plugintest.Options, extra string) *fixture {
	f := build(t, opts, extra)
	f.start()
	return f
}

// device creates a backend directory as libxl does (plugintest.WriteBackend).
func (f *fixture) device(typ string, dom domid.ID, devid int, script string, extra ...string) string {
	f.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	base, err := plugintest.WriteBackend(ctx, f.h.Client, typ, dom, devid, script, extra...)
	if err != nil {
		f.t.Fatal(err)
	}
	return base
}

func (f *fixture) status(base string, timeout time.Duration) string {
	f.t.Helper()
	var v string
	f.h.Wait(timeout, base+"/hotplug-status", func() bool {
		var ok bool
		v, ok = f.h.Read(base + "/hotplug-status")
		return ok
	})
	return v
}

func (f *fixture) record(base, action string, n int) string {
	f.t.Helper()
	file := filepath.Join(f.out, fmt.Sprintf("%s.%s.%d", strings.ReplaceAll(base, "/", "_"), action, n))
	var b []byte
	f.h.Wait(20*time.Second, "record "+filepath.Base(file), func() bool {
		var err error
		b, err = os.ReadFile(file)
		return err == nil
	})
	return strings.ReplaceAll(string(b), f.scripts, "SCRIPTS")
}

func (f *fixture) records(base, action string) int {
	m, _ := filepath.Glob(filepath.Join(f.out, strings.ReplaceAll(base, "/", "_")+"."+action+".[0-9]*"))
	n := 0
	for _, x := range m {
		if !strings.HasSuffix(x, ".tmp") {
			n++
		}
	}
	return n
}

func (f *fixture) log() string {
	b, _ := os.ReadFile(filepath.Join(f.out, "log"))
	return string(b)
}

func golden(t *testing.T, name, got string) {
	t.Helper()
	goldenfile.Check(t, filepath.Join("testdata", "golden", name), got)
}

// TestLibxlConventions: argv and environment exactly as libxl passes them
// (golden files), for a vif's online/offline and a vbd's add/remove, with
// stdin on /dev/null and no sd_notify socket.
func TestLibxlConventions(t *testing.T) {
	t.Parallel()
	f := start(t, plugintest.Options{}, "")
	f.h.AddDomain(5)
	vif := f.device("vif", 5, 0, f.scripts+"/connect", "gatewaydev", "eth0", "mac", "00:16:3e:00:00:01")
	vbd := f.device("vbd", 5, 51712, "connect", "params", "/dev/vg/guest")
	f.h.Write(vif+"/state", "2", vbd+"/state", "2")
	if s := f.status(vif, 20*time.Second); s != "connected" {
		t.Fatalf("vif hotplug-status %q", s)
	}
	if s := f.status(vbd, 20*time.Second); s != "connected" {
		t.Fatalf("vbd hotplug-status %q", s)
	}
	golden(t, "vif-online.txt", f.record(vif, "online", 0))
	golden(t, "vbd-add.txt", f.record(vbd, "add", 0))

	// Connected, then closed by the toolstack: online 0, state Closed.
	f.h.Write(vif+"/state", "4", vbd+"/state", "4")
	f.h.Write(vif+"/online", "0", vif+"/state", "6", vbd+"/online", "0", vbd+"/state", "6")
	golden(t, "vif-offline.txt", f.record(vif, "offline", 0))
	golden(t, "vbd-remove.txt", f.record(vbd, "remove", 0))

	// Closed again, or InitWait again without a new device: nothing more.
	f.h.Write(vif+"/state", "2", vbd+"/state", "6")
	time.Sleep(200 * time.Millisecond)
	if f.records(vif, "online") != 1 || f.records(vif, "offline") != 1 || f.records(vbd, "add") != 1 || f.records(vbd, "remove") != 1 {
		t.Errorf("scripts ran again:\n%s", f.log())
	}
	st := f.p.Status().(Status)
	if st.Runs != 4 || st.OK != 4 {
		t.Errorf("status %+v", st)
	}
}

// TestFailures: a failed or timed-out add leaves hotplug-status=error and a
// hotplug-error, keeping the script's own message; a timeout ends the
// script's whole process group.
func TestFailures(t *testing.T) {
	t.Parallel()
	f := start(t, plugintest.Options{}, "timeout = \"500ms\"\ngrace = \"200ms\"")
	for _, id := range []domid.ID{2, 3, 4, 6} {
		f.h.AddDomain(id)
	}
	fail := f.device("vbd", 2, 768, "fail")
	fatal := f.device("vbd", 3, 768, "fatal")
	hang := f.device("vif", 4, 0, "hang")
	outside := f.device("vbd", 6, 768, "/bin/true")
	dotdot := f.device("vbd", 6, 832, "../../../bin/true")
	for _, b := range []string{fail, fatal, hang, outside, dotdot} {
		f.h.Write(b+"/state", "2")
	}
	for _, tc := range []struct{ base, err string }{
		{fail, f.scripts + "/fail add failed: exit status 1"},
		{fatal, "script says no"},
		{hang, f.scripts + "/hang online timed out after 500ms: killed"},
		{outside, `script "/bin/true" is outside ` + f.scripts + " and the allowed directories"},
		{dotdot, `script "../../../bin/true": a relative name must not name a directory`},
	} {
		if s := f.status(tc.base, 20*time.Second); s != "error" {
			t.Errorf("%s: hotplug-status %q", tc.base, s)
		}
		if e, _ := f.h.Read(tc.base + "/hotplug-error"); !strings.Contains(e, tc.err) {
			t.Errorf("%s: hotplug-error %q, want %q", tc.base, e, tc.err)
		}
	}
	b, err := os.ReadFile(filepath.Join(f.out, "backend_vif_4_0.grandchild"))
	if err != nil {
		t.Fatal(err)
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	if proctest.Alive(pid) {
		syscall.Kill(pid, syscall.SIGKILL)
		t.Fatalf("grandchild %d of the timed-out script survived", pid)
	}
	f.h.Wait(5*time.Second, "counters", func() bool {
		st := f.p.Status().(Status)
		return st.TimedOut == 1 && st.Failed == 4
	})
	mfs, err := f.h.Metrics.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		for _, m := range mf.Metric {
			for _, l := range m.Label {
				if l.GetName() == "domid" {
					t.Errorf("%s has a per-domain label", mf.GetName())
				}
			}
		}
	}
}

// TestOrder: a device closed while its add script still runs gets its
// remove once the add has ended; a removed directory runs remove too.
func TestOrder(t *testing.T) {
	t.Parallel()
	f := start(t, plugintest.Options{}, "")
	f.h.AddDomain(8)
	a := f.device("vbd", 8, 768, "slow")
	f.h.Write(a+"/state", "2")
	f.record(a, "add", 0) // started
	f.h.Write(a+"/online", "0", a+"/state", "6")
	f.record(a, "remove", 0)
	f.h.Wait(10*time.Second, "remove ends", func() bool { return strings.Count(f.log(), a) == 4 })
	want := a + " add start\n" + a + " add end\n" + a + " remove start\n" + a + " remove end\n"
	if got := f.log(); got != want {
		t.Errorf("log:\n%s\nwant:\n%s", got, want)
	}

	b := f.device("vif", 8, 1, "connect")
	f.h.Write(b+"/state", "2")
	f.status(b, 20*time.Second)
	f.h.Rm(b)
	f.record(b, "offline", 0)

	// A device closed before reaching InitWait never ran add: no remove.
	c := f.device("vif", 8, 2, "connect")
	f.h.Write(c+"/online", "0", c+"/state", "6")
	f.h.Rm(c)
	time.Sleep(200 * time.Millisecond)
	if f.records(c, "offline") != 0 {
		t.Error("offline ran for a device that was never online")
	}
}

// TestStartupScan: at start, devices waiting for their script get it,
// connected devices are left alone, and closed devices whose add ran get
// their remove; the scan takes no watch of its own.
func TestStartupScan(t *testing.T) {
	t.Parallel()
	f := build(t, plugintest.Options{}, "")
	f.h.AddDomain(9)
	f.h.AddDomain(10)
	waiting := f.device("vbd", 9, 768, "connect", "state", "2")
	connected := f.device("vif", 9, 0, "connect", "state", "4", "hotplug-status", "connected")
	closing := f.device("vif", 10, 0, "connect", "state", "6", "online", "0", "hotplug-status", "connected")
	early := f.device("vbd", 10, 768, "connect") // not at InitWait yet
	f.start()
	if s := f.status(waiting, 20*time.Second); s != "connected" {
		t.Fatalf("hotplug-status %q", s)
	}
	f.record(closing, "offline", 0)
	if n := len(f.h.Watches()); n != 1 {
		t.Errorf("%d watches after the scan, want the backend watch only", n)
	}
	if f.records(connected, "online") != 0 || f.records(early, "add") != 0 {
		t.Errorf("scan ran scripts it should not have:\n%s", f.log())
	}
	// The scan remembered the connected device: its close runs offline.
	f.h.Write(connected+"/online", "0", connected+"/state", "6")
	f.record(connected, "offline", 0)
	f.h.Write(early+"/state", "2")
	f.status(early, 20*time.Second)
}

// TestTypes: qdisk backends get no script by default, and are reported as
// needing the QEMU that xl devd starts; a type is opt-in.
func TestTypes(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		extra string
		runs  bool
	}{{"", false}, {`types = ["vbd", "vif", "qdisk"]`, true}} {
		f := start(t, plugintest.Options{}, tc.extra)
		f.h.AddDomain(11)
		q := f.device("qdisk", 11, 51712, "connect")
		v := f.device("vbd", 11, 51728, "connect")
		f.h.Write(q+"/state", "2", v+"/state", "2")
		f.status(v, 20*time.Second)
		time.Sleep(100 * time.Millisecond)
		if got := f.records(q, "add") == 1; got != tc.runs {
			t.Errorf("%q: qdisk script ran: %v", tc.extra, got)
		}
		// Not run: reported, as it needs the QEMU xl devd starts.
		if st := f.p.Status().(Status); tc.runs != (len(st.NeedQEMU) == 0) {
			t.Errorf("%q: need_qemu %v", tc.extra, st.NeedQEMU)
		}
		warned := false
		for _, e := range f.h.Logs.Records() {
			warned = warned || (e.Level == slog.LevelWarn && strings.Contains(e.Message, "keep xl devd running for qdisk backends") && e.Attrs["device"] == q)
		}
		if warned == tc.runs {
			t.Errorf("%q: warned %v", tc.extra, warned)
		}
	}
}

// TestFlood: a guest making its backend change without end cannot queue
// more than one event per device while its worker is busy.
func TestFlood(t *testing.T) {
	t.Parallel()
	f := start(t, plugintest.Options{}, "timeout = \"60s\"")
	f.h.AddDomain(12)
	busy := f.device("vif", 12, 0, "hang")
	f.h.Write(busy+"/state", "2")
	f.record(busy, "online", 0)
	flood := f.device("vif", 12, 1, "connect")
	for i := range 300 {
		f.h.Write(flood+"/state", strconv.Itoa(1+i%2), flood+"/online", "1", flood+"/feature-x", "1")
	}
	other := f.device("vbd", 12, 768, "connect")
	f.h.Write(other+"/state", "2")
	// The other disk's event comes after the flood's, on the same worker:
	// once it has its script, every flood event xenstored sent was
	// dispatched. (Not all 900: the C xenstored drops an event identical to
	// one still queued for the connection, xenstored_core.c: send_event.)
	f.status(other, 20*time.Second)
	if w := mainWatch(f); w == nil || w.Stats().Dispatched < 3 {
		t.Fatalf("flood not dispatched: %+v", w)
	}
	st, ok := f.h.Dispatcher.DomainStats(12)
	if !ok || st.Queued > 3 {
		t.Fatalf("domain 12 has %d events queued (stats %+v), want at most one per device", st.Queued, st)
	}
}

func mainWatch(f *fixture) *plugintest.Watch {
	for _, w := range f.h.Watches() {
		if w.Path() == Backend {
			return w
		}
	}
	return nil
}

// TestHungDomain is the reason for the plugin: a script hung for one of
// domain A's disks delays neither domain B's vif and vbd nor A's other
// devices, whether the agent runs a worker per domain or a single one: a
// script does not occupy its domain's worker.
func TestHungDomain(t *testing.T) {
	t.Parallel()
	for _, single := range []bool{false, true} {
		t.Run(map[bool]string{false: "multi-worker", true: "single-worker"}[single], func(t *testing.T) {
			t.Parallel()
			f := start(t, plugintest.Options{SingleWorker: single}, "timeout = \"30s\"\ngrace = \"100ms\"")
			f.h.AddDomain(20)
			f.h.AddDomain(21)
			a := f.device("vbd", 20, 768, "hang")
			f.h.Write(a+"/state", "2")
			f.record(a, "add", 0) // A's script hangs from now on
			aVif := f.device("vif", 20, 0, "connect")
			bVif := f.device("vif", 21, 0, "connect")
			bVbd := f.device("vbd", 21, 768, "connect")
			f.h.Write(aVif+"/state", "2", bVif+"/state", "2", bVbd+"/state", "2")
			for _, dev := range []string{aVif, bVif, bVbd} {
				if s := f.status(dev, 10*time.Second); s != "connected" {
					t.Fatalf("%s: hotplug-status %q", dev, s)
				}
			}
			if s, done := f.h.Read(a + "/hotplug-status"); done {
				t.Fatalf("the other devices waited for A's hung script (A status %q)", s)
			}
			f.h.Wait(10*time.Second, "the connect scripts exit", func() bool { return len(f.p.Status().(Status).Running) == 1 })
			if st := f.p.Status().(Status); st.Running[0].Device != a {
				t.Errorf("running %+v, want A's hung add only", st.Running)
			} else if r := st.Running[0]; r.PID <= 0 || !proctest.Alive(r.PID) || r.Adopted || r.Confinement != "" {
				t.Errorf("running %+v: want the hung script's live pid, not adopted", r)
			}
			if stalls := f.p.Stalls(time.Millisecond); len(stalls) != 1 || stalls[0].Path != a || stalls[0].Domid != 20 {
				t.Errorf("stalls %+v, want A's hung add", stalls)
			}
		})
	}
}

func TestConfigErrors(t *testing.T) {
	t.Parallel()
	h := plugintest.New(t, plugintest.Options{})
	for _, tc := range []struct{ text, want string }{
		{"types = [\"vbd\", \"VIF\"]\n", ":1: types[1]: malformed backend type \"VIF\""},
		{"types = [\"vbd\", \"vbd\"]\n", ":1: types[1]: backend type \"vbd\" listed twice"},
		{"\nscripts_dir = \"scripts\"\n", ":2: scripts_dir: \"scripts\" is not an absolute path"},
		{"allowed_dirs = [\"/opt/x/../y\"]\n", ":1: allowed_dirs[0]: "},
		{"timeout = \"-1s\"\n", ":1: timeout: timeout must be positive"},
		{"scripts = \"/x\"\n", ":1: scripts: unknown key"},
		{"mode = \"both\"\n", ":1: mode: mode must be \"auto\", \"run\" or \"watch\", not \"both\""},
		{"max_scripts = 0\n", ":1: max_scripts: max_scripts must be between 1 and 4096, not 0"},
		{"stuck_after = \"0s\"\n", ":1: stuck_after: stuck_after must be positive"},
	} {
		sec := h.Section(Name, tc.text)
		_, err := h.BuildSection(Name, sec)
		if err == nil || !strings.HasPrefix(err.Error(), sec.File()) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: error %v, want %s%s", tc.text, err, sec.File(), tc.want)
		}
	}
}

func TestResolve(t *testing.T) {
	t.Parallel()
	c := Config{ScriptsDir: "/etc/xen/scripts", AllowedDirs: []string{"/usr/lib/xen/scripts"}}
	for _, tc := range []struct{ in, want string }{
		{"block", "/etc/xen/scripts/block"},
		{"/etc/xen/scripts/vif-bridge", "/etc/xen/scripts/vif-bridge"},
		{"/usr/lib/xen/scripts/block-drbd", "/usr/lib/xen/scripts/block-drbd"},
		{"/etc/xen/scripts/../../bin/sh", ""},
		{"/etc/xen/scriptsX/a", ""},
		{"/bin/sh", ""},
		{"sub/block", ""},
		{"..", ""},
		{"", ""},
	} {
		got, err := c.resolve(tc.in)
		if got != tc.want || (err == nil) != (tc.want != "") {
			t.Errorf("resolve(%q) = %q, %v; want %q", tc.in, got, err, tc.want)
		}
	}
}

// TestStopDuringAdd: a script killed because the plugin stops leaves no
// hotplug-status, and the next start's scan runs the add again.
func TestStopDuringAdd(t *testing.T) {
	t.Parallel()
	f := build(t, plugintest.Options{}, "grace = \"100ms\"")
	f.start()
	f.h.AddDomain(13)
	dev := f.device("vbd", 13, 768, "hang")
	f.h.Write(dev+"/state", "2")
	f.record(dev, "add", 0)
	gc := filepath.Join(f.out, "backend_vbd_13_768.grandchild")
	f.h.Wait(10*time.Second, "grandchild started", func() bool { _, err := os.Stat(gc); return err == nil })
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := f.p.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	// Stop returned once the script's process group was gone.
	b, err := os.ReadFile(gc)
	if err != nil {
		t.Fatal(err)
	}
	if pid, _ := strconv.Atoi(strings.TrimSpace(string(b))); proctest.Alive(pid) {
		syscall.Kill(pid, syscall.SIGKILL)
		t.Fatalf("grandchild %d of the script still alive when Stop returned", pid)
	}
	for _, w := range f.h.Watches() {
		w.Unwatch(ctx) // as the agent does after Stop
	}
	if v, ok := f.h.Read(dev + "/hotplug-status"); ok {
		t.Fatalf("hotplug-status %q after a stop", v)
	}
	// A new process: a new registry.
	ic := f.h.InitContext(Name, f.h.Section(Name, fmt.Sprintf("scripts_dir = %q\nmode = \"run\"\n", f.scripts)))
	ic.Metrics = prometheus.NewRegistry()
	pl, err := New(ic)
	if err != nil {
		t.Fatal(err)
	}
	p2 := pl.(*Plugin)
	p2.env = f.p.env
	if err := p2.Start(ctx, f.h.Agent.Runtime()); err != nil {
		t.Fatal(err)
	}
	defer p2.Stop(context.Background())
	f.record(dev, "add", 1)
}

// TestRemoveAfterScanDirGone: a connected device found by the start-up
// scan whose directory is then removed at once (no Closed first) gets its
// remove with the script and vif names it had: the scan kept the nodes a
// remove needs.
func TestRemoveAfterScanDirGone(t *testing.T) {
	t.Parallel()
	f := build(t, plugintest.Options{}, "")
	f.h.AddDomain(14)
	vif := f.device("vif", 14, 0, "connect", "state", "4", "hotplug-status", "connected", "gatewaydev", "eth1", "type", "vif_ioemu")
	vbd := f.device("vbd", 14, 768, "connect", "state", "4", "hotplug-status", "connected")
	f.start()
	f.h.Wait(10*time.Second, "scan done", func() bool { return f.p.Status().(Status).Devices == 2 })
	f.h.Rm(vif)
	f.h.Rm(vbd)
	f.record(vbd, "remove", 0)
	got := f.record(vif, "offline", 0)
	for _, want := range []string{"env netdev=eth1\n", "env INTERFACE=vif14.0-emu\n", "argv SCRIPTS/connect\n"} {
		if !strings.Contains(got, want) {
			t.Errorf("offline record lacks %q:\n%s", want, got)
		}
	}
	f.record(vif, "remove", 0) // the tap execution
	if st := f.p.Status().(Status); st.Failed != 0 {
		t.Errorf("status %+v\n%s", st, f.log())
	}
}

// TestDestroyDuringAdd: the domain's worker is destroyed and the device's
// directory removed while its add hangs. The add is not cut short by the
// worker's end (a script is ended by its timeout or by mtwatchd stopping,
// never half-way because a worker went), its failure writes nothing into
// the removed directory, and the remove runs after it, on the draining
// worker.
func TestDestroyDuringAdd(t *testing.T) {
	t.Parallel()
	f := start(t, plugintest.Options{}, "timeout = \"800ms\"\ngrace = \"100ms\"")
	f.h.AddDomain(15)
	dev := f.device("vbd", 15, 768, "hang")
	f.h.Write(dev+"/state", "2")
	f.record(dev, "add", 0)
	if err := f.h.Dispatcher.DestroyDomain(15); err != nil {
		t.Fatal(err)
	}
	f.h.Rm(dev)
	f.record(dev, "remove", 0)
	f.h.Wait(10*time.Second, "remove ends", func() bool { return strings.Count(f.log(), dev) == 3 })
	if got, want := f.log(), dev+" add start\n"+dev+" remove start\n"+dev+" remove end\n"; got != want {
		t.Errorf("log:\n%s\nwant:\n%s", got, want)
	}
	if st := f.p.Status().(Status); st.TimedOut != 1 {
		t.Errorf("the add was not ended by its timeout: %+v", st)
	}
	if _, ok := f.h.Read(dev); ok {
		t.Errorf("%s written again after its removal", dev)
	}
}

// TestDirRemovedDuringAdd: the toolstack removes the device's directory
// while its add runs, and the script then writes hotplug-status, which
// creates the directory again with that node only. The device still gets
// its remove after the add, and what the script left is removed.
func TestDirRemovedDuringAdd(t *testing.T) {
	t.Parallel()
	f := start(t, plugintest.Options{}, "")
	f.h.AddDomain(16)
	dev := f.device("vbd", 16, 768, "slow")
	f.h.Write(dev+"/state", "2")
	f.record(dev, "add", 0)
	f.h.Rm(dev)
	f.record(dev, "remove", 0)
	f.h.Wait(10*time.Second, "remove ends", func() bool { return strings.Count(f.log(), dev) == 4 })
	if got, want := f.log(), dev+" add start\n"+dev+" add end\n"+dev+" remove start\n"+dev+" remove end\n"; got != want {
		t.Errorf("log:\n%s\nwant:\n%s", got, want)
	}
	f.h.Wait(10*time.Second, "leftover removed", func() bool { _, ok := f.h.Read(dev); return !ok })
	f.h.Wait(10*time.Second, "the device forgotten", func() bool { return f.p.Status().(Status).Devices == 0 })
}
