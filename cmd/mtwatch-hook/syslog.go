package main

import (
	"fmt"
	"os"
	"syscall"
	"time"
)

// syslogWarning sends msg to the local syslog daemon (facility daemon,
// severity warning) over /dev/log, best effort. It speaks the socket
// directly: log/syslog would pull the net package into every hook's
// start-up for a message sent only on failure.
func syslogWarning(tag, msg string) {
	const priority = 3<<3 | 4 // LOG_DAEMON | LOG_WARNING
	line := fmt.Sprintf("<%d>%s %s[%d]: %s", priority, time.Now().Format(time.Stamp), tag, os.Getpid(), msg)
	for _, typ := range []int{syscall.SOCK_DGRAM, syscall.SOCK_STREAM} {
		fd, err := syscall.Socket(syscall.AF_UNIX, typ|syscall.SOCK_CLOEXEC, 0)
		if err != nil {
			continue
		}
		err = syscall.Connect(fd, &syscall.SockaddrUnix{Name: "/dev/log"})
		if err == nil {
			payload := line
			if typ == syscall.SOCK_STREAM {
				payload += "\n"
			}
			_, err = syscall.Write(fd, []byte(payload))
		}
		syscall.Close(fd)
		if err == nil {
			return
		}
	}
}
