package admin

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/urfave/cli/v2"

	"github.com/mtwatch/mtwatch/internal/goldenfile"
)

// TestManPageCurrent fails when docs/man/mtwatch.1 is not what the command
// definitions generate: run make man (or go test -update) and commit it.
func TestManPageCurrent(t *testing.T) {
	page, err := ManPage()
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{".TH mtwatch 1", "list", "xl", "MTWATCH_CONTROL", "Exit codes"} {
		if !strings.Contains(page, want) {
			t.Errorf("man page lacks %q", want)
		}
	}
	// urfave/cli's own generator dropped these: every command's
	// description and arguments, and the exit codes in a section of their
	// own.
	var walk func(prefix string, cmds []*cli.Command)
	walk = func(prefix string, cmds []*cli.Command) {
		for _, c := range cmds {
			name := prefix + c.Name
			first, _, _ := strings.Cut(c.Description, "\n")
			if c.Description == "" || !strings.Contains(page, esc(first)) {
				t.Errorf("man page lacks the description of %s (%q)", name, first)
			}
			if c.ArgsUsage != "" && !strings.Contains(page, esc(name+" ")) {
				t.Errorf("man page lacks the synopsis of %s", name)
			}
			walk(name+" ", c.Subcommands)
		}
	}
	walk("", NewApp().Commands)
	for _, want := range []string{".SH \"EXIT STATUS\"", "nothing was changed", ".SH \"ENVIRONMENT\"", "MTWATCH_XL"} {
		if !strings.Contains(page, want) {
			t.Errorf("man page lacks %q", want)
		}
	}
	// groff renders it without a warning.
	cmd := exec.Command("groff", "-man", "-Tutf8", "-ww", "-z")
	cmd.Stdin = strings.NewReader(page)
	if out, err := cmd.CombinedOutput(); err != nil || len(out) > 0 {
		t.Errorf("groff: %v\n%s", err, out)
	}
	path := filepath.Join("..", "..", "docs", "man", "mtwatch.1")
	if goldenfile.Updating() {
		if err := os.WriteFile(path, []byte(page), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	committed, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run make man)", err)
	}
	if string(committed) != page {
		t.Errorf("%s is stale: run make man and commit it", path)
	}
}

func TestCompletion(t *testing.T) {
	for _, tt := range []struct {
		shell, want string
		check       []string // a shell that parses the script, if installed
	}{
		{"bash", "complete -o bashdefault -o default -F _mtwatch_complete mtwatch", []string{"bash", "-n"}},
		{"zsh", "compdef _mtwatch mtwatch", []string{"zsh", "-n"}},
		{"fish", "complete -c mtwatch -n '__fish_mtwatch_no_subcommand' -f -l xenstore", []string{"fish", "--no-execute"}},
	} {
		t.Run(tt.shell, func(t *testing.T) {
			r := run(t, "completion", tt.shell)
			r.expect(t, ExitOK)
			if !strings.Contains(r.stdout, tt.want) {
				t.Errorf("script lacks %q:\n%s", tt.want, r.stdout)
			}
			if _, err := exec.LookPath(tt.check[0]); err != nil {
				return // the syntax check needs the shell; bash is always there
			}
			f := filepath.Join(t.TempDir(), "script")
			os.WriteFile(f, []byte(r.stdout), 0o644)
			if out, err := exec.Command(tt.check[0], append(tt.check[1:], f)...).CombinedOutput(); err != nil {
				t.Errorf("%s rejects the script: %v\n%s", tt.shell, err, out)
			}
		})
	}
	// The candidates the scripts ask the binary for are tested on the built
	// binary (cmd/mtwatch): urfave/cli reads them from os.Args.
}
