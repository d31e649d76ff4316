// Package testenv keeps tests independent of the shell that runs them: the
// variables that configure mtwatch's programs (MTWATCH_CONTROL, the
// XENSTORED_PATH of a sandbox, ...) would otherwise reach the code under
// test, in-process through urfave/cli's EnvVars and in every child process
// through os.Environ. A test that wants one sets it itself.
package testenv

import (
	"os"
	"strings"
)

// harness names the variables that configure the test harness rather than
// the programs (lib/xenstore/xenstoredtest, plugin/internal/proc): Scrub
// keeps them.
var harness = []string{"MTWATCH_XENSTORED", "MTWATCH_XENEMU"}

// Scrub removes from this process's environment every MTWATCH_* variable
// but the harness's own (MTWATCH_XENSTORED, MTWATCH_XENEMU and any
// MTWATCH_TEST_*), and XENSTORED_PATH and XENSTORED_RUNDIR, which point
// libxenstore clients and the agent at a xenstored. Call it from TestMain,
// before m.Run: os.Unsetenv is not safe while tests run in parallel.
func Scrub() {
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		if Scrubbed(k) {
			os.Unsetenv(k)
		}
	}
}

// Scrubbed reports whether Scrub removes variable k.
func Scrubbed(k string) bool {
	switch {
	case k == "XENSTORED_PATH" || k == "XENSTORED_RUNDIR":
		return true
	case !strings.HasPrefix(k, "MTWATCH_") || strings.HasPrefix(k, "MTWATCH_TEST_"):
		return false
	}
	for _, h := range harness {
		if k == h {
			return false
		}
	}
	return true
}
