// Package xenstoredtest runs private instances of the real xenstored, the C
// one (the default) or the OCaml oxenstored ($MTWATCH_TEST_XENSTORED), on
// hosts without a hypervisor, for tests and benchmarks (Start) and for
// programs such as the sandbox (Launch, Attach; see cmd/sandbox). The
// hypervisor calls the daemons make are emulated by the xenemu preload
// library, whose source this package embeds and builds with gcc on first
// use; guest domains are introduced over the socket and killed through
// xenemu's control directory, so @introduceDomain and @releaseDomain behave
// as on a Xen host.
package xenstoredtest

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/mtwatch/mtwatch/internal/lockedbuf"
	"github.com/mtwatch/mtwatch/lib/domid"
)

// Where Debian's xen-utils-4.17 installs the two daemons.
const (
	DefaultXenstored  = "/usr/lib/xen-4.17/bin/xenstored"
	DefaultOxenstored = "/usr/lib/xen-4.17/bin/oxenstored"
)

// Kind names a xenstored implementation.
type Kind string

const (
	// C is tools/xenstore's xenstored.
	C Kind = "c"
	// Oxenstored is tools/ocaml/xenstored, Debian's and XCP-ng's default.
	Oxenstored Kind = "oxenstored"
)

// Environment variables that override the defaults.
const (
	// EnvKind selects the daemon of every instance that does not name
	// one: "c" (the default) or "oxenstored".
	EnvKind = "MTWATCH_TEST_XENSTORED"
	// EnvXenstored names another binary of the selected kind.
	EnvXenstored = "MTWATCH_XENSTORED"
	// EnvXenemu names a prebuilt xenemu library, skipping the gcc step.
	EnvXenemu = "MTWATCH_XENEMU"
)

// KindFromEnv returns the kind $MTWATCH_TEST_XENSTORED selects, C when it
// is unset or empty.
func KindFromEnv() (Kind, error) {
	switch v := os.Getenv(EnvKind); Kind(v) {
	case "", C:
		return C, nil
	case Oxenstored:
		return Oxenstored, nil
	default:
		return "", fmt.Errorf("%s=%q: want %q or %q", EnvKind, v, C, Oxenstored)
	}
}

// ErrNotInstalled is returned when xenstored or gcc is missing; the message
// names the Debian package to install.
var ErrNotInstalled = errors.New("required program not installed")

// startTimeout bounds how long a start, stop or domain operation may take.
const startTimeout = 15 * time.Second

// Config describes an instance to launch.
type Config struct {
	// Dir is the run directory (socket, pid file, trace, xenemu control
	// files). Empty means a new temporary directory, removed by Close.
	Dir string
	// Kind is the daemon; empty means KindFromEnv.
	Kind Kind
	// Args are extra arguments of the C xenstored, e.g. quota options.
	Args []string
	// Settings are extra lines of oxenstored's configuration file
	// ("key = value", e.g. "quota-maxwatchevents = 8"); they override the
	// harness's own.
	Settings []string
	// Trace enables the trace file in Dir: the C xenstored's -T trace,
	// oxenstored's access log.
	Trace bool
	// Detach lets the daemon outlive this process (Close still stops
	// it): it runs in a session of its own, without a parent-death
	// signal, and writes its output to xenstored.log in Dir. Another
	// process reaches it with Attach.
	Detach bool
}

// Server is one running (or stopped) private xenstored.
type Server struct {
	cfg    Config
	ownDir bool
	bin    string
	lib    string

	mu      sync.Mutex
	cmd     *exec.Cmd         // the daemon, if this process started it
	pid     int               // the daemon found by Attach, if cmd is nil
	out     *lockedbuf.Buffer // nil when detached: see logPath
	exited  chan struct{}
	waitErr error
}

// Kind returns which daemon this is. Tests whose expectations differ
// between the two ask it, and say why next to the difference.
func (s *Server) Kind() Kind { return s.cfg.Kind }

// oxenstoredMaxSize is quota-maxsize as the harness configures it.
const oxenstoredMaxSize = 2048

// MaxValue returns the size of the largest value dom0 may write at path:
// what fits in one message beside the path for the C xenstored, which
// holds dom0 to no node-size quota; at most quota-maxsize for oxenstored,
// which holds every connection to it (quota.ml: _check) and refuses a byte
// more with E2BIG. (The harness's quota-maxsize: Settings that change it
// are not looked at.)
func (s *Server) MaxValue(path string) int {
	n := xsPayloadMax - len(path) - 1
	if s.cfg.Kind == Oxenstored {
		n = min(n, oxenstoredMaxSize)
	}
	return n
}

// xsPayloadMax is XENSTORE_PAYLOAD_MAX.
const xsPayloadMax = 4096

// Socket returns the path of the xenstored socket (XENSTORED_PATH).
func (s *Server) Socket() string { return filepath.Join(s.cfg.Dir, "socket") }

// Dir returns the run directory (XENSTORED_RUNDIR).
func (s *Server) Dir() string { return s.cfg.Dir }

// TracePath returns the path of the trace file, if tracing is on.
func (s *Server) TracePath() string { return filepath.Join(s.cfg.Dir, "trace") }

// Env returns the environment entries that point libxenstore clients (the
// xenstore-* CLIs, pyxs, our client) at this instance.
func (s *Server) Env() []string {
	return []string{"XENSTORED_PATH=" + s.Socket(), "XENSTORED_RUNDIR=" + s.cfg.Dir}
}

// Command returns an exec.Cmd for a client program pointed at this instance.
func (s *Server) Command(name string, args ...string) *exec.Cmd {
	cmd := exec.Command(name, args...)
	cmd.Env = append(os.Environ(), s.Env()...)
	return cmd
}

// Output returns what xenstored printed so far.
func (s *Server) Output() string {
	if s.cfg.Detach {
		b, _ := os.ReadFile(s.logPath())
		return string(b)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.out == nil {
		return ""
	}
	return s.out.String()
}

func (s *Server) logPath() string  { return filepath.Join(s.cfg.Dir, "xenstored.log") }
func (s *Server) pidPath() string  { return filepath.Join(s.cfg.Dir, "pid") }
func (s *Server) kindPath() string { return filepath.Join(s.cfg.Dir, "kind") }

// DaemonLog returns what the daemon logged to its own log file so far:
// oxenstored's xenstored-log-file; the C xenstored has none (see Output).
func (s *Server) DaemonLog() string {
	if s.cfg.Kind != Oxenstored {
		return ""
	}
	b, _ := os.ReadFile(filepath.Join(s.cfg.Dir, "oxenstored.log"))
	return string(b)
}

// Launch builds xenemu if needed and starts xenstored.
func Launch(ctx context.Context, cfg Config) (*Server, error) {
	if cfg.Kind == "" {
		k, err := KindFromEnv()
		if err != nil {
			return nil, err
		}
		cfg.Kind = k
	}
	if cfg.Kind != C && cfg.Kind != Oxenstored {
		return nil, fmt.Errorf("xenstored kind %q: want %q or %q", cfg.Kind, C, Oxenstored)
	}
	if cfg.Kind == Oxenstored && len(cfg.Args) > 0 {
		return nil, fmt.Errorf("oxenstored takes no xenstored arguments (%q): use Settings", cfg.Args)
	}
	if cfg.Kind == C && len(cfg.Settings) > 0 {
		return nil, fmt.Errorf("the C xenstored has no configuration file (settings %q): use Args", cfg.Settings)
	}
	bin, lib, err := programs(cfg.Kind)
	if err != nil {
		return nil, err
	}
	s := &Server{cfg: cfg, bin: bin, lib: lib}
	if s.cfg.Dir == "" {
		// Not t.TempDir: unix socket paths are limited to 108 bytes and test
		// names make those directories long.
		dir, err := os.MkdirTemp("", "xs")
		if err != nil {
			return nil, err
		}
		s.cfg.Dir, s.ownDir = dir, true
	}
	if err := s.Start(ctx); err != nil {
		s.Close()
		return nil, err
	}
	return s, nil
}

// Attach returns the Server that a process, this one or another, launched
// with Detach in dir, once it answers. Stop and Close stop it; Restart
// starts it again detached.
func Attach(ctx context.Context, dir string) (*Server, error) {
	s := &Server{cfg: Config{Dir: dir, Detach: true}}
	// Launch records the kind: Restart must start the same daemon. A run
	// directory from before there was a choice holds a C xenstored.
	s.cfg.Kind = C
	if k, err := os.ReadFile(s.kindPath()); err == nil {
		s.cfg.Kind = Kind(strings.TrimSpace(string(k)))
	} else if !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("xenstored in %s: %w", dir, err)
	}
	var err error
	if s.bin, s.lib, err = programs(s.cfg.Kind); err != nil {
		return nil, err
	}
	b, err := os.ReadFile(s.pidPath())
	if err != nil {
		return nil, fmt.Errorf("no xenstored in %s: %w", dir, err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 0 || syscall.Kill(pid, 0) != nil {
		return nil, fmt.Errorf("no xenstored in %s: pid file %q names no live process", dir, b)
	}
	s.pid = pid
	if err := s.waitReady(ctx, nil); err != nil {
		return nil, err
	}
	return s, nil
}

// Binary returns the path of the daemon of kind k: $MTWATCH_XENSTORED if
// set, else where Debian installs it; "" for an unknown kind.
func Binary(k Kind) string {
	if k != C && k != Oxenstored {
		return ""
	}
	if v := os.Getenv(EnvXenstored); v != "" {
		return v
	}
	if k == Oxenstored {
		return DefaultOxenstored
	}
	return DefaultXenstored
}

// programs finds the daemon of kind k and the xenemu library.
func programs(k Kind) (bin, lib string, err error) {
	bin = Binary(k)
	if bin == "" {
		return "", "", fmt.Errorf("xenstored kind %q: want %q or %q", k, C, Oxenstored)
	}
	if _, err := os.Stat(bin); err != nil {
		return "", "", fmt.Errorf("%w: %s not found at %s: install Debian package xen-utils-4.17 "+
			"(apt-get install --no-install-recommends xen-utils-4.17 xenstore-utils)", ErrNotInstalled, k, bin)
	}
	lib, err = XenemuLibrary()
	return bin, lib, err
}

// Start starts xenstored (again, after Stop) in the same directory with the
// same socket; the store starts empty, as after a host reboot.
func (s *Server) Start(ctx context.Context) error {
	s.mu.Lock()
	if s.cmd != nil || s.pid != 0 {
		s.mu.Unlock()
		return errors.New("xenstored already running")
	}
	cmd, out, err := s.command()
	if err != nil {
		s.mu.Unlock()
		return err
	}
	if err := cmd.Start(); err != nil {
		s.mu.Unlock()
		return fmt.Errorf("start xenstored: %w", err)
	}
	if f, ok := cmd.Stdout.(*os.File); ok {
		f.Close() // the daemon holds its own copy
	}
	exited := make(chan struct{})
	s.cmd, s.out, s.exited = cmd, out, exited
	s.mu.Unlock()
	go func() {
		err := cmd.Wait()
		s.mu.Lock()
		s.waitErr = err
		s.mu.Unlock()
		close(exited)
	}()
	if s.cfg.Trace && s.cfg.Kind == C {
		go s.capTrace(exited, traceCap)
	}
	return s.waitReady(ctx, exited)
}

// traceCap bounds the C xenstored's trace file. It logs every request and
// every write-rate-limit credit: a test that floods the store for minutes
// writes tens of gigabytes, and the tests run side by side on one disk.
// oxenstored rotates its access log itself (access-log-nb-lines).
var traceCap int64 = 256 << 20 // a variable for its test, read at Start

// capTrace empties the trace whenever it grows past limit, until the
// daemon exits. xenstored appends (reopen_log in xenstored_core.c opens it
// O_APPEND), so it goes on writing at the new end; what a failing test
// shows is the trace's tail, which survives.
func (s *Server) capTrace(exited <-chan struct{}, limit int64) {
	tick := time.NewTicker(250 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-exited:
			return
		case <-tick.C:
			if fi, err := os.Stat(s.TracePath()); err == nil && fi.Size() > limit {
				_ = os.Truncate(s.TracePath(), 0)
			}
		}
	}
}

// command prepares the daemon's process: the one place that knows its
// arguments and environment. Called with s.mu held.
func (s *Server) command() (*exec.Cmd, *lockedbuf.Buffer, error) {
	if err := os.MkdirAll(s.cfg.Dir, 0o755); err != nil {
		return nil, nil, err
	}
	if err := os.WriteFile(s.kindPath(), []byte(string(s.cfg.Kind)+"\n"), 0o644); err != nil {
		return nil, nil, err
	}
	os.Remove(s.Socket())
	var args []string
	env := append(os.Environ(),
		"LD_PRELOAD="+s.lib,
		"XENEMU_DIR="+s.cfg.Dir,
		"XENSTORED_RUNDIR="+s.cfg.Dir,
		"XENSTORED_PATH="+s.Socket())
	switch s.cfg.Kind {
	case Oxenstored:
		conf, err := s.oxenstoredConfig()
		if err != nil {
			return nil, nil, err
		}
		// Not --no-domain-init: without dom0's domain oxenstored never
		// polls the event channel (xenstored.ml: spec_fds), so neither
		// VIRQ_DOM_EXC nor a guest's notification would reach it.
		args = []string{"--no-fork", "--config-file", conf}
		if !s.cfg.Trace {
			args = append(args, "--no-access-log")
		}
		// oxenstored binds /var/run/xenstored/socket whatever its
		// configuration says (define.ml: xs_daemon_socket): xenemu
		// mounts the run directory there in a mount namespace of the
		// daemon's own.
		env = append(env, "XENEMU_RUNDIR_MOUNT="+oxenstoredRunDir)
	default:
		args = []string{"-N", "-F", s.pidPath()}
		if s.cfg.Trace {
			args = append(args, "-T", s.TracePath())
		}
		args = append(args, s.cfg.Args...)
	}
	cmd := exec.Command(s.bin, args...)
	cmd.Dir = s.cfg.Dir
	cmd.Env = env
	if s.cfg.Detach {
		log, err := os.OpenFile(s.logPath(), os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
		if err != nil {
			return nil, nil, err
		}
		cmd.Stdout, cmd.Stderr = log, log
		cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
		return cmd, nil, nil
	}
	out := &lockedbuf.Buffer{}
	cmd.Stdout, cmd.Stderr = out, out
	// Own process group: a test killed by a signal must not leave the
	// daemon attached to the terminal's group, and Stop can signal it alone.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	return cmd, out, nil
}

// oxenstoredRunDir is where oxenstored makes its socket and its database.
const oxenstoredRunDir = "/var/run/xenstored"

// oxenstoredConfig writes the configuration file of an oxenstored instance
// and the files it names, and returns its path. Everything the daemon
// writes goes to the run directory: its pid file, its log and access log
// (by default under /var/log/xen), the store is not persistent. The
// quotas are those of Debian's /etc/xen/oxenstored.conf, upstream's
// defaults (tools/ocaml/xenstored/oxenstored.conf.in), so tests see what a
// Debian dom0 does; Settings override them.
func (s *Server) oxenstoredConfig() (string, error) {
	dir := s.cfg.Dir
	// dom0's store ring and event channel, read as /proc/xen/xsd_kva and
	// xsd_port on a Xen host: a page nobody writes to, and a port number
	// without a newline (utils.ml: read_file_single_integer).
	if err := os.WriteFile(filepath.Join(dir, "xsd_kva"), make([]byte, ringPage), 0o600); err != nil {
		return "", err
	}
	if err := os.WriteFile(filepath.Join(dir, "xsd_port"), []byte("1"), 0o600); err != nil {
		return "", err
	}
	os.Remove(filepath.Join(dir, "oxenstored.log"))
	lines := []string{
		"pid-file = " + s.pidPath(),
		"persistent = false",
		"xenstored-kva = " + filepath.Join(dir, "xsd_kva"),
		"xenstored-port = " + filepath.Join(dir, "xsd_port"),
		"xenstored-log-file = " + filepath.Join(dir, "oxenstored.log"),
		"access-log-file = " + s.TracePath(),
		"access-log-read-ops = true",
		"access-log-transactions-ops = true",
		"access-log-special-ops = true",
		"merge-activate = true",
		"conflict-burst-limit = 5.0",
		"conflict-max-history-seconds = 0.05",
		"conflict-rate-limit-is-aggregate = true",
		"perms-activate = true",
		"perms-watch-activate = true",
		"quota-activate = true",
		"quota-maxentity = 1000",
		"quota-maxsize = " + strconv.Itoa(oxenstoredMaxSize),
		"quota-maxwatch = 100",
		"quota-transaction = 10",
		"quota-maxrequests = 1024",
		"quota-path-max = 1024",
		"quota-maxoutstanding = 1024",
		"quota-maxwatchevents = 1024",
	}
	lines = append(lines, s.cfg.Settings...)
	path := filepath.Join(dir, "oxenstored.conf")
	return path, os.WriteFile(path, []byte(strings.Join(lines, "\n")+"\n"), 0o644)
}

// waitReady polls until a request round trip succeeds, the process exits or
// the deadline passes.
func (s *Server) waitReady(ctx context.Context, exited chan struct{}) error {
	ctx, cancel := context.WithTimeout(ctx, startTimeout)
	defer cancel()
	for {
		c, err := Dial(s.Socket())
		if err == nil {
			_, err = c.Request(TypeRead, "/tool/xenstored")
			c.Close()
			if err == nil || errors.Is(err, syscall.ENOENT) {
				return nil
			}
		}
		select {
		case <-exited:
			return fmt.Errorf("xenstored exited during start-up: %v\n%s", s.exitErr(), s.Output())
		case <-ctx.Done():
			return fmt.Errorf("xenstored did not answer on %s: %v (last error %v)\n%s",
				s.Socket(), ctx.Err(), err, s.Output())
		case <-time.After(5 * time.Millisecond):
		}
	}
}

func (s *Server) exitErr() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.waitErr
}

// Pid returns the process id of the running daemon, or 0.
func (s *Server) Pid() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd == nil {
		return s.pid
	}
	return s.cmd.Process.Pid
}

// Running reports whether the daemon process is alive.
func (s *Server) Running() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.pid != 0 {
		return syscall.Kill(s.pid, 0) == nil
	}
	return s.cmd != nil
}

// Stop terminates xenstored (SIGTERM, then SIGKILL; oxenstored SIGKILL at
// once) and waits for it.
func (s *Server) Stop() error {
	s.mu.Lock()
	cmd, exited, pid := s.cmd, s.exited, s.pid
	s.mu.Unlock()
	// oxenstored ignores SIGTERM for as long as a connection has an open
	// transaction, unsent output or a SET_TARGET (xenstored.ml's main loop
	// waits for Connections.prevents_quit to empty, connection.ml:
	// prevents_live_update), and does nothing on the way out that a
	// non-persistent store needs: it is killed.
	sigs := []syscall.Signal{syscall.SIGTERM, syscall.SIGKILL}
	if s.cfg.Kind == Oxenstored {
		sigs = sigs[1:]
	}
	switch {
	case cmd != nil:
		_ = cmd.Process.Signal(sigs[0])
		select {
		case <-exited:
		case <-time.After(startTimeout):
			_ = cmd.Process.Kill()
			<-exited
		}
	case pid != 0:
		if err := stopPid(pid, sigs); err != nil {
			return err
		}
	default:
		return nil
	}
	s.mu.Lock()
	s.cmd, s.pid = nil, 0
	s.mu.Unlock()
	os.Remove(s.pidPath())
	return nil
}

// stopPid stops a daemon this process did not start (see Attach): not its
// child, so it is polled rather than waited for.
func stopPid(pid int, sigs []syscall.Signal) error {
	for _, sig := range sigs {
		if syscall.Kill(pid, sig) != nil {
			return nil // gone
		}
		for deadline := time.Now().Add(startTimeout); time.Now().Before(deadline); {
			if syscall.Kill(pid, 0) != nil {
				return nil
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	return fmt.Errorf("xenstored %d survives SIGKILL", pid)
}

// Restart stops and starts xenstored; clients see their connection drop.
func (s *Server) Restart(ctx context.Context) error {
	if err := s.Stop(); err != nil {
		return err
	}
	return s.Start(ctx)
}

// Close stops xenstored and removes the run directory if Launch made it.
func (s *Server) Close() error {
	err := s.Stop()
	if s.ownDir {
		os.RemoveAll(s.cfg.Dir)
	}
	return err
}

// IntroduceDomain tells xenstored that guest id exists (INTRODUCE, as
// libxl's xs_introduce_domain), which fires @introduceDomain. A domid killed
// before is first revived, so domids can be reused as on a real host.
func (s *Server) IntroduceDomain(id domid.ID) error {
	c, err := s.dialFor("introduce", id)
	if err != nil {
		return err
	}
	defer c.Close()
	return introduce(c, id)
}

// CreateDomain does what a toolstack does for a new guest, as far as the
// store is concerned: /local/domain/<id> owned by the guest with a name
// node, then INTRODUCE.
func (s *Server) CreateDomain(id domid.ID) error {
	c, err := s.dialFor("create", id)
	if err != nil {
		return err
	}
	defer c.Close()
	home := id.Home()
	owner := "n" + id.String()
	for _, step := range []func() error{
		func() error { return c.Write(home+"/name", "guest"+id.String()) },
		func() error { return c.Write(home+"/domid", id.String()) },
		func() error { _, err := c.Request(TypeSetPerms, home, owner); return err },
		func() error { _, err := c.Request(TypeSetPerms, home+"/name", owner); return err },
		func() error { _, err := c.Request(TypeSetPerms, home+"/domid", owner); return err },
	} {
		if err := step(); err != nil {
			return fmt.Errorf("create domain %d: %w", id, err)
		}
	}
	return introduce(c, id)
}

// dialFor revives guest id in xenemu, since xenstored checks that a domain
// exists before it is introduced or made an owner, and connects.
func (s *Server) dialFor(op string, id domid.ID) (*Conn, error) {
	if !id.IsGuest() {
		return nil, fmt.Errorf("%s domain %d: not a guest domid", op, id)
	}
	if err := s.setDead(id, false); err != nil {
		return nil, err
	}
	return Dial(s.Socket())
}

func introduce(c *Conn, id domid.ID) error {
	// mfn and port are ignored by xenemu but must parse.
	if _, err := c.Request(TypeIntroduce, id.String(), "1", "1"); err != nil {
		return fmt.Errorf("introduce domain %d: %w", id, err)
	}
	return nil
}

// KillDomain makes guest id disappear as if it died: xenemu stops reporting
// it and raises VIRQ_DOM_EXC, so xenstored fires @releaseDomain and removes
// the nodes the guest owned. It returns once xenstored has forgotten it.
func (s *Server) KillDomain(id domid.ID) error {
	if err := s.setDead(id, true); err != nil {
		return err
	}
	if err := s.raiseDomExc(); err != nil {
		return err
	}
	c, err := Dial(s.Socket())
	if err != nil {
		return err
	}
	defer c.Close()
	deadline := time.Now().Add(startTimeout)
	for time.Now().Before(deadline) {
		v, err := c.Request(TypeIsDomainIntroduced, id.String())
		if err != nil {
			return fmt.Errorf("kill domain %d: %w", id, err)
		}
		if v == "F" {
			return nil
		}
		time.Sleep(2 * time.Millisecond)
	}
	return fmt.Errorf("kill domain %d: xenstored still has it after %v", id, startTimeout)
}

// SetDomainAlive makes guest id exist (alive) or disappear (not alive) as
// far as the emulated hypervisor is concerned, without INTRODUCE and
// without waiting for xenstored: what xc_domain_create and
// xc_domain_destroy are to a toolstack, which does its own XenStore
// operations (a simulator). A death raises VIRQ_DOM_EXC, so xenstored fires
// @releaseDomain and removes the nodes the guest owned; IS_DOMAIN_INTRODUCED
// tells when it is done. It works on an attached Server too.
func (s *Server) SetDomainAlive(id domid.ID, alive bool) error {
	if !id.IsGuest() {
		return fmt.Errorf("domain %d: not a guest domid", id)
	}
	if err := s.setDead(id, !alive); err != nil {
		return fmt.Errorf("domain %d: %w", id, err)
	}
	if alive {
		return nil
	}
	if err := s.raiseDomExc(); err != nil {
		return fmt.Errorf("domain %d: %w", id, err)
	}
	return nil
}

func (s *Server) raiseDomExc() error {
	// The FIFO is opened non-blocking for writing: xenstored (through
	// xenemu) holds it open read-write, so this never blocks; if xenstored
	// is down the write fails with ENXIO and the dead list still applies at
	// its next start.
	f, err := os.OpenFile(filepath.Join(s.cfg.Dir, "evtchn"), os.O_WRONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return fmt.Errorf("raise VIRQ_DOM_EXC: %w", err)
	}
	defer f.Close()
	_, err = f.Write([]byte{1})
	return err
}

// setDead adds id to or removes it from xenemu's dead list, atomically.
func (s *Server) setDead(id domid.ID, dead bool) error {
	path := filepath.Join(s.cfg.Dir, "dead")
	s.mu.Lock()
	defer s.mu.Unlock()
	old, err := os.ReadFile(path)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	var out []string
	for _, l := range strings.Fields(string(old)) {
		if l != id.String() {
			out = append(out, l)
		}
	}
	if dead {
		out = append(out, id.String())
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(strings.Join(out, "\n")+"\n"), 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}
