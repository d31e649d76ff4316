package plugins_test

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/mtwatch/mtwatch/internal/proctest"
	"github.com/mtwatch/mtwatch/lib/xenstore/xenstoredtest"
)

// TestExecReloadNeverDelaysShutdown: through bin/mtwatchd, a SIGHUP that
// removes or changes a rule whose command is running (and would run for
// a minute) leaves the signal loop free: SIGTERM right after it stops the
// agent within shutdown_timeout, exit status 0, nothing left behind.
func TestExecReloadNeverDelaysShutdown(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ name, reloaded string }{
		{"removed", ""},
		{"changed", `hang|/local/domain/{domid}/data/hang|env = { OUT = "$OUT", ACTION = "hang" }` + "\ntimeout = \"59s\""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			in := xenstoredtest.Start(t)
			out := t.TempDir()
			head := "[agent]\nshutdown_timeout = \"3s\"\n\n"
			a := newAgent(t, in, head+execRules(out,
				`hang|/local/domain/{domid}/data/hang|env = { OUT = "$OUT", ACTION = "hang" }`+"\ntimeout = \"60s\""))
			a.run()
			a.domain(5)
			a.write("/local/domain/5/data/hang", "1")
			pid, err := strconv.Atoi(strings.TrimSpace(waitFile(a, filepath.Join(out, "grandchild.5.0"))))
			if err != nil {
				t.Fatal(err)
			}
			defer syscall.Kill(pid, syscall.SIGKILL)
			var rules []string
			if tc.reloaded != "" {
				rules = append(rules, tc.reloaded)
			}
			if err := os.WriteFile(a.config, []byte(head+execRules(out, rules...)), 0o644); err != nil {
				t.Fatal(err)
			}
			a.cmd.Process.Signal(syscall.SIGHUP)
			time.Sleep(300 * time.Millisecond) // into the reload, and whatever it waits for
			begin := time.Now()
			a.cmd.Process.Signal(syscall.SIGTERM)
			select {
			case <-a.exited:
			case <-time.After(20 * time.Second):
				t.Fatal("mtwatchd did not exit within 20 s of SIGTERM")
			}
			took := time.Since(begin)
			if code := a.cmd.ProcessState.ExitCode(); code != 0 {
				t.Errorf("exit status %d after SIGTERM, want 0", code)
			}
			if took > 3*time.Second {
				t.Errorf("SIGTERM took %v, over shutdown_timeout (3s)", took)
			}
			for end := time.Now().Add(time.Second); proctest.Alive(pid) && time.Now().Before(end); {
				time.Sleep(10 * time.Millisecond)
			}
			if proctest.Alive(pid) {
				t.Fatalf("the command's grandchild %d outlived mtwatchd", pid)
			}
		})
	}
}
