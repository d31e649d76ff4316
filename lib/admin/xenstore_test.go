package admin

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/mtwatch/mtwatch/internal/fanout"
	"github.com/mtwatch/mtwatch/lib/domid"
	"github.com/mtwatch/mtwatch/lib/node"
	"github.com/mtwatch/mtwatch/lib/xenstore"
	"github.com/mtwatch/mtwatch/lib/xenstore/xenstoredtest"
)

// store is a private xenstored with helpers to run mtwatch against it.
type store struct {
	t    *testing.T
	in   *xenstoredtest.Instance
	sock string // a control socket nobody listens on
}

func newStore(t *testing.T) *store {
	in := xenstoredtest.Start(t)
	return &store{t: t, in: in, sock: filepath.Join(t.TempDir(), "control.sock")}
}

func (s *store) run(args ...string) result {
	s.t.Helper()
	return run(s.t, append([]string{"--xenstore", s.in.Socket(), "--control", s.sock, "--timeout", "3s"}, args...)...)
}

// dump is the whole store with permissions, to show that nothing changed.
func (s *store) dump() string {
	s.t.Helper()
	return s.in.Run("xenstore-ls", "-f", "-p", "/")
}

func (s *store) read(path string) (string, bool) {
	out, err := s.in.Command("xenstore-read", path).Output()
	return strings.TrimSpace(string(out)), err == nil
}

func TestCreateDestroy(t *testing.T) {
	s := newStore(t)
	s.in.CreateDomain(5)
	s.in.Run("xenstore-write", "/local/domain/5/vm", "/vm/55555555-5555-4555-8555-555555555555")

	s.run("create", "5").expect(t, ExitOK)
	if v, ok := s.read(node.Path(5)); !ok || v != "55555555-5555-4555-8555-555555555555" {
		t.Fatalf("node of 5: %q %v, want the uuid from /local/domain/5/vm", v, ok)
	}
	if p := s.in.Run("xenstore-ls", "-p", node.Dir); !strings.Contains(p, "(n0)") {
		t.Errorf("node perms: %s", p)
	}
	s.run("create", "5").expect(t, ExitOK) // idempotent
	s.run("create", "--uuid", "AAAAAAAA-0000-4000-8000-000000000007", "7").expect(t, ExitOK)
	if v, _ := s.read(node.Path(7)); v != "aaaaaaaa-0000-4000-8000-000000000007" {
		t.Errorf("node of 7: %q", v)
	}
	s.run("destroy", "5").expect(t, ExitOK)
	if _, ok := s.read(node.Path(5)); ok {
		t.Error("node of 5 still there")
	}
	s.run("destroy", "5").expect(t, ExitOK) // a missing node is success
	// --uuid with a domid removes the node only if it is that VM's.
	s.run("destroy", "--uuid", "bbbbbbbb-0000-4000-8000-000000000007", "7").expect(t, ExitOK)
	if _, ok := s.read(node.Path(7)); !ok {
		t.Error("node of 7 removed by destroy --uuid of another VM")
	}
	s.run("destroy", "--uuid", "aaaaaaaa-0000-4000-8000-000000000007").expect(t, ExitOK)
	if _, ok := s.read(node.Path(7)); ok {
		t.Error("node of 7 still there after destroy --uuid")
	}
}

// TestBadInputChangesNothing: every rejected domain argument exits 2 with
// one line naming it, and the store is byte for byte what it was.
func TestBadInputChangesNothing(t *testing.T) {
	s := newStore(t)
	s.in.CreateDomain(5)
	s.run("create", "5").expect(t, ExitOK)
	xl := fakeXL(t, s)
	before := s.dump()
	bad := []struct{ arg, msg string }{
		{"abc", "domain abc: invalid domid syntax"},
		{"0", "domain 0: domid is not a guest"},
		{"32752", "domain 32752: reserved domid"},
		{"70000", "domain 70000: domid out of range"},
		{"-1", "domain -1: invalid domid syntax"},
		{"007", "domain 007: invalid domid syntax"},
		{"nosuchvm", "domain nosuchvm: invalid domid syntax"},
	}
	for _, b := range bad {
		for _, cmd := range [][]string{{"create"}, {"destroy"}, {"create", "--uuid", "55555555-5555-4555-8555-555555555555"}} {
			args := append(append([]string{}, cmd...), b.arg)
			r := s.run(args...)
			r.expect(t, ExitUsage)
			if r.stderr != "mtwatch: "+b.msg+"\n" {
				t.Errorf("%v: stderr %q, want %q", args, r.stderr, "mtwatch: "+b.msg)
			}
		}
		// The xl wrappers take names too: a non-numeric argument that names
		// no domain is an unknown name; xl must not even run.
		for _, sub := range []string{"shutdown", "destroy", "reboot"} {
			r := s.run("xl", "--xl", xl.bin, sub, b.arg)
			r.expect(t, ExitUsage)
			want := b.msg
			if !looksNumeric(b.arg) {
				want = "domain \"" + b.arg + "\": no such domain"
			}
			if r.stderr != "mtwatch: "+want+"\n" {
				t.Errorf("xl %s %s: stderr %q, want %q", sub, b.arg, r.stderr, "mtwatch: "+want)
			}
		}
	}
	if log := xl.log(); log != "" {
		t.Errorf("xl ran on bad input: %q", log)
	}
	if after := s.dump(); after != before {
		t.Errorf("store changed by rejected commands\nbefore:\n%s\nafter:\n%s", before, after)
	}
}

// TestGuestNamesEscaped: a domain name is the guest's to write on some
// toolstacks; it must not reach the terminal raw.
func TestGuestNamesEscaped(t *testing.T) {
	s := newStore(t)
	s.in.CreateDomain(5)
	s.in.Run("xenstore-write", "/local/domain/5/name", "evil\x1b[2J\nname")
	r := s.run("list")
	r.expect(t, ExitOK)
	if strings.ContainsAny(r.stdout, "\x1b") || !strings.Contains(r.stdout, `evil\x1b[2J\x0aname`) {
		t.Errorf("list output: %q", r.stdout)
	}
}

func TestXenstoreFailure(t *testing.T) {
	dir := t.TempDir()
	r := run(t, "--xenstore", filepath.Join(dir, "none"), "create", "5")
	r.expect(t, ExitFailure)
	if !strings.HasPrefix(r.stderr, "mtwatch: connect to xenstore: ") {
		t.Errorf("stderr %q", r.stderr)
	}
}

// xlHarness is the fake xl of testdata/ pointed at a store.
type xlHarness struct {
	t             *testing.T
	bin, logf, st string
}

func fakeXL(t *testing.T, s *store) *xlHarness {
	t.Helper()
	bin, err := filepath.Abs("testdata/xl")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	h := &xlHarness{t: t, bin: bin, logf: filepath.Join(dir, "xl.log"), st: filepath.Join(dir, "state")}
	if err := os.Mkdir(h.st, 0o755); err != nil {
		t.Fatal(err)
	}
	// The fake xl and the clients it runs find the store through the
	// environment, as xl finds xenstored.
	for _, kv := range append(s.in.Env(), "FAKE_XL_LOG="+h.logf, "FAKE_XL_STATE="+h.st) {
		k, v, _ := strings.Cut(kv, "=")
		t.Setenv(k, v)
	}
	// A stopped xenstored must not outlive a failing test.
	t.Cleanup(func() {
		if b, err := os.ReadFile(filepath.Join(s.in.Dir(), "pid")); err == nil {
			var pid int
			for _, c := range strings.TrimSpace(string(b)) {
				pid = pid*10 + int(c-'0')
			}
			if pid > 0 {
				syscall.Kill(pid, syscall.SIGCONT)
			}
		}
	})
	return h
}

func (h *xlHarness) log() string {
	b, err := os.ReadFile(h.logf)
	if err != nil && !os.IsNotExist(err) {
		h.t.Fatal(err)
	}
	return string(b)
}

// firstDomid makes the fake xl's next domain id n.
func (h *xlHarness) firstDomid(n int) {
	if err := os.WriteFile(filepath.Join(h.st, "next"), []byte(strings.TrimSpace(domid.ID(n).String())+"\n"), 0o644); err != nil {
		h.t.Fatal(err)
	}
}

func writeCfg(t *testing.T, name string) string {
	p := filepath.Join(t.TempDir(), name+".cfg")
	if err := os.WriteFile(p, []byte("# test guest\ntype = \"pvh\"\nname = \""+name+"\"\nmemory = 512\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestXLCreate(t *testing.T) {
	s := newStore(t)
	xl := fakeXL(t, s)
	xl.firstDomid(4)
	cfg := writeCfg(t, "web")
	s.run("xl", "--xl", xl.bin, "create", cfg).expect(t, ExitOK)
	if got, want := xl.log(), "create -p "+cfg+"\ndomid web\nunpause 4\n"; got != want {
		t.Errorf("xl calls:\n%s\nwant:\n%s", got, want)
	}
	if v, ok := s.read(node.Path(4)); !ok || v != "00000000-0000-4000-8000-000000000004" {
		t.Errorf("node of 4: %q %v", v, ok)
	}

	// -p of the user's: the node is written, the guest stays paused; a
	// name= variable overrides the config's name.
	os.Remove(xl.logf)
	r := s.run("xl", "--xl", xl.bin, "create", "-p", cfg, "name=db")
	r.expect(t, ExitOK)
	if got, want := xl.log(), "create -p "+cfg+" name=db\ndomid db\n"; got != want {
		t.Errorf("xl calls:\n%s\nwant:\n%s", got, want)
	}
	if v, _ := s.read("/local/domain/5/name"); v != "db" {
		t.Errorf("domain 5 name %q", v)
	}
	if _, ok := s.read(node.Path(5)); !ok {
		t.Error("no node for the paused domain 5")
	}

	// A dry run creates nothing: xl alone runs, as given.
	os.Remove(xl.logf)
	before := s.dump()
	s.run("xl", "--xl", xl.bin, "create", "-n", cfg).expect(t, ExitOK)
	if got, want := xl.log(), "create -n "+cfg+"\n"; got != want {
		t.Errorf("xl calls:\n%s\nwant:\n%s", got, want)
	}
	// -c and -F keep xl running until the domain dies: refused, xl not run.
	for _, opt := range []string{"-c", "-F", "-pc"} {
		r := s.run("xl", "--xl", xl.bin, "create", opt, cfg)
		r.expect(t, ExitUsage)
		if !strings.Contains(r.stderr, "until the domain dies") {
			t.Errorf("create %s: stderr %q", opt, r.stderr)
		}
	}
	if got := xl.log(); got != "create -n "+cfg+"\n" {
		t.Errorf("xl ran for a refused create: %q", got)
	}
	if s.dump() != before {
		t.Error("store changed by a dry run or a refused create")
	}
}

func TestXLCreateFailures(t *testing.T) {
	s := newStore(t)
	xl := fakeXL(t, s)
	xl.firstDomid(4)
	cfg := writeCfg(t, "web")

	// xl create fails: exit 1, nothing else run, no node.
	t.Setenv("FAKE_XL_FAIL", "create")
	before := s.dump()
	r := s.run("xl", "--xl", xl.bin, "create", cfg)
	r.expect(t, ExitFailure)
	if !strings.Contains(r.stderr, "libxl: error: create failed") || !strings.Contains(r.stderr, "mtwatch: xl create -p "+cfg+": exit status 1") {
		t.Errorf("stderr %q", r.stderr)
	}
	if after := s.dump(); after != before {
		t.Errorf("store changed although xl create failed")
	}
	t.Setenv("FAKE_XL_FAIL", "")

	// The node cannot be written (xenstored hangs right after xl told the
	// domid): without --strict the guest is unpaused with a warning.
	os.Remove(xl.logf)
	t.Setenv("FAKE_XL_STOP_XENSTORED", "domid")
	r = run(t, "--xenstore", s.in.Socket(), "--control", s.sock, "--timeout", "500ms", "xl", "--xl", xl.bin, "create", cfg)
	r.expect(t, ExitOK)
	if !strings.Contains(r.stderr, "mtwatch: warning: ") {
		t.Errorf("no warning: %q", r.stderr)
	}
	if got, want := xl.log(), "create -p "+cfg+"\ndomid web\nunpause 4\n"; got != want {
		t.Errorf("xl calls:\n%s\nwant:\n%s", got, want)
	}
	if _, ok := s.read(node.Path(4)); ok {
		t.Error("node of 4 exists although writing it failed")
	}

	// With --strict the paused domain is destroyed and mtwatch exits 1.
	os.Remove(xl.logf)
	cfg2 := writeCfg(t, "db")
	r = run(t, "--xenstore", s.in.Socket(), "--control", s.sock, "--timeout", "500ms", "xl", "--xl", xl.bin, "--strict", "create", cfg2)
	r.expect(t, ExitFailure)
	if got, want := xl.log(), "create -p "+cfg2+"\ndomid db\ndestroy 5\n"; got != want {
		t.Errorf("xl calls:\n%s\nwant:\n%s", got, want)
	}
	if !strings.Contains(r.stderr, "--strict: domain destroyed") {
		t.Errorf("stderr %q", r.stderr)
	}
	t.Setenv("FAKE_XL_STOP_XENSTORED", "")
	if v, ok := s.read("/local/domain/5/name"); ok {
		t.Errorf("strict: domain 5 (%s) still there", v)
	}
}

func TestXLShutdownDestroy(t *testing.T) {
	s := newStore(t)
	xl := fakeXL(t, s)
	xl.firstDomid(4)
	s.run("xl", "--xl", xl.bin, "create", writeCfg(t, "web")).expect(t, ExitOK)
	s.run("xl", "--xl", xl.bin, "create", writeCfg(t, "db")).expect(t, ExitOK)
	os.Remove(xl.logf)

	// shutdown returns before the domain is gone: the node goes after it.
	s.run("xl", "--xl", xl.bin, "shutdown", "web").expect(t, ExitOK)
	if _, ok := s.read(node.Path(4)); ok {
		t.Error("node of 4 still there after shutdown")
	}
	if _, ok := s.read("/local/domain/4/name"); ok {
		t.Error("shutdown returned before the domain was gone")
	}
	s.run("xl", "--xl", xl.bin, "destroy", "5").expect(t, ExitOK)
	if _, ok := s.read(node.Path(5)); ok {
		t.Error("node of 5 still there after destroy")
	}
	if got, want := xl.log(), "shutdown web\ndestroy 5\n"; got != want {
		t.Errorf("xl calls:\n%s\nwant:\n%s", got, want)
	}

	// xl fails: the node is kept, exit 1.
	s.run("xl", "--xl", xl.bin, "create", writeCfg(t, "mail")).expect(t, ExitOK)
	t.Setenv("FAKE_XL_FAIL", "destroy")
	r := s.run("xl", "--xl", xl.bin, "destroy", "mail")
	r.expect(t, ExitFailure)
	if !strings.Contains(r.stderr, "node of domain 6 kept") {
		t.Errorf("stderr %q", r.stderr)
	}
	if _, ok := s.read(node.Path(6)); !ok {
		t.Error("node of 6 removed although xl destroy failed")
	}
}

// TestXLShutdownAll: -a asks every guest, one xl shutdown each, so that a
// guest without PV drivers stops neither the others' shutdown nor the
// removal of their nodes.
func TestXLShutdownAll(t *testing.T) {
	s := newStore(t)
	xl := fakeXL(t, s)
	xl.firstDomid(4)
	for _, n := range []string{"web", "nopv", "db"} {
		s.run("xl", "--xl", xl.bin, "create", writeCfg(t, n)).expect(t, ExitOK)
	}
	os.Remove(xl.logf)
	t.Setenv("FAKE_XL_IGNORE_SHUTDOWN", "nopv")
	r := s.run("xl", "--xl", xl.bin, "--wait", "20s", "shutdown", "-a", "-w", "-F")
	r.expect(t, ExitFailure)
	if got, want := xl.log(), "shutdown -F 4\nshutdown -F 5\nshutdown -F 6\n"; got != want {
		t.Errorf("xl calls:\n%s\nwant:\n%s", got, want)
	}
	if !strings.Contains(r.stderr, "xl shutdown failed for domains 5: their nodes kept") ||
		!strings.Contains(r.stderr, "PV control interface not available") {
		t.Errorf("stderr %q", r.stderr)
	}
	for id, want := range map[domid.ID]bool{4: false, 5: true, 6: false} {
		if _, ok := s.read(node.Path(id)); ok != want {
			t.Errorf("node of %d exists %v, want %v", id, ok, want)
		}
		if _, ok := s.read("/local/domain/" + id.String() + "/name"); ok != want {
			t.Errorf("domain %d there %v, want %v", id, ok, want)
		}
	}

	// -a with a domain is a usage error; so is reboot -a. Nothing runs.
	os.Remove(xl.logf)
	before := s.dump()
	for _, args := range [][]string{{"shutdown", "-a", "nopv"}, {"reboot", "-a"}, {"reboot", "-wa"}} {
		r := s.run(append([]string{"xl", "--xl", xl.bin}, args...)...)
		r.expect(t, ExitUsage)
		if !strings.Contains(r.stderr, "-a") {
			t.Errorf("%v: stderr %q", args, r.stderr)
		}
	}
	if xl.log() != "" || s.dump() != before {
		t.Errorf("a refused -a ran xl (%q) or changed the store", xl.log())
	}

	// Without a guest that refuses, every node goes.
	t.Setenv("FAKE_XL_IGNORE_SHUTDOWN", "")
	s.run("xl", "--xl", xl.bin, "shutdown", "--all").expect(t, ExitOK)
	if _, ok := s.read(node.Path(5)); ok {
		t.Error("node of 5 still there after shutdown --all")
	}
	// No guest at all: nothing to do.
	s.run("xl", "--xl", xl.bin, "shutdown", "-a").expect(t, ExitOK)
}

func TestWithoutOpts(t *testing.T) {
	for in, want := range map[string]string{
		"-a -w -F":          "-F",
		"-awF":              "-F",
		"--all --wait -F x": "-F x",
		"-F -- -a":          "-F -- -a",
	} {
		if got := strings.Join(withoutOpts(strings.Fields(in), "aw", "--all", "--wait"), " "); got != want {
			t.Errorf("%q: %q, want %q", in, got, want)
		}
	}
}

func TestXLReboot(t *testing.T) {
	s := newStore(t)
	xl := fakeXL(t, s)
	xl.firstDomid(4)
	s.run("xl", "--xl", xl.bin, "create", writeCfg(t, "web")).expect(t, ExitOK)
	s.run("create", "--uuid", "12345678-1234-4234-8234-123456789abc", "4").expect(t, ExitOK)
	s.run("xl", "--xl", xl.bin, "reboot", "4").expect(t, ExitOK)
	if _, ok := s.read(node.Path(4)); ok {
		t.Error("old node of 4 still there after reboot")
	}
	if v, ok := s.read(node.Path(5)); !ok || v != "12345678-1234-4234-8234-123456789abc" {
		t.Errorf("node of the rebooted domain 5: %q %v, want the old node's uuid", v, ok)
	}

	// on_reboot="destroy": the domain goes and does not come back; once
	// the wait is over its node goes too, and mtwatch says so (exit 1).
	t.Setenv("FAKE_XL_ON_REBOOT", "destroy")
	r := s.run("xl", "--xl", xl.bin, "--wait", "1s", "reboot", "web")
	r.expect(t, ExitFailure)
	if !strings.Contains(r.stderr, "domain 5 (web) to come back: still waiting after 1s; domain 5 is gone: its node removed") {
		t.Errorf("stderr %q", r.stderr)
	}
	if _, ok := s.read(node.Path(5)); ok {
		t.Error("node of 5 kept although the domain is gone")
	}
}

// TestListWithoutAgentManyDomains: /local/domain larger than one XenStore
// payload (4096 bytes) is listed whole, names read pipelined.
func TestListWithoutAgentManyDomains(t *testing.T) {
	s := newStore(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	xs, err := xenstore.Dial(ctx, xenstore.WithPath(s.in.Socket()))
	if err != nil {
		t.Fatal(err)
	}
	defer xs.Close()
	const n = 1200 // "1000".."2199": over 5 KiB of names
	err = fanout.Each(ctx, n, inFlight, func(i int) error {
		id := domid.ID(1000 + i)
		return xs.Write(ctx, "/local/domain/"+id.String()+"/name", []byte("vm-"+id.String()))
	})
	if err != nil {
		t.Fatal(err)
	}
	r := s.run("list")
	r.expect(t, ExitOK)
	lines := strings.Split(strings.TrimSpace(r.stdout), "\n")
	if len(lines) != 1+1+n { // header, dom0, guests
		t.Fatalf("%d lines, want %d", len(lines), 2+n)
	}
	if f := strings.Fields(lines[len(lines)-1]); len(f) < 3 || strings.Join(f[:3], " ") != "vm-2199 2199 unknown" {
		t.Errorf("last line %q", lines[len(lines)-1])
	}
}
