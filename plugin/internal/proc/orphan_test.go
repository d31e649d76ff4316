package proc

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/mtwatch/mtwatch/internal/proctest"
)

// leave starts script (sh -c, with args) in its own process group and in
// the cgroup rel below the agent's (made if needed; "" for the agent's own
// cgroup), as an earlier mtwatchd would have left it: not through Run, and
// reaped in the background. The cgroup and whatever is left in it go at
// the end of the test.
func leave(t *testing.T, rel, script string, args ...string) int {
	t.Helper()
	parent := needCgroup(t)
	cmd := exec.Command("/bin/sh", append([]string{"-c", script, "sh"}, args...)...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if rel != "" {
		dir := filepath.Join(parent, rel)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			for d := dir; d != parent; d = filepath.Dir(d) {
				c := &cgroup{dir: d}
				c.kill()
				for end := time.Now().Add(2 * time.Second); c.populated() && time.Now().Before(end); {
					time.Sleep(time.Millisecond)
				}
				os.Remove(d)
			}
		})
		f, err := os.Open(dir)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		cmd.SysProcAttr.UseCgroupFD = true
		cmd.SysProcAttr.CgroupFD = int(f.Fd())
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go cmd.Wait()
	pid := cmd.Process.Pid
	t.Cleanup(func() { syscall.Kill(-pid, syscall.SIGKILL) })
	return pid
}

// TestOrphanEndsEscaped: a command an earlier mtwatchd left in one of its
// command cgroups is ended with everything in that cgroup, the grandchild
// that left its process group and session (setsid, double fork) included,
// whether or not it obeys SIGTERM; Release removes the cgroup.
func TestOrphanEndsEscaped(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name, term string
		killed     bool
	}{
		{"obeys SIGTERM", "", false},
		{"ignores SIGTERM", "term", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			// An agent pid no process has: the mtwatchd that died.
			rel := cgPrefix + "4194999-" + map[string]string{"": "1", "term": "2"}[tc.term]
			file := filepath.Join(t.TempDir(), "pid")
			script := leave(t, rel, escape, file, tc.term)
			grandchild := readPid(t, file)
			defer syscall.Kill(grandchild, syscall.SIGKILL)

			o := Adopt(script)
			dir := filepath.Join(needCgroup(t), rel)
			if o.Cgroup() != dir {
				t.Fatalf("Adopt(%d): cgroup %q, want %q", script, o.Cgroup(), dir)
			}
			if killed := o.End(200 * time.Millisecond); killed != tc.killed {
				t.Errorf("End: SIGKILL needed %v, want %v", killed, tc.killed)
			}
			if !gone(script) {
				t.Errorf("script %d survived", script)
			}
			if !gone(grandchild) {
				t.Fatalf("grandchild %d, which left the process group, survived End", grandchild)
			}
			o.Release()
			if _, err := os.Stat(dir); !os.IsNotExist(err) {
				t.Errorf("cgroup %s not removed: %v", dir, err)
			}
		})
	}
}

// TestOrphanForeignCgroup: a command in a cgroup that is not one of the
// agent's command cgroups (the agent's own, another program's beside them,
// one nested in a command cgroup, a name that only looks like one) is
// ended by its process group alone: another process in that cgroup lives
// on.
func TestOrphanForeignCgroup(t *testing.T) {
	t.Parallel()
	for _, rel := range []string{
		"",                         // the agent's own cgroup
		"other-1",                  // another program's
		cgPrefix + "1-2/sub",       // below a command cgroup
		cgPrefix + "1-probe",       // the probe's name
		cgPrefix + "01-2",          // not as Run writes a pid
		cgPrefix + "1",             // no sequence number
		"x" + cgPrefix + "1-2",     // a longer name
		cgPrefix + "1-2-3",         // a longer name
		"nested/" + cgPrefix + "1", // not a direct child
	} {
		t.Run(rel, func(t *testing.T) {
			t.Parallel()
			file := filepath.Join(t.TempDir(), "pid")
			script := leave(t, rel, `sleep 600 & echo $! > "$1.tmp"; mv "$1.tmp" "$1"; wait`, file)
			member := readPid(t, file)
			bystander := leave(t, rel, `exec sleep 600`)
			o := Adopt(script)
			if o.Cgroup() != "" {
				t.Fatalf("Adopt took cgroup %s", o.Cgroup())
			}
			if o.String() != fmt.Sprintf("process group %d", script) {
				t.Errorf("String %q", o.String())
			}
			o.End(100 * time.Millisecond)
			if !gone(script) || !gone(member) {
				t.Fatalf("the process group of %d survived", script)
			}
			if !proctest.Alive(bystander) {
				t.Fatalf("process %d of the same cgroup, outside the orphan's group, was killed", bystander)
			}
			o.Release() // nothing to remove
			if rel != "" {
				if _, err := os.Stat(filepath.Join(needCgroup(t), rel)); err != nil {
					t.Errorf("Release removed a cgroup not its own: %v", err)
				}
			}
		})
	}
}

// TestOrphanGone: a pid with no process has no cgroup, and ending it does
// nothing. (End's refusal of pids 0 and 1 is not exercised: a regression
// would signal the test's own process group, or init.)
func TestOrphanGone(t *testing.T) {
	t.Parallel()
	cmd := exec.Command("/bin/true")
	if err := cmd.Run(); err != nil {
		t.Fatal(err)
	}
	for _, pid := range []int{cmd.Process.Pid} {
		o := Adopt(pid)
		if o.Cgroup() != "" {
			t.Errorf("Adopt(%d): cgroup %s", pid, o.Cgroup())
		}
		if o.End(10 * time.Millisecond) {
			t.Errorf("End(%d) needed SIGKILL", pid)
		}
		o.Release()
	}
}

func TestCommandCgroupName(t *testing.T) {
	for name, want := range map[string]bool{
		"mtwatch-1-2": true, "mtwatch-4194304-18446744073709551615": true,
		"mtwatch-": false, "mtwatch-1-": false, "mtwatch--2": false, "mtwatch-1-probe": false,
		"mtwatch-01-2": false, "mtwatch-1-02": false, "mtwatch-1-2-3": false, "mtwatch-+1-2": false,
		"Mtwatch-1-2": false, "other": false, "": false,
	} {
		if got := commandCgroup(name); got != want {
			t.Errorf("commandCgroup(%q) = %v, want %v", name, got, want)
		}
	}
}

// TestCgroupNameTaken: a command cgroup of the name the next run would
// take, left by an earlier mtwatchd that had this agent's pid (a
// container's, restarted) with its command still in it, neither gives up
// cgroups nor is taken over: the run gets the next name.
//
// Not parallel: no other test's run takes the name first.
func TestCgroupNameTaken(t *testing.T) {
	parent := needCgroup(t)
	next := fmt.Sprintf("%s%d-%d", cgPrefix, os.Getpid(), cgSeq.Load()+1)
	if err := os.Mkdir(filepath.Join(parent, next), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.Remove(filepath.Join(parent, next)) })
	file := filepath.Join(t.TempDir(), "cg")
	if r := Run(context.Background(), sh(`cat /proc/self/cgroup > "$1"`, file)); !r.OK() {
		t.Fatalf("result %+v", r)
	}
	b, _ := os.ReadFile(file)
	if dir, err := Confinement(); dir == "" {
		t.Fatalf("cgroups given up: %v", err)
	}
	if !strings.Contains(string(b), "/"+cgPrefix) || strings.Contains(string(b), "/"+next+"\n") {
		t.Errorf("run's cgroup %q, want one of its own other than %s", b, next)
	}
}
