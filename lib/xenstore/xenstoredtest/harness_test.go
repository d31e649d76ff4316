package xenstoredtest

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/mtwatch/mtwatch/lib/domid"
)

// TestParallelInstances checks that instances are private: the same path
// holds different values in two daemons running at once.
func TestParallelInstances(t *testing.T) {
	t.Parallel()
	a, b := Start(t), Start(t)
	if a.Socket() == b.Socket() {
		t.Fatal("instances share a socket")
	}
	var wg sync.WaitGroup
	for i, in := range []*Instance{a, b} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := 0; j < 20; j++ {
				if err := in.Command("xenstore-write", "/test/v", strings.Repeat("x", i+1)).Run(); err != nil {
					t.Errorf("write: %v", err)
					return
				}
			}
		}()
	}
	wg.Wait()
	if got := a.Run("xenstore-read", "/test/v"); got != "x" {
		t.Errorf("instance a: /test/v = %q", got)
	}
	if got := b.Run("xenstore-read", "/test/v"); got != "xx" {
		t.Errorf("instance b: /test/v = %q", got)
	}
}

// TestCLIs drives the instance with Debian's libxenstore tools.
func TestCLIs(t *testing.T) {
	t.Parallel()
	in := Start(t)
	in.Run("xenstore-write", "/vm/abc/name", "guest", "/vm/abc/uuid", "abc")
	if got := in.Run("xenstore-read", "/vm/abc/name"); got != "guest" {
		t.Errorf("read = %q", got)
	}
	if got := in.Run("xenstore-list", "/vm/abc"); got != "name\nuuid" {
		t.Errorf("list = %q", got)
	}
	ls := in.Run("xenstore-ls", "-p", "/vm")
	if !strings.Contains(ls, `name = "guest"`) || !strings.Contains(ls, "(n0)") {
		t.Errorf("xenstore-ls -p output unexpected:\n%s", ls)
	}
	in.Run("xenstore-rm", "/vm/abc")
	if err := in.Command("xenstore-read", "/vm/abc/name").Run(); err == nil {
		t.Error("read after rm succeeded")
	}
}

// TestCLIWatch checks that xenstore-watch sees the initial event and a write.
func TestCLIWatch(t *testing.T) {
	t.Parallel()
	in := Start(t)
	cmd := in.Command("xenstore-watch", "-n", "2", "/watched")
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	sc := bufio.NewScanner(out)
	if !sc.Scan() || sc.Text() != "/watched" {
		t.Fatalf("initial event: %q %v", sc.Text(), sc.Err())
	}
	in.Run("xenstore-write", "/watched/child", "1")
	if !sc.Scan() || sc.Text() != "/watched/child" {
		t.Fatalf("write event: %q %v", sc.Text(), sc.Err())
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("xenstore-watch -n 2: %v", err)
	}
}

// TestDomainLifecycle introduces domain 5, kills it and checks that
// @releaseDomain fires and the nodes it owned are gone; then reuses the domid.
func TestDomainLifecycle(t *testing.T) {
	t.Parallel()
	in := Start(t)
	w, err := Dial(in.Socket())
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	for _, p := range []string{"@introduceDomain", "@releaseDomain"} {
		if _, err := w.Request(TypeWatch, p, "tok"); err != nil {
			t.Fatalf("watch %s: %v", p, err)
		}
	}
	waitEvent := func(want string) {
		t.Helper()
		for _, ev := range w.Events {
			if ev[0] == want {
				w.Events = nil
				return
			}
		}
		w.SetDeadline(time.Now().Add(10 * time.Second))
		for {
			typ, _, body, err := w.ReadMsg()
			if err != nil {
				t.Fatalf("waiting for %s: %v", want, err)
			}
			if typ == TypeWatchEvent && strings.HasPrefix(string(body), want+"\x00") {
				w.Events = nil
				return
			}
		}
	}
	// The initial events of both watches.
	waitEvent("@introduceDomain")
	waitEvent("@releaseDomain")

	for round := 0; round < 2; round++ {
		in.CreateDomain(5)
		waitEvent("@introduceDomain")
		if got := in.Run("xenstore-read", "/local/domain/5/name"); got != "guest5" {
			t.Fatalf("round %d: name = %q", round, got)
		}
		if ls := in.Run("xenstore-ls", "-p", "/local/domain/5"); !strings.Contains(ls, "(n5)") {
			t.Fatalf("round %d: /local/domain/5 not owned by domain 5:\n%s", round, ls)
		}
		in.KillDomain(5)
		waitEvent("@releaseDomain")
		err := in.Command("xenstore-read", "/local/domain/5/name").Run()
		var ee *exec.ExitError
		if !errors.As(err, &ee) {
			t.Fatalf("round %d: nodes of the dead domain still readable (err %v)", round, err)
		}
		c, err := Dial(in.Socket())
		if err != nil {
			t.Fatal(err)
		}
		v, err := c.Request(TypeIsDomainIntroduced, "5")
		c.Close()
		if err != nil || v != "F" {
			t.Fatalf("round %d: IS_DOMAIN_INTRODUCED after kill = %q, %v", round, v, err)
		}
	}
}

// TestRestart checks that a restarted instance serves the same socket with
// an empty store, and that clients of the old one see their connection drop.
func TestRestart(t *testing.T) {
	t.Parallel()
	in := Start(t)
	in.Run("xenstore-write", "/before", "1")
	c, err := Dial(in.Socket())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	in.Restart()
	if _, err := c.Request(TypeRead, "/before"); err == nil {
		t.Error("old connection still answered after restart")
	}
	c2, err := Dial(in.Socket())
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	if _, err := c2.Request(TypeRead, "/before"); !errors.Is(err, syscall.ENOENT) {
		t.Errorf("read after restart: %v, want ENOENT", err)
	}
	in.Stop()
	if _, err := Dial(in.Socket()); err == nil {
		t.Error("dial succeeded with xenstored stopped")
	}
	if err := in.Server().Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	in.Run("xenstore-write", "/after", "1")
}

func TestRejectsNonGuest(t *testing.T) {
	t.Parallel()
	in := Start(t)
	for _, id := range []domid.ID{0, domid.Self, domid.Invalid} {
		if err := in.Server().IntroduceDomain(id); err == nil {
			t.Errorf("IntroduceDomain(%d) succeeded", id)
		}
	}
}

// TestMissingXenstored: without the daemon the harness fails (it never
// skips), and says which Debian package to install.
func TestMissingXenstored(t *testing.T) {
	t.Setenv(EnvXenstored, "/nonexistent/xenstored")
	_, err := Launch(context.Background(), Config{})
	if !errors.Is(err, ErrNotInstalled) || !strings.Contains(err.Error(), "xen-utils-4.17") {
		t.Fatalf("Launch without xenstored: %v", err)
	}
}

// TestSetDomainAlive: through a Server attached to the instance, as a
// simulator in another process has it, a domain made alive can own nodes
// and be introduced by a client of its own, and its death is noticed
// (@releaseDomain: no longer introduced, its nodes gone). A plain directory
// cannot be attached.
func TestSetDomainAlive(t *testing.T) {
	t.Parallel()
	in := Start(t)
	ctx := context.Background()
	s, err := Attach(ctx, in.Dir())
	if err != nil {
		t.Fatal(err)
	}
	c, err := Dial(in.Socket())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	introduced := func() string {
		t.Helper()
		v, err := c.Request(TypeIsDomainIntroduced, "7")
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	for round := 0; round < 2; round++ {
		if err := s.SetDomainAlive(7, true); err != nil {
			t.Fatal(err)
		}
		if err := c.Write("/local/domain/7/name", "g7"); err != nil {
			t.Fatal(err)
		}
		if _, err := c.Request(TypeSetPerms, "/local/domain/7", "n7"); err != nil {
			t.Fatalf("round %d: owner 7 refused while alive: %v", round, err)
		}
		if _, err := c.Request(TypeIntroduce, "7", "1", "1"); err != nil {
			t.Fatalf("round %d: introduce: %v", round, err)
		}
		if err := s.SetDomainAlive(7, false); err != nil {
			t.Fatal(err)
		}
		deadline := time.Now().Add(10 * time.Second)
		for introduced() != "F" {
			if time.Now().After(deadline) {
				t.Fatalf("round %d: domain 7 still introduced after its death", round)
			}
			time.Sleep(2 * time.Millisecond)
		}
		if _, err := c.Request(TypeRead, "/local/domain/7/name"); !errors.Is(err, syscall.ENOENT) {
			t.Fatalf("round %d: nodes of the dead domain: %v", round, err)
		}
	}
	if err := s.SetDomainAlive(0, false); err == nil {
		t.Error("SetDomainAlive(0) succeeded")
	}
	if _, err := Attach(ctx, t.TempDir()); err == nil {
		t.Error("Attach of a plain directory succeeded")
	}
	// The attached Server does not own the instance: the test's cleanup
	// stops it, and it still answers here.
	if _, err := c.Request(TypeRead, "/local/domain/0"); err != nil && !errors.Is(err, syscall.ENOENT) {
		t.Fatal(err)
	}
}

// TestKind: the daemon running is the one $MTWATCH_TEST_XENSTORED selects,
// options of the other daemon are refused, and a bad selection is an
// error, not a fallback.
func TestKind(t *testing.T) {
	t.Parallel()
	kind, err := KindFromEnv()
	if err != nil {
		t.Fatal(err)
	}
	in := Start(t)
	if in.Kind() != kind {
		t.Fatalf("Kind() = %q, want %q", in.Kind(), kind)
	}
	want := map[Kind]string{C: DefaultXenstored, Oxenstored: DefaultOxenstored}[kind]
	if v := os.Getenv(EnvXenstored); v != "" {
		want = v
	}
	if Binary(kind) != want {
		t.Errorf("Binary(%q) = %q, want %q", kind, Binary(kind), want)
	}
	exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", in.Pid()))
	if err != nil {
		t.Fatal(err)
	}
	if wantExe, err := filepath.EvalSymlinks(want); err != nil || exe != wantExe {
		t.Errorf("daemon runs %s, want %s (%v)", exe, wantExe, err)
	}
	ctx := context.Background()
	if _, err := Launch(ctx, Config{Kind: Oxenstored, Args: []string{"-W", "5"}}); err == nil {
		t.Error("oxenstored launched with C arguments")
	}
	if _, err := Launch(ctx, Config{Kind: C, Settings: []string{"quota-maxwatch = 5"}}); err == nil {
		t.Error("the C xenstored launched with oxenstored settings")
	}
	if _, err := Launch(ctx, Config{Kind: "ocaml"}); err == nil {
		t.Error("launched an unknown kind")
	}
}

// TestBadKind: a misspelt MTWATCH_TEST_XENSTORED fails, naming the choices.
func TestBadKind(t *testing.T) {
	t.Setenv(EnvKind, "ocaml")
	if _, err := Launch(context.Background(), Config{}); err == nil || !strings.Contains(err.Error(), "oxenstored") {
		t.Fatalf("Launch with %s=ocaml: %v", EnvKind, err)
	}
}

// TestOxenstoredSettings: Settings reach oxenstored's configuration (its
// CONTROL "quota" reports the maximum of entries quota-maxentity sets), and
// an oxenstored instance keeps its files in its run directory.
func TestOxenstoredSettings(t *testing.T) {
	t.Parallel()
	in := StartWith(t, Config{Kind: Oxenstored, Settings: []string{"quota-maxentity = 77"}})
	in.CreateDomain(3)
	c, err := Dial(in.Socket())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	q, err := c.Request(0, "quota", "3")
	if err != nil || !strings.HasSuffix(q, "/77") {
		t.Errorf("quota 3 = %q, %v, want .../77", q, err)
	}
	for _, f := range []string{"pid", "oxenstored.log", "trace", "socket"} {
		if _, err := os.Stat(filepath.Join(in.Dir(), f)); err != nil {
			t.Errorf("run directory: %v", err)
		}
	}
}

// TestTraceCapped: the C xenstored's trace is emptied past traceCap while
// the daemon runs, and goes on being written.
func TestTraceCapped(t *testing.T) {
	// C alone, whatever MTWATCH_TEST_XENSTORED says: oxenstored rotates its
	// access log itself.
	old := traceCap
	traceCap = 64 << 10
	t.Cleanup(func() { traceCap = old })
	in := StartWith(t, Config{Kind: C})
	path := in.TracePath()
	c, err := Dial(in.Socket())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for i := 0; i < 2000; i++ {
		if err := c.Write(fmt.Sprintf("/tool/cap/%d", i), strings.Repeat("x", 100)); err != nil {
			t.Fatal(err)
		}
	}
	// 2,000 writes trace far more than 64 KiB; the check every 250 ms lets
	// it pass the cap by what xenstored writes in that time.
	deadline := time.Now().Add(5 * time.Second)
	for {
		fi, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Size() <= traceCap {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("trace %d bytes 5 s after the writes, cap %d", fi.Size(), traceCap)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err := c.Write("/tool/cap/after", "1"); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(path); err != nil || !strings.Contains(string(b), "/tool/cap/after") {
		t.Fatalf("trace not written after being emptied (%v): %.200q", err, b)
	}
}

func TestReadTail(t *testing.T) {
	path := filepath.Join(t.TempDir(), "f")
	if err := os.WriteFile(path, []byte("0123456789"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		n    int64
		want string
	}{{4, "6789"}, {10, "0123456789"}, {100, "0123456789"}, {0, ""}} {
		b, err := readTail(path, tc.n)
		if err != nil || string(b) != tc.want {
			t.Errorf("readTail(%d) = %q, %v; want %q", tc.n, b, err, tc.want)
		}
	}
}
