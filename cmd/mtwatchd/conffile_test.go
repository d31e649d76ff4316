package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/mtwatch/mtwatch/internal/daemontest"
	"github.com/mtwatch/mtwatch/lib/xenstore/xenstoredtest"
)

// TestInstalledConfigFile: the configuration file make install and the
// package install has every key of the reference commented out at the
// reference's default, nothing else set, and the agent starts with it.
func TestInstalledConfigFile(t *testing.T) {
	t.Parallel()
	out := filepath.Join(t.TempDir(), "mtwatchd.toml")
	mk := exec.Command("make", "--no-print-directory", "-C", "../..", "-s", "build/mtwatchd.toml")
	if b, err := mk.CombinedOutput(); err != nil {
		t.Fatalf("make build/mtwatchd.toml: %v\n%s", err, b)
	}
	data, err := os.ReadFile("../../build/mtwatchd.toml")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(out, data, 0o644); err != nil {
		t.Fatal(err)
	}
	ref, err := os.ReadFile("../../docs/mtwatchd.toml")
	if err != nil {
		t.Fatal(err)
	}
	for i, l := range strings.Split(string(data), "\n") {
		if l != "" && !strings.HasPrefix(l, "#") {
			t.Errorf("line %d is not commented out: %q", i+1, l)
		}
	}
	// Every key and section header of the reference, set there or
	// commented out at its default, is there commented out.
	keys := regexp.MustCompile(`(?m)^(?:# )?(\[[a-z_.]+\]|[a-z_]+ = .*)$`).FindAllStringSubmatch(string(ref), -1)
	if len(keys) < 20 {
		t.Fatalf("only %d keys and sections in docs/mtwatchd.toml", len(keys))
	}
	for _, k := range keys {
		if !strings.Contains(string(data), "\n# "+k[1]+"\n") {
			t.Errorf("%q is not there commented out", k[1])
		}
	}
	in := xenstoredtest.Start(t)
	d := spawn(t, in, daemontest.SocketPath(t), nil, "--config", out)
	d.WaitReady()
	d.Stop()
}
