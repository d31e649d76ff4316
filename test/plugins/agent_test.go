// Package plugins_test runs the exec and hotplug plugins through the real
// bin/mtwatchd against a real xenstored, with real scripts from the
// plugins' testdata: the black-box side of their in-process tests.
package plugins_test

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/mtwatch/mtwatch/internal/goldenfile"
	"github.com/mtwatch/mtwatch/lib/control"
	"github.com/mtwatch/mtwatch/lib/domid"
	"github.com/mtwatch/mtwatch/lib/node"
	"github.com/mtwatch/mtwatch/lib/xenstore"
	"github.com/mtwatch/mtwatch/lib/xenstore/xenstoredtest"

	"github.com/mtwatch/mtwatch/internal/testenv"
)

var (
	binary   string // bin/mtwatchd built as make build does
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
	binary = filepath.Join(dir, "mtwatchd")
	build := exec.Command("go", "build", "-trimpath", "-o", binary, "./cmd/mtwatchd")
	build.Dir = root
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		buildErr = fmt.Errorf("go build ./cmd/mtwatchd: %v\n%s", err, out)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// agent is a running bin/mtwatchd.
type agent struct {
	t      testing.TB
	in     *xenstoredtest.Instance
	c      *xenstore.Client
	cmd    *exec.Cmd
	ctl    *control.Client
	config string
	stderr *xenstoredtest.LockedBuffer
	exited chan struct{}
	dir    string
}

// newAgent prepares an agent with the configuration text; run starts it.
func newAgent(t testing.TB, in *xenstoredtest.Instance, config string, args ...string) *agent {
	t.Helper()
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	dir := t.TempDir()
	a := &agent{t: t, in: in, dir: dir, stderr: &xenstoredtest.LockedBuffer{}, exited: make(chan struct{})}
	a.config = filepath.Join(dir, "mtwatchd.toml")
	if err := os.WriteFile(a.config, []byte(config), 0o644); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "control.sock")
	a.cmd = exec.Command(binary, append([]string{"--config", a.config, "--xenstore", in.Socket(),
		"--control", sock, "--log-format", "text", "--log-level", "debug"}, args...)...)
	// The scripts' xenstore-* clients find xenstored through the agent's
	// environment, as on a real host they find the default socket.
	a.cmd.Env = append(os.Environ(), in.Env()...)
	a.cmd.Stderr = a.stderr
	a.cmd.Stdout = a.stderr
	a.ctl = control.NewClient(sock)
	return a
}

// run starts the agent and waits for READY=1 on a real notify socket.
func (a *agent) run() {
	t := a.t
	t.Helper()
	nsock := filepath.Join(a.dir, "notify.sock")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: nsock, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	a.cmd.Env = append(a.cmd.Env, "NOTIFY_SOCKET="+nsock)
	if err := a.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { a.cmd.Wait(); close(a.exited) }()
	t.Cleanup(func() {
		a.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-a.exited:
		case <-time.After(30 * time.Second):
			a.cmd.Process.Kill()
			<-a.exited
			t.Error("mtwatchd did not stop on SIGTERM")
		}
		if t.Failed() {
			t.Logf("mtwatchd output:\n%s", a.stderr.String())
		}
	})
	ready := make(chan error, 1)
	go func() {
		buf := make([]byte, 4096)
		for {
			conn.SetReadDeadline(time.Now().Add(30 * time.Second))
			n, err := conn.Read(buf)
			if err != nil {
				ready <- err
				return
			}
			if strings.Contains("\n"+string(buf[:n]), "\nREADY=1") {
				ready <- nil
				return
			}
		}
	}()
	select {
	case err := <-ready:
		if err != nil {
			t.Fatalf("no READY=1 from mtwatchd: %v\n%s", err, a.stderr.String())
		}
	case <-a.exited:
		t.Fatalf("mtwatchd exited: %v\n%s", a.cmd.ProcessState, a.stderr.String())
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	a.c, err = xenstore.Dial(ctx, xenstore.WithPath(a.in.Socket()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.c.Close() })
}

// exit runs an agent expected to exit on its own and returns its status.
func (a *agent) exit() int {
	a.t.Helper()
	if err := a.cmd.Start(); err != nil {
		a.t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { a.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		a.cmd.Process.Kill()
		<-done
		a.t.Fatalf("mtwatchd did not exit:\n%s", a.stderr.String())
	}
	return a.cmd.ProcessState.ExitCode()
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
