package confman

import (
	"os"
	"os/exec"
	"regexp"
	"strings"
	"testing"
)

// TestManPageCurrent: docs/man/mtwatchd.toml.5 is what make man generates
// from docs/mtwatchd.toml, names every key of it, and groff renders it
// without a warning.
func TestManPageCurrent(t *testing.T) {
	src, err := os.ReadFile("../../docs/mtwatchd.toml")
	if err != nil {
		t.Fatal(err)
	}
	page, err := Page(src)
	if err != nil {
		t.Fatal(err)
	}
	committed, err := os.ReadFile("../../docs/man/mtwatchd.toml.5")
	if err != nil || string(committed) != page {
		t.Fatalf("docs/man/mtwatchd.toml.5 is stale (%v): run make man", err)
	}
	for _, m := range regexp.MustCompile(`(?m)^(?:# )?([a-z_]+) = `).FindAllStringSubmatch(string(src), -1) {
		if !strings.Contains(page, `\fB`+esc(m[1])+`\fR = `) {
			t.Errorf("key %s missing from the page", m[1])
		}
	}
	cmd := exec.Command("groff", "-man", "-Tutf8", "-ww", "-z")
	cmd.Stdin = strings.NewReader(page)
	if out, err := cmd.CombinedOutput(); err != nil || len(out) > 0 {
		t.Errorf("groff: %v\n%s", err, out)
	}
}

// TestPageRejects: a line that is neither comment, section nor key is an
// error naming the line, not a page that silently lacks it.
func TestPageRejects(t *testing.T) {
	for _, src := range []string{"[agent]\nnot a key\n", "key = 1\n"} {
		if _, err := Page([]byte(src)); err == nil || !strings.Contains(err.Error(), "line ") {
			t.Errorf("%q: %v", src, err)
		}
	}
}
