package agent

import (
	"os"
	"runtime"
)

// SetGOMAXPROCS applies agent.gomaxprocs to this process: n > 0 sets it, 0
// restores the Go runtime's default. The GOMAXPROCS environment variable,
// when set, wins (the runtime applied it at start) and n is ignored. It
// returns the value in force. The process is the caller's: mtwatchd calls
// it at start and on reload, not Agent, so that a program embedding an
// Agent keeps its own setting.
func SetGOMAXPROCS(n int) (procs int, fromEnv bool) {
	if os.Getenv("GOMAXPROCS") != "" {
		return runtime.GOMAXPROCS(0), true
	}
	if n > 0 {
		runtime.GOMAXPROCS(n)
	} else {
		runtime.SetDefaultGOMAXPROCS()
	}
	return runtime.GOMAXPROCS(0), false
}
