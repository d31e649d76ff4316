package main

import (
	"bufio"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// stageUnits writes the units and the driver-domain drop-in into dir as make
// install substitutes them, with ExecStart naming this test binary.
func stageUnits(t *testing.T, dir string) {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	sbin := filepath.Join(dir, "sbin")
	if err := os.MkdirAll(filepath.Join(dir, "mtwatchd.service.d"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(sbin, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(self, filepath.Join(sbin, "mtwatchd")); err != nil {
		t.Fatal(err)
	}
	repl := strings.NewReplacer("@SBINDIR@", sbin, "@BINDIR@", sbin, "@LIBEXECDIR@", sbin, "@DOCDIR@", "/usr/share/doc/mtwatch")
	for _, u := range []string{"mtwatchd.service", "mtwatchd.socket", "mtwatchd.service.d/driver-domain.conf"} {
		data, err := os.ReadFile(filepath.Join("..", "..", "systemd", u))
		if err != nil {
			t.Fatal(err)
		}
		text := repl.Replace(string(data))
		if strings.Contains(text, "DIR@") {
			t.Fatalf("%s: unsubstituted placeholder", u)
		}
		if err := os.WriteFile(filepath.Join(dir, u), []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// debianUnits runs systemd's sysv generator on this machine's /etc/init.d,
// as systemd does at boot, and returns the directory holding the units it
// generated: Debian's xen-utils-common ships /etc/init.d/xen (xenstored and
// xenconsoled) and /etc/init.d/xendomains, and no Xen units of its own.
func debianUnits(t *testing.T) string {
	t.Helper()
	const gen = "/lib/systemd/system-generators/systemd-sysv-generator"
	if _, err := os.Stat("/etc/init.d/xen"); err != nil {
		t.Fatalf("Debian's /etc/init.d/xen is missing: install xen-utils-4.17 (make deps): %v", err)
	}
	dir := t.TempDir()
	if out, err := exec.Command(gen, dir, dir, dir).CombinedOutput(); err != nil {
		t.Fatalf("%s: %v\n%s", gen, err, out)
	}
	for _, u := range []string{"xen.service", "xendomains.service"} {
		if _, err := os.Stat(filepath.Join(dir, u)); err != nil {
			t.Fatalf("the sysv generator made no %s from /etc/init.d: %v", u, err)
		}
	}
	return dir
}

// TestUnitsVerify runs systemd-analyze verify on the units as make install
// substitutes them, beside the units this Debian machine has: its own unit
// directories and what the sysv generator makes of /etc/init.d/xen. There is
// no xenstored.service on Debian, and nothing stands in for one: a unit that
// requires it fails here as it fails on a Debian host ("Unit
// xenstored.service not found"). Verified twice: as installed, and with the
// driver-domain drop-in. A missing systemd-analyze fails the test: install
// the Debian package systemd (make deps).
func TestUnitsVerify(t *testing.T) {
	analyze, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Fatalf("systemd-analyze not found: install the Debian package systemd (make deps): %v", err)
	}
	gen := debianUnits(t)
	for _, dropIn := range []bool{false, true} {
		dir := t.TempDir()
		stageUnits(t, dir)
		if !dropIn {
			os.RemoveAll(filepath.Join(dir, "mtwatchd.service.d"))
		}
		// The man pages mtwatchd(8) and mtwatchd.toml(5) named by
		// Documentation= are the tree's, not installed ones.
		man := manTree(t)
		cmd := exec.Command(analyze, "verify", filepath.Join(dir, "mtwatchd.service"), filepath.Join(dir, "mtwatchd.socket"))
		// The trailing colon appends systemd's own unit directories.
		cmd.Env = append(os.Environ(), "SYSTEMD_UNIT_PATH="+gen+":"+dir+":", "MANPATH="+man)
		if out, err := cmd.CombinedOutput(); err != nil || len(strings.TrimSpace(string(out))) > 0 {
			t.Errorf("systemd-analyze verify (drop-in %v): %v\n%s", dropIn, err, out)
		}
	}
}

// manTree lays out docs/man/*.N as a man hierarchy (manN/) for MANPATH.
func manTree(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	pages, _ := filepath.Glob(filepath.Join("..", "..", "docs", "man", "*.[1-8]"))
	for _, p := range pages {
		sec := filepath.Join(dir, "man"+p[len(p)-1:])
		os.MkdirAll(sec, 0o755)
		data, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(sec, filepath.Base(p)), data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// unitKeys reads a unit file into key -> every value it is given, each
// space-separated item of a list on its own.
func unitKeys(t *testing.T, path string) map[string][]string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	keys := map[string][]string{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' || line[0] == '[' {
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			t.Fatalf("%s: %q is not key=value", path, line)
		}
		keys[k] = append(keys[k], strings.Fields(v)...)
	}
	return keys
}

// TestUnitDependencies checks what systemd-analyze verify cannot: that the
// agent starts wherever xenstored may come from and orders itself before
// every toolstack, and that its stop and sandboxing leave hotplug scripts
// working.
func TestUnitDependencies(t *testing.T) {
	svc := unitKeys(t, filepath.Join("..", "..", "systemd", "mtwatchd.service"))
	if r := svc["Requires"]; len(r) > 0 {
		t.Errorf("Requires=%v: on a host without one of them (Debian has no xenstored.service) the agent cannot start", r)
	}
	for key, want := range map[string][]string{
		// Debian's /etc/init.d/xen, upstream Xen's units.
		"Wants": {"xenstored.service", "xen.service"},
		"After": {"xen.service", "xenstored.service", "proc-xen.mount", "xen-init-dom0.service"},
		// xl, libvirt (monolithic and modular), XAPI.
		"Before":              {"xendomains.service", "libvirtd.service", "virtxend.service", "libvirt-guests.service", "xapi.service", "xenopsd-xc.service", "xapi-domains.service"},
		"KillMode":            {"process"},
		"Type":                {"notify"},
		"ConditionPathExists": {"/proc/xen/capabilities"},
	} {
		for _, w := range want {
			if !slices.Contains(svc[key], w) {
				t.Errorf("mtwatchd.service: %s= lacks %s (has %v)", key, w, svc[key])
			}
		}
	}
	// Each of these breaks some hotplug script or the agent itself: see the
	// comment in the unit. ProtectClock implies DeviceAllow=char-rtc, which
	// denies /dev/xen/xenbus, /dev/loop* and /dev/nbd*.
	for _, k := range []string{"UMask", "ProtectHome", "ProtectClock", "DeviceAllow", "DevicePolicy", "PrivateDevices", "PrivateNetwork", "ProtectSystem", "NoNewPrivileges", "PrivateTmp"} {
		if v, ok := svc[k]; ok {
			t.Errorf("mtwatchd.service sets %s=%v", k, v)
		}
	}
	dd := unitKeys(t, filepath.Join("..", "..", "systemd", "mtwatchd.service.d", "driver-domain.conf"))
	for key, want := range map[string][]string{
		"ConditionVirtualization": {"xen"},
		"Conflicts":               {"xendriverdomain.service"},
		"After":                   {"proc-xen.mount"},
	} {
		for _, w := range want {
			if !slices.Contains(dd[key], w) {
				t.Errorf("driver-domain.conf: %s= lacks %s (has %v)", key, w, dd[key])
			}
		}
	}
	if v, ok := dd["ConditionPathExists"]; !ok || len(v) != 0 {
		t.Errorf("driver-domain.conf must reset ConditionPathExists= (empty), has %v %v", v, ok)
	}
}
