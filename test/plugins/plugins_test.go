package plugins_test

import (
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
	"github.com/mtwatch/mtwatch/lib/xenstore/xenstoredtest"
	"github.com/mtwatch/mtwatch/plugin/exec"
	"github.com/mtwatch/mtwatch/plugin/hotplug"
)

func pluginStatus(t *testing.T, a *agent, name string) control.PluginStatus {
	t.Helper()
	for _, p := range a.status().Plugins {
		if p.Name == name {
			return p
		}
	}
	t.Fatalf("no plugin %s in the status", name)
	return control.PluginStatus{}
}

func execRules(out string, rules ...string) string {
	script := filepath.Join(root, "plugin/exec/testdata/record.sh")
	var b strings.Builder
	b.WriteString("[plugins.exec]\nenabled = true\ngrace = \"200ms\"\n")
	for _, r := range rules {
		name, rest, _ := strings.Cut(r, "|")
		path, extra, _ := strings.Cut(rest, "|")
		fmt.Fprintf(&b, "\n[[plugins.exec.rule]]\nname = %q\npath = %q\ncommand = [%q, \"--domain\", \"{domid}\", \"{path}\"]\n%s\n",
			name, path, script, strings.ReplaceAll(extra, "$OUT", out))
	}
	return b.String()
}

// TestExec: through bin/mtwatchd, a rule runs its command with the argv and
// environment of the in-process golden file, a timeout kills the command's
// process group, the counters reach the control API and /metrics, and
// SIGHUP adds a rule.
func TestExec(t *testing.T) {
	t.Parallel()
	in := xenstoredtest.Start(t)
	out := t.TempDir()
	cfg := execRules(out,
		`memory-target|/local/domain/{domid}/memory/target|env = { OUT = "$OUT", MODE = "strict" }`+"\ntimeout = \"30s\"",
		`hang|/local/domain/{domid}/data/hang|env = { OUT = "$OUT", ACTION = "hang" }`+"\ntimeout = \"300ms\"")
	a := newAgent(t, in, cfg)
	a.run()
	a.domain(5)
	a.write("/local/domain/5/memory/target", "1024")
	got := waitFile(a, filepath.Join(out, "memory-target.5.0"))
	golden(t, filepath.Join(root, "plugin/exec/testdata/golden/memory-target.txt"),
		strings.ReplaceAll(got, filepath.Join(root, "plugin/exec/testdata/record.sh"), "record.sh"))

	a.write("/local/domain/5/data/hang", "1")
	pid, err := strconv.Atoi(strings.TrimSpace(waitFile(a, filepath.Join(out, "grandchild.5.0"))))
	if err != nil {
		t.Fatal(err)
	}
	a.wait(10*time.Second, "timeout in /metrics", func() bool {
		m, err := a.ctl.Metrics(t.Context())
		return err == nil && strings.Contains(m, `mtwatch_exec_runs_total{result="timeout",rule="hang"} 1`)
	})
	if proctest.Alive(pid) {
		syscall.Kill(pid, syscall.SIGKILL)
		t.Fatalf("grandchild %d survived the timeout", pid)
	}
	m, _ := a.ctl.Metrics(t.Context())
	if !strings.Contains(m, `mtwatch_exec_runs_total{result="ok",rule="memory-target"} 1`) {
		t.Errorf("/metrics lacks the ok run:\n%s", m)
	}
	if ps := pluginStatus(t, a, exec.Name); !ps.Enabled || ps.Watches != 2 {
		t.Errorf("exec status %+v", ps)
	}
	if !strings.Contains(a.Stderr.String(), "a line on stderr") || !strings.Contains(a.Stderr.String(), "rule=memory-target") {
		t.Errorf("command output not logged with its rule")
	}

	// SIGHUP with one more rule: the new rule runs.
	cfg += fmt.Sprintf("\n[[plugins.exec.rule]]\nname = \"new\"\npath = \"/local/domain/{domid}/new\"\ncommand = [%q]\nenv = { OUT = %q }\n",
		filepath.Join(root, "plugin/exec/testdata/record.sh"), out)
	if err := os.WriteFile(a.config, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	a.Signal(syscall.SIGHUP)
	a.wait(10*time.Second, "three watches after SIGHUP", func() bool { return pluginStatus(t, a, exec.Name).Watches == 3 })
	a.write("/local/domain/5/new", "1")
	waitFile(a, filepath.Join(out, "new.5.0"))
}

// TestExecShutdownKillsStubborn: through bin/mtwatchd, SIGTERM while a rule's
// command and its grandchild ignore SIGTERM: draining ends early enough for
// the exec plugin's Stop to SIGKILL the group and wait for it, so nothing is
// left behind and mtwatchd exits 0 within shutdown_timeout.
func TestExecShutdownKillsStubborn(t *testing.T) {
	t.Parallel()
	in := xenstoredtest.Start(t)
	out := t.TempDir()
	cfg := "[agent]\nshutdown_timeout = \"3s\"\n\n" + strings.Replace(execRules(out,
		`stubborn|/local/domain/{domid}/data/hang|env = { OUT = "$OUT", ACTION = "stubborn" }`+"\ntimeout = \"60s\""),
		`grace = "200ms"`, `grace = "1s"`, 1)
	a := newAgent(t, in, cfg)
	a.run()
	a.domain(5)
	a.write("/local/domain/5/data/hang", "1")
	pid, err := strconv.Atoi(strings.TrimSpace(waitFile(a, filepath.Join(out, "grandchild.5.0"))))
	if err != nil {
		t.Fatal(err)
	}
	defer syscall.Kill(pid, syscall.SIGKILL)
	took := a.terminate()
	if took > 3*time.Second {
		t.Errorf("SIGTERM took %v, over shutdown_timeout (3s)", took)
	}
	a.gone(pid, took)
}

// TestConfigErrors: a bad plugin section stops mtwatchd with exit status 78
// and an error naming the file, line and key.
func TestConfigErrors(t *testing.T) {
	t.Parallel()
	in := xenstoredtest.Start(t)
	for _, tc := range []struct{ name, text, line, want string }{
		{"domid in a segment", "[plugins.exec]\nenabled = true\n\n[[plugins.exec.rule]]\nname = \"a\"\npath = \"/local/domain/dom{domid}\"\ncommand = [\"/bin/true\"]\n",
			":6:", "rule[0].path"},
		{"empty command", "[plugins.exec]\nenabled = true\n[[plugins.exec.rule]]\nname = \"a\"\npath = \"/x\"\ncommand = [\"/bin/true\"]\n[[plugins.exec.rule]]\nname = \"b\"\npath = \"/y\"\ncommand = []\n",
			":10:", "rule[1].command"},
		{"unknown key", "[plugins.exec]\nenabled = true\n[[plugins.exec.rule]]\nname = \"a\"\npath = \"/x\"\ncommand = [\"/bin/true\"]\ncomand = [\"/bin/true\"]\n",
			":7:", "comand"},
		{"hotplug type", "[plugins.hotplug]\nenabled = true\ntypes = [\"vbd\", \"v if\"]\n",
			":3:", "types[1]"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a := newAgent(t, in, tc.text)
			if code := a.exit(); code != 78 {
				t.Fatalf("exit status %d, want 78\n%s", code, a.Stderr.String())
			}
			msg := a.Stderr.String()
			if !strings.Contains(msg, a.config+tc.line) || !strings.Contains(msg, tc.want) {
				t.Errorf("error %q, want %s%s ... %s", msg, a.config, tc.line, tc.want)
			}
		})
	}
}

// TestDisabled: a disabled plugin, or one left off by default, registers
// no watch and runs nothing.
func TestDisabled(t *testing.T) {
	t.Parallel()
	out := t.TempDir()
	for i, cfg := range []string{
		strings.Replace(execRules(out, `r|/local/domain/{domid}/x|env = { OUT = "$OUT" }`), "enabled = true", "enabled = false", 1) +
			"\n[plugins.hotplug]\nenabled = false\n",
		"", // defaults: both are off
	} {
		in := xenstoredtest.Start(t)
		a := newAgent(t, in, cfg)
		a.run()
		for _, name := range []string{exec.Name, hotplug.Name} {
			if ps := pluginStatus(t, a, name); ps.Enabled || ps.Watches != 0 {
				t.Errorf("config %d: %s status %+v", i, name, ps)
			}
		}
		a.domain(3)
		a.write("/local/domain/3/x", "1")
	}
	time.Sleep(300 * time.Millisecond)
	if m, _ := filepath.Glob(filepath.Join(out, "r.*")); len(m) != 0 {
		t.Errorf("a disabled rule ran: %v", m)
	}
}

// TestExecReloadKeepsQueuedEvents: through SIGHUP, an unchanged rule keeps
// the events queued while its command was busy; a removed rule is gone.
func TestExecReloadKeepsQueuedEvents(t *testing.T) {
	t.Parallel()
	in := xenstoredtest.Start(t)
	out := t.TempDir()
	gate := filepath.Join(out, "gate")
	if err := os.WriteFile(gate, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	keep := `keep|/local/domain/{domid}/data|env = { OUT = "$OUT", ACTION = "gate" }`
	a := newAgent(t, in, execRules(out, keep, `old|/local/domain/{domid}/old|env = { OUT = "$OUT" }`))
	a.run()
	a.domain(4)
	a.write("/local/domain/4/data/a", "1")
	waitFile(a, filepath.Join(out, "started.4.0"))
	a.write("/local/domain/4/data/b", "1", "/local/domain/4/data/c", "1")
	a.wait(10*time.Second, "queued events", func() bool {
		d, err := a.ctl.Domain(t.Context(), 4)
		return err == nil && d.Queued == 2
	})
	if err := os.WriteFile(a.config, []byte(execRules(out, keep)), 0o644); err != nil {
		t.Fatal(err)
	}
	a.Signal(syscall.SIGHUP)
	a.wait(10*time.Second, "one watch after SIGHUP", func() bool { return pluginStatus(t, a, exec.Name).Watches == 1 })
	os.Remove(gate)
	a.wait(20*time.Second, "queued events run", func() bool {
		m, _ := filepath.Glob(filepath.Join(out, "keep.4.[0-9]"))
		return len(m) == 3
	})
	a.write("/local/domain/4/old", "1")
	time.Sleep(200 * time.Millisecond)
	if m, _ := filepath.Glob(filepath.Join(out, "old.*")); len(m) != 0 {
		t.Errorf("removed rule ran: %v", m)
	}
}
