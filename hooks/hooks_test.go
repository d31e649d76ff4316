// Package hooks holds the scripts the toolstacks run (libvirt's libxl hook,
// XAPI's hook) and the AppArmor rule for libvirtd; its tests install them
// with make and run them as the toolstacks do.
package hooks

import (
	"bytes"
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// installHooks runs make install-hooks into a staging directory with
// LIBEXECDIR pointing at libexec, and returns the staging root.
func installHooks(t *testing.T, libexec string) string {
	t.Helper()
	root := t.TempDir()
	cmd := exec.Command("make", "--no-print-directory", "-C", "..", "install-hooks", "DESTDIR="+root, "LIBEXECDIR="+libexec, "DOCDIR=/usr/share/doc/mtwatch")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("make install-hooks: %v\n%s", err, out)
	}
	return root
}

// hostEnv is what a wrapper runs in: a private mount namespace where /dev
// holds only null and a syslog socket the test reads, and /etc/default is a
// directory of the test's, so neither this machine's syslog nor its
// /etc/default/mtwatch has a say.
type hostEnv struct {
	dev, etcDefault string
	syslog          *net.UnixConn
}

func newHostEnv(t *testing.T, defaults string) *hostEnv {
	t.Helper()
	if _, err := exec.LookPath("unshare"); err != nil {
		t.Fatalf("unshare (util-linux) not found: %v", err)
	}
	if os.Getuid() != 0 {
		t.Fatal("the hook tests run the scripts in a private mount namespace: run them as root")
	}
	h := &hostEnv{dev: t.TempDir(), etcDefault: t.TempDir()}
	if err := os.WriteFile(filepath.Join(h.dev, "null"), nil, 0o666); err != nil {
		t.Fatal(err)
	}
	if defaults != "" {
		if err := os.WriteFile(filepath.Join(h.etcDefault, "mtwatch"), []byte(defaults), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: filepath.Join(h.dev, "log"), Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	h.syslog = conn
	return h
}

// run runs argv in the namespace with a bare environment plus env, the
// domain XML (or nothing) on stdin, and returns its exit status and stderr.
func (h *hostEnv) run(t *testing.T, env []string, stdin string, argv ...string) (int, string) {
	t.Helper()
	const setup = `mount --bind /dev/null "$1/null" && mount --rbind "$1" /dev && mount --bind "$2" /etc/default && shift 2 && exec "$@"`
	cmd := exec.Command("unshare", append([]string{"--mount", "--propagation", "private", "/bin/sh", "-c", setup, "sh", h.dev, h.etcDefault}, argv...)...)
	cmd.Env = append([]string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin"}, env...)
	cmd.Stdin = strings.NewReader(stdin)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	err := cmd.Run()
	var ee *exec.ExitError
	switch {
	case err == nil:
		return 0, stderr.String()
	case errors.As(err, &ee) && ee.Exited():
		return ee.ExitCode(), stderr.String()
	default:
		t.Fatalf("%v: %v\n%s", argv, err, stderr.String())
		return -1, ""
	}
}

// syslogLines returns the messages that reached the syslog socket within a
// short wait.
func (h *hostEnv) syslogLines(t *testing.T) []string {
	t.Helper()
	var lines []string
	buf := make([]byte, 4096)
	for {
		h.syslog.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
		n, err := h.syslog.Read(buf)
		if err != nil {
			return lines
		}
		lines = append(lines, string(buf[:n]))
	}
}

// TestWrapperHelperCannotRun runs the installed scripts, as the toolstacks
// run them, with mtwatch-hook missing, not executable, or not a program at
// all: libvirt must get 0 (any other status aborts the guest's start, or
// drops it on reconnect) and XAPI 1 (log and continue), each with one
// syslog line, unless strict mode is set (--strict in MTWATCH_HOOK_OPTS of
// /etc/default/mtwatch, or MTWATCH_HOOK_STRICT=1): then 1 and 2.
func TestWrapperHelperCannotRun(t *testing.T) {
	const xml = "<domain type='xen' id='7'><name>guest</name><uuid>6e8b3c5a-2d4f-4e1a-9b7c-0a1b2c3d4e5f</uuid></domain>"
	helpers := map[string]func(path string) error{
		"missing": func(string) error { return nil },
		"not executable": func(p string) error {
			return os.WriteFile(p, []byte("#!/bin/sh\nexit 0\n"), 0o644)
		},
		"not a program": func(p string) error {
			return os.WriteFile(p, []byte("\x7fELF garbage"), 0o755)
		},
		"killed": func(p string) error {
			return os.WriteFile(p, []byte("#!/bin/sh\nkill -KILL $$\n"), 0o755)
		},
	}
	modes := []struct {
		name              string
		defaults          string
		env               []string
		libvirt, xapiCode int
	}{
		{"default", "", nil, 0, 1},
		{"strict flag", "MTWATCH_HOOK_OPTS=\"--timeout 5s --strict\"\n", nil, 1, 2},
		{"strict variable", "", []string{"MTWATCH_HOOK_STRICT=1"}, 1, 2},
		{"strict off again", "MTWATCH_HOOK_OPTS=\"--strict --strict=false\"\n", nil, 0, 1},
	}
	for helperName, makeHelper := range helpers {
		libexec := t.TempDir()
		if err := makeHelper(filepath.Join(libexec, "mtwatch-hook")); err != nil {
			t.Fatal(err)
		}
		root := installHooks(t, libexec)
		libvirt := filepath.Join(root, "etc/libvirt/hooks/libxl.d/50-mtwatch")
		xapi := filepath.Join(root, "etc/xapi.d/vm-pre-shutdown/50-mtwatch")
		for _, m := range modes {
			t.Run(helperName+"/"+m.name, func(t *testing.T) {
				h := newHostEnv(t, m.defaults)
				for _, c := range []struct {
					toolstack string
					argv      []string
					stdin     string
					want      int
				}{
					{"libvirt", []string{libvirt, "guest", "started", "begin", "-"}, xml, m.libvirt},
					{"XAPI", []string{xapi, "-vmuuid", "6e8b3c5a-2d4f-4e1a-9b7c-0a1b2c3d4e5f", "-reason", "clean-shutdown", "-vmdomid", "7"}, "", m.xapiCode},
				} {
					code, stderr := h.run(t, m.env, c.stdin, c.argv...)
					if code != c.want {
						t.Errorf("%s hook: exit %d, want %d\nstderr: %s", c.toolstack, code, c.want, stderr)
					}
					logs := h.syslogLines(t)
					if len(logs) != 1 {
						t.Errorf("%s hook: %d syslog lines, want 1: %q", c.toolstack, len(logs), logs)
						continue
					}
					// <28>: facility daemon, severity warning.
					for _, want := range []string{"<28>", "mtwatch-hook", filepath.Join(libexec, "mtwatch-hook"), "did not run", c.toolstack + " hook"} {
						if !strings.Contains(logs[0], want) {
							t.Errorf("%s hook: syslog line %q lacks %q", c.toolstack, logs[0], want)
						}
					}
				}
			})
		}
	}
}

// TestWrapperRunsHelper runs the scripts with the real mtwatch-hook: its
// own exit status comes through unchanged, and nothing is logged by the
// script.
func TestWrapperRunsHelper(t *testing.T) {
	libexec := t.TempDir()
	build := exec.Command("go", "build", "-o", filepath.Join(libexec, "mtwatch-hook"), "../cmd/mtwatch-hook")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	root := installHooks(t, libexec)
	libvirt := filepath.Join(root, "etc/libvirt/hooks/libxl.d/50-mtwatch")
	xapi := filepath.Join(root, "etc/xapi.d/vm-pre-shutdown/50-mtwatch")
	h := newHostEnv(t, "MTWATCH_HOOK_OPTS=\"--strict\"\n")
	// migrate is an operation mtwatch-hook leaves alone: 0 without XenStore.
	if code, stderr := h.run(t, nil, "", libvirt, "guest", "migrate", "begin", "-"); code != 0 {
		t.Errorf("libvirt migrate: exit %d\n%s", code, stderr)
	}
	// A bad uuid is mtwatch-hook's usage error: 2 under XAPI in strict mode.
	if code, stderr := h.run(t, nil, "", xapi, "-vmuuid", "not-a-uuid", "-reason", "clean-shutdown", "-vmdomid", "7"); code != 2 || strings.Contains(stderr, "did not run") {
		t.Errorf("XAPI bad uuid: exit %d, want mtwatch-hook's 2\n%s", code, stderr)
	}
	for _, l := range h.syslogLines(t) {
		if strings.Contains(l, "did not run") {
			t.Errorf("script logged a helper that ran: %q", l)
		}
	}
}
