package hooks

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestAppArmorRule compiles the rule make install puts in
// /etc/apparmor.d/local/mtwatch-hook with apparmor_parser, included the
// way docs/hooks.md says: from a profile named libvirtd that ends, as
// Debian's does, with "include if exists <local/usr.sbin.libvirtd>", whose
// local file includes the rule. Nothing is loaded into the kernel. A
// missing apparmor_parser fails the test: install the Debian package
// apparmor (make deps).
func TestAppArmorRule(t *testing.T) {
	parser, err := exec.LookPath("apparmor_parser")
	if err != nil {
		t.Fatalf("apparmor_parser not found: install the Debian package apparmor (make deps): %v", err)
	}
	root := installHooks(t, "/usr/libexec/mtwatch")
	base := filepath.Join(root, "etc/apparmor.d")
	if err := os.WriteFile(filepath.Join(base, "local/usr.sbin.libvirtd"), []byte("include <local/mtwatch-hook>\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	profile := filepath.Join(t.TempDir(), "usr.sbin.libvirtd")
	if err := os.WriteFile(profile, []byte(`#include <tunables/global>
profile libvirtd /usr/sbin/libvirtd flags=(attach_disconnected) {
  #include <abstractions/base>
  /etc/libvirt/hooks/** rmix,
  include if exists <local/usr.sbin.libvirtd>
}
`), 0o644); err != nil {
		t.Fatal(err)
	}
	compile := func() (string, error) {
		// -S: compile to stdout, never to the kernel; -I: the test's local/
		// first, then the system's tunables and abstractions.
		out, err := exec.Command(parser, "-S", "-I", base, "-I", "/etc/apparmor.d", profile).CombinedOutput()
		return string(out), err
	}
	if out, err := compile(); err != nil {
		t.Fatalf("apparmor_parser: %v\n%s", err, out)
	}
	pre, err := exec.Command(parser, "-p", "-I", base, "-I", "/etc/apparmor.d", profile).CombinedOutput()
	if err != nil || !strings.Contains(string(pre), "/usr/libexec/mtwatch/mtwatch-hook rix,") {
		t.Fatalf("the rule is not in the profile: %v\n%s", err, pre)
	}
	// The check can fail: a rule apparmor_parser rejects.
	if err := os.WriteFile(filepath.Join(base, "local/mtwatch-hook"), []byte("/usr/libexec/mtwatch/mtwatch-hook bogus,\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := compile(); err == nil {
		t.Fatal("apparmor_parser accepted a bad rule: the check proves nothing")
	}
}
