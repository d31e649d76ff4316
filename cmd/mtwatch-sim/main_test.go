package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/mtwatch/mtwatch/lib/xenstore"
	"github.com/mtwatch/mtwatch/lib/xenstore/xenstoredtest"
)

func TestUsageErrors(t *testing.T) {
	in := xenstoredtest.Start(t)
	t.Setenv("XENSTORED_PATH", in.Socket())
	t.Setenv("XENSTORED_RUNDIR", in.Dir())
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--domains", "0"}, "--domains 0"},
		{[]string{"--first-domid", "32750", "--domains", "5"}, "guest domids"},
		{[]string{"--hang-domain", "30"}, "--hang-domain 30"},
		{[]string{"--progress", "fancy"}, "--progress"},
		{[]string{"--xenemu-dir", os.TempDir()}, "not a sandbox xenstored"},
		{[]string{"extra"}, "unexpected argument"},
		{[]string{"compare"}, "usage"},
		{[]string{"compare", "/nonexistent.json"}, "no such file"},
	} {
		var out, errb bytes.Buffer
		if code := run(tc.args, &out, &errb); code != 2 || !strings.Contains(errb.String(), tc.want) {
			t.Errorf("%v: exit %d, stderr %q; want 2 and %q", tc.args, code, errb.String(), tc.want)
		}
	}
	// Nothing was written.
	c, err := xenstore.Dial(context.Background(), xenstore.WithPath(in.Socket()))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Read(context.Background(), "/local/domain/1"); err == nil {
		t.Error("a usage error created domain 1")
	}
}

// TestRunWithoutScriptRunner: with nobody running hotplug scripts every
// device times out, the run says so and exits 1, and the store is left
// clean.
func TestRunWithoutScriptRunner(t *testing.T) {
	in := xenstoredtest.Start(t)
	t.Setenv("XENSTORED_PATH", in.Socket())
	t.Setenv("XENSTORED_RUNDIR", in.Dir())
	report := filepath.Join(t.TempDir(), "r.json")
	var out, errb bytes.Buffer
	code := run([]string{"--domains", "3", "--device-timeout", "200ms", "--progress", "none",
		"--label", "nobody", "--json", report}, &out, &errb)
	if code != 1 || !strings.Contains(errb.String(), "no hotplug-status after 200ms") {
		t.Fatalf("exit %d, stderr %q", code, errb.String())
	}
	if !strings.Contains(out.String(), "healthy domains failed") {
		t.Errorf("no report table: %q", out.String())
	}
	out.Reset()
	if code := run([]string{"compare", report, report}, &out, &errb); code != 0 || strings.Count(out.String(), "nobody") != 2 {
		t.Errorf("compare: exit %d, %q", code, out.String())
	}
	if got := in.Run("xenstore-list", "/local/domain"); got != "0" {
		t.Errorf("/local/domain holds %q, want dom0's alone", got)
	}
}

// TestLiveOncePerPhase: without a terminal (make demo's output, a CI log)
// the --live command's output comes once per phase, however long the phase
// and however short the interval.
func TestLiveOncePerPhase(t *testing.T) {
	in := xenstoredtest.Start(t)
	t.Setenv("XENSTORED_PATH", in.Socket())
	t.Setenv("XENSTORED_RUNDIR", in.Dir())
	var out, errb bytes.Buffer
	run([]string{"--domains", "2", "--device-timeout", "300ms", "--progress", "lines",
		"--live", "echo snapshot", "--live-interval", "10ms"}, &out, &errb)
	if n := strings.Count(errb.String(), "\nsnapshot\n"); n != 2 {
		t.Errorf("%d snapshots, want one per phase (2):\n%s", n, errb.String())
	}
	for _, phase := range []string{"create", "destroy"} {
		if !strings.Contains(errb.String(), "every domain through "+phase) {
			t.Errorf("no snapshot after %s:\n%s", phase, errb.String())
		}
	}
}
