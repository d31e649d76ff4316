package main

import (
	"context"
	"regexp"
	"runtime"
	"strings"
	"testing"

	"github.com/mtwatch/mtwatch/internal/daemontest"
	"github.com/mtwatch/mtwatch/lib/control"
	"github.com/mtwatch/mtwatch/lib/xenstore/xenstoredtest"
)

// TestDaemonMetricsProvenance scrapes a running agent: mtwatch_build_info
// names the version mtwatchd --version reports and the Go release, and the
// process and Go runtime collectors are there.
func TestDaemonMetricsProvenance(t *testing.T) {
	t.Parallel()
	in := xenstoredtest.Start(t)
	sock := daemontest.SocketPath(t)
	d := spawn(t, in, sock, nil)
	d.WaitReady()
	cl := control.NewClient(sock)
	defer cl.Close()
	m, err := cl.Metrics(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	build := regexp.MustCompile(`(?m)^mtwatch_build_info\{(.*)\} 1$`).FindStringSubmatch(m)
	if build == nil {
		t.Fatalf("no mtwatch_build_info 1 in /metrics:\n%s", m)
	}
	for _, want := range []string{`version="` + version + `"`, `goversion="` + runtime.Version() + `"`, `revision="`} {
		if !strings.Contains(build[1], want) {
			t.Errorf("mtwatch_build_info{%s} lacks %s", build[1], want)
		}
	}
	for _, want := range []string{"process_cpu_seconds_total ", "process_open_fds ", "process_max_fds ", "process_resident_memory_bytes ", "process_start_time_seconds ", "go_goroutines ", "go_gc_duration_seconds"} {
		if !strings.Contains(m, "\n"+want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
	d.Stop()
}

// TestDaemonStatusNamesXenstorePath: with no path configured, /v1/status
// names the socket the agent found ($XENSTORED_PATH here), not "default".
func TestDaemonStatusNamesXenstorePath(t *testing.T) {
	t.Parallel()
	in := xenstoredtest.Start(t)
	sock := daemontest.SocketPath(t)
	d := spawn(t, nil, sock, []string{"MTWATCH_XENSTORE=", "XENSTORED_PATH=" + in.Socket()})
	d.WaitReady()
	cl := control.NewClient(sock)
	defer cl.Close()
	st, err := cl.Status(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if st.Xenstore.Path != in.Socket() {
		t.Errorf("status names xenstore %q, want %q", st.Xenstore.Path, in.Socket())
	}
	d.Stop()
}
