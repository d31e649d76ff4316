package main

import (
	"os"
	"runtime"
)

// setGOMAXPROCS applies agent.gomaxprocs to this process: n > 0 sets it, 0
// restores the Go runtime's default. The GOMAXPROCS environment variable,
// when set, wins (the runtime applied it at start) and n is ignored. It
// returns the value in force. It is mtwatchd's, called at start and on
// reload, not lib/agent's: a program embedding an Agent keeps its own
// setting.
func setGOMAXPROCS(n int) (procs int, fromEnv bool) {
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
