package main

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestLifecycle drives the command as the sandbox script does: start
// prints assignments that point Debian's clients at a daemon which outlives
// the command; create and kill find it by its directory; stop ends it.
func TestLifecycle(t *testing.T) {
	dir, err := os.MkdirTemp("", "sb")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { run([]string{"-dir", dir, "stop"}, &bytes.Buffer{}, &bytes.Buffer{}); os.RemoveAll(dir) })
	cmd := func(want int, args ...string) string {
		t.Helper()
		var out, errb bytes.Buffer
		if got := run(append([]string{"-dir", dir}, args...), &out, &errb); got != want {
			t.Fatalf("sandbox %s: exit %d, want %d\n%s", strings.Join(args, " "), got, want, errb.String())
		}
		return out.String()
	}
	env := map[string]string{}
	for _, l := range strings.Split(strings.TrimSpace(cmd(0, "start")), "\n") {
		k, v, _ := strings.Cut(l, "=")
		env[k] = strings.Trim(v, "'")
	}
	if env["XENSTORED_PATH"] != filepath.Join(dir, "socket") || env["XENSTORED_RUNDIR"] != dir || env["XENSTORED_PID"] == "" {
		t.Fatalf("start printed %v", env)
	}
	xs := func(args ...string) (string, error) {
		c := exec.Command(args[0], args[1:]...)
		c.Env = append(os.Environ(), "XENSTORED_PATH="+env["XENSTORED_PATH"], "XENSTORED_RUNDIR="+dir)
		out, err := c.Output()
		return strings.TrimSpace(string(out)), err
	}
	cmd(0, "create", "7")
	if v, err := xs("xenstore-read", "/local/domain/7/name"); err != nil || v != "guest7" {
		t.Errorf("after create: %q, %v", v, err)
	}
	cmd(0, "kill", "7")
	if _, err := xs("xenstore-read", "/local/domain/7/name"); err == nil {
		t.Error("the killed guest's nodes survive")
	}
	cmd(2, "kill", "0")
	cmd(2, "frob")
	pid := env["XENSTORED_PID"]
	cmd(0, "stop")
	if _, err := os.Stat(filepath.Join(dir, "pid")); err == nil {
		t.Errorf("pid file of stopped xenstored %s left behind", pid)
	}
	if _, err := xs("xenstore-read", "/"); err == nil {
		t.Error("xenstored still answers after stop")
	}
	cmd(0, "stop") // nothing running: not an error
}
