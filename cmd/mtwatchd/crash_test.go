package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/mtwatch/mtwatch/internal/daemontest"
	"github.com/mtwatch/mtwatch/lib/xenstore/xenstoredtest"
)

var (
	daemonBuild sync.Map // overlay file text ("" for none) -> *builtDaemon
)

type builtDaemon struct {
	once sync.Once
	path string
	err  error
}

// daemonBinary builds the real mtwatchd as make build does (no cgo, no
// race detector, no test code), once per inject text. inject, if not empty,
// is one more file of package main added through go build -overlay, so the
// source tree stays untouched.
func daemonBinary(t *testing.T, inject string) string {
	t.Helper()
	v, _ := daemonBuild.LoadOrStore(inject, &builtDaemon{})
	b := v.(*builtDaemon)
	b.once.Do(func() {
		dir, err := os.MkdirTemp("", "mtwatchd-bin")
		if err != nil {
			b.err = err
			return
		}
		b.path = filepath.Join(dir, "mtwatchd")
		args := []string{"build", "-trimpath", "-o", b.path}
		if inject != "" {
			src, err := filepath.Abs("zz_injected.go")
			if err != nil {
				b.err = err
				return
			}
			file := filepath.Join(dir, "injected.go")
			overlay := filepath.Join(dir, "overlay.json")
			data, _ := json.Marshal(map[string]map[string]string{"Replace": {src: file}})
			if err := os.WriteFile(file, []byte(inject), 0o644); err != nil {
				b.err = err
				return
			}
			if err := os.WriteFile(overlay, data, 0o644); err != nil {
				b.err = err
				return
			}
			args = append(args, "-overlay", overlay)
		}
		cmd := exec.Command("go", append(args, ".")...)
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			b.err = fmt.Errorf("go %v: %v\n%s", args, err, out)
		}
	})
	if b.err != nil {
		t.Fatal(b.err)
	}
	return b.path
}

// unitRestart is what systemd/mtwatchd.service says about restarting.
type unitRestart struct {
	restart string   // Restart=
	prevent []string // RestartPreventExitStatus= entries
}

func readUnitRestart(t *testing.T) unitRestart {
	t.Helper()
	f, err := os.Open(filepath.Join("..", "..", "systemd", "mtwatchd.service"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	u := unitRestart{restart: "no"}
	section := ""
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		switch {
		case line == "" || line[0] == '#' || line[0] == ';':
		case line[0] == '[':
			section = line
		case section == "[Service]":
			k, v, _ := strings.Cut(line, "=")
			switch strings.TrimSpace(k) {
			case "Restart":
				u.restart = strings.TrimSpace(v)
			case "RestartPreventExitStatus":
				if strings.TrimSpace(v) == "" {
					u.prevent = nil // an empty assignment resets the list
				}
				u.prevent = append(u.prevent, strings.Fields(v)...)
			}
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return u
}

// restarts models systemd's service_shall_restart (src/core/service.c) for
// a main process that ended on its own with ws: RestartPreventExitStatus is
// tested first, then Restart=. Only the policies the unit may use are
// modelled; another one fails the test rather than guessing.
func (u unitRestart) restarts(t *testing.T, ws syscall.WaitStatus) bool {
	t.Helper()
	switch {
	case ws.Exited():
		if slices.Contains(u.prevent, strconv.Itoa(ws.ExitStatus())) {
			return false
		}
	case ws.Signaled():
		name := strings.ToUpper(strings.TrimPrefix(signalName(ws.Signal()), "SIG"))
		if slices.Contains(u.prevent, "SIG"+name) || slices.Contains(u.prevent, name) {
			return false
		}
	}
	// A clean end for systemd: exit 0, or SIGHUP/SIGINT/SIGTERM/SIGPIPE.
	clean := ws.Exited() && ws.ExitStatus() == 0 ||
		ws.Signaled() && slices.Contains([]syscall.Signal{syscall.SIGHUP, syscall.SIGINT, syscall.SIGTERM, syscall.SIGPIPE}, ws.Signal())
	switch u.restart {
	case "no":
		return false
	case "always":
		return true
	case "on-failure":
		return !clean
	}
	t.Fatalf("Restart=%s: not modelled by this test", u.restart)
	return false
}

func signalName(s syscall.Signal) string {
	switch s {
	case syscall.SIGABRT:
		return "SIGABRT"
	case syscall.SIGSEGV:
		return "SIGSEGV"
	case syscall.SIGQUIT:
		return "SIGQUIT"
	}
	return fmt.Sprintf("SIG%d", int(s))
}

// waitStatus is how the agent ended, within the time given.
func waitStatus(d *daemontest.Daemon, within time.Duration) syscall.WaitStatus {
	d.Wait(within)
	return d.Cmd.ProcessState.Sys().(syscall.WaitStatus)
}

// panicOnUSR1 is added to the real mtwatchd for the panic case: an
// unrecovered panic in a goroutine of its own, as a bug in a handler would
// be. The real binary has no way to be made to panic, by design.
const panicOnUSR1 = `package main

import (
	"os"
	"os/signal"
	"syscall"
)

func init() {
	c := make(chan os.Signal, 1)
	signal.Notify(c, syscall.SIGUSR1)
	go func() {
		<-c
		panic("injected by the test")
	}()
}
`

// TestDaemonCrashRestarts: a hung agent that systemd's watchdog aborts
// (SIGABRT, WatchdogSignal's default) and an agent that panics end with a
// status systemd/mtwatchd.service restarts; a configuration error ends with
// one it does not. The agent is the real binary, built as make build does;
// GOTRACEBACK is the unit's (none set).
func TestDaemonCrashRestarts(t *testing.T) {
	t.Parallel()
	unit := readUnitRestart(t)
	for _, tc := range []struct {
		name   string
		inject string
		signal syscall.Signal
		stderr string
	}{
		{"watchdog abort", "", syscall.SIGABRT, "SIGABRT"},
		{"panic", panicOnUSR1, syscall.SIGUSR1, "panic: injected by the test"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			bin := daemonBinary(t, tc.inject)
			in := xenstoredtest.Start(t)
			d := spawnBinary(t, bin, nil, in, daemontest.SocketPath(t), []string{"GOTRACEBACK=single", "WATCHDOG_USEC=30000000"})
			d.WaitReady()
			d.Signal(tc.signal)
			ws := waitStatus(d, 15*time.Second)
			if !strings.Contains(d.Stderr.String(), tc.stderr) {
				t.Fatalf("stderr lacks %q:\n%s", tc.stderr, d.Stderr.String())
			}
			if !unit.restarts(t, ws) {
				t.Fatalf("ended with %v (exit status %d): Restart=%s RestartPreventExitStatus=%v does not restart it",
					ws, ws.ExitStatus(), unit.restart, unit.prevent)
			}
		})
	}
	t.Run("config error", func(t *testing.T) {
		t.Parallel()
		bad := filepath.Join(t.TempDir(), "bad.toml")
		os.WriteFile(bad, []byte("[agent]\nbogus = 1\n"), 0o644)
		d := spawnBinary(t, daemonBinary(t, ""), nil, nil, daemontest.SocketPath(t), []string{"MTWATCH_XENSTORE=/nonexistent"}, "--config", bad)
		ws := waitStatus(d, 15*time.Second)
		if !ws.Exited() || ws.ExitStatus() != exitConfig {
			t.Fatalf("ended with %v, want exit status %d", ws, exitConfig)
		}
		if unit.restarts(t, ws) {
			t.Fatalf("exit status %d: Restart=%s RestartPreventExitStatus=%v restarts it in a loop",
				ws.ExitStatus(), unit.restart, unit.prevent)
		}
	})
}
