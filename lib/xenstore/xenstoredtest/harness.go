package xenstoredtest

import (
	"context"
	"errors"
	"io"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/mtwatch/mtwatch/lib/domid"
)

// Instance is a Server owned by one test: every failure fails the test, with
// xenstored's output and the tail of its trace. Server gives the Server
// itself, whose methods return their errors.
type Instance struct {
	srv *Server
	t   testing.TB
}

// Start launches a private xenstored for t with tracing on, and stops it
// when t ends: the kind $MTWATCH_TEST_XENSTORED selects (Kind tells which).
// args are C xenstored arguments; an oxenstored instance refuses them. It
// never skips: a missing xenstored or gcc fails the test with the package
// to install.
func Start(t testing.TB, args ...string) *Instance {
	t.Helper()
	return StartWith(t, Config{Args: args})
}

// StartWith is Start with a Config (its Dir and Detach are ignored); the
// trace is always on. A test that needs settings of one daemon (oxenstored's
// quotas, say) picks them by KindFromEnv.
func StartWith(t testing.TB, cfg Config) *Instance {
	t.Helper()
	cfg.Dir, cfg.Detach, cfg.Trace = "", false, true
	s, err := Launch(context.Background(), cfg)
	if err != nil {
		t.Fatalf("xenstoredtest: %v", err)
	}
	in := &Instance{srv: s, t: t}
	t.Cleanup(func() {
		if t.Failed() {
			in.dumpDiagnostics()
		}
		s.Close()
	})
	return in
}

func (in *Instance) dumpDiagnostics() {
	in.t.Logf("%s output:\n%s", in.Kind(), in.Output())
	if log := in.DaemonLog(); log != "" {
		lines := strings.Split(log, "\n")
		if len(lines) > 60 {
			lines = lines[len(lines)-60:]
		}
		in.t.Logf("%s log (tail):\n%s", in.Kind(), strings.Join(lines, "\n"))
	}
	trace, err := readTail(in.TracePath(), traceKept)
	if err != nil {
		return
	}
	// Keep the trace's tail beyond the run dir's removal, and show its end.
	if f, err := os.CreateTemp("", "mtwatch-xenstored-trace-*"); err == nil {
		f.Write(trace)
		f.Close()
		in.t.Logf("xenstored trace kept at %s", f.Name())
	}
	lines := strings.Split(string(trace), "\n")
	if len(lines) > 60 {
		lines = lines[len(lines)-60:]
	}
	in.t.Logf("xenstored trace (tail):\n%s", strings.Join(lines, "\n"))
}

// Server returns the Server the instance runs.
func (in *Instance) Server() *Server { return in.srv }

// Socket is Server.Socket.
func (in *Instance) Socket() string { return in.srv.Socket() }

// Dir is Server.Dir.
func (in *Instance) Dir() string { return in.srv.Dir() }

// TracePath is Server.TracePath.
func (in *Instance) TracePath() string { return in.srv.TracePath() }

// Env is Server.Env.
func (in *Instance) Env() []string { return in.srv.Env() }

// Command is Server.Command.
func (in *Instance) Command(name string, args ...string) *exec.Cmd {
	return in.srv.Command(name, args...)
}

// Output is Server.Output.
func (in *Instance) Output() string { return in.srv.Output() }

// Pid is Server.Pid.
func (in *Instance) Pid() int { return in.srv.Pid() }

// Kind is Server.Kind.
func (in *Instance) Kind() Kind { return in.srv.Kind() }

// MaxValue is Server.MaxValue.
func (in *Instance) MaxValue(path string) int { return in.srv.MaxValue(path) }

// DaemonLog is Server.DaemonLog.
func (in *Instance) DaemonLog() string { return in.srv.DaemonLog() }

// CreateDomain creates guest id (its /local/domain node and INTRODUCE).
func (in *Instance) CreateDomain(id domid.ID) {
	in.t.Helper()
	if err := in.srv.CreateDomain(id); err != nil {
		in.t.Fatalf("xenstoredtest: %v", err)
	}
}

// IntroduceDomain sends INTRODUCE for guest id.
func (in *Instance) IntroduceDomain(id domid.ID) {
	in.t.Helper()
	if err := in.srv.IntroduceDomain(id); err != nil {
		in.t.Fatalf("xenstoredtest: %v", err)
	}
}

// KillDomain kills guest id and waits until xenstored has released it.
func (in *Instance) KillDomain(id domid.ID) {
	in.t.Helper()
	if err := in.srv.KillDomain(id); err != nil {
		in.t.Fatalf("xenstoredtest: %v", err)
	}
}

// Restart stops and restarts xenstored on the same socket.
func (in *Instance) Restart() {
	in.t.Helper()
	if err := in.srv.Restart(context.Background()); err != nil {
		in.t.Fatalf("xenstoredtest: restart: %v", err)
	}
}

// Stop stops xenstored (it can be started again with Restart).
func (in *Instance) Stop() {
	in.t.Helper()
	if err := in.srv.Stop(); err != nil {
		in.t.Fatalf("xenstoredtest: stop: %v", err)
	}
}

// Run runs a client program (e.g. xenstore-write) against the instance and
// returns its trimmed standard output, failing the test on error.
func (in *Instance) Run(name string, args ...string) string {
	in.t.Helper()
	out, err := in.Command(name, args...).Output()
	if err != nil {
		msg := ""
		if errors.Is(err, exec.ErrNotFound) {
			msg = "install the Debian package that provides it (xenstore-utils for the xenstore-* tools)"
		}
		if ee, ok := err.(*exec.ExitError); ok {
			msg = string(ee.Stderr)
		}
		in.t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, msg)
	}
	return strings.TrimRight(string(out), "\n")
}

// traceKept is how much of a failed test's trace is kept: its end, where
// the failure is.
const traceKept = 16 << 20

// readTail reads at most the last n bytes of the file at path.
func readTail(path string, n int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	off := max(fi.Size()-n, 0)
	b := make([]byte, fi.Size()-off)
	k, err := f.ReadAt(b, off)
	if err != nil && !errors.Is(err, io.EOF) {
		return nil, err
	}
	return b[:k], nil
}
