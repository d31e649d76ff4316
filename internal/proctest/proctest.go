// Package proctest answers, for the tests of code that runs commands
// (plugin/internal/proc, the exec and hotplug plugins, mtwatchd's black-box
// tests), whether a process is still alive: killing a command's process
// group must leave none of its processes behind.
package proctest

import (
	"os"
	"strconv"
	"strings"
)

// Alive reports whether process pid exists and is neither a zombie nor
// dead: a killed child that nobody reaped yet does not count.
func Alive(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	// The state follows the command name, which is in parentheses and may
	// itself hold spaces and parentheses.
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	return len(f) > 0 && f[0] != "Z" && f[0] != "X"
}
