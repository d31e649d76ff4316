package packaging

import (
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// TestInstallUninstall runs make install into a staging directory, then
// make uninstall with the same variables: only the configuration file, the
// administrator's, is left.
func TestInstallUninstall(t *testing.T) {
	root := t.TempDir()
	make := func(target string) {
		t.Helper()
		cmd := exec.Command("make", "--no-print-directory", "-C", "../..", target, "DESTDIR="+root, "PREFIX=/usr")
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("make %s: %v\n%s", target, err, out)
		}
	}
	files := func() []string {
		t.Helper()
		var got []string
		err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			if !d.IsDir() {
				rel, _ := filepath.Rel(root, p)
				got = append(got, rel)
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		return got
	}
	make("install")
	installed := files()
	for _, want := range []string{"usr/sbin/mtwatchd", "usr/bin/mtwatch", "usr/lib/mtwatch/mtwatch-hook", "usr/lib/systemd/system/mtwatchd.service",
		"etc/libvirt/hooks/libxl.d/50-mtwatch", "etc/xapi.d/vm-post-destroy/50-mtwatch", "etc/apparmor.d/local/mtwatch-hook", "etc/mtwatch/mtwatchd.toml"} {
		if _, err := os.Stat(filepath.Join(root, want)); err != nil {
			t.Errorf("make install: %v (installed %q)", err, installed)
		}
	}
	make("uninstall")
	if left := files(); len(left) != 1 || left[0] != "etc/mtwatch/mtwatchd.toml" {
		t.Errorf("make uninstall left %q, want only etc/mtwatch/mtwatchd.toml", left)
	}
}
