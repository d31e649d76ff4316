package proc

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/mtwatch/mtwatch/internal/proctest"
)

type lines struct {
	mu sync.Mutex
	l  []string
}

func (l *lines) add(stream, line string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.l = append(l.l, stream+": "+line)
}

func (l *lines) get() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.l)
}

func sh(script string, args ...string) Spec {
	return Spec{Path: "/bin/sh", Args: append([]string{"sh", "-c", script, "sh"}, args...), Env: []string{"PATH=/usr/bin:/bin"}}
}

func TestRun(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name     string
		spec     Spec
		exit     int
		ok       bool
		want     []string
		timedOut bool
	}{
		{name: "ok", spec: sh(`echo out; echo err >&2`), ok: true, want: []string{"stderr: err", "stdout: out"}},
		{name: "exit status", spec: sh(`exit 3`), exit: 3},
		{name: "stdin is /dev/null", spec: sh(`read x; echo "read=$? [$x]"`), ok: true, want: []string{"stdout: read=1 []"}},
		{name: "argv and env", spec: func() Spec {
			s := sh(`echo "$0 $1 $2 FOO=$FOO"`, "a b", "c")
			s.Env = append(s.Env, "FOO=bar")
			return s
		}(), ok: true, want: []string{"stdout: sh a b c FOO=bar"}},
		{name: "last line without newline", spec: sh(`printf 'x\ny'`), ok: true, want: []string{"stdout: x", "stdout: y"}},
		{name: "timeout", spec: func() Spec { s := sh(`exec sleep 60`); s.Timeout = 50 * time.Millisecond; return s }(), exit: -1, timedOut: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			var l lines
			tc.spec.Line = l.add
			r := Run(context.Background(), tc.spec)
			if r.OK() != tc.ok || r.ExitCode != tc.exit || r.TimedOut != tc.timedOut {
				t.Fatalf("result %+v, want ok=%v exit=%d timedOut=%v", r, tc.ok, tc.exit, tc.timedOut)
			}
			if tc.timedOut && !errors.Is(r.Err, ErrTimeout) {
				t.Errorf("error %v does not wrap ErrTimeout", r.Err)
			}
			got := l.get()
			slices.Sort(got)
			if tc.want != nil && !slices.Equal(got, tc.want) {
				t.Errorf("lines %q, want %q", got, tc.want)
			}
		})
	}
}

func TestStartError(t *testing.T) {
	t.Parallel()
	r := Run(context.Background(), Spec{Path: "/nonexistent/cmd", Args: []string{"cmd"}})
	if r.OK() || r.ExitCode != -1 || !errors.Is(r.Err, os.ErrNotExist) {
		t.Fatalf("result %+v", r)
	}
}

func TestLongLineIsCut(t *testing.T) {
	t.Parallel()
	var l lines
	s := sh(`head -c 10000 /dev/zero | tr '\0' a; echo; echo next`)
	s.Line = l.add
	if r := Run(context.Background(), s); !r.OK() {
		t.Fatal(r.Err)
	}
	got := l.get()
	if len(got) != 2 || !strings.HasSuffix(got[0], " [cut]") || len(got[0]) > MaxLine+20 || got[1] != "stdout: next" {
		t.Fatalf("lines %d: %.40q ... %q", len(got), got, got[len(got)-1])
	}
}

// alive reports whether pid runs and is not a zombie.
// gone waits until pid has exited: a SIGKILL sent to a process group takes
// effect when each member is next scheduled, which on a loaded host can be a
// moment after kill(2) returned.
func gone(pid int) bool {
	deadline := time.Now().Add(5 * time.Second)
	for proctest.Alive(pid) {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(10 * time.Millisecond)
	}
	return true
}

func readPid(t *testing.T, file string) int {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		b, err := os.ReadFile(file)
		if err == nil && strings.HasSuffix(string(b), "\n") {
			pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
			if err != nil {
				t.Fatal(err)
			}
			return pid
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s never written", file)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestTimeoutKillsGroup: a grandchild of a timed-out command must not
// survive it, whether it obeys SIGTERM or ignores it.
func TestTimeoutKillsGroup(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name   string
		script string
		killed bool
	}{
		{"obeys SIGTERM", `sleep 600 & echo $! > "$1"; wait`, false},
		{"ignores SIGTERM", `trap '' TERM; (trap '' TERM; exec sleep 600) & echo $! > "$1"; while :; do sleep 0.05; done`, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			file := filepath.Join(t.TempDir(), "pid")
			s := sh(tc.script, file)
			s.Timeout = 300 * time.Millisecond
			s.Grace = 200 * time.Millisecond
			r := Run(context.Background(), s)
			if !r.TimedOut || r.Killed != tc.killed {
				t.Fatalf("result %+v, want timed out, killed=%v", r, tc.killed)
			}
			if pid := readPid(t, file); !gone(pid) {
				syscall.Kill(pid, syscall.SIGKILL)
				t.Fatalf("grandchild %d survived", pid)
			}
		})
	}
}

func TestCancelKillsGroup(t *testing.T) {
	t.Parallel()
	file := filepath.Join(t.TempDir(), "pid")
	ctx, cancel := context.WithCancel(context.Background())
	s := sh(`sleep 600 & echo $! > "$1"; wait`, file)
	s.Grace = 100 * time.Millisecond
	done := make(chan Result)
	go func() { done <- Run(ctx, s) }()
	pid := readPid(t, file)
	cancel()
	r := <-done
	if !r.Cancelled || !errors.Is(r.Err, context.Canceled) {
		t.Fatalf("result %+v", r)
	}
	if !gone(pid) {
		syscall.Kill(pid, syscall.SIGKILL)
		t.Fatalf("grandchild %d survived", pid)
	}
}

// A daemon left behind by a command that exits on its own keeps running, as
// under libxl, and does not hold Run beyond a short wait for its pipes.
func TestDaemonLeftBehind(t *testing.T) {
	t.Parallel()
	file := filepath.Join(t.TempDir(), "pid")
	s := sh(`sleep 600 & echo $! > "$1"`, file)
	start := time.Now()
	r := Run(context.Background(), s)
	pid := readPid(t, file)
	defer syscall.Kill(pid, syscall.SIGKILL)
	if !r.OK() || time.Since(start) > 5*time.Second {
		t.Fatalf("result %+v after %v", r, time.Since(start))
	}
	if !proctest.Alive(pid) {
		t.Fatalf("daemon %d was killed", pid)
	}
}

func TestEnv(t *testing.T) {
	t.Setenv("NOTIFY_SOCKET", "/run/systemd/notify")
	t.Setenv("MTWATCH_TEST_KEEP", "1")
	env := Env()
	if slices.ContainsFunc(env, func(s string) bool { return strings.HasPrefix(s, "NOTIFY_SOCKET=") }) {
		t.Error("NOTIFY_SOCKET passed on")
	}
	if !slices.Contains(env, "MTWATCH_TEST_KEEP=1") {
		t.Error("environment not passed on")
	}
	if got := SetEnv([]string{"A=1", "B=2", "AB=3"}, "A", "x"); !slices.Equal(got, []string{"B=2", "AB=3", "A=x"}) {
		t.Errorf("SetEnv: %q", got)
	}
}

// TestControlBytesEscaped: control characters and bytes that are not
// UTF-8 in a command's output reach Line escaped; text, tabs and
// backslashes as they are.
func TestControlBytesEscaped(t *testing.T) {
	t.Parallel()
	var got lines
	s := sh(`printf 'a\033[2Jb\007\tc\r\n\303\251 \377 \302\233x \\\\x1b\n'`)
	s.Line = got.add
	if r := Run(context.Background(), s); !r.OK() {
		t.Fatalf("result %+v", r)
	}
	want := []string{`stdout: a\x1b[2Jb\x07` + "\t" + `c\x0d`, `stdout: é \xff \u009bx \\x1b`}
	if l := got.get(); !slices.Equal(l, want) {
		t.Fatalf("lines %q, want %q", l, want)
	}
}

// TestOutcome: each way a real run can end has its outcome, the one the
// exec and hotplug plugins count.
func TestOutcome(t *testing.T) {
	t.Parallel()
	stopped := NewGroup()
	if err := stopped.Stop(context.Background()); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		run  func() Result
		want Outcome
	}{
		{"exit 0", func() Result { return Run(context.Background(), sh(`exit 0`)) }, OutcomeOK},
		{"exit status", func() Result { return Run(context.Background(), sh(`exit 3`)) }, OutcomeFailed},
		{"killed by a signal", func() Result { return Run(context.Background(), sh(`kill -KILL $$`)) }, OutcomeFailed},
		{"timeout", func() Result {
			s := sh(`exec sleep 60`)
			s.Timeout = 50 * time.Millisecond
			return Run(context.Background(), s)
		}, OutcomeTimeout},
		{"not started", func() Result {
			return Run(context.Background(), Spec{Path: "/nonexistent/cmd", Args: []string{"cmd"}})
		}, OutcomeError},
		{"group stopping", func() Result { return stopped.Run(sh(`exit 0`)) }, OutcomeError},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			if r := tc.run(); r.Outcome() != tc.want {
				t.Fatalf("result %+v: outcome %q, want %q", r, r.Outcome(), tc.want)
			}
		})
	}
}
