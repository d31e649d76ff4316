package main

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/mtwatch/mtwatch/lib/hook"
	"github.com/mtwatch/mtwatch/lib/xenstore/xenstoredtest"

	"github.com/mtwatch/mtwatch/internal/testenv"
)

// The test binary doubles as mtwatch-hook, so the tests run the real main
// (under -race in make test) as a separate process, as toolstacks do.
func TestMain(m *testing.M) {
	if os.Getenv("MTWATCH_HOOK_AS_MAIN") == "1" {
		os.Exit(run(os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
	}
	testenv.Scrub()
	os.Exit(m.Run())
}

const vmUUID = "4dea22b3-1d52-d8f3-2516-782e98ab3fa0"

type env struct {
	t       *testing.T
	xs      *xenstoredtest.Instance
	libexec string // holds "mtwatch-hook"
	etc     string // installed hook scripts
}

func newEnv(t *testing.T) *env {
	t.Helper()
	e := &env{t: t, xs: xenstoredtest.Start(t), libexec: t.TempDir(), etc: t.TempDir()}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(self, filepath.Join(e.libexec, "mtwatch-hook")); err != nil {
		t.Fatal(err)
	}
	// Install the hook scripts with make install's own rule.
	install := exec.Command("make", "--no-print-directory", "-C", filepath.Join("..", ".."), "install-hooks",
		"DESTDIR=", "SYSCONFDIR="+e.etc, "LIBEXECDIR="+e.libexec)
	if out, err := install.CombinedOutput(); err != nil {
		t.Fatalf("make install-hooks: %v\n%s", err, out)
	}
	return e
}

type result struct {
	code   int
	stderr string
	took   time.Duration
}

// exec runs prog (a path) with args and stdin against the instance.
func (e *env) exec(prog, stdin string, args ...string) result {
	e.t.Helper()
	cmd := exec.Command(prog, args...)
	cmd.Env = append(os.Environ(), "MTWATCH_HOOK_AS_MAIN=1")
	cmd.Env = append(cmd.Env, e.xs.Env()...)
	cmd.Stdin = strings.NewReader(stdin)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	start := time.Now()
	err := cmd.Run()
	r := result{stderr: stderr.String(), took: time.Since(start)}
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee):
		r.code = ee.ExitCode()
	case err != nil:
		e.t.Fatalf("run %s: %v", prog, err)
	}
	return r
}

func (e *env) hook(stdin string, args ...string) result {
	e.t.Helper()
	return e.exec(filepath.Join(e.libexec, "mtwatch-hook"), stdin, args...)
}

func (e *env) libvirt(xmlFile, op, subop string) result {
	e.t.Helper()
	xml := ""
	if xmlFile != "" {
		data, err := os.ReadFile(filepath.Join("..", "..", "lib", "hook", "testdata", xmlFile))
		if err != nil {
			e.t.Fatal(err)
		}
		xml = string(data)
	}
	return e.exec(filepath.Join(e.etc, "libvirt", "hooks", "libxl.d", "50-mtwatch"), xml, "web01", op, subop, "-")
}

func (e *env) xapi(hook string, args ...string) result {
	e.t.Helper()
	return e.exec(filepath.Join(e.etc, "xapi.d", hook, "50-mtwatch"), "", args...)
}

// snapshot is the whole store with permissions, read with Debian's C client.
func (e *env) snapshot() string {
	e.t.Helper()
	return e.xs.Run("xenstore-ls", "-f", "-p", "/")
}

// node returns the node's value and "xenstore-ls -p" permissions, or ok=false.
func (e *env) node(domid string) (value, perms string, ok bool) {
	e.t.Helper()
	out, err := e.xs.Command("xenstore-ls", "-p", "/local/domain/0/mtwatch").Output()
	if err != nil {
		return "", "", false
	}
	for _, line := range strings.Split(string(out), "\n") {
		name, rest, found := strings.Cut(strings.TrimSpace(line), " = ")
		if !found || name != domid {
			continue
		}
		v, p, _ := strings.Cut(rest, " ")
		return strings.Trim(v, `"`), p[strings.LastIndexByte(p, '('):], true
	}
	return "", "", false
}

func (e *env) wantNode(domid, value string) {
	e.t.Helper()
	v, p, ok := e.node(domid)
	if !ok {
		e.t.Fatalf("node mtwatch/%s missing:\n%s", domid, e.snapshot())
	}
	if v != value || p != "(n0)" {
		e.t.Fatalf("node mtwatch/%s = %q %s, want %q (n0)", domid, v, p, value)
	}
	dirPerms := e.xs.Run("xenstore-ls", "-p", "/local/domain/0")
	if !strings.Contains(dirPerms, "mtwatch = \"\"") || !strings.Contains(strings.SplitN(dirPerms[strings.Index(dirPerms, "mtwatch = "):], "\n", 2)[0], "(n0)") {
		e.t.Fatalf("mtwatch directory not private to dom0:\n%s", dirPerms)
	}
}

func (e *env) wantNoNode(domid string) {
	e.t.Helper()
	if _, _, ok := e.node(domid); ok {
		e.t.Fatalf("node mtwatch/%s still there:\n%s", domid, e.snapshot())
	}
}

func wantCode(t *testing.T, r result, code int) {
	t.Helper()
	if r.code != code {
		t.Fatalf("exit code %d, want %d; stderr:\n%s", r.code, code, r.stderr)
	}
}

func TestLibvirtLifecycle(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.xs.CreateDomain(7)

	// Operations before the domain has its domid touch nothing.
	before := e.snapshot()
	for _, op := range [][2]string{{"prepare", "begin"}, {"start", "begin"}, {"migrate", "begin"}, {"restore", "begin"}} {
		wantCode(t, e.libvirt("defined.xml", op[0], op[1]), 0)
	}
	if after := e.snapshot(); after != before {
		t.Fatalf("store changed by operations without a domid:\n%s", after)
	}

	wantCode(t, e.libvirt("running.xml", "started", "begin"), 0)
	e.wantNode("7", vmUUID)
	wantCode(t, e.libvirt("running.xml", "started", "begin"), 0) // idempotent
	wantCode(t, e.libvirt("running.xml", "reconnect", "begin"), 0)
	e.wantNode("7", vmUUID)
	wantCode(t, e.libvirt("running.xml", "started", "end"), 0) // not ours
	e.wantNode("7", vmUUID)

	wantCode(t, e.libvirt("running.xml", "stopped", "end"), 0)
	e.wantNoNode("7")
	wantCode(t, e.libvirt("running.xml", "release", "end"), 0) // already gone
	wantCode(t, e.libvirt("inactive.xml", "release", "end"), 0)
	e.wantNoNode("7")
}

// TestLibvirtReconnectRecreates: libvirtd restarted while a node was lost.
func TestLibvirtReconnectRecreates(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	wantCode(t, e.libvirt("running.xml", "reconnect", "begin"), 0)
	e.wantNode("7", vmUUID)
	// release end of a domain whose XML lost its id: found by uuid.
	wantCode(t, e.libvirt("defined.xml", "release", "end"), 0)
	e.wantNoNode("7")
}

func TestDirectCreateReadsVMUUID(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.xs.CreateDomain(5)
	e.xs.Run("xenstore-write", "/local/domain/5/vm", "/vm/"+vmUUID)
	wantCode(t, e.hook("", "create", "5"), 0)
	e.wantNode("5", vmUUID)
	wantCode(t, e.hook("", "create", "5"), 0)
	e.wantNode("5", vmUUID)
	// Without /vm the node still identifies nothing but the domid.
	wantCode(t, e.hook("", "create", "6"), 0)
	e.wantNode("6", "")
	// A stale node of an earlier domain with the same domid is replaced.
	other := "11111111-2222-3333-4444-555555555555"
	wantCode(t, e.hook("", "create", "--uuid", other, "5"), 0)
	e.wantNode("5", other)

	wantCode(t, e.hook("", "destroy", "5"), 0)
	e.wantNoNode("5")
	wantCode(t, e.hook("", "destroy", "5"), 0)
	wantCode(t, e.hook("", "destroy", "6"), 0)
	e.wantNoNode("6")
}

// TestCreateTightensPerms: a node or directory whose perms were loosened
// (by hand, or an old tool) gets n0 back.
func TestCreateTightensPerms(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.xs.Run("xenstore-write", "/local/domain/0/mtwatch/9", "")
	e.xs.Run("xenstore-chmod", "/local/domain/0/mtwatch", "b0")
	e.xs.Run("xenstore-chmod", "/local/domain/0/mtwatch/9", "n9")
	wantCode(t, e.hook("", "create", "9"), 0)
	e.wantNode("9", "")
}

// TestXAPIHooksInstalled: make install puts the XAPI script into the
// directory of exactly the hooks mtwatch-hook acts on.
func TestXAPIHooksInstalled(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	// xenopsd's VM lifecycle hooks (ocaml/xenopsd/lib/xenops_hooks.ml), and
	// a name that is none of them.
	for _, name := range []string{"vm-pre-destroy", "vm-pre-migrate", "vm-post-migrate", "vm-pre-reboot",
		"vm-pre-resume", "vm-post-resume", "vm-pre-shutdown", "vm-pre-start", "vm-pre-suspend", "vm-post-destroy"} {
		a, err := hook.ParseXAPI(name, []string{"-vmuuid", vmUUID, "-reason", "none", "-vmdomid", "5"})
		if err != nil {
			t.Fatal(err)
		}
		_, err = os.Stat(filepath.Join(e.etc, "xapi.d", name, "50-mtwatch"))
		if installed := err == nil; installed != (a.Kind != hook.KindNone) {
			t.Errorf("hook %s: installed %v, acts %v", name, installed, a.Kind)
		}
	}
	dirs, err := os.ReadDir(filepath.Join(e.etc, "xapi.d"))
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range dirs {
		a, err := hook.ParseXAPI(d.Name(), []string{"-vmuuid", vmUUID, "-reason", "none", "-vmdomid", "5"})
		if err != nil || a.Kind == hook.KindNone {
			t.Errorf("%s installed, but mtwatch-hook does nothing there (%v)", d.Name(), err)
		}
	}
}

func TestXAPI(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	wantCode(t, e.xapi("vm-pre-resume", "-vmuuid", vmUUID, "-reason", "none", "-vmdomid", "12"), 0)
	e.wantNode("12", vmUUID)
	wantCode(t, e.xapi("vm-post-resume", "-vmuuid", vmUUID, "-reason", "none", "-vmdomid", "12"), 0)
	wantCode(t, e.xapi("vm-post-migrate", "-vmuuid", vmUUID, "-reason", "none", "-vmdomid", "14"), 0)
	e.wantNode("14", vmUUID)
	// vm-post-destroy knows only the uuid: every node of that VM goes.
	wantCode(t, e.xapi("vm-post-destroy", "-vmuuid", vmUUID, "-reason", "clean-shutdown"), 0)
	e.wantNoNode("12")
	e.wantNoNode("14")
	wantCode(t, e.xapi("vm-post-destroy", "-vmuuid", vmUUID, "-reason", "clean-shutdown"), 0)
}

// TestBadInput: every malformed invocation gets a clear message and its
// documented exit code, and leaves the store exactly as it was.
func TestBadInput(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	wantCode(t, e.hook("", "create", "3"), 0) // the store is not empty
	tests := []struct {
		name    string
		run     func() result
		code    int
		message string
	}{
		{"no command", func() result { return e.hook("") }, 2, "usage: mtwatch-hook"},
		{"bad option", func() result { return e.hook("", "--timeout", "soon", "create", "5") }, 2, "invalid value"},
		{"create bad option", func() result { return e.hook("", "create", "--color", "5") }, 2, "flag provided but not defined"},
		{"unknown command", func() result { return e.hook("", "frobnicate", "5") }, 2, "frobnicate"},
		{"create without domid", func() result { return e.hook("", "create") }, 2, "exactly one <domid>"},
		{"create two domids", func() result { return e.hook("", "create", "5", "6") }, 2, "exactly one <domid>"},
		{"create dom0", func() result { return e.hook("", "create", "0") }, 2, "not a guest"},
		{"create reserved", func() result { return e.hook("", "create", "32752") }, 2, "reserved"},
		{"create DOMID_INVALID", func() result { return e.hook("", "create", "32756") }, 2, "reserved"},
		{"create overflow", func() result { return e.hook("", "create", "99999999999999999999") }, 2, "out of range"},
		{"create garbage", func() result { return e.hook("", "create", "12abc") }, 2, "invalid domid syntax"},
		{"create leading zero", func() result { return e.hook("", "create", "007") }, 2, "invalid domid syntax"},
		{"create negative", func() result { return e.hook("", "create", "--", "-1") }, 2, "invalid domid syntax"},
		{"timeout zero", func() result { return e.hook("", "--timeout", "0", "create", "5") }, 2, "must be positive"},
		{"timeout negative", func() result { return e.hook("", "--timeout", "-1s", "create", "5") }, 2, "must be positive"},
		{"libvirt timeout zero", func() result {
			return e.hook(string(mustRead(t, "running.xml")), "--timeout", "0s", "libvirt", "web01", "started", "begin", "-")
		}, 2, "must be positive"},
		{"libvirt duplicate id", func() result {
			return e.hook(string(mustRead(t, "duplicate-id.xml")), "--strict", "libvirt", "web01", "started", "begin", "-")
		}, 2, "repeats attribute id"},
		{"xapi repeated domid", func() result {
			return e.xapi("vm-pre-resume", "-vmuuid", vmUUID, "-reason", "none", "-vmdomid", "7", "-vmdomid", "8")
		}, 1, "-vmdomid given twice"},
		{"create bad uuid", func() result { return e.hook("", "create", "--uuid", "xyz", "5") }, 2, "malformed vm uuid"},
		{"destroy garbage", func() result { return e.hook("", "destroy", "5x") }, 2, "invalid domid syntax"},
		{"destroy bad uuid", func() result { return e.hook("", "destroy", "--uuid", "../x") }, 2, "malformed vm uuid"},
		{"libvirt missing args", func() result { return e.hook("", "libvirt", "web01", "started") }, 2, "got 2 argument(s)"},
		{"libvirt extra args", func() result { return e.hook("", "libvirt", "web01", "started", "begin", "-", "x") }, 2, "got 5 argument(s)"},
		{"libvirt garbage xml", func() result { return e.libvirt("garbage.txt", "started", "begin") }, 0, "parse domain xml"},
		{"libvirt no id", func() result { return e.libvirt("defined.xml", "started", "begin") }, 0, "no id"},
		{"libvirt dom0", func() result { return e.libvirt("dom0.xml", "started", "begin") }, 0, "not a guest"},
		{"libvirt reserved", func() result { return e.libvirt("reserved.xml", "started", "begin") }, 0, "reserved"},
		{"libvirt strict garbage", func() result {
			return e.hook(string(mustRead(t, "garbage.txt")), "--strict", "libvirt", "web01", "started", "begin", "-")
		}, 2, "parse domain xml"},
		{"libvirt strict no id", func() result {
			return e.hook(string(mustRead(t, "defined.xml")), "--strict", "libvirt", "web01", "started", "begin", "-")
		}, 2, "no id"},
		{"xapi no uuid", func() result { return e.xapi("vm-pre-resume", "-reason", "none", "-vmdomid", "5") }, 1, "-vmuuid is missing"},
		{"xapi odd args", func() result { return e.xapi("vm-pre-resume", "-vmuuid") }, 1, "without a value"},
		{"xapi unknown arg", func() result { return e.xapi("vm-pre-resume", "-vmuuid", vmUUID, "-foo", "1") }, 1, "unknown argument"},
		{"xapi reserved", func() result {
			return e.xapi("vm-pre-resume", "-vmuuid", vmUUID, "-reason", "none", "-vmdomid", "32767")
		}, 1, "reserved"},
		{"xapi strict", func() result {
			return e.hook("", "--strict", "xapi", "vm-pre-resume", "-vmuuid", "bad", "-reason", "none", "-vmdomid", "5")
		}, 2, "malformed vm uuid"},
		{"xapi no hook", func() result { return e.hook("", "xapi") }, 1, "hook name missing"},
	}
	before := e.snapshot()
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := tt.run()
			wantCode(t, r, tt.code)
			if !strings.Contains(r.stderr, tt.message) {
				t.Errorf("stderr %q does not contain %q", r.stderr, tt.message)
			}
			if after := e.snapshot(); after != before {
				t.Fatalf("store changed:\nbefore:\n%s\nafter:\n%s", before, after)
			}
		})
	}
}

func mustRead(t *testing.T, name string) []byte {
	t.Helper()
	data, err := os.ReadFile(filepath.Join("..", "..", "lib", "hook", "testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	return data
}

// TestXenstoredAbsent: with no xenstored the hook says so at once; with a
// xenstored that does not answer it gives up within its timeout.
func TestXenstoredAbsent(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.xs.Stop()
	r := e.hook("", "create", "5")
	wantCode(t, r, 1)
	if !strings.Contains(r.stderr, "connect to xenstore") {
		t.Errorf("stderr: %s", r.stderr)
	}
	// Toolstack modes: libvirt goes on by default, XAPI logs and continues.
	wantCode(t, e.libvirt("running.xml", "started", "begin"), 0)
	wantCode(t, e.hook(string(mustRead(t, "running.xml")), "--strict", "libvirt", "web01", "started", "begin", "-"), 1)
	wantCode(t, e.xapi("vm-pre-resume", "-vmuuid", vmUUID, "-reason", "none", "-vmdomid", "5"), 1)
}

func TestXenstoredHung(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	pid := e.xs.Pid()
	if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	defer syscall.Kill(pid, syscall.SIGCONT)
	r := e.hook("", "--timeout", "300ms", "create", "5")
	wantCode(t, r, 1)
	if !strings.Contains(r.stderr, "did not answer within 300ms") {
		t.Errorf("stderr: %s", r.stderr)
	}
	// Process start-up under -race is slow; the point is that it returns.
	if r.took > 5*time.Second {
		t.Errorf("hook took %v with a 300ms timeout", r.took)
	}
	syscall.Kill(pid, syscall.SIGCONT)
	e.wantNoNode("5")
}

// TestDestroyDomidOfVM: "destroy --uuid U N" removes node N only if it is
// VM U's (or of no known VM); the next domain given domid N keeps its node.
func TestDestroyDomidOfVM(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	other := "11111111-2222-3333-4444-555555555555"
	wantCode(t, e.hook("", "create", "--uuid", vmUUID, "7"), 0)
	wantCode(t, e.hook("", "destroy", "--uuid", other, "7"), 0)
	e.wantNode("7", vmUUID)
	wantCode(t, e.hook("", "destroy", "--uuid", strings.ToUpper(vmUUID), "7"), 0)
	e.wantNoNode("7")
	wantCode(t, e.hook("", "create", "8"), 0)
	wantCode(t, e.hook("", "destroy", "--uuid", other, "8"), 0)
	e.wantNoNode("8")
}

// TestCreateKeepsRecordedUUID: a create that knows no uuid (no --uuid, no
// /local/domain/<id>/vm) keeps the one recorded by an earlier hook.
func TestCreateKeepsRecordedUUID(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	wantCode(t, e.xapi("vm-pre-resume", "-vmuuid", vmUUID, "-reason", "none", "-vmdomid", "12"), 0)
	wantCode(t, e.hook("", "create", "12"), 0)
	e.wantNode("12", vmUUID)
}

// TestLibvirtStdinBounded: a libvirt hook whose stdin stays open gives up
// within --timeout, as it does on a hung xenstored.
func TestLibvirtStdinBounded(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	pr, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer pw.Close() // the writer never closes it while the hook runs
	for _, strict := range []bool{false, true} {
		args := []string{"--timeout", "300ms", "libvirt", "web01", "started", "begin", "-"}
		want := 0
		if strict {
			args, want = append([]string{"--strict"}, args...), 1
		}
		cmd := exec.Command(filepath.Join(e.libexec, "mtwatch-hook"), args...)
		cmd.Env = append(append(os.Environ(), "MTWATCH_HOOK_AS_MAIN=1"), e.xs.Env()...)
		cmd.Stdin = pr
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		start := time.Now()
		done := make(chan error, 1)
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		go func() { done <- cmd.Wait() }()
		select {
		case err = <-done:
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			<-done
			t.Fatalf("hook with --timeout 300ms still reading stdin after 10s")
		}
		code := 0
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			code = ee.ExitCode()
		}
		if code != want || !strings.Contains(stderr.String(), "stdin not closed within 300ms") {
			t.Errorf("strict=%v: exit %d after %v, stderr %q; want exit %d", strict, code, time.Since(start), stderr.String(), want)
		}
	}
	e.wantNoNode("7")
}

// TestMessagesOneLine: whatever argv holds, a failure is one line of
// stderr (and of syslog, which gets the same text).
func TestMessagesOneLine(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.xs.Stop()
	forged := "x\nmtwatch-hook: forged line\r"
	for _, args := range [][]string{
		{"xapi", "vm-pre-resume", "-vmuuid", vmUUID, "-reason", forged, "-vmdomid", "5"},
		{"xapi", "vm-pre-resume\n" + forged, "-reason", "r", "-vmdomid", "5"},
		{"xapi", "vm-pre-resume", "-vmuuid", vmUUID, forged, "1"},
		{"create", forged},
		{"create", "--uuid", forged, "5"},
	} {
		r := e.hook("", args...)
		if r.code == 0 || strings.Count(r.stderr, "\n") != 1 || strings.ContainsRune(r.stderr, '\r') {
			t.Errorf("%q: exit %d, stderr %q", args, r.code, r.stderr)
		}
	}
}
