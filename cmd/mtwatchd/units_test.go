package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestUnitsVerify runs systemd-analyze verify on the units as make install
// substitutes them. xenstored.service is a stub: this machine runs no Xen.
// A missing systemd-analyze fails the test: install the Debian package
// systemd (make deps).
func TestUnitsVerify(t *testing.T) {
	analyze, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Fatalf("systemd-analyze not found: install the Debian package systemd (make deps): %v", err)
	}
	dir := t.TempDir()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	sbin := filepath.Join(dir, "sbin")
	os.MkdirAll(sbin, 0o755)
	if err := os.Symlink(self, filepath.Join(sbin, "mtwatchd")); err != nil {
		t.Fatal(err)
	}
	var units []string
	for _, u := range []string{"mtwatchd.service", "mtwatchd.socket"} {
		data, err := os.ReadFile(filepath.Join("..", "..", "systemd", u))
		if err != nil {
			t.Fatal(err)
		}
		text := strings.NewReplacer("@SBINDIR@", sbin, "@BINDIR@", sbin, "@DOCDIR@", "/usr/share/doc/mtwatch").Replace(string(data))
		if strings.Contains(text, "@") && strings.Contains(text, "DIR@") {
			t.Fatalf("%s: unsubstituted placeholder", u)
		}
		p := filepath.Join(dir, u)
		os.WriteFile(p, []byte(text), 0o644)
		units = append(units, p)
	}
	os.WriteFile(filepath.Join(dir, "xenstored.service"), []byte("[Unit]\nDescription=stub\n[Service]\nType=notify\nExecStart=/bin/true\n"), 0o644)
	cmd := exec.Command(analyze, append([]string{"verify"}, units...)...)
	cmd.Env = append(os.Environ(), "SYSTEMD_UNIT_PATH="+dir+":")
	if out, err := cmd.CombinedOutput(); err != nil || len(strings.TrimSpace(string(out))) > 0 {
		t.Fatalf("systemd-analyze verify: %v\n%s", err, out)
	}
	svc, _ := os.ReadFile(units[0])
	for _, want := range []string{"Type=notify", "Requires=xenstored.service", "After=xenstored.service", "WatchdogSec=", "Restart=on-failure", "ConditionPathExists=/proc/xen/capabilities", "Before=xendomains.service libvirtd.service virtxend.service"} {
		if !strings.Contains(string(svc), want) {
			t.Errorf("mtwatchd.service lacks %q", want)
		}
	}
}
