package hotplug

import (
	"errors"
	"os"
	"os/exec"
	"testing"
)

func TestParseRecord(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		in string
		ok bool
	}{
		{`{"action":"add","phase":"running","inc":"0123456789abcdef","pid":42,"start":7}`, true},
		{`{"action":"remove","phase":"done","inc":"0123456789abcdef"}`, true},
		{`{"action":"online","phase":"running","inc":"0123456789abcdef"}`, false},
		{`{"action":"add","phase":"later","inc":"0123456789abcdef"}`, false},
		{`{"action":"add","phase":"done","inc":"0123456789abcdeg"}`, false},
		{`{"action":"add","phase":"done","inc":"0123456789abcdef","pid":-3}`, false},
		{`{"action":"add"`, false},
	} {
		_, err := parseRecord([]byte(tc.in))
		if (err == nil) != tc.ok || (err != nil && !errors.Is(err, ErrJournal)) {
			t.Errorf("%s: %v", tc.in, err)
		}
	}
}

// TestProcStart: a record finds its script by pid and start time, and a
// process that ended (a zombie included) is not taken for it.
func TestProcStart(t *testing.T) {
	t.Parallel()
	cmd := exec.Command("sleep", "30")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	st, ok := procStart(cmd.Process.Pid)
	if !ok || st <= 0 {
		t.Fatalf("procStart(%d) = %d, %v", cmd.Process.Pid, st, ok)
	}
	r := record{Action: "add", Phase: phaseRunning, PID: cmd.Process.Pid, Start: st}
	if !r.alive() {
		t.Error("running script not alive")
	}
	if other := (record{Action: "add", Phase: phaseRunning, PID: cmd.Process.Pid, Start: st + 1}); other.alive() {
		t.Error("a pid with another start time taken for the script")
	}
	cmd.Process.Kill()
	for { // a zombie until waited for
		if _, ok := procStart(cmd.Process.Pid); !ok {
			break
		}
	}
	cmd.Wait()
	if r.alive() {
		t.Error("ended script alive")
	}
	if _, ok := procStart(os.Getpid()); !ok {
		t.Error("own process not found")
	}
}
