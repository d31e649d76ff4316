package main

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/mtwatch/mtwatch/internal/daemontest"
	"github.com/mtwatch/mtwatch/lib/control"
	"github.com/mtwatch/mtwatch/lib/xenstore/xenstoredtest"
)

// openFDs counts the descriptors pid has open.
func openFDs(t *testing.T, pid int) int {
	t.Helper()
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

// get sends one keep-alive GET on c and reads the answer's status; 0 when
// the connection was closed or reset instead.
func get(c net.Conn, br *bufio.Reader, path, extraHeader string) int {
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: x\r\n%s\r\n", path, extraHeader); err != nil {
		return 0
	}
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		return 0
	}
	resp.Body.Close()
	return resp.StatusCode
}

// TestDaemonMetricsListenLimits: idle keep-alive connections to
// --metrics-listen, from any network peer, hold at most 16 of the agent's
// descriptors, are closed after the idle timeout, leave the control API
// answering, and an oversized header is refused.
func TestDaemonMetricsListenLimits(t *testing.T) {
	t.Parallel()
	in := xenstoredtest.Start(t)
	sock := daemontest.SocketPath(t)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	d := spawn(t, in, sock, nil, "--metrics-listen", addr)
	d.WaitReady()
	pid := d.Pid()
	before := openFDs(t, pid)

	const peers, maxConns = 100, 16
	type conn struct {
		c  net.Conn
		br *bufio.Reader
	}
	var served []conn
	for range peers {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		br := bufio.NewReader(c)
		if code := get(c, br, "/metrics", ""); code == http.StatusOK {
			served = append(served, conn{c, br})
		}
	}
	fds := openFDs(t, pid)
	t.Logf("%d idle keep-alive connections: %d served, agent descriptors %d -> %d", peers, len(served), before, fds)
	if len(served) == 0 || len(served) > maxConns {
		t.Fatalf("%d of %d connections served, want 1..%d", len(served), peers, maxConns)
	}
	if fds > before+maxConns+4 {
		t.Fatalf("agent descriptors %d -> %d with %d idle connections", before, fds, peers)
	}
	cl := control.NewClient(sock)
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := cl.Status(ctx); err != nil {
		t.Fatalf("control API with the metrics port full: %v", err)
	}

	// The server closes idle connections: reads see EOF within the idle
	// timeout (10 s) and margin.
	for _, s := range served {
		s.c.SetReadDeadline(time.Now().Add(20 * time.Second))
		if _, err := s.br.ReadByte(); err == nil || os.IsTimeout(err) {
			t.Fatalf("idle keep-alive connection not closed by the agent: %v", err)
		}
	}
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	br := bufio.NewReader(c)
	if code := get(c, br, "/metrics", ""); code != http.StatusOK {
		t.Fatalf("GET /metrics after the idle connections went: status %d", code)
	}
	big := "X-Big: " + strings.Repeat("a", 64<<10) + "\r\n"
	if code := get(c, br, "/metrics", big); code != http.StatusRequestHeaderFieldsTooLarge {
		t.Fatalf("a 64 KiB header: status %d, want 431", code)
	}
	d.Stop()
}
