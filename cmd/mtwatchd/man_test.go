package main

import (
	"os"
	"os/exec"
	"regexp"
	"strings"
	"testing"

	"github.com/mtwatch/mtwatch/internal/daemontest"
)

// TestManPage: mtwatchd(8) documents every flag mtwatchd --help shows,
// --help shows no commands (there are none), and groff renders the page
// without a warning.
func TestManPage(t *testing.T) {
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(self, "--help")
	cmd.Env = append(os.Environ(), daemontest.AsMain+"=1")
	help, err := cmd.Output()
	if err != nil {
		t.Fatalf("mtwatchd --help: %v", err)
	}
	page, err := os.ReadFile("../../docs/man/mtwatchd.8")
	if err != nil {
		t.Fatal(err)
	}
	// mtwatchd has no commands, and its help does not offer one.
	if strings.Contains(string(help), "COMMANDS") || strings.Contains(string(help), "command [command options]") {
		t.Errorf("mtwatchd --help offers commands:\n%s", help)
	}
	flags := regexp.MustCompile(`(?m)^\s+--([a-z][a-z-]*)`).FindAllStringSubmatch(string(help), -1)
	if len(flags) < 10 {
		t.Fatalf("found %d flags in --help:\n%s", len(flags), help)
	}
	for _, f := range flags {
		if !strings.Contains(string(page), `\fB\-\-`+strings.ReplaceAll(f[1], "-", `\-`)+`\fR`) {
			t.Errorf("docs/man/mtwatchd.8 lacks --%s", f[1])
		}
	}
	groff := exec.Command("groff", "-man", "-Tutf8", "-ww", "-z", "../../docs/man/mtwatchd.8")
	if out, err := groff.CombinedOutput(); err != nil || len(out) > 0 {
		t.Errorf("groff: %v\n%s", err, out)
	}
}
