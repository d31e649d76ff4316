package packaging

import (
	"os/exec"
	"strings"
	"testing"
)

// TestModuleGraph: the packager (nfpm, packaging/) and the benchmark's
// plotting (gonum, cmd/mtwatch-bench) are modules of their own and stay out
// of the module graph of what is installed on a dom0.
func TestModuleGraph(t *testing.T) {
	cmd := exec.Command("go", "list", "-m", "all")
	cmd.Dir = "../.."
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list -m all: %v", err)
	}
	for _, m := range strings.Split(string(out), "\n") {
		for _, banned := range []string{"github.com/goreleaser/", "gonum.org/", "codeberg.org/go-pdf/"} {
			if strings.HasPrefix(m, banned) {
				t.Errorf("mtwatch's module graph has %s", m)
			}
		}
	}
}
