package admin

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/mtwatch/mtwatch/lib/domid"
	"github.com/mtwatch/mtwatch/lib/node"
)

// watchRun runs mtwatch watch in the background and hands its lines out.
type watchRun struct {
	lines  chan string
	done   chan int
	stderr *strings.Builder
}

func startWatch(t *testing.T, s *store, control string, args ...string) *watchRun {
	t.Helper()
	pr, pw := io.Pipe()
	w := &watchRun{lines: make(chan string, 64), done: make(chan int, 1), stderr: &strings.Builder{}}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	go func() {
		code := Run(ctx, append([]string{"mtwatch", "--xenstore", s.in.Socket(), "--control", control, "watch"}, args...),
			strings.NewReader(""), pw, w.stderr) // read after done
		pw.Close()
		w.done <- code
	}()
	go func() {
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			w.lines <- sc.Text()
		}
		close(w.lines)
	}()
	t.Cleanup(func() {
		cancel()
		for range w.lines {
		}
	})
	return w
}

func (w *watchRun) next(t *testing.T) string {
	t.Helper()
	select {
	case l, ok := <-w.lines:
		if !ok {
			t.Fatal("watch ended early")
		}
		return l
	case <-time.After(10 * time.Second):
		t.Fatal("no event within 10s")
	}
	return ""
}

// wantRoute is what the agent's routing says for path (domid.FromPath, dom0
// and no domain on the default worker, a guest on its own worker, live or
// awaited).
func wantRoute(path string) string {
	dom, worker := "-", "default"
	if id, ok := domid.FromPath(path); ok && id.IsGuest() {
		dom, worker = id.String(), id.String()
	}
	line := path + " domain=" + dom + " worker=" + worker
	if id, ok := node.FromPath(path); ok {
		line += " node=" + id.String()
	}
	return line
}

var watchPaths = []string{
	"backend/vif/5/0/state",
	"backend/vbd/7/51712/state",
	"backend/vif/9/0/state", // a stale node, no worker: waits for one, never the default worker
	"backend/vif/0/0/state", // dom0: default
	"backend/vif/12abc/0",   // not a domid: default (the RFC routed it to 12)
	"backend/vif/007/0",     // not canonical: default
	"backend/vif/32752/0",   // reserved: default
	"/local/domain/3/device/vif/0/state",
	"/local/domain/0/backend/vbd/7/51712/params",
	"/local/domain/0/mtwatch/5",
	"/local/domain/0/mtwatch/5/child", // below a node: not a node event
	"/local/domain/0/data/x",
}

func TestWatchRoutingWithoutAgent(t *testing.T) {
	s := newStore(t)
	// Each path below fires exactly one of the two watches.
	var paths []string
	for _, p := range watchPaths {
		if strings.HasPrefix(p, "backend/") || strings.HasPrefix(p, "/local/domain/3/") {
			paths = append(paths, p)
		}
	}
	w := startWatch(t, s, s.sock, "--count", strconv.Itoa(2+len(paths)), "backend", "/local/domain/3")
	// The watches fire once when registered.
	first := map[string]bool{w.next(t): true, w.next(t): true}
	if !first["backend domain=- worker=default"] || !first["/local/domain/3 domain=3 worker=3"] {
		t.Fatalf("initial events: %v", first)
	}
	for _, p := range paths {
		s.in.Run("xenstore-write", p, "1")
		if got, want := w.next(t), wantRoute(p); got != want {
			t.Errorf("event %s:\n got %q\nwant %q", p, got, want)
		}
	}
	if code := <-w.done; code != ExitOK {
		t.Errorf("exit %d", code)
	}
	if !strings.Contains(w.stderr.String(), "agent not running: the worker shown is the domain the path belongs to") {
		t.Errorf("stderr %q", w.stderr.String())
	}
}

func TestWatchRoutingWithAgent(t *testing.T) {
	s := newStore(t)
	sock := serveAgent(t, fakeAgent{}) // workers: 3, 5, 7 live; 9 none
	w := startWatch(t, s, sock, "--json", "--count", strconv.Itoa(1+len(watchPaths)), "/local/domain")
	w.next(t)
	for _, p := range watchPaths {
		if !strings.HasPrefix(p, "/") {
			p = "/local/domain/0/" + p
		}
		s.in.Run("xenstore-write", p, "1")
		var r Route
		line := w.next(t)
		if err := json.Unmarshal([]byte(line), &r); err != nil {
			t.Fatalf("%q: %v", line, err)
		}
		dom := "-"
		if r.Domain != nil {
			dom = strconv.Itoa(int(*r.Domain))
		}
		got := r.Path + " domain=" + dom + " worker=" + r.Worker
		if r.Node != nil {
			got += " node=" + strconv.Itoa(int(*r.Node))
		}
		if want := wantRoute(p); got != want || r.Token != "/local/domain" {
			t.Errorf("event %s:\n got %q (token %q)\nwant %q", p, got, r.Token, want)
		}
	}
	if code := <-w.done; code != ExitOK || w.stderr.String() != "" {
		t.Errorf("exit %d, stderr %q", code, w.stderr.String())
	}
}
