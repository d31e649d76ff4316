package exec_test

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
	dto "github.com/prometheus/client_model/go"

	"github.com/mtwatch/mtwatch/internal/goldenfile"
	"github.com/mtwatch/mtwatch/internal/proctest"
	"github.com/mtwatch/mtwatch/plugin"
	"github.com/mtwatch/mtwatch/plugin/exec"
	"github.com/mtwatch/mtwatch/plugin/plugintest"
)

func script(t *testing.T) string {
	t.Helper()
	p, err := filepath.Abs("testdata/record.sh")
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// rules returns a section with one rule per spec (name, path, extra lines).
func rules(t *testing.T, out string, specs ...[3]string) string {
	var b strings.Builder
	b.WriteString("grace = \"200ms\"\n")
	for _, s := range specs {
		fmt.Fprintf(&b, "\n[[rule]]\nname = %q\npath = %q\ncommand = [%q, \"--domain\", \"{domid}\", \"{path}\"]\n%s\n", s[0], s[1], script(t), s[2])
		if !strings.Contains(s[2], "env") {
			fmt.Fprintf(&b, "env = { OUT = %q }\n", out)
		}
	}
	return b.String()
}

func waitFile(h *plugintest.Host, file string) string {
	var b []byte
	h.Wait(20*time.Second, "file "+filepath.Base(file), func() bool {
		var err error
		b, err = os.ReadFile(file)
		return err == nil
	})
	return string(b)
}

func count(t *testing.T, dir, prefix string) int {
	t.Helper()
	m, err := filepath.Glob(filepath.Join(dir, prefix+"*"))
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, f := range m {
		if !strings.HasSuffix(f, ".tmp") {
			n++
		}
	}
	return n
}

func golden(t *testing.T, name, got string) {
	t.Helper()
	goldenfile.Check(t, filepath.Join("testdata", "golden", name), got)
}

func TestConfigErrors(t *testing.T) {
	t.Parallel()
	h := plugintest.New(t, plugintest.Options{})
	for _, tc := range []struct {
		name, text, want string
	}{
		{"domid inside a segment", "[[rule]]\nname = \"a\"\npath = \"/local/domain/dom{domid}/x\"\ncommand = [\"/bin/true\"]\n",
			":3: rule[0].path: {domid} in \"/local/domain/dom{domid}/x\" is not a path segment of its own"},
		{"two domids", "[[rule]]\nname = \"a\"\npath = \"/local/domain/{domid}/{domid}\"\ncommand = [\"/bin/true\"]\n", ":3: rule[0].path: "},
		{"domid first", "[[rule]]\nname = \"a\"\npath = \"{domid}/x\"\ncommand = [\"/bin/true\"]\n", ":3: rule[0].path: "},
		{"unknown placeholder", "[[rule]]\nname = \"a\"\npath = \"/local/domain/{uuid}\"\ncommand = [\"/bin/true\"]\n", ":3: rule[0].path: unknown placeholder"},
		{"empty command", "[[rule]]\nname = \"a\"\npath = \"/x\"\ncommand = [\"/bin/true\"]\n[[rule]]\nname = \"b\"\npath = \"/y\"\ncommand = []\n",
			":8: rule[1].command: empty command"},
		{"no command", "[[rule]]\nname = \"a\"\npath = \"/x\"\n", ": [plugins.exec] rule[0].command: empty command"},
		{"relative command", "[[rule]]\nname = \"a\"\npath = \"/x\"\ncommand = [\"true\"]\n", ":4: rule[0].command: command \"true\" is not an absolute path"},
		{"domid in command without one in path", "[[rule]]\nname = \"a\"\npath = \"/x\"\ncommand = [\"/bin/echo\", \"{domid}\"]\n", ":4: rule[0].command: "},
		{"unknown key", "[[rule]]\nname = \"a\"\npath = \"/x\"\ncommand = [\"/bin/true\"]\ntimeot = \"1s\"\n", ":5: rule.timeot: unknown key"},
		{"bad pending", "[[rule]]\nname = \"a\"\npath = \"/x\"\ncommand = [\"/bin/true\"]\npending = \"always\"\n", ":5: rule[0].pending: unknown pending policy \"always\""},
		{"bad coalesce", "[[rule]]\nname = \"a\"\npath = \"/x\"\ncommand = [\"/bin/true\"]\ncoalesce = \"always\"\n", ":5: rule[0].coalesce: unknown coalesce policy \"always\""},
		{"pending and coalesce", "[[rule]]\nname = \"a\"\npath = \"/x\"\ncommand = [\"/bin/true\"]\ncoalesce = \"per-watch\"\npending = \"per-watch\"\n",
			":6: rule[0].pending: pending is the old name of coalesce: set coalesce only"},
		{"duplicate name", "[[rule]]\nname = \"a\"\npath = \"/x\"\ncommand = [\"/bin/true\"]\n[[rule]]\nname = \"a\"\npath = \"/y\"\ncommand = [\"/bin/true\"]\n", ":6: rule[1].name: rule name \"a\" already used"},
		{"reserved env", "[[rule]]\nname = \"a\"\npath = \"/x\"\ncommand = [\"/bin/true\"]\nenv = { DOMID = \"1\" }\n", ":5: rule[0].env: DOMID is set by mtwatchd"},
		{"bad timeout", "[[rule]]\nname = \"a\"\npath = \"/x\"\ncommand = [\"/bin/true\"]\ntimeout = \"soon\"\n", ":5: "},
		{"negative grace", "grace = \"-1s\"\n", ":1: grace: negative duration"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sec := h.Section(exec.Name, tc.text)
			_, err := h.BuildSection(exec.Name, sec)
			if err == nil {
				t.Fatal("no error")
			}
			if !strings.HasPrefix(err.Error(), sec.File()) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %q, want %s...%s", err, sec.File(), tc.want)
			}
		})
	}
}

// TestRun: a rule runs its command with the documented argv and
// environment (golden file), stdin on /dev/null, output logged with rule and
// domid, and the result counted without per-domain labels.
func TestRun(t *testing.T) {
	t.Parallel()
	h := plugintest.New(t, plugintest.Options{})
	out := t.TempDir()
	p := h.Start(exec.Name, rules(t, out, [3]string{"memory-target", "/local/domain/{domid}/memory/target",
		fmt.Sprintf("env = { OUT = %q, MODE = \"strict\" }\ntimeout = \"30s\"", out)}))
	h.AddDomain(5)
	h.Write("/local/domain/5/memory/target", "1024")
	got := waitFile(h, filepath.Join(out, "memory-target.5.0"))
	golden(t, "memory-target.txt", strings.ReplaceAll(got, script(t), "record.sh"))

	h.Wait(10*time.Second, "counted run", func() bool {
		return statusOf(t, p, "memory-target").OK == 1
	})
	var sawOut, sawErr bool
	for _, e := range h.Logs.Records() {
		if e.Attrs["rule"] != "memory-target" || e.Attrs["domid"] != "5" {
			continue
		}
		sawOut = sawOut || (e.Attrs["stream"] == "stdout" && strings.HasPrefix(e.Message, "recorded "))
		sawErr = sawErr || (e.Attrs["stream"] == "stderr" && e.Message == "a line on stderr")
	}
	if !sawOut || !sawErr {
		t.Errorf("command output not logged with rule and domid (stdout %v, stderr %v)", sawOut, sawErr)
	}
	mf := metric(t, h, "mtwatch_exec_runs_total")
	if mf == nil || len(mf.Metric) != 1 {
		t.Fatalf("runs metric %v", mf)
	}
	for _, l := range mf.Metric[0].Label {
		if l.GetName() == "domid" {
			t.Error("per-domain label on mtwatch_exec_runs_total")
		}
	}
	if lbl := labels(mf.Metric[0]); lbl != "result=ok,rule=memory-target" || mf.Metric[0].Counter.GetValue() != 1 {
		t.Errorf("runs metric %s = %v", lbl, mf.Metric[0].Counter.GetValue())
	}
	// Dom0's and other domains' nodes, and other nodes of the domain, do
	// not match.
	h.Write("/local/domain/0/memory/target", "1", "/local/domain/5/memory/static-max", "2")
	h.Write("/local/domain/5/memory/target", "2048")
	waitFile(h, filepath.Join(out, "memory-target.5.1"))
	if n := count(t, out, "memory-target."); n != 2 {
		t.Errorf("%d runs, want 2", n)
	}
}

func statusOf(t *testing.T, p plugin.Plugin, rule string) exec.RuleStatus {
	t.Helper()
	st := p.(plugin.Reporter).Status().(exec.Status)
	v := fmt.Sprintf("%+v", st)
	for _, r := range st.Rules {
		if r.Name == rule {
			return r
		}
	}
	t.Fatalf("no rule %s in %s", rule, v)
	return exec.RuleStatus{}
}

func metric(t *testing.T, h *plugintest.Host, name string) *dto.MetricFamily {
	t.Helper()
	mfs, err := h.Metrics.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name {
			return mf
		}
	}
	return nil
}

func labels(m *dto.Metric) string {
	var s []string
	for _, l := range m.Label {
		s = append(s, l.GetName()+"="+l.GetValue())
	}
	return strings.Join(s, ",")
}

// TestTimeoutKillsGroup: a command that hangs is ended with its whole
// process group, counted as a timeout.
func TestTimeoutKillsGroup(t *testing.T) {
	t.Parallel()
	h := plugintest.New(t, plugintest.Options{})
	out := t.TempDir()
	p := h.Start(exec.Name, rules(t, out, [3]string{"hang", "/local/domain/{domid}/data/x",
		fmt.Sprintf("env = { OUT = %q, ACTION = \"hang\" }\ntimeout = \"300ms\"", out)}))
	h.AddDomain(3)
	h.Write("/local/domain/3/data/x", "1")
	pid, err := strconv.Atoi(strings.TrimSpace(waitFile(h, filepath.Join(out, "grandchild.3.0"))))
	if err != nil {
		t.Fatal(err)
	}
	h.Wait(10*time.Second, "timeout counted", func() bool { return statusOf(t, p, "hang").TimedOut == 1 })
	if proctest.Alive(pid) {
		syscall.Kill(pid, syscall.SIGKILL)
		t.Fatalf("grandchild %d survived the timeout", pid)
	}
}

// TestStopWaitsForCommands: Stop returns once the commands it killed are
// gone with their process groups, so that mtwatchd never exits leaving one
// between its SIGTERM and SIGKILL.
func TestStopWaitsForCommands(t *testing.T) {
	t.Parallel()
	h := plugintest.New(t, plugintest.Options{})
	out := t.TempDir()
	sec := h.Section(exec.Name, rules(t, out, [3]string{"hang", "/local/domain/{domid}/data/x",
		fmt.Sprintf("env = { OUT = %q, ACTION = \"hang\" }\ntimeout = \"60s\"", out)}))
	p, err := h.BuildSection(exec.Name, sec)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := p.Start(ctx, h.Agent.Runtime()); err != nil {
		t.Fatal(err)
	}
	h.AddDomain(3)
	h.Write("/local/domain/3/data/x", "1")
	pid, err := strconv.Atoi(strings.TrimSpace(waitFile(h, filepath.Join(out, "grandchild.3.0"))))
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	if proctest.Alive(pid) {
		syscall.Kill(pid, syscall.SIGKILL)
		t.Fatalf("grandchild %d still alive when Stop returned", pid)
	}
}

// TestIsolationAndCoalescing: a command blocked for domain 5 delays no
// other domain; the events queued for 5 meanwhile coalesce per path or per
// watch as the rule says.
func TestIsolationAndCoalescing(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		key, policy string // pending: coalesce's old name
		runs        int    // after the blocked one
	}{{"pending", "per-path", 10}, {"pending", "per-watch", 1}, {"coalesce", "per-path", 10}, {"coalesce", "per-watch", 1}} {
		t.Run(tc.key+"="+tc.policy, func(t *testing.T) {
			t.Parallel()
			h := plugintest.New(t, plugintest.Options{})
			out := t.TempDir()
			gate := filepath.Join(out, "gate")
			if err := os.WriteFile(gate, nil, 0o644); err != nil {
				t.Fatal(err)
			}
			h.Start(exec.Name, rules(t, out, [3]string{"data", "/local/domain/{domid}/data",
				fmt.Sprintf("env = { OUT = %q, ACTION = \"gate\", ACTION_DOMID = \"5\" }\n%s = %q", out, tc.key, tc.policy)}))
			h.AddDomain(5)
			h.AddDomain(7)
			h.Write("/local/domain/5/data/first", "1")
			waitFile(h, filepath.Join(out, "started.5.0"))
			for i := range 10 {
				h.Write(fmt.Sprintf("/local/domain/5/data/k%d", i), "1", fmt.Sprintf("/local/domain/5/data/k%d", i), "2")
			}
			h.Write("/local/domain/7/data/k", "1")
			waitFile(h, filepath.Join(out, "data.7.0")) // 7 runs while 5 is blocked
			if n := count(t, out, "data.5."); n != 1 {
				t.Fatalf("domain 5 ran %d commands while blocked", n)
			}
			os.Remove(gate)
			h.Wait(20*time.Second, "queued runs of domain 5", func() bool { return count(t, out, "data.5.") >= 1+tc.runs })
			time.Sleep(200 * time.Millisecond) // nothing beyond the coalesced events
			if n := count(t, out, "data.5."); n != 1+tc.runs {
				t.Fatalf("domain 5 ran %d commands, want %d", n, 1+tc.runs)
			}
		})
	}
}

// TestPendingDeprecated: a rule's pending, coalesce's old name, works and
// is logged as deprecated, naming the file, line and key; coalesce is not.
func TestPendingDeprecated(t *testing.T) {
	t.Parallel()
	h := plugintest.New(t, plugintest.Options{})
	warned := func(file string) bool {
		for _, e := range h.Logs.Records() {
			if e.Level == slog.LevelWarn && e.Attrs["plugin"] == exec.Name && strings.HasPrefix(e.Message, file+":5: ") &&
				strings.HasSuffix(e.Message, "rule[0].pending: pending is deprecated: it is now called coalesce") {
				return true
			}
		}
		return false
	}
	for _, tc := range []struct {
		key  string
		warn bool
	}{{"pending", true}, {"coalesce", false}} {
		sec := h.Section(exec.Name, fmt.Sprintf("[[rule]]\nname = \"a\"\npath = \"/local/domain/{domid}/x\"\ncommand = [\"/bin/true\"]\n%s = \"per-watch\"\n", tc.key))
		ic := h.InitContext(exec.Name, sec)
		ic.Metrics = prometheus.NewRegistry() // one plugin per registry
		if _, err := exec.New(ic); err != nil {
			t.Fatalf("%s: %v", tc.key, err)
		}
		if got := warned(sec.File()); got != tc.warn {
			t.Errorf("%s: deprecation warning %v, want %v", tc.key, got, tc.warn)
		}
	}
}

// TestReload: a reload keeps the queued events of an unchanged rule, drops
// a removed rule's watch, starts a new rule, and a bad section changes
// nothing.
func TestReload(t *testing.T) {
	t.Parallel()
	h := plugintest.New(t, plugintest.Options{})
	out := t.TempDir()
	gate := filepath.Join(out, "gate")
	if err := os.WriteFile(gate, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	keep := [3]string{"keep", "/local/domain/{domid}/data", fmt.Sprintf("env = { OUT = %q, ACTION = \"gate\" }", out)}
	p := h.Start(exec.Name, rules(t, out, keep, [3]string{"old", "/local/domain/{domid}/old", ""}))
	h.AddDomain(4)
	h.Write("/local/domain/4/data/a", "1")
	waitFile(h, filepath.Join(out, "started.4.0"))
	h.Write("/local/domain/4/data/b", "1", "/local/domain/4/data/c", "1")
	h.Wait(10*time.Second, "queued events", func() bool { return statusOf(t, p, "keep").Events.Dispatched >= 3 })

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	bad := h.Section(exec.Name, "[[rule]]\nname = \"x\"\npath = \"/a/b{domid}\"\ncommand = [\"/bin/true\"]\n")
	if err := p.(plugin.Reloader).Reload(ctx, bad); err == nil || !strings.Contains(err.Error(), "rule[0].path") {
		t.Fatalf("bad reload: %v", err)
	}
	if n := len(h.Watches()); n != 2 {
		t.Fatalf("%d watches after a failed reload, want 2", n)
	}
	if err := p.(plugin.Reloader).Reload(ctx, h.Section(exec.Name, rules(t, out, keep, [3]string{"new", "/local/domain/{domid}/new", ""}))); err != nil {
		t.Fatal(err)
	}
	if n := len(h.Watches()); n != 2 {
		t.Errorf("%d watches after reload, want 2", n)
	}
	os.Remove(gate)
	h.Wait(20*time.Second, "queued events of the kept rule", func() bool { return count(t, out, "keep.4.") == 3 })
	h.Write("/local/domain/4/new", "1", "/local/domain/4/old", "1")
	waitFile(h, filepath.Join(out, "new.4.0"))
	time.Sleep(100 * time.Millisecond)
	if n := count(t, out, "old.4."); n != 0 {
		t.Errorf("removed rule ran %d times", n)
	}
}

// TestRemovalOfAncestor: removing a domain's subtree runs the rule of a
// node inside it, as xenstored fires a watch on the node itself.
func TestRemovalOfAncestor(t *testing.T) {
	t.Parallel()
	h := plugintest.New(t, plugintest.Options{})
	out := t.TempDir()
	h.Start(exec.Name, rules(t, out, [3]string{"x", "/local/domain/{domid}/data/x", ""}))
	h.AddDomain(6)
	h.Write("/local/domain/6/data/x", "1")
	waitFile(h, filepath.Join(out, "x.6.0"))
	h.Write("/local/domain/6/data/y", "1") // a sibling: no run
	h.Rm("/local/domain/6/data")
	got := waitFile(h, filepath.Join(out, "x.6.1"))
	if !strings.Contains(got, "env XS_PATH=/local/domain/6/data/x\n") {
		t.Errorf("removal run:\n%s", got)
	}
	time.Sleep(100 * time.Millisecond)
	if n := count(t, out, "x.6."); n != 2 {
		t.Errorf("%d runs, want 2", n)
	}
}

// TestOverflow: events beyond the domain's queue capacity turn into one
// run with MTWATCH_OVERFLOW and the rule's node, so the command can resync.
func TestOverflow(t *testing.T) {
	t.Parallel()
	h := plugintest.New(t, plugintest.Options{Capacity: 4})
	out := t.TempDir()
	gate := filepath.Join(out, "gate")
	if err := os.WriteFile(gate, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	p := h.Start(exec.Name, rules(t, out, [3]string{"data", "/local/domain/{domid}/data",
		fmt.Sprintf("env = { OUT = %q, ACTION = \"gate\" }", out)}))
	h.AddDomain(5)
	h.Write("/local/domain/5/data/first", "1")
	waitFile(h, filepath.Join(out, "started.5.0"))
	for i := range 20 {
		h.Write(fmt.Sprintf("/local/domain/5/data/k%d", i), "1")
	}
	h.Wait(10*time.Second, "dropped events", func() bool { return statusOf(t, p, "data").Events.Dropped > 0 })
	os.Remove(gate)
	var rec string
	h.Wait(20*time.Second, "run with MTWATCH_OVERFLOW", func() bool {
		m, _ := filepath.Glob(filepath.Join(out, "data.5.*"))
		for _, f := range m {
			if b, err := os.ReadFile(f); err == nil && strings.Contains(string(b), "env MTWATCH_OVERFLOW=") {
				rec = string(b)
				return true
			}
		}
		return false
	})
	if !strings.Contains(rec, "env XS_PATH=/local/domain/5/data\n") {
		t.Errorf("overflow run:\n%s", rec)
	}
	if st := statusOf(t, p, "data"); st.Overflows != 1 {
		t.Errorf("status %+v", st)
	}
}

// TestStopGrace: the agent keeps StopGrace (plus a second) of its shutdown
// budget for Stop; a Reload to a shorter grace does not shorten it, since a
// command already running keeps the grace it started with.
func TestStopGrace(t *testing.T) {
	t.Parallel()
	h := plugintest.New(t, plugintest.Options{})
	p := h.Start(exec.Name, "grace = \"3s\"\n[[rule]]\nname = \"a\"\npath = \"/a\"\ncommand = [\"/bin/true\"]\n")
	sg, ok := p.(plugin.StopGracer)
	if !ok {
		t.Fatal("exec does not implement plugin.StopGracer")
	}
	if g := sg.StopGrace(); g != 3*time.Second {
		t.Fatalf("StopGrace %v, want 3s", g)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := p.(plugin.Reloader).Reload(ctx, h.Section(exec.Name, "grace = \"1s\"\n[[rule]]\nname = \"a\"\npath = \"/a\"\ncommand = [\"/bin/true\"]\n")); err != nil {
		t.Fatal(err)
	}
	if g := sg.StopGrace(); g != 3*time.Second {
		t.Fatalf("StopGrace %v after a reload to 1s, want 3s", g)
	}
	if err := p.(plugin.Reloader).Reload(ctx, h.Section(exec.Name, "grace = \"7s\"\n[[rule]]\nname = \"a\"\npath = \"/a\"\ncommand = [\"/bin/true\"]\n")); err != nil {
		t.Fatal(err)
	}
	if g := sg.StopGrace(); g != 7*time.Second {
		t.Fatalf("StopGrace %v after a reload to 7s, want 7s", g)
	}
}

// TestRateBound: a rule's commands for one domain start at most burst at
// once, then one per min_interval, each event still run; another domain's
// commands do not wait behind that bound.
func TestRateBound(t *testing.T) {
	t.Parallel()
	h := plugintest.New(t, plugintest.Options{})
	out := t.TempDir()
	p := h.Start(exec.Name, rules(t, out, [3]string{"data", "/local/domain/{domid}/data",
		"min_interval = \"1s\"\nburst = 2"}))
	h.AddDomain(5)
	h.AddDomain(7)
	for i := range 4 {
		h.Write(fmt.Sprintf("/local/domain/5/data/k%d", i), "1")
	}
	h.Wait(10*time.Second, "the burst", func() bool { return count(t, out, "data.5.") >= 2 })
	h.Write("/local/domain/7/data/k", "1")
	waitFile(h, filepath.Join(out, "data.7.0"))
	if n := count(t, out, "data.5."); n != 2 {
		t.Fatalf("domain 5 ran %d commands before its bound let a third start", n)
	}
	h.Wait(20*time.Second, "every event run", func() bool { return count(t, out, "data.5.") == 4 })
	mtime := func(n int) time.Time {
		fi, err := os.Stat(filepath.Join(out, fmt.Sprintf("data.5.%d", n)))
		if err != nil {
			t.Fatal(err)
		}
		return fi.ModTime()
	}
	// The files are written by the commands, a scheduling delay after each
	// start: one gap can look shorter than min_interval by that delay, two
	// intervals together by little of it. Unbounded, the runs are
	// milliseconds apart.
	for n := 2; n < 4; n++ {
		if gap := mtime(n).Sub(mtime(n - 1)); gap < 500*time.Millisecond {
			t.Errorf("runs %d and %d of domain 5 %v apart, want min_interval (1s)", n-1, n, gap)
		}
	}
	if gap := mtime(3).Sub(mtime(1)); gap < 1600*time.Millisecond {
		t.Errorf("runs 1 and 3 of domain 5 %v apart, want two min_intervals (2s)", gap)
	}
	if st := statusOf(t, p, "data"); st.RateLimited != 2 {
		t.Errorf("rate_limited %d, want 2", st.RateLimited)
	}
}

// TestLogLines: a command's output beyond log_lines is counted, not logged.
func TestLogLines(t *testing.T) {
	t.Parallel()
	h := plugintest.New(t, plugintest.Options{})
	p := h.Start(exec.Name, "log_lines = 3\n[[rule]]\nname = \"chatty\"\npath = \"/local/domain/{domid}/chatty\"\n"+
		"command = [\"/bin/sh\", \"-c\", \"seq 1 100\"]\n")
	h.AddDomain(5)
	h.Write("/local/domain/5/chatty", "1")
	h.Wait(10*time.Second, "run", func() bool { return statusOf(t, p, "chatty").Runs == 1 })
	lines, warned := 0, false
	for _, e := range h.Logs.Records() {
		if e.Attrs["rule"] != "chatty" {
			continue
		}
		if e.Attrs["stream"] == "stdout" {
			lines++
		}
		if strings.Contains(e.Message, "log_lines") && fmt.Sprint(e.Attrs["lines"]) == "97" {
			warned = true
		}
	}
	if lines != 3 || !warned {
		t.Errorf("%d lines logged (want 3), the other 97 counted in a warning: %v", lines, warned)
	}
	if st := statusOf(t, p, "chatty"); st.LinesNotLogged != 97 {
		t.Errorf("lines_not_logged %d, want 97", st.LinesNotLogged)
	}
}

// TestReloadDoesNotWaitForCommand: a reload that removes a rule whose
// command runs returns at once; the command runs to its end, and the
// removed rule's metric series stay gone.
func TestReloadDoesNotWaitForCommand(t *testing.T) {
	t.Parallel()
	h := plugintest.New(t, plugintest.Options{})
	out := t.TempDir()
	gate := filepath.Join(out, "gate")
	if err := os.WriteFile(gate, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	busy := [3]string{"busy", "/local/domain/{domid}/data", fmt.Sprintf("env = { OUT = %q, ACTION = \"gate\" }", out)}
	other := [3]string{"other", "/local/domain/{domid}/other", ""}
	p := h.Start(exec.Name, rules(t, out, busy, other))
	h.AddDomain(4)
	h.Write("/local/domain/4/data/a", "1")
	waitFile(h, filepath.Join(out, "started.4.0"))

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- p.(plugin.Reloader).Reload(ctx, h.Section(exec.Name, rules(t, out, other))) }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		os.Remove(gate)
		t.Fatal("Reload waits for the removed rule's running command")
	}
	if n := len(h.Watches()); n != 1 {
		t.Errorf("%d watches after the reload, want 1", n)
	}
	os.Remove(gate)
	// The command ends; the domain's worker is free again for the other
	// rule.
	h.Write("/local/domain/4/other", "1")
	waitFile(h, filepath.Join(out, "other.4.0"))
	if mf := metric(t, h, "mtwatch_exec_runs_total"); mf != nil {
		for _, m := range mf.Metric {
			if strings.Contains(labels(m), "rule=busy") {
				t.Errorf("removed rule's series back: %s", labels(m))
			}
		}
	}
}
