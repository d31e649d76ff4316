// Package daemontest runs mtwatchd as a black box, the way systemd runs it:
// a separate process with a real NOTIFY_SOCKET whose READY=1 the test waits
// for, its control API, its standard error collected, and a stop by SIGTERM
// whose exit status is checked. mtwatchd's own tests, the plugins' black-box
// tests and the mtwatch CLI's tests all start it through here.
package daemontest

import (
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/mtwatch/mtwatch/internal/lockedbuf"
	"github.com/mtwatch/mtwatch/internal/testenv"
	"github.com/mtwatch/mtwatch/lib/control"
)

// AsMain is the environment variable that makes a test binary run
// mtwatchd's main instead of its tests: cmd/mtwatchd's TestMain checks it,
// and Options with no Binary set it.
const AsMain = "MTWATCHD_AS_MAIN"

// Timeouts of the harness: generous, since the machine may be loaded; a
// healthy mtwatchd is ready and stops within a second.
const (
	ReadyTimeout = 30 * time.Second
	StopTimeout  = 15 * time.Second
	// cleanupTimeout bounds the stop at the end of a test, which may
	// leave hung handlers for mtwatchd's shutdown_timeout to cut short.
	cleanupTimeout = 30 * time.Second
)

// Build builds mtwatchd as make build does (CGO_ENABLED=0, -trimpath) into
// dir and returns the binary's path. It runs from any package directory of
// the module.
func Build(dir string) (string, error) {
	bin := filepath.Join(dir, "mtwatchd")
	cmd := exec.Command("go", "build", "-trimpath", "-o", bin, "github.com/mtwatch/mtwatch/cmd/mtwatchd")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build ./cmd/mtwatchd: %v\n%s", err, out)
	}
	return bin, nil
}

// Options say how to run mtwatchd.
type Options struct {
	// Binary is the mtwatchd to run; empty runs the test binary itself
	// with AsMain=1 (cmd/mtwatchd's tests, under -race in make test).
	Binary string
	// Args are mtwatchd's arguments. They follow those the harness
	// passes (--config, --control, --xenstore, --log-format text), so a
	// flag given again here wins.
	Args []string
	// Config is the text of the configuration file passed with --config.
	// The default, an empty file, means the defaults, whatever /etc holds
	// on this machine.
	Config string
	// Xenstore is the xenstored socket (--xenstore), when set.
	Xenstore string
	// Control is the control socket (--control); empty picks a fresh one,
	// short enough for a unix socket's path.
	Control string
	// Env is added to the environment last, so it wins.
	Env []string
	// Wrap, when set, is a command that runs mtwatchd: the binary and Args
	// are appended to it (sh -c '... exec "$0" "$@"', unshare ...).
	Wrap []string
	// ExtraFiles are passed as fd 3 onwards.
	ExtraFiles []*os.File
	// JournalStream sets JOURNAL_STREAM to the device and inode of
	// mtwatchd's standard error, as systemd does when it connects a
	// unit's output to the journal.
	JournalStream bool
	// Stderr, when set, is mtwatchd's standard error instead of a pipe
	// the harness reads (its standard output is then /dev/null):
	// Daemon.Stderr stays empty.
	Stderr *os.File
}

// systemd are the variables systemd sets for a service, which would
// change what mtwatchd does; the harness sets the ones a test needs.
var systemd = []string{"NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES", "JOURNAL_STREAM"}

// Daemon is one mtwatchd process of a test.
type Daemon struct {
	t testing.TB
	// Cmd is the command; New returns it unstarted, to adjust.
	Cmd *exec.Cmd
	// Stderr holds what mtwatchd wrote to stderr and stdout so far.
	Stderr *lockedbuf.Buffer
	// Notify is the NOTIFY_SOCKET mtwatchd reports to.
	Notify *NotifySocket
	// Control is a client of mtwatchd's control API.
	Control *control.Client
	// Socket is the control socket's path.
	Socket string
	// ConfigPath is the configuration file written from Options.Config.
	ConfigPath string

	r, w   *os.File // stderr's pipe; r is nil with Options.Stderr
	copied chan struct{}
	exited chan struct{}
	err    error // of Cmd.Wait, once exited is closed
}

// Run starts mtwatchd and waits for its READY=1. The process is stopped
// when the test ends; see Start.
func Run(t testing.TB, o Options) *Daemon {
	t.Helper()
	d := New(t, o)
	d.Start()
	d.WaitReady()
	return d
}

// New prepares mtwatchd without starting it.
func New(t testing.TB, o Options) *Daemon {
	t.Helper()
	d := &Daemon{t: t, Stderr: &lockedbuf.Buffer{}, copied: make(chan struct{}), exited: make(chan struct{})}
	bin, env := o.Binary, environ()
	if bin == "" {
		self, err := os.Executable()
		if err != nil {
			t.Fatal(err)
		}
		bin, env = self, append(env, AsMain+"=1")
	}
	d.Socket = o.Control
	if d.Socket == "" {
		d.Socket = SocketPath(t)
	}
	d.ConfigPath = filepath.Join(t.TempDir(), "mtwatchd.toml")
	if err := os.WriteFile(d.ConfigPath, []byte(o.Config), 0o644); err != nil {
		t.Fatal(err)
	}
	d.Notify = ListenNotify(t)
	env = append(env, "NOTIFY_SOCKET="+d.Notify.Path)
	// Flags rather than MTWATCH_* variables: the commands mtwatchd runs
	// inherit its environment, and some tests compare theirs.
	args := []string{"--config", d.ConfigPath, "--control", d.Socket, "--log-format", "text"}
	if o.Xenstore != "" {
		args = append(args, "--xenstore", o.Xenstore)
	}
	if o.Stderr != nil {
		d.w = o.Stderr
		close(d.copied)
	} else {
		var err error
		if d.r, d.w, err = os.Pipe(); err != nil {
			t.Fatal(err)
		}
	}
	if o.JournalStream {
		var st syscall.Stat_t
		if err := syscall.Fstat(int(d.w.Fd()), &st); err != nil {
			t.Fatal(err)
		}
		env = append(env, fmt.Sprintf("JOURNAL_STREAM=%d:%d", st.Dev, st.Ino))
	}
	argv := append(append(append(append([]string(nil), o.Wrap...), bin), args...), o.Args...)
	d.Cmd = exec.Command(argv[0], argv[1:]...)
	d.Cmd.Env = append(env, o.Env...)
	d.Cmd.Stderr = d.w
	if o.Stderr == nil {
		d.Cmd.Stdout = d.w
	}
	d.Cmd.ExtraFiles = o.ExtraFiles
	d.Control = control.NewClient(d.Socket)
	t.Cleanup(func() {
		d.Control.Close()
		if d.r != nil {
			d.r.Close()
			d.w.Close()
		}
	})
	return d
}

// environ is the caller's environment without what would change mtwatchd
// (a test passes whatever the shell that runs it holds): what
// testenv.Scrub removes, and systemd's variables.
func environ() []string {
	var env []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		if !testenv.Scrubbed(k) && !slices.Contains(systemd, k) {
			env = append(env, kv)
		}
	}
	return env
}

// Start starts the prepared mtwatchd. When the test ends, a process still
// running gets SIGTERM and must exit 0 within 30 s (else it is killed,
// and the test fails); a failed test logs mtwatchd's output.
func (d *Daemon) Start() {
	t := d.t
	t.Helper()
	if err := d.Cmd.Start(); err != nil {
		t.Fatal(err)
	}
	if r := d.r; r != nil {
		// Only the child keeps the write end: the copier sees EOF once
		// the child and whatever it left holding its stderr are gone.
		d.w.Close()
		go func() {
			defer close(d.copied)
			buf := make([]byte, 4096)
			for {
				n, err := r.Read(buf)
				d.Stderr.Write(buf[:n])
				if err != nil {
					return
				}
			}
		}()
	}
	go func() { d.err = d.Cmd.Wait(); close(d.exited) }()
	t.Cleanup(func() {
		select {
		case <-d.exited:
		default:
			d.Cmd.Process.Signal(syscall.SIGTERM)
			select {
			case <-d.exited:
				if code := d.exitCode(); code != 0 {
					t.Errorf("mtwatchd: exit status %d after SIGTERM", code)
				}
			case <-time.After(cleanupTimeout):
				d.Cmd.Process.Kill()
				<-d.exited
				t.Errorf("mtwatchd did not stop within %v of SIGTERM", cleanupTimeout)
			}
		}
		d.waitOutput()
		if t.Failed() {
			t.Logf("mtwatchd output:\n%s", d.Stderr.String())
		}
	})
}

// WaitReady waits for READY=1 on the notify socket; mtwatchd exiting first
// fails the test.
func (d *Daemon) WaitReady() {
	d.t.Helper()
	d.WaitNotify("READY=1")
}

// WaitNotify waits for a notify line starting with prefix, for up to
// ReadyTimeout; mtwatchd exiting first fails the test.
func (d *Daemon) WaitNotify(prefix string) {
	d.t.Helper()
	if err := d.Notify.wait(prefix, ReadyTimeout, d.exited); err != nil {
		select {
		case <-d.exited:
			d.waitOutput()
			err = fmt.Errorf("%w (%v)", err, d.Cmd.ProcessState)
		default:
		}
		d.t.Fatalf("%v\nmtwatchd output:\n%s", err, d.Stderr.String())
	}
}

// Pid is mtwatchd's process id.
func (d *Daemon) Pid() int { return d.Cmd.Process.Pid }

// Signal sends sig to mtwatchd. A process that has exited gets nothing:
// the test notices through Exited or Wait, with its exit status.
func (d *Daemon) Signal(sig os.Signal) { d.Cmd.Process.Signal(sig) }

// Exited is closed once mtwatchd has exited; its last output may still be
// on its way to Stderr (Wait waits for it).
func (d *Daemon) Exited() <-chan struct{} { return d.exited }

// waitOutput waits for mtwatchd's output to be in Stderr; a process
// mtwatchd left behind may hold the pipe, so not for long.
func (d *Daemon) waitOutput() {
	select {
	case <-d.copied:
	case <-time.After(2 * time.Second):
	}
}

// Wait waits up to within for mtwatchd to exit, and for its output, and
// returns its exit status.
func (d *Daemon) Wait(within time.Duration) int {
	d.t.Helper()
	select {
	case <-d.exited:
	case <-time.After(within):
		d.t.Fatalf("mtwatchd still running after %v\n%s", within, d.Stderr.String())
	}
	d.waitOutput()
	return d.exitCode()
}

func (d *Daemon) exitCode() int {
	var ee *exec.ExitError
	if errors.As(d.err, &ee) {
		return ee.ExitCode()
	}
	if d.err != nil {
		d.t.Fatalf("mtwatchd: %v", d.err)
	}
	return 0
}

// Stop sends SIGTERM and requires exit status 0 within StopTimeout.
func (d *Daemon) Stop() {
	d.t.Helper()
	d.Signal(syscall.SIGTERM)
	if code := d.Wait(StopTimeout); code != 0 {
		d.t.Fatalf("mtwatchd: exit status %d after SIGTERM\n%s", code, d.Stderr.String())
	}
}

// Kill kills mtwatchd with SIGKILL and waits for it.
func (d *Daemon) Kill() {
	d.t.Helper()
	d.Cmd.Process.Kill()
	d.Wait(StopTimeout)
}

// SocketPath returns a fresh control socket path in a directory of mode
// 0755 (so that only the socket's own mode keeps others out) that mtwatchd
// has to create. A unix socket's path is short (108 bytes): t.TempDir can
// be too long.
func SocketPath(t testing.TB) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "mtwd")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	os.Chmod(dir, 0o755)
	return filepath.Join(dir, "run", "control.sock")
}

// NotifySocket is a real NOTIFY_SOCKET: a unixgram socket the test reads,
// as systemd (and go-systemd's own tests) do.
type NotifySocket struct {
	// Path is the socket's path, for NOTIFY_SOCKET.
	Path string
	conn *net.UnixConn
	mu   sync.Mutex
	msgs []string // one element per line of every datagram, in order
	got  chan struct{}
}

// ListenNotify opens a notify socket, closed when the test ends.
func ListenNotify(t testing.TB) *NotifySocket {
	t.Helper()
	path := filepath.Join(t.TempDir(), "notify")
	if len(path) >= 108 {
		dir, err := os.MkdirTemp("", "mtwn")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.RemoveAll(dir) })
		path = filepath.Join(dir, "notify")
	}
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	n := &NotifySocket{Path: path, conn: conn, got: make(chan struct{}, 1)}
	stopped := make(chan struct{})
	t.Cleanup(func() { conn.Close(); <-stopped })
	go func() {
		defer close(stopped)
		buf := make([]byte, 4096)
		for {
			k, err := conn.Read(buf)
			if err != nil {
				return
			}
			n.mu.Lock()
			n.msgs = append(n.msgs, strings.Split(strings.TrimSpace(string(buf[:k])), "\n")...)
			n.mu.Unlock()
			select {
			case n.got <- struct{}{}:
			default:
			}
		}
	}()
	return n
}

// Lines returns every line received so far, in order.
func (n *NotifySocket) Lines() []string {
	n.mu.Lock()
	defer n.mu.Unlock()
	return append([]string(nil), n.msgs...)
}

// Wait waits up to ReadyTimeout for a line starting with prefix.
func (n *NotifySocket) Wait(t testing.TB, prefix string) {
	t.Helper()
	if err := n.wait(prefix, ReadyTimeout, nil); err != nil {
		t.Fatal(err)
	}
}

// wait waits for a line starting with prefix, until timeout or until
// exited is closed.
func (n *NotifySocket) wait(prefix string, timeout time.Duration, exited <-chan struct{}) error {
	has := func() bool {
		return slices.ContainsFunc(n.Lines(), func(l string) bool { return strings.HasPrefix(l, prefix) })
	}
	deadline, gone := time.After(timeout), false
	for !has() {
		select {
		case <-n.got:
		case <-exited:
			// What it sent before exiting may still be in flight.
			exited, gone = nil, true
			deadline = time.After(200 * time.Millisecond)
		case <-deadline:
			if has() {
				return nil
			}
			if gone {
				return fmt.Errorf("mtwatchd exited without %q; notify lines %q", prefix, n.Lines())
			}
			return fmt.Errorf("no %q from mtwatchd within %v; notify lines %q", prefix, timeout, n.Lines())
		}
	}
	return nil
}
