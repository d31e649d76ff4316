package proc

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// escape starts a grandchild that leaves the command's process group and
// session (a double fork and setsid, as a daemon does), writes its pid to
// $1 and hangs; with $2 = "term" the grandchild ignores SIGTERM.
const escape = `( setsid sh -c '[ "$2" = term ] && trap "" TERM; sleep 600 & echo $! > "$1.tmp"; mv "$1.tmp" "$1"; wait' sh "$1" "$2" </dev/null >/dev/null 2>&1 & ); sleep 600`

// needCgroup fails a test that needs a writable cgroup v2: make test runs
// as root on a machine with one.
func needCgroup(t *testing.T) string {
	t.Helper()
	dir, err := Confinement()
	if dir == "" {
		t.Fatalf("no writable cgroup v2 for the agent's commands: %v", err)
	}
	return dir
}

// ownCgroups lists the command cgroups of this process left in dir.
func ownCgroups(dir string) []string {
	m, _ := filepath.Glob(filepath.Join(dir, fmt.Sprintf("%s%d-[0-9]*", cgPrefix, os.Getpid())))
	return m
}

// TestCgroupEndsEscaped: a run ended by its timeout or by its context ends
// the processes that left its process group and session too, whether or
// not they obey SIGTERM, and its cgroup is removed.
func TestCgroupEndsEscaped(t *testing.T) {
	t.Parallel()
	needCgroup(t)
	for _, tc := range []struct {
		name   string
		term   string
		cancel bool
	}{
		{"timeout", "", false},
		{"timeout, SIGTERM ignored", "term", false},
		{"cancelled", "", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			file := filepath.Join(t.TempDir(), "pid")
			s := sh(escape, file, tc.term)
			s.Grace = 200 * time.Millisecond
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			if !tc.cancel {
				s.Timeout = 500 * time.Millisecond
			}
			done := make(chan Result, 1)
			go func() { done <- Run(ctx, s) }()
			pid := readPid(t, file)
			defer syscall.Kill(pid, syscall.SIGKILL)
			if tc.cancel {
				cancel()
			}
			r := <-done
			if r.OK() {
				t.Fatalf("result %+v", r)
			}
			if !gone(pid) {
				t.Fatalf("escaped grandchild %d survived the end of the run", pid)
			}
		})
	}
}

// TestCgroupGroupStop: Group.Stop, the agent's stop, ends a running
// command's escaped grandchild too.
func TestCgroupGroupStop(t *testing.T) {
	t.Parallel()
	needCgroup(t)
	g := NewGroup()
	file := filepath.Join(t.TempDir(), "pid")
	done := make(chan Result, 1)
	go func() {
		s := sh(escape, file, "term")
		s.Grace = 200 * time.Millisecond
		done <- g.Run(s)
	}()
	pid := readPid(t, file)
	defer syscall.Kill(pid, syscall.SIGKILL)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := g.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	<-done
	if !gone(pid) {
		t.Fatalf("escaped grandchild %d outlived Stop", pid)
	}
}

// TestCgroupDaemonLeftBehind: a daemon left by a command that exited on its
// own keeps running in the run's cgroup, which is removed once it is empty.
func TestCgroupDaemonLeftBehind(t *testing.T) {
	t.Parallel()
	dir := needCgroup(t)
	file := filepath.Join(t.TempDir(), "pid")
	s := sh(`sleep 600 & echo $! > "$1"`, file)
	if r := Run(context.Background(), s); !r.OK() {
		t.Fatalf("result %+v", r)
	}
	pid := readPid(t, file)
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(b), "/"+cgPrefix) {
		syscall.Kill(pid, syscall.SIGKILL)
		t.Fatalf("daemon %d is not in a command cgroup: %s", pid, b)
	}
	cg := strings.TrimSpace(string(b)[strings.LastIndex(string(b), "/"+cgPrefix)+1:])
	syscall.Kill(pid, syscall.SIGKILL)
	if !gone(pid) {
		t.Fatal("daemon not killed")
	}
	// The next run removes what is empty.
	Run(context.Background(), sh(`exit 0`))
	if _, err := os.Stat(filepath.Join(dir, cg)); !os.IsNotExist(err) {
		t.Fatalf("cgroup %s of a daemon gone still there: %v", cg, err)
	}
}

// TestProcessGroupFallback: without a cgroup, a run ended by its timeout
// still ends its whole process group (what escaped it, only a cgroup ends:
// README).
func TestProcessGroupFallback(t *testing.T) {
	t.Parallel()
	file := filepath.Join(t.TempDir(), "pid")
	s := sh(`sleep 600 & echo $! > "$1"; wait`, file)
	s.noCgroup = true
	s.Timeout = 300 * time.Millisecond
	s.Grace = 200 * time.Millisecond
	if r := Run(context.Background(), s); !r.TimedOut {
		t.Fatalf("result %+v", r)
	}
	if pid := readPid(t, file); !gone(pid) {
		syscall.Kill(pid, syscall.SIGKILL)
		t.Fatalf("group member %d survived", pid)
	}
}

// TestCgroupAfterStartError: a command that cannot start says nothing
// about cgroups: the next runs are still confined.
func TestCgroupAfterStartError(t *testing.T) {
	t.Parallel()
	needCgroup(t)
	if r := Run(context.Background(), Spec{Path: "/nonexistent/cmd", Args: []string{"cmd"}}); r.OK() {
		t.Fatal("a missing program started")
	}
	if dir, err := Confinement(); dir == "" {
		t.Fatalf("cgroups given up after a missing program: %v", err)
	}
}
