// Package packaging tests make deb: the packages it builds install with
// dpkg on this Debian machine, their programs run, and a purge leaves
// nothing behind.
package packaging

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

var packages = []string{"mtwatch", "mtwatch-libvirt", "mtwatch-xapi"}

// dpkg runs dpkg, waiting while another dpkg or apt holds its lock.
func dpkg(t *testing.T, args ...string) string {
	t.Helper()
	for try := 0; ; try++ {
		out, err := exec.Command("dpkg", args...).CombinedOutput()
		if err == nil {
			return string(out)
		}
		if try < 60 && bytes.Contains(out, []byte("lock")) {
			time.Sleep(time.Second)
			continue
		}
		t.Fatalf("dpkg %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

func installed(name string) bool {
	out, err := exec.Command("dpkg-query", "-W", "-f=${Status}", name).Output()
	return err == nil && strings.Contains(string(out), "installed") && !strings.Contains(string(out), "not-installed")
}

// TestDebInstallPurge builds the packages with make deb, installs them with
// dpkg -i, runs what they installed, purges them with dpkg -P and checks
// that every file they had, the configuration file and the units'
// enablement are gone. It needs root and a Debian machine with no mtwatch
// package and no mtwatch installed under /usr: it refuses to touch one.
func TestDebInstallPurge(t *testing.T) {
	if os.Getuid() != 0 {
		t.Fatal("dpkg -i needs root")
	}
	for _, p := range packages {
		if installed(p) {
			t.Fatalf("package %s is installed on this machine: the test would replace it", p)
		}
	}
	for _, f := range []string{"/usr/sbin/mtwatchd", "/usr/bin/mtwatch", "/etc/mtwatch"} {
		if _, err := os.Stat(f); err == nil {
			t.Fatalf("%s exists on this machine: the test would replace it", f)
		}
	}
	const version = "v1.2.3-4-gabcdef0"
	mk := exec.Command("make", "--no-print-directory", "-C", "../..", "deb", "VERSION="+version)
	if out, err := mk.CombinedOutput(); err != nil {
		t.Fatalf("make deb: %v\n%s", err, out)
	}
	arch, err := exec.Command("dpkg", "--print-architecture").Output()
	if err != nil {
		t.Fatal(err)
	}
	var debs []string
	for _, p := range packages {
		deb, err := filepath.Abs(filepath.Join("../../build", p+"_1.2.3+4.gabcdef0_"+strings.TrimSpace(string(arch))+".deb"))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := os.Stat(deb); err != nil {
			t.Fatalf("make deb built no %s", deb)
		}
		debs = append(debs, deb)
	}
	// What the packages hold, from the archives themselves.
	var paths []string
	for _, deb := range debs {
		out, err := exec.Command("dpkg-deb", "--fsys-tarfile", deb).Output()
		if err != nil {
			t.Fatal(err)
		}
		list := exec.Command("tar", "-t")
		list.Stdin = bytes.NewReader(out)
		names, err := list.Output()
		if err != nil {
			t.Fatal(err)
		}
		// Every file and directory of the packages that this machine does
		// not have already (/usr, /etc, ...) must go again with the purge.
		for _, n := range strings.Fields(string(names)) {
			p := strings.TrimSuffix(strings.TrimPrefix(n, "."), "/")
			if _, err := os.Lstat(p); p != "" && err != nil {
				paths = append(paths, p)
			}
		}
	}

	t.Cleanup(func() {
		if t.Failed() {
			exec.Command("dpkg", append([]string{"-P"}, packages...)...).Run()
		}
	})
	out := dpkg(t, append([]string{"-i"}, debs...)...)
	if !strings.Contains(out, "restart libvirtd") {
		t.Errorf("mtwatch-libvirt does not tell the administrator to restart libvirtd:\n%s", out)
	}
	for bin, args := range map[string][]string{
		"/usr/sbin/mtwatchd":                {"--version"},
		"/usr/bin/mtwatch":                  {"--version"},
		"/usr/libexec/mtwatch/mtwatch-hook": {"--version"},
	} {
		got, err := exec.Command(bin, args...).CombinedOutput()
		if err != nil || !strings.Contains(string(got), version) {
			t.Errorf("%s --version: %q %v, want %s", bin, got, err, version)
		}
	}
	// The installed hook finds the installed helper: migrate is a no-op.
	hook := exec.Command("/etc/libvirt/hooks/libxl.d/50-mtwatch", "guest", "migrate", "begin", "-")
	if got, err := hook.CombinedOutput(); err != nil || len(got) > 0 {
		t.Errorf("libvirt hook: %v %q", err, got)
	}
	conffiles, _ := exec.Command("dpkg-query", "-W", "-f=${Conffiles}", "mtwatch").Output()
	if !strings.Contains(string(conffiles), "/etc/mtwatch/mtwatchd.toml") {
		t.Errorf("/etc/mtwatch/mtwatchd.toml is not a conffile: %q", conffiles)
	}
	// Enabled by deb-systemd-helper, as dh_installsystemd does.
	for _, link := range []string{"/etc/systemd/system/multi-user.target.wants/mtwatchd.service", "/etc/systemd/system/sockets.target.wants/mtwatchd.socket"} {
		if _, err := os.Lstat(link); err != nil {
			t.Errorf("unit not enabled: %v", err)
		}
	}

	dpkg(t, append([]string{"-P"}, packages...)...)
	for _, p := range packages {
		if installed(p) {
			t.Errorf("%s still installed after dpkg -P", p)
		}
	}
	leftover := func(p string) {
		if _, err := os.Lstat(p); err == nil {
			t.Errorf("left after dpkg -P: %s", p)
		}
	}
	for _, p := range paths {
		leftover(p)
	}
	for _, p := range []string{"/etc/mtwatch", "/etc/systemd/system/multi-user.target.wants/mtwatchd.service",
		"/etc/systemd/system/sockets.target.wants/mtwatchd.socket", "/etc/systemd/system/mtwatchd.service",
		"/var/lib/systemd/deb-systemd-helper-enabled/mtwatchd.service.dsh-also",
		"/var/lib/systemd/deb-systemd-helper-enabled/mtwatchd.socket.dsh-also",
		"/var/lib/systemd/deb-systemd-helper-masked/mtwatchd.service", "/etc/xapi.d", "/usr/libexec/mtwatch"} {
		leftover(p)
	}
}
