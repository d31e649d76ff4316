package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/mtwatch/mtwatch/internal/daemontest"
	"github.com/mtwatch/mtwatch/lib/control"
	"github.com/mtwatch/mtwatch/lib/domid"
	"github.com/mtwatch/mtwatch/lib/node"
	"github.com/mtwatch/mtwatch/lib/xenstore/xenstoredtest"

	"github.com/mtwatch/mtwatch/internal/testenv"
)

// The test binary doubles as mtwatchd, so the tests run the real main
// (under -race in make test) as a separate process, as systemd does.
func TestMain(m *testing.M) {
	if os.Getenv(daemontest.AsMain) == "1" {
		main()
		os.Exit(0)
	}
	testenv.Scrub()
	os.Exit(m.Run())
}

// spawn starts mtwatchd (this test binary's main) against in (nil: none)
// with its control socket at sock and args; env adds variables.
func spawn(t *testing.T, in *xenstoredtest.Instance, sock string, env []string, args ...string) *daemontest.Daemon {
	t.Helper()
	return spawnBinary(t, "", nil, in, sock, env, args...)
}

// spawnBinary is spawn for the binary bin ("" or this test binary: its
// main); stderr, if not nil, is where the agent's stderr goes instead of
// d.Stderr.
func spawnBinary(t *testing.T, bin string, stderr *os.File, in *xenstoredtest.Instance, sock string, env []string, args ...string) *daemontest.Daemon {
	t.Helper()
	// This binary runs main only when told to; a real mtwatchd ignores it.
	env = append([]string{daemontest.AsMain + "=1"}, env...)
	o := daemontest.Options{Binary: bin, Stderr: stderr, Control: sock, Env: env, Args: args}
	if in != nil {
		o.Xenstore = in.Socket()
	}
	d := daemontest.New(t, o)
	d.Start()
	return d
}

// waitWorkers waits until the guests with a live worker are exactly want.
func waitWorkers(t *testing.T, cl *control.Client, want ...uint16) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	var got []uint16
	for time.Now().Before(deadline) {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		doms, err := cl.Domains(ctx)
		cancel()
		got = got[:0]
		if err == nil {
			for _, d := range doms {
				if d.Worker == control.WorkerLive {
					got = append(got, d.Domid)
				}
			}
			if fmt.Sprint(got) == fmt.Sprint(want) {
				return
			}
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("live workers %v, want %v", got, want)
}

func hook(t *testing.T, in *xenstoredtest.Instance, args ...string) {
	t.Helper()
	bin := hookBinary(t)
	cmd := exec.Command(bin, args...)
	cmd.Env = append(os.Environ(), "MTWATCH_XENSTORE="+in.Socket())
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("mtwatch-hook %v: %v\n%s", args, err, out)
	}
}

var (
	hookOnce sync.Once
	hookBin  string
	hookErr  error
)

// hookBinary builds the real mtwatch-hook once.
func hookBinary(t *testing.T) string {
	hookOnce.Do(func() {
		dir, err := os.MkdirTemp("", "mtwatch-hook-bin")
		if err != nil {
			hookErr = err
			return
		}
		hookBin = filepath.Join(dir, "mtwatch-hook")
		out, err := exec.Command("go", "build", "-o", hookBin, "../mtwatch-hook").CombinedOutput()
		if err != nil {
			hookErr = fmt.Errorf("build mtwatch-hook: %v\n%s", err, out)
		}
	})
	if hookErr != nil {
		t.Fatal(hookErr)
	}
	return hookBin
}

// TestDaemon runs the real mtwatchd against a real xenstored: nodes written
// by mtwatch-hook and by xenstore-write make workers visible in the control
// API, removal retires them, systemd hears READY, STATUS, WATCHDOG and
// STOPPING in that order, and SIGTERM exits 0 within shutdown_timeout.
func TestDaemon(t *testing.T) {
	t.Parallel()
	in := xenstoredtest.Start(t)
	sock := daemontest.SocketPath(t)
	in.Run("xenstore-write", node.Dir+"/3", "") // present before start
	in.Run("xenstore-chmod", node.Dir+"/3", "n0")
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	metricsAddr := l.Addr().String()
	l.Close()
	d := spawn(t, in, sock, []string{"WATCHDOG_USEC=200000"}, "--auto-detect=false", "--log-level=debug", "--metrics-listen", metricsAddr)
	d.WaitReady()
	cl := control.NewClient(sock)
	defer cl.Close()
	waitWorkers(t, cl, 3)

	hook(t, in, "create", "5")
	in.Run("xenstore-write", node.Dir+"/7", "")
	waitWorkers(t, cl, 3, 5, 7)
	hook(t, in, "destroy", "5")
	in.Run("xenstore-rm", node.Dir+"/7")
	waitWorkers(t, cl, 3)

	fi, err := os.Stat(sock)
	if err != nil || fi.Mode().Perm() != 0o600 || fi.Mode()&os.ModeSocket == 0 {
		t.Fatalf("control socket %v %v", fi.Mode(), err)
	}
	if di, err := os.Stat(filepath.Dir(sock)); err != nil || di.Mode().Perm() != 0o755 {
		t.Fatalf("control socket dir %v %v", di.Mode(), err)
	}
	// curl --unix-socket works for root; another uid is kept out.
	curl := func(cred *syscall.Credential) string {
		cmd := exec.Command("curl", "-sS", "--unix-socket", sock, "-w", " %{http_code}", "http://localhost/v1/domains/3")
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
		out, err := cmd.CombinedOutput()
		if errors.Is(err, exec.ErrNotFound) {
			t.Fatal("curl is needed (Debian package curl, make deps)")
		}
		return string(out)
	}
	if out := curl(nil); !strings.HasSuffix(out, " 200") || !strings.Contains(strings.ReplaceAll(out, " ", ""), `"worker":"live"`) {
		t.Fatalf("curl --unix-socket: %s", out)
	}
	if os.Geteuid() == 0 {
		if out := curl(&syscall.Credential{Uid: 65534, Gid: 65534}); strings.Contains(out, "200") {
			t.Fatalf("uid 65534 got an answer: %s", out)
		}
	}
	st, err := cl.Status(context.Background())
	if err != nil || st.Mode != control.ModeMultiWorker || st.Xenstore.State != "connected" || st.PID != d.Pid() {
		t.Fatalf("status %+v %v", st, err)
	}
	d.WaitNotify("WATCHDOG=1")
	resp, err := http.Get("http://" + metricsAddr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(body), "mtwatch_workers 1") || !strings.Contains(string(body), "mtwatch_xenstore_connected 1") {
		t.Fatalf("--metrics-listen /metrics:\n%s", body)
	}
	if m, err := cl.Metrics(context.Background()); err != nil || !strings.Contains(m, "mtwatch_workers 1") {
		t.Fatalf("control /metrics: %v", err)
	}

	start := time.Now()
	d.Signal(syscall.SIGTERM)
	if code := d.Wait(15 * time.Second); code != 0 {
		t.Fatalf("exit %d after SIGTERM", code)
	}
	if took := time.Since(start); took > 10*time.Second {
		t.Fatalf("SIGTERM took %v, over shutdown_timeout", took)
	}
	// Order: READY, then STATUS, WATCHDOG, and STOPPING last of these.
	lines := d.Notify.Lines()
	idx := func(prefix string) int {
		for i, l := range lines {
			if strings.HasPrefix(l, prefix) {
				return i
			}
		}
		return -1
	}
	ready, status, wd, stopping := idx("READY=1"), idx("STATUS="), idx("WATCHDOG=1"), idx("STOPPING=1")
	lastStatus := -1
	for i, l := range lines {
		if strings.HasPrefix(l, "STATUS=") && i > ready {
			lastStatus = i
		}
	}
	if ready < 0 || status < 0 || wd < ready || lastStatus <= ready || stopping < wd || stopping != len(lines)-1 {
		t.Fatalf("notify order: %q", lines)
	}
	for _, l := range lines[:ready] {
		if strings.HasPrefix(l, "WATCHDOG") {
			t.Fatalf("WATCHDOG before READY: %q", lines)
		}
	}
	if _, err := os.Stat(sock); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("control socket left behind: %v", err)
	}
}

// TestDaemonKillRestartReconciles: after SIGKILL a new mtwatchd reconciles to
// the same worker set (and takes over the dead agent's socket); with
// auto-detection an introduced domain without a node counts too.
func TestDaemonKillRestartReconciles(t *testing.T) {
	t.Parallel()
	in := xenstoredtest.Start(t)
	sock := daemontest.SocketPath(t)
	d := spawn(t, in, sock, nil)
	d.WaitReady()
	cl := control.NewClient(sock)
	defer cl.Close()
	hook(t, in, "create", "4")
	in.CreateDomain(6) // introduced, no node
	waitWorkers(t, cl, 4, 6)
	d.Kill()

	d2 := spawn(t, in, sock, nil)
	d2.WaitReady()
	waitWorkers(t, cl, 4, 6)
	in.KillDomain(6)
	waitWorkers(t, cl, 4)
	d2.Stop()
}

// TestDaemonXenstoredRestart: xenstored killed and restarted; the agent
// reconnects (same process), re-registers its watches and reconciles.
func TestDaemonXenstoredRestart(t *testing.T) {
	t.Parallel()
	in := xenstoredtest.Start(t)
	sock := daemontest.SocketPath(t)
	d := spawn(t, in, sock, nil, "--auto-detect=false")
	d.WaitReady()
	cl := control.NewClient(sock)
	defer cl.Close()
	hook(t, in, "create", "4")
	waitWorkers(t, cl, 4)

	in.Restart() // a fresh xenstored: no nodes
	waitWorkers(t, cl)
	hook(t, in, "create", "8")
	waitWorkers(t, cl, 8)
	st, err := cl.Status(context.Background())
	if err != nil || st.Xenstore.Reconnects < 1 || st.Xenstore.State != "connected" || st.PID != d.Pid() {
		t.Fatalf("status %+v %v", st, err)
	}
	d.WaitNotify("STATUS=xenstored lost")
	if !strings.Contains(d.Stderr.String(), "reconnected to xenstored") {
		t.Fatalf("no reconnection in the log")
	}
}

// TestDaemonConfigErrors: configuration and usage errors exit 78 (EX_CONFIG), naming
// file:line:key for the file's.
func TestDaemonConfigErrors(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	write := func(name, text string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"unknown key", []string{"--config", write("a.toml", "[agent]\n\nauto_detekt = true\n")}, "a.toml:3: agent.auto_detekt"},
		{"unknown plugin", []string{"--config", write("b.toml", "[plugins.nope]\nenabled = true\n")}, "b.toml:1: plugins.nope"},
		{"plugin key", []string{"--config", write("c.toml", "# c\n[plugins.log]\nlevel = \"loud\"\n")}, "c.toml:3: plugins.log.level"},
		{"plugin unknown key", []string{"--config", write("d.toml", "[plugins.log]\npaths = [\"backend\"]\npath = \"x\"\n")}, "d.toml:3: plugins.log.path"},
		{"missing explicit file", []string{"--config", filepath.Join(dir, "none.toml")}, "none.toml"},
		{"bad flag", []string{"--no-such-flag"}, "no-such-flag"},
		{"bad log level", []string{"--log-level", "loud"}, "loud"},
		{"bad domid", []string{"--domid", "32752"}, "--domid: domid \"32752\""},
		{"bad domid in file", []string{"--config", write("e.toml", "[agent]\ndomid = \"-1\"\n")}, "e.toml:2: agent.domid"},
		{"argument", []string{"extra"}, "unexpected argument"},
		{"bad gomaxprocs", []string{"--gomaxprocs", "-2"}, "--gomaxprocs -2"},
		{"bad gomaxprocs in file", []string{"--config", write("f.toml", "[agent]\ngomaxprocs = -1\n")}, "f.toml:2: agent.gomaxprocs"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := spawn(t, nil, daemontest.SocketPath(t), []string{"MTWATCH_XENSTORE=/nonexistent"}, tt.args...)
			if code := d.Wait(10 * time.Second); code != 78 {
				t.Fatalf("exit %d, want 78; stderr %s", code, d.Stderr.String())
			}
			if !strings.Contains(d.Stderr.String(), tt.want) {
				t.Fatalf("stderr %q does not name %q", d.Stderr.String(), tt.want)
			}
		})
	}
}

// TestDaemonReload: SIGHUP applies the log level; an invalid file keeps the
// running configuration and logs file:line.
func TestDaemonReload(t *testing.T) {
	t.Parallel()
	in := xenstoredtest.Start(t)
	sock := daemontest.SocketPath(t)
	cfgPath := filepath.Join(t.TempDir(), "mtwatchd.toml")
	os.WriteFile(cfgPath, []byte("[log]\nlevel = \"info\"\n[agent]\nstall_threshold = \"10s\"\n"), 0o644)
	d := spawn(t, in, sock, nil, "--config", cfgPath)
	d.WaitReady()
	cl := control.NewClient(sock)
	defer cl.Close()

	os.WriteFile(cfgPath, []byte("[log]\nlevel = \"debug\"\n[agent]\nstall_threshold = \"3s\"\n"), 0o644)
	d.Signal(syscall.SIGHUP)
	waitFor(t, "stall threshold 3s", func() bool {
		st, err := cl.Status(context.Background())
		return err == nil && st.StallThresholdMS == 3000
	})
	hook(t, in, "create", "5")
	hook(t, in, "create", "5") // debug entries of the log plugin now show
	in.Run("xenstore-write", "backend/vif/5/0/state", "1")
	waitFor(t, "log plugin entry", func() bool { return strings.Contains(d.Stderr.String(), "path=backend/vif/5/0/state") })

	os.WriteFile(cfgPath, []byte("[agent]\nstall_threshold = \"1s\"\nbogus = 1\n"), 0o644)
	d.Signal(syscall.SIGHUP)
	waitFor(t, "reload error", func() bool { return strings.Contains(d.Stderr.String(), "mtwatchd.toml:3: agent.bogus") })
	if st, _ := cl.Status(context.Background()); st.StallThresholdMS != 3000 {
		t.Fatalf("invalid file changed the running config: %+v", st)
	}
	// A section of an unknown plugin: nothing changes, the level included.
	os.WriteFile(cfgPath, []byte("[log]\nlevel = \"info\"\n[agent]\nstall_threshold = \"1s\"\n[plugins.nope]\n"), 0o644)
	d.Signal(syscall.SIGHUP)
	waitFor(t, "reload error", func() bool { return strings.Contains(d.Stderr.String(), "mtwatchd.toml:5: plugins.nope") })
	in.Run("xenstore-write", "backend/vif/5/1/state", "1")
	waitFor(t, "debug entry after a refused reload", func() bool { return strings.Contains(d.Stderr.String(), "path=backend/vif/5/1/state") })
	if st, _ := cl.Status(context.Background()); st.StallThresholdMS != 3000 {
		t.Fatalf("refused reload changed the running config: %+v", st)
	}
	d.Stop()
}

// TestDaemonBadInput: entries that are not trusted nodes of canonical guest
// domids are logged once and change nothing.
func TestDaemonBadInput(t *testing.T) {
	t.Parallel()
	in := xenstoredtest.Start(t)
	sock := daemontest.SocketPath(t)
	d := spawn(t, in, sock, nil, "--auto-detect=false")
	d.WaitReady()
	cl := control.NewClient(sock)
	defer cl.Close()
	hook(t, in, "create", "5")
	waitWorkers(t, cl, 5)
	junk := strings.Repeat("j", in.MaxValue(node.Dir+"/5"))
	for _, name := range []string{"abc", "0", "32752", "0x10"} {
		in.Run("xenstore-write", node.Dir+"/"+name, "")
		in.Run("xenstore-write", node.Dir+"/"+name, "again")
	}
	in.Run("xenstore-write", node.Dir+"/5", junk)
	in.Run("xenstore-write", node.Dir+"/6", junk)
	hook(t, in, "create", "9") // a good node after the bad ones
	waitWorkers(t, cl, 5, 9)
	dom, err := cl.Domain(context.Background(), 5)
	if err != nil || dom.UUID != "" || dom.Worker != control.WorkerLive {
		t.Fatalf("domain 5 changed: %+v %v", dom, err)
	}
	if _, err := cl.Domain(context.Background(), 6); err == nil {
		t.Fatal("a node with a junk value made domain 6 known")
	}
	logs := d.Stderr.String()
	for _, name := range []string{"abc", "0", "32752", "0x10", "5", "6"} {
		if n := strings.Count(logs, "path="+node.Dir+"/"+name+" "); n != 1 {
			t.Errorf("%s logged %d times, want once", name, n)
		}
	}
	d.Stop()
}

// TestDaemonPrecedence: flags and environment override the file, which
// overrides the defaults.
func TestDaemonPrecedence(t *testing.T) {
	t.Parallel()
	in := xenstoredtest.Start(t)
	cfgPath := filepath.Join(t.TempDir(), "mtwatchd.toml")
	os.WriteFile(cfgPath, []byte("[agent]\nauto_detect = false\nsingle_worker = false\nstall_threshold = \"7s\"\n"), 0o644)
	sock := daemontest.SocketPath(t)
	d := spawn(t, in, sock, []string{"MTWATCH_SINGLE_WORKER=true"}, "--config", cfgPath)
	d.WaitReady()
	cl := control.NewClient(sock)
	defer cl.Close()
	st, err := cl.Status(context.Background())
	if err != nil || st.Mode != control.ModeSingleWorker || st.AutoDetect || st.StallThresholdMS != 7000 {
		t.Fatalf("status %+v %v", st, err)
	}
	// Single-worker: a node makes the domain known but no worker.
	hook(t, in, "create", "4")
	waitFor(t, "domain 4", func() bool {
		dom, err := cl.Domain(context.Background(), 4)
		return err == nil && dom.Node && dom.Worker == control.WorkerNone
	})
	d.Stop()

	d2 := spawn(t, in, daemontest.SocketPath(t), nil, "--config", cfgPath, "--auto-detect")
	d2.WaitReady()
	cl2 := control.NewClient(d2.Socket)
	defer cl2.Close()
	if st, err := cl2.Status(context.Background()); err != nil || !st.AutoDetect || st.Mode != control.ModeMultiWorker {
		t.Fatalf("status %+v %v", st, err)
	}
}

// TestDaemonGOMAXPROCS: the agent runs its Go code on one thread unless
// agent.gomaxprocs (file, flag, reload) or the GOMAXPROCS variable says
// otherwise; the variable wins.
func TestDaemonGOMAXPROCS(t *testing.T) {
	t.Parallel()
	in := xenstoredtest.Start(t)
	cfgPath := filepath.Join(t.TempDir(), "mtwatchd.toml")
	os.WriteFile(cfgPath, []byte("[agent]\n"), 0o644)
	procs := func(cl *control.Client) int {
		st, err := cl.Status(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		return st.GOMAXPROCS
	}
	d := spawn(t, in, daemontest.SocketPath(t), []string{"GOMAXPROCS="}, "--config", cfgPath)
	d.WaitReady()
	cl := control.NewClient(d.Socket)
	defer cl.Close()
	if got := procs(cl); got != 1 {
		t.Fatalf("default gomaxprocs %d, want 1", got)
	}
	os.WriteFile(cfgPath, []byte("[agent]\ngomaxprocs = 2\n"), 0o644)
	d.Signal(syscall.SIGHUP)
	waitFor(t, "gomaxprocs 2 after reload", func() bool { return procs(cl) == 2 })
	waitFor(t, "the change logged", func() bool { return strings.Contains(d.Stderr.String(), "gomaxprocs changed") })
	d.Stop()

	d2 := spawn(t, in, daemontest.SocketPath(t), []string{"GOMAXPROCS=3"}, "--config", cfgPath, "--gomaxprocs", "1")
	d2.WaitReady()
	cl2 := control.NewClient(d2.Socket)
	defer cl2.Close()
	if got := procs(cl2); got != 3 {
		t.Fatalf("gomaxprocs %d with GOMAXPROCS=3 in the environment", got)
	}
	if !strings.Contains(d2.Stderr.String(), "agent.gomaxprocs is ignored") {
		t.Fatalf("no notice that the variable overrides the setting: %s", d2.Stderr.String())
	}
}

func waitFor(t *testing.T, what string, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

var _ = domid.Dom0

// TestDaemonSocketActivation: started as mtwatchd.socket starts it, with the
// listening socket as fd 3 (LISTEN_FDS, LISTEN_PID), mtwatchd serves on it
// instead of making its own, and leaves it in place when it stops: the
// socket belongs to systemd.
func TestDaemonSocketActivation(t *testing.T) {
	t.Parallel()
	in := xenstoredtest.Start(t)
	sock := daemontest.SocketPath(t)
	os.MkdirAll(filepath.Dir(sock), 0o755)
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: sock, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	ln.SetUnlinkOnClose(false)
	f, err := ln.File()
	if err != nil {
		t.Fatal(err)
	}
	ln.Close()
	defer f.Close()
	// LISTEN_PID must be mtwatchd's own pid: sh execs it and keeps its pid.
	d := daemontest.New(t, daemontest.Options{
		Wrap:       []string{"/bin/sh", "-c", `LISTEN_PID=$$ exec "$0" "$@"`},
		Args:       []string{"--xenstore", in.Socket(), "--control", filepath.Join(t.TempDir(), "unused.sock")},
		Control:    sock,
		Env:        []string{"LISTEN_FDS=1"},
		ExtraFiles: []*os.File{f},
	})
	d.Start()
	d.WaitReady()
	st, err := d.Control.Status(context.Background())
	if err != nil || st.PID != d.Pid() {
		t.Fatalf("status over the passed socket: %+v %v", st, err)
	}
	d.Stop()
	if _, err := os.Stat(sock); err != nil {
		t.Fatalf("systemd's socket was removed: %v", err)
	}
}

// TestDaemonConfigValidated: values checked by the configuration's
// validation, from the file (named by file, line and key) or from a flag
// (named by the flag), are configuration errors (exit 78) before anything starts,
// an unusable metrics address included.
func TestDaemonConfigValidated(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	write := func(name, text string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	for _, tt := range []struct {
		name string
		args []string
		want string
	}{
		{"metrics address in file", []string{"--config", write("m.toml", "[control]\n\nmetrics_listen = \"localhost\"\n")}, "m.toml:3: control.metrics_listen"},
		{"metrics address flag", []string{"--metrics-listen", "127.0.0.1:99999"}, "--metrics-listen: "},
		{"log level in file", []string{"--config", write("l.toml", "[log]\nlevel = \"loud\"\n")}, "l.toml:2: log.level"},
		{"duration in file", []string{"--config", write("d.toml", "[agent]\nstale_grace = \"soon\"\n")}, "d.toml:2: agent.stale_grace"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			d := spawn(t, nil, daemontest.SocketPath(t), []string{"MTWATCH_XENSTORE=/nonexistent"}, tt.args...)
			if code := d.Wait(10 * time.Second); code != exitConfig {
				t.Fatalf("exit %d, want 78; stderr %s", code, d.Stderr.String())
			}
			if !strings.Contains(d.Stderr.String(), tt.want) {
				t.Fatalf("stderr %q does not name %q", d.Stderr.String(), tt.want)
			}
		})
	}
}
