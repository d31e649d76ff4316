// Package plugins_test runs the exec and hotplug plugins through the real
// bin/mtwatchd against a real xenstored, with real scripts from the
// plugins' testdata: the black-box side of their in-process tests.
package plugins_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/mtwatch/mtwatch/internal/daemontest"
	"github.com/mtwatch/mtwatch/internal/goldenfile"
	"github.com/mtwatch/mtwatch/internal/proctest"
	"github.com/mtwatch/mtwatch/lib/control"
	"github.com/mtwatch/mtwatch/lib/domid"
	"github.com/mtwatch/mtwatch/lib/node"
	"github.com/mtwatch/mtwatch/lib/xenstore"
	"github.com/mtwatch/mtwatch/lib/xenstore/xenstoredtest"

	"github.com/mtwatch/mtwatch/internal/testenv"
)

var (
	binary   string // bin/mtwatchd built as make build does (daemontest.Build)
	root     string // the module's root
	buildErr error
)

func TestMain(m *testing.M) {
	testenv.Scrub()
	dir, err := os.MkdirTemp("", "mtwatchd-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	root, _ = filepath.Abs("../..")
	binary, buildErr = daemontest.Build(dir)
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// agent is a bin/mtwatchd, with a XenStore client of the test's own.
type agent struct {
	*daemontest.Daemon
	t      testing.TB
	in     *xenstoredtest.Instance
	c      *xenstore.Client
	ctl    *control.Client
	config string
}

// newAgent prepares an agent with the configuration text; run starts it.
func newAgent(t testing.TB, in *xenstoredtest.Instance, config string, args ...string) *agent {
	t.Helper()
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	d := daemontest.New(t, daemontest.Options{
		Binary:   binary,
		Config:   config,
		Xenstore: in.Socket(),
		Args:     append([]string{"--log-format", "text", "--log-level", "debug"}, args...),
		// The scripts' xenstore-* clients find xenstored through the
		// agent's environment, as on a real host they find the default
		// socket.
		Env: in.Env(),
	})
	return &agent{Daemon: d, t: t, in: in, ctl: d.Control, config: d.ConfigPath}
}

// run starts the agent, waits for READY=1 on a real notify socket and
// dials the test's XenStore client.
func (a *agent) run() {
	t := a.t
	t.Helper()
	a.Start()
	a.WaitReady()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var err error
	a.c, err = xenstore.Dial(ctx, xenstore.WithPath(a.in.Socket()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.c.Close() })
}

// exit runs an agent expected to exit on its own and returns its status.
func (a *agent) exit() int {
	a.t.Helper()
	a.Start()
	return a.Wait(30 * time.Second)
}

// terminate sends mtwatchd SIGTERM and waits up to 20 s for it to exit;
// it returns how long that took and fails the test unless the exit status
// is 0 (with shutdown_timeout set, the stop is bounded).
func (a *agent) terminate() time.Duration {
	a.t.Helper()
	begin := time.Now()
	a.Signal(syscall.SIGTERM)
	select {
	case <-a.Exited():
	case <-time.After(20 * time.Second):
		a.t.Fatal("mtwatchd did not exit within 20 s of SIGTERM")
	}
	took := time.Since(begin)
	if code := a.Cmd.ProcessState.ExitCode(); code != 0 {
		a.t.Errorf("exit status %d after SIGTERM, want 0", code)
	}
	return took
}

// gone fails the test if process pid outlives mtwatchd by more than a
// second: the SIGKILL of its command's group or cgroup was sent before
// mtwatchd exited, and its delivery is not synchronous with the reaping.
func (a *agent) gone(pid int, took time.Duration) {
	a.t.Helper()
	for end := time.Now().Add(time.Second); proctest.Alive(pid) && time.Now().Before(end); {
		time.Sleep(10 * time.Millisecond)
	}
	if proctest.Alive(pid) {
		a.t.Fatalf("grandchild %d outlived mtwatchd (SIGTERM took %v)", pid, took)
	}
}

// domain creates guest id with its mtwatch node, as the toolstack and its
// hooks do, and waits for the agent to give it a worker (or, with a single
// worker, to know its node).
func (a *agent) domain(id domid.ID) {
	a.t.Helper()
	a.in.CreateDomain(id)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := node.Create(ctx, a.c, id, ""); err != nil {
		a.t.Fatal(err)
	}
	single := a.status().Mode == control.ModeSingleWorker
	a.wait(20*time.Second, fmt.Sprintf("worker of domain %d", id), func() bool {
		d, err := a.ctl.Domain(ctx, uint16(id))
		return err == nil && d.Node && (single || d.Worker == control.WorkerLive)
	})
}

func (a *agent) wait(timeout time.Duration, what string, cond func() bool) {
	a.t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			a.t.Fatalf("%s: not within %v", what, timeout)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func (a *agent) write(kv ...string) {
	a.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for i := 0; i+1 < len(kv); i += 2 {
		if err := a.c.Write(ctx, kv[i], []byte(kv[i+1])); err != nil {
			a.t.Fatal(err)
		}
	}
}

func (a *agent) read(path string) (string, bool) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	v, err := a.c.Read(ctx, path)
	return string(v), err == nil
}

func (a *agent) status() control.Status {
	a.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st, err := a.ctl.Status(ctx)
	if err != nil {
		a.t.Fatal(err)
	}
	return st
}

func waitFile(a *agent, file string) string {
	var b []byte
	a.wait(20*time.Second, "file "+filepath.Base(file), func() bool {
		var err error
		b, err = os.ReadFile(file)
		return err == nil
	})
	return string(b)
}

func golden(t *testing.T, file, got string) {
	t.Helper()
	goldenfile.Check(t, file, got)
}
