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
	"github.com/mtwatch/mtwatch/lib/xenstore/xenstoredtest"
)

// TestExecReloadNeverDelaysShutdown: through bin/mtwatchd, a SIGHUP that
// removes or changes a rule whose command is running (and would run for
// a minute) leaves the signal loop free: SIGTERM right after it stops the
// agent within shutdown_timeout, exit status 0, nothing left behind.
func TestExecReloadNeverDelaysShutdown(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ name, reloaded string }{
		{"removed", ""},
		{"changed", `hang|/local/domain/{domid}/data/hang|env = { OUT = "$OUT", ACTION = "hang" }` + "\ntimeout = \"59s\""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			in := xenstoredtest.Start(t)
			out := t.TempDir()
			head := "[agent]\nshutdown_timeout = \"3s\"\n\n"
			a := newAgent(t, in, head+execRules(out,
				`hang|/local/domain/{domid}/data/hang|env = { OUT = "$OUT", ACTION = "hang" }`+"\ntimeout = \"60s\""))
			a.run()
			a.domain(5)
			a.write("/local/domain/5/data/hang", "1")
			pid, err := strconv.Atoi(strings.TrimSpace(waitFile(a, filepath.Join(out, "grandchild.5.0"))))
			if err != nil {
				t.Fatal(err)
			}
			defer syscall.Kill(pid, syscall.SIGKILL)
			var rules []string
			if tc.reloaded != "" {
				rules = append(rules, tc.reloaded)
			}
			if err := os.WriteFile(a.config, []byte(head+execRules(out, rules...)), 0o644); err != nil {
				t.Fatal(err)
			}
			a.Signal(syscall.SIGHUP)
			time.Sleep(300 * time.Millisecond) // into the reload, and whatever it waits for
			took := a.terminate()
			if took > 3*time.Second {
				t.Errorf("SIGTERM took %v, over shutdown_timeout (3s)", took)
			}
			a.gone(pid, took)
		})
	}
}

// TestExecFixedPathNoRunWithoutChange: through bin/mtwatchd, a rule on a
// fixed path whose node never existed runs nothing at start, after a
// reload that registers its watch again, or after a reconnection to a
// restarted xenstored: xenstored's registration event is no change. A
// write of the node then runs it once.
func TestExecFixedPathNoRunWithoutChange(t *testing.T) {
	t.Parallel()
	in := xenstoredtest.Start(t)
	out := t.TempDir()
	const base = "/local/domain/0/mtwatch-test"
	script := filepath.Join(root, "plugin/exec/testdata/record.sh")
	rules := func(timeout string) string {
		var b strings.Builder
		b.WriteString("[plugins.exec]\nenabled = true\n")
		for _, r := range [][2]string{{"fixed", base + "/trigger"}, {"sync", base + "/sync"}} {
			fmt.Fprintf(&b, "\n[[plugins.exec.rule]]\nname = %q\npath = %q\ncommand = [%q, \"{path}\"]\nenv = { OUT = %q }\ntimeout = %q\n",
				r[0], r[1], script, out, timeout)
		}
		return b.String()
	}
	a := newAgent(t, in, rules("10s"))
	a.run()
	// The sync rule's events run on the default worker after whatever the
	// fixed rule had queued before them.
	n := 0
	sync := func() {
		t.Helper()
		n++
		a.write(fmt.Sprintf("%s/sync/%d", base, n), "")
		want := fmt.Sprintf("env XS_PATH=%s/sync/%d\n", base, n)
		a.wait(20*time.Second, "sync rule run "+strconv.Itoa(n), func() bool {
			files, _ := filepath.Glob(filepath.Join(out, "sync..*"))
			for _, f := range files {
				if b, _ := os.ReadFile(f); strings.Contains(string(b), want) {
					return true
				}
			}
			return false
		})
	}
	runs := func() int {
		files, _ := filepath.Glob(filepath.Join(out, "fixed..*"))
		return len(files)
	}
	sync()
	if k := runs(); k != 0 {
		t.Fatalf("the fixed rule ran %d times at start without a change", k)
	}
	if err := os.WriteFile(a.config, []byte(rules("11s")), 0o644); err != nil {
		t.Fatal(err)
	}
	a.Signal(syscall.SIGHUP)
	a.wait(10*time.Second, "reload", func() bool { return strings.Contains(a.Stderr.String(), "exec rules reloaded") })
	sync()
	if k := runs(); k != 0 {
		t.Fatalf("the fixed rule ran %d times after a reload without a change", k)
	}
	in.Restart()
	a.wait(30*time.Second, "reconnection", func() bool {
		st := a.status()
		return st.Xenstore.Reconnects >= 1 && st.Xenstore.State == "connected"
	})
	a.redial()
	sync()
	if k := runs(); k != 0 {
		t.Fatalf("the fixed rule ran %d times after a reconnection without a change", k)
	}
	a.write(base+"/trigger", "1")
	waitFile(a, filepath.Join(out, "fixed..0"))
	sync()
	if k := runs(); k != 1 {
		t.Fatalf("the fixed rule ran %d times for one write, want 1", k)
	}
}

// TestExecEscapedEnded: through bin/mtwatchd, a command's grandchild that
// left its process group and session (double fork, setsid) is ended with
// the command, by its timeout and by the agent's stop.
func TestExecEscapedEnded(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ name, timeout string }{{"timeout", "500ms"}, {"stop", "60s"}} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			in := xenstoredtest.Start(t)
			out := t.TempDir()
			a := newAgent(t, in, "[agent]\nshutdown_timeout = \"3s\"\n\n"+execRules(out,
				`escape|/local/domain/{domid}/data/escape|env = { OUT = "$OUT", ACTION = "escape" }`+"\ntimeout = \""+tc.timeout+"\""))
			a.run()
			// READY arrives over NOTIFY_SOCKET, the log line through a pipe that
			// os/exec copies on its own goroutine: either may come first.
			a.wait(5*time.Second, "the cgroup v2 confinement log line", func() bool {
				return strings.Contains(a.Stderr.String(), "commands are confined by cgroup v2")
			})
			a.domain(5)
			a.write("/local/domain/5/data/escape", "1")
			pid, err := strconv.Atoi(strings.TrimSpace(waitFile(a, filepath.Join(out, "grandchild.5.0"))))
			if err != nil {
				t.Fatal(err)
			}
			defer syscall.Kill(pid, syscall.SIGKILL)
			if tc.name == "stop" {
				a.terminate()
			}
			for end := time.Now().Add(5 * time.Second); proctest.Alive(pid) && time.Now().Before(end); {
				time.Sleep(10 * time.Millisecond)
			}
			if proctest.Alive(pid) {
				t.Fatalf("escaped grandchild %d outlived its command's %s", pid, tc.name)
			}
		})
	}
}

// TestReloadXenstoredFrozenNeverDelaysShutdown: through bin/mtwatchd, a
// SIGHUP that adds a rule while xenstored is frozen (its WATCH gets no
// answer) leaves the signal loop free: SIGTERM still stops the agent
// within shutdown_timeout.
func TestReloadXenstoredFrozenNeverDelaysShutdown(t *testing.T) {
	t.Parallel()
	in := xenstoredtest.Start(t)
	out := t.TempDir()
	head := "[agent]\nshutdown_timeout = \"3s\"\n\n"
	a := newAgent(t, in, head+execRules(out, `one|/local/domain/{domid}/one|env = { OUT = "$OUT" }`))
	a.run()
	if err := os.WriteFile(a.config, []byte(head+execRules(out,
		`one|/local/domain/{domid}/one|env = { OUT = "$OUT" }`,
		`two|/local/domain/{domid}/two|env = { OUT = "$OUT" }`)), 0o644); err != nil {
		t.Fatal(err)
	}
	pid := in.Pid()
	syscall.Kill(pid, syscall.SIGSTOP)
	defer syscall.Kill(pid, syscall.SIGCONT)
	a.Signal(syscall.SIGHUP)
	time.Sleep(300 * time.Millisecond) // into the reload's WATCH
	if took := a.terminate(); took > 5*time.Second {
		t.Errorf("SIGTERM took %v with shutdown_timeout 3s", took)
	}
}
