package main

import (
	"os"
	"strconv"
	"syscall"
)

// closeInheritedOnExec marks every descriptor above stderr that mtwatchd
// inherited close-on-exec. Go opens its own descriptors close-on-exec, but
// one inherited without the flag (from a shell, a sloppy supervisor, a
// socket passed by systemd before go-systemd marks it) would otherwise
// reach every plugin command and hotplug script, and any daemon they leave
// behind. mtwatchd itself keeps using them.
func closeInheritedOnExec() {
	entries, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return
	}
	for _, e := range entries {
		if fd, err := strconv.Atoi(e.Name()); err == nil && fd > 2 {
			syscall.CloseOnExec(fd)
		}
	}
}
