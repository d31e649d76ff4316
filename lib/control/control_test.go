package control

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"io"
	"io/fs"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// fakeSource is a fixed agent state: dom0, a live domain, a stalled one and
// a node without a worker.
type fakeSource struct{}

var t0 = time.Date(2026, 11, 29, 9, 0, 0, 0, time.UTC)

func (fakeSource) Status() Status {
	return Status{
		Version: "test", PID: 42, StartedAt: t0, UptimeSeconds: 60,
		Mode: ModeMultiWorker, AutoDetect: true, StallThresholdMS: 5000,
		Xenstore: XenstoreStatus{Path: "/run/xenstored/socket", State: "connected", ConnectedSince: t0},
		Domains:  3, Workers: 2, Nodes: 3, Stalled: 1,
		Totals:  Totals{Dispatched: 10, Processed: 9},
		Plugins: []PluginStatus{{Name: "log", Enabled: true, Watches: 1}},
	}
}

var fakeDomains = []Domain{
	{Domid: 0, Name: "Domain-0", Worker: WorkerDefault, Processed: 4},
	{Domid: 5, Name: "web", UUID: "11111111-2222-3333-4444-555555555555", Node: true, Introduced: true,
		Worker: WorkerLive, Queued: 1, Dispatched: 3, Processed: 2},
	{Domid: 7, Name: "stuck", Node: true, Introduced: true, Worker: WorkerLive, Queued: 4,
		Current:      &Current{Path: "backend/vbd/7/51712/state", Watch: "log", Token: "log/1", AgeMS: 9000, Stalled: true},
		PluginStalls: 1, PluginStallAgeMS: 20000},
	{Domid: 9, Node: true, Stale: true, Worker: WorkerNone},
}

func (fakeSource) Domains() []Domain { return fakeDomains }
func (fakeSource) Domain(id uint16) (Domain, bool) {
	for _, d := range fakeDomains {
		if d.Domid == id {
			return d, true
		}
	}
	return Domain{}, false
}
func (fakeSource) Stalls() []Stall {
	return []Stall{{Domid: 7, Name: "stuck", Worker: "domain", Watch: "log", Token: "log/1",
		Path: "backend/vbd/7/51712/state", Started: t0, AgeMS: 9000},
		{Domid: 7, Name: "stuck", Worker: "plugin", Watch: "hotplug", Path: "backend/vif/7/0",
			Started: t0.Add(-11 * time.Second), AgeMS: 20000, Detail: "hotplug online script vif-bridge running"}}
}

// emptySource has no domains and no stalls: lists must encode as [].
type emptySource struct{ fakeSource }

func (emptySource) Domains() []Domain { return nil }
func (emptySource) Stalls() []Stall   { return nil }

var metricsHandler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
	io.WriteString(w, "# TYPE mtwatch_workers gauge\nmtwatch_workers 2\n")
})

func TestHandlerRoutes(t *testing.T) {
	h := NewHandler(fakeSource{}, metricsHandler)
	tests := []struct {
		method, path string
		code         int
		want         any    // decoded and compared when set
		errPart      string // for errors: part of the JSON error message
	}{
		{"GET", "/v1/status", 200, fakeSource{}.Status(), ""},
		{"GET", "/v1/domains", 200, fakeDomains, ""},
		{"GET", "/v1/domains/0", 200, fakeDomains[0], ""},
		{"GET", "/v1/domains/7", 200, fakeDomains[2], ""},
		{"GET", "/v1/stalls", 200, fakeSource{}.Stalls(), ""},
		{"HEAD", "/v1/status", 200, nil, ""},
		{"GET", "/v1/domains/8", 404, nil, "domain 8: not known"},
		{"GET", "/v1/domains/abc", 400, nil, `domain "abc": invalid domid syntax`},
		{"GET", "/v1/domains/007", 400, nil, `domain 007: invalid domid syntax`},
		{"GET", "/v1/domains/-1", 400, nil, `invalid domid syntax`},
		{"GET", "/v1/domains/32752", 400, nil, `domain 32752: reserved domid`},
		{"GET", "/v1/domains/70000", 400, nil, `domain 70000: domid out of range`},
		{"GET", "/v1/domains/", 400, nil, `invalid domid syntax`},
		{"GET", "/v1/domains/5/x", 400, nil, `invalid domid syntax`},
		{"GET", "/v2/status", 404, nil, "no such endpoint"},
		{"GET", "/", 404, nil, "no such endpoint"},
		{"POST", "/v1/status", 405, nil, "method POST not allowed"},
		{"DELETE", "/v1/domains/5", 405, nil, "method DELETE not allowed"},
		{"PUT", "/metrics", 405, nil, "not allowed"},
	}
	for _, tt := range tests {
		t.Run(tt.method+" "+tt.path, func(t *testing.T) {
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, httptest.NewRequest(tt.method, tt.path, nil))
			if rec.Code != tt.code {
				t.Fatalf("code %d, want %d; body %s", rec.Code, tt.code, rec.Body)
			}
			if ct := rec.Header().Get("Content-Type"); ct != "application/json" {
				t.Errorf("Content-Type %q", ct)
			}
			if tt.code == 405 && rec.Header().Get("Allow") != "GET, HEAD" {
				t.Errorf("405 without Allow: %v", rec.Header())
			}
			if tt.code != 200 {
				var e Error
				if err := json.Unmarshal(rec.Body.Bytes(), &e); err != nil {
					t.Fatalf("error body not JSON: %q", rec.Body)
				}
				if !strings.Contains(e.Error, tt.errPart) {
					t.Errorf("error %q does not contain %q", e.Error, tt.errPart)
				}
				return
			}
			if tt.want == nil {
				return
			}
			got := reflect.New(reflect.TypeOf(tt.want))
			if err := json.Unmarshal(rec.Body.Bytes(), got.Interface()); err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got.Elem().Interface(), tt.want) {
				t.Errorf("got %+v\nwant %+v", got.Elem().Interface(), tt.want)
			}
		})
	}
}

func TestHandlerMetrics(t *testing.T) {
	rec := httptest.NewRecorder()
	NewHandler(fakeSource{}, metricsHandler).ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	if rec.Code != 200 || !strings.Contains(rec.Body.String(), "mtwatch_workers 2") {
		t.Errorf("metrics: %d %q", rec.Code, rec.Body)
	}
	rec = httptest.NewRecorder()
	NewHandler(fakeSource{}, nil).ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	if rec.Code != 404 || !strings.Contains(rec.Body.String(), `"error"`) {
		t.Errorf("nil metrics: %d %q", rec.Code, rec.Body)
	}
}

func TestHandlerEmptyListsAreArrays(t *testing.T) {
	h := NewHandler(emptySource{}, nil)
	for _, p := range []string{"/v1/domains", "/v1/stalls"} {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest("GET", p, nil))
		if got := strings.TrimSpace(rec.Body.String()); got != "[]" {
			t.Errorf("%s: %q, want []", p, got)
		}
	}
}

var snake = regexp.MustCompile(`^[a-z][a-z0-9]*(_[a-z0-9]+)*$`)

// TestSnakeCase walks every key of every answer.
func TestSnakeCase(t *testing.T) {
	h := NewHandler(fakeSource{}, nil)
	var walk func(path string, v any)
	walk = func(path string, v any) {
		switch v := v.(type) {
		case map[string]any:
			for k, e := range v {
				if !snake.MatchString(k) {
					t.Errorf("%s: key %q is not snake_case", path, k)
				}
				walk(path+"."+k, e)
			}
		case []any:
			for _, e := range v {
				walk(path+"[]", e)
			}
		}
	}
	for _, p := range []string{"/v1/status", "/v1/domains", "/v1/domains/7", "/v1/stalls", "/v1/domains/8"} {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest("GET", p, nil))
		var v any
		if err := json.Unmarshal(rec.Body.Bytes(), &v); err != nil {
			t.Fatalf("%s: %v", p, err)
		}
		walk(p, v)
	}
}

// serve runs the control server on a fresh socket and returns its path.
func serve(t *testing.T, src Source, metrics http.Handler) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "run", "mtwatch", "control.sock")
	ln, err := Listen(path)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Serve(ctx, ln, NewHandler(src, metrics)) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return path
}

func TestClient(t *testing.T) {
	path := serve(t, fakeSource{}, metricsHandler)
	c := NewClient(path)
	defer c.Close()
	ctx := context.Background()

	st, err := c.Status(ctx)
	if err != nil || !reflect.DeepEqual(st, fakeSource{}.Status()) {
		t.Errorf("Status: %+v, %v", st, err)
	}
	doms, err := c.Domains(ctx)
	if err != nil || !reflect.DeepEqual(doms, fakeDomains) {
		t.Errorf("Domains: %+v, %v", doms, err)
	}
	d, err := c.Domain(ctx, 5)
	if err != nil || !reflect.DeepEqual(d, fakeDomains[1]) {
		t.Errorf("Domain(5): %+v, %v", d, err)
	}
	if _, err := c.Domain(ctx, 8); !errors.Is(err, ErrNotFound) || !strings.Contains(err.Error(), "domain 8") {
		t.Errorf("Domain(8): %v, want ErrNotFound naming the domain", err)
	}
	if _, err := c.Domain(ctx, 40000); !errors.Is(err, ErrRejected) || !strings.Contains(err.Error(), "domain 40000: reserved domid") {
		t.Errorf("Domain(40000): %v, want ErrRejected", err)
	}
	s, err := c.Stalls(ctx)
	if err != nil || !reflect.DeepEqual(s, fakeSource{}.Stalls()) {
		t.Errorf("Stalls: %+v, %v", s, err)
	}
	m, err := c.Metrics(ctx)
	if err != nil || !strings.Contains(m, "mtwatch_workers 2") {
		t.Errorf("Metrics: %q, %v", m, err)
	}

	noMetrics := NewClient(serve(t, fakeSource{}, nil))
	if _, err := noMetrics.Metrics(ctx); !errors.Is(err, ErrNotFound) {
		t.Errorf("Metrics without handler: %v, want ErrNotFound", err)
	}
}

func TestClientAgentNotRunning(t *testing.T) {
	dir := t.TempDir()
	// A socket file nobody listens on: what a killed agent leaves.
	stale := filepath.Join(dir, "stale.sock")
	staleSocket(t, stale)
	for name, path := range map[string]string{
		"missing":        filepath.Join(dir, "missing.sock"),
		"missing dir":    filepath.Join(dir, "nodir", "control.sock"),
		"refused":        stale,
		"not a dir path": filepath.Join(stale, "x"),
	} {
		t.Run(name, func(t *testing.T) {
			_, err := NewClient(path).Status(context.Background())
			if !errors.Is(err, ErrAgentNotRunning) {
				t.Fatalf("Status: %v, want ErrAgentNotRunning", err)
			}
			if !strings.Contains(err.Error(), path) {
				t.Errorf("error %q does not name the socket", err)
			}
		})
	}
}

// staleSocket leaves a unix socket file at path with nobody listening.
func staleSocket(t *testing.T, path string) {
	t.Helper()
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	ln.SetUnlinkOnClose(false)
	ln.Close()
}

func TestListenModes(t *testing.T) {
	old := syscall.Umask(0o077) // the modes must not depend on the umask
	defer syscall.Umask(old)
	base := t.TempDir()
	path := filepath.Join(base, "run", "mtwatch", "control.sock")
	ln, err := Listen(path)
	if err != nil {
		t.Fatal(err)
	}
	for p, want := range map[string]fs.FileMode{
		path:                             fs.ModeSocket | 0o600,
		filepath.Dir(path):               fs.ModeDir | 0o755,
		filepath.Dir(filepath.Dir(path)): fs.ModeDir | 0o755,
	} {
		fi, err := os.Lstat(p)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode() != want {
			t.Errorf("%s: mode %v, want %v", p, fi.Mode(), want)
		}
	}
	// Only the socket is left in the directory: no temporary name.
	ents, _ := os.ReadDir(filepath.Dir(path))
	if len(ents) != 1 {
		t.Errorf("directory holds %v", ents)
	}
	ln.Close()
	if _, err := os.Lstat(path); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("socket still there after Close: %v", err)
	}
}

func TestListenExistingDirKeepsMode(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "d")
	if err := os.Mkdir(dir, 0o711); err != nil {
		t.Fatal(err)
	}
	os.Chmod(dir, 0o711)
	ln, err := Listen(filepath.Join(dir, "s"))
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	fi, _ := os.Stat(dir)
	if fi.Mode().Perm() != 0o711 {
		t.Errorf("existing directory's mode changed to %v", fi.Mode().Perm())
	}
}

func TestListenStaleSocket(t *testing.T) {
	path := filepath.Join(t.TempDir(), "control.sock")
	staleSocket(t, path)
	ln, err := Listen(path)
	if err != nil {
		t.Fatalf("Listen over a stale socket: %v", err)
	}
	defer ln.Close()
	c, err := net.Dial("unix", path)
	if err != nil {
		t.Fatalf("new socket does not answer: %v", err)
	}
	c.Close()
}

func TestListenRefusesLiveSocket(t *testing.T) {
	path := serve(t, fakeSource{}, nil)
	before, _ := os.Lstat(path)
	_, err := Listen(path)
	if !errors.Is(err, ErrInUse) {
		t.Fatalf("Listen over a live agent: %v, want ErrInUse", err)
	}
	after, err := os.Lstat(path)
	if err != nil || !os.SameFile(before, after) {
		t.Fatalf("live socket replaced or removed: %v", err)
	}
	if _, err := NewClient(path).Status(context.Background()); err != nil {
		t.Errorf("first agent no longer answers: %v", err)
	}
}

func TestListenRefusesNonSocket(t *testing.T) {
	path := filepath.Join(t.TempDir(), "control.sock")
	if err := os.WriteFile(path, []byte("keep me"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := Listen(path); err == nil || !strings.Contains(err.Error(), "not a socket") {
		t.Fatalf("Listen over a regular file: %v", err)
	}
	if b, _ := os.ReadFile(path); string(b) != "keep me" {
		t.Errorf("regular file changed: %q", b)
	}
}

// TestCloseKeepsReplacedSocket: an agent's Close must not delete the socket
// of another agent that took the path over.
func TestCloseKeepsReplacedSocket(t *testing.T) {
	path := filepath.Join(t.TempDir(), "control.sock")
	ln1, err := Listen(path)
	if err != nil {
		t.Fatal(err)
	}
	os.Remove(path) // an administrator removed it by hand...
	ln2, err := Listen(path)
	if err != nil {
		t.Fatal(err)
	}
	defer ln2.Close()
	ln1.Close() // ...then the first agent exits
	if _, err := os.Lstat(path); err != nil {
		t.Fatalf("second agent's socket removed by the first's Close: %v", err)
	}
}

func TestServeShutsDownOnCancel(t *testing.T) {
	path := filepath.Join(t.TempDir(), "control.sock")
	ln, err := Listen(path)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Serve(ctx, ln, NewHandler(fakeSource{}, nil)) }()
	if _, err := NewClient(path).Status(ctx); err != nil {
		t.Fatal(err)
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Serve: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Serve did not return after cancel")
	}
	if _, err := os.Lstat(path); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("socket left after shutdown: %v", err)
	}
	if _, err := NewClient(path).Status(context.Background()); !errors.Is(err, ErrAgentNotRunning) {
		t.Errorf("after shutdown: %v, want ErrAgentNotRunning", err)
	}
}

func TestCurl(t *testing.T) {
	curl, err := exec.LookPath("curl")
	if err != nil {
		t.Fatal("curl is needed (Debian package curl; make deps installs it)")
	}
	path := serve(t, fakeSource{}, metricsHandler)
	for _, tt := range []struct {
		path string
		code string
		part string
	}{
		{"/v1/status", "200", `"mode": "multi-worker"`},
		{"/v1/domains", "200", `"name": "stuck"`},
		{"/v1/domains/5", "200", `"uuid": "11111111-2222-3333-4444-555555555555"`},
		{"/v1/domains/70000", "400", `{"error":"domain 70000: domid out of range"}`},
		{"/v1/domains/8", "404", `"error"`},
		{"/v1/stalls", "200", `"age_ms": 9000`},
		{"/metrics", "200", "mtwatch_workers 2"},
	} {
		out, err := exec.Command(curl, "-sS", "--unix-socket", path, "-w", "\n%{http_code}",
			"http://localhost"+tt.path).CombinedOutput()
		if err != nil {
			t.Fatalf("curl %s: %v: %s", tt.path, err, out)
		}
		body, code, _ := strings.Cut(strings.TrimSpace(string(out)), "\n"+tt.code)
		if code != "" || !strings.HasSuffix(string(out), "\n"+tt.code) || !strings.Contains(body, tt.part) {
			t.Errorf("curl %s: %q, want code %s and %q", tt.path, out, tt.code, tt.part)
		}
	}
}

func TestAllowedUID(t *testing.T) {
	for _, tt := range []struct {
		uid, self uint32
		ok        bool
	}{
		{0, 0, true}, {1000, 0, false}, {0, 1000, true}, {1000, 1000, true}, {1001, 1000, false},
	} {
		if got := allowedUID(tt.uid, tt.self); got != tt.ok {
			t.Errorf("allowedUID(%d, %d) = %v", tt.uid, tt.self, got)
		}
	}
}

func TestPeerCheckFakeCred(t *testing.T) {
	h := peerCheck(NewHandler(fakeSource{}, nil), 0)
	for _, tt := range []struct {
		p    peer
		code int
	}{
		{peer{uid: 0, ok: true}, 200},
		{peer{uid: 1000, ok: true}, 403},
		{peer{err: errors.New("no cred")}, 403},
	} {
		rec := httptest.NewRecorder()
		r := httptest.NewRequest("GET", "/v1/status", nil)
		r = r.WithContext(context.WithValue(r.Context(), peerKey{}, tt.p))
		h.ServeHTTP(rec, r)
		if rec.Code != tt.code {
			t.Errorf("peer %+v: %d, want %d", tt.p, rec.Code, tt.code)
		}
	}
}

// TestPeerCredRefusesOtherUID connects as uid 65534 (curl started with
// setuid credentials) to a socket whose mode is loosened to let it in: the
// SO_PEERCRED check must still refuse it. Needs root to switch uid.
func TestPeerCredRefusesOtherUID(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("needs root, to start a peer with another uid (the README test command runs as root)")
	}
	curl, err := exec.LookPath("curl")
	if err != nil {
		t.Fatal("curl is needed (Debian package curl)")
	}
	// t.TempDir's parents are 0700: use a directory anyone can traverse.
	dir, err := os.MkdirTemp("", "mtwatch-peer-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	os.Chmod(dir, 0o755)
	path := filepath.Join(dir, "control.sock")
	ln, err := Listen(path)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); Serve(ctx, ln, NewHandler(fakeSource{}, nil)) }()
	defer wg.Wait()
	defer cancel()

	run := func(uid uint32) string {
		cmd := exec.Command(curl, "-sS", "--unix-socket", path, "-w", " %{http_code}", "http://localhost/v1/status")
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uid, Gid: uid}}
		out, _ := cmd.CombinedOutput()
		return string(out)
	}
	// Mode 0600: the kernel keeps the other uid out before the server sees it.
	if out := run(65534); strings.Contains(out, "200") || strings.Contains(out, `"version"`) {
		t.Fatalf("uid 65534 got an answer through a 0600 socket: %s", out)
	}
	if err := os.Chmod(path, 0o666); err != nil {
		t.Fatal(err)
	}
	out := run(65534)
	if !strings.HasSuffix(out, " 403") || !strings.Contains(out, "uid 65534 may not use the control socket") {
		t.Errorf("uid 65534 through a 0666 socket: %s, want 403", out)
	}
	if out := run(0); !strings.HasSuffix(out, " 200") {
		t.Errorf("root: %s, want 200", out)
	}
}

// TestActivated runs a child with the socket as fd 3 and LISTEN_PID set to
// its own pid, as systemd starts a socket-activated service.
func TestActivated(t *testing.T) {
	if os.Getenv("MTWATCH_TEST_ACTIVATED") == "1" {
		activatedChild()
		return
	}
	dir := t.TempDir()
	path := filepath.Join(dir, "control.sock")
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	f, err := ln.File()
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	cmd := exec.Command("/bin/sh", "-c", `LISTEN_PID=$$ exec "$0" -test.run='^TestActivated$'`, os.Args[0])
	cmd.Env = append(os.Environ(), "MTWATCH_TEST_ACTIVATED=1", "LISTEN_FDS=1", "LISTEN_FDNAMES=control")
	cmd.ExtraFiles = []*os.File{f}
	stdout, _ := cmd.StdoutPipe()
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Wait()
	defer cmd.Process.Kill()
	// The child prints a line once it serves.
	buf := make([]byte, 64)
	n, _ := stdout.Read(buf)
	if !strings.Contains(string(buf[:n]), "serving") {
		t.Fatalf("child: %q", buf[:n])
	}
	st, err := NewClient(path).Status(context.Background())
	if err != nil || st.PID != 42 {
		t.Fatalf("through the activated socket: %+v, %v", st, err)
	}

	// Without LISTEN_* the process was not activated.
	os.Unsetenv("LISTEN_PID")
	os.Unsetenv("LISTEN_FDS")
	if l, ok, err := Activated(); l != nil || ok || err != nil {
		t.Errorf("not activated: %v %v %v", l, ok, err)
	}
}

func activatedChild() {
	ln, ok, err := Activated()
	if err != nil || !ok {
		os.Stderr.WriteString("Activated: not activated or " + errString(err) + "\n")
		os.Exit(1)
	}
	os.Stdout.WriteString("serving\n")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	Serve(ctx, ln, NewHandler(fakeSource{}, nil))
	os.Exit(0)
}

func errString(err error) string {
	if err == nil {
		return "no error"
	}
	return err.Error()
}

// TestServeConnectionCap: the control socket serves at most maxConns
// connections at once; one more is closed at once, and a slot freed is
// usable again.
func TestServeConnectionCap(t *testing.T) {
	t.Parallel()
	path := serve(t, fakeSource{}, nil)
	request := func(c net.Conn) bool {
		c.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.WriteString(c, "GET /v1/status HTTP/1.1\r\nHost: x\r\n\r\n"); err != nil {
			return false
		}
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	}
	var conns []net.Conn
	served := 0
	for range maxConns + 8 {
		c, err := net.Dial("unix", path)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if request(c) {
			served++
			conns = append(conns, c)
		}
	}
	if served != maxConns {
		t.Fatalf("%d connections served at once, want %d", served, maxConns)
	}
	conns[0].Close()
	for end := time.Now().Add(5 * time.Second); ; {
		c, err := net.Dial("unix", path)
		if err != nil {
			t.Fatal(err)
		}
		ok := request(c)
		c.Close()
		if ok {
			break
		}
		if time.Now().After(end) {
			t.Fatal("a freed slot was not reused")
		}
		time.Sleep(10 * time.Millisecond)
	}
}
