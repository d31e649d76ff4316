package main

import (
	"fmt"
	"io"
	"os"
	"syscall"
	"time"
)

// pinned keeps the second *os.File of a descriptor alive: its finalizer
// would close the descriptor under the first.
var pinned *os.File

// readableUntil returns a reader of r that fails once deadline passes, and
// a function to call when done reading. For a pipe or terminal on stdin
// (libvirt writes the domain XML into a pipe) it puts the descriptor into
// non-blocking mode so that the runtime poller enforces the deadline, and
// done puts it back; a regular file never blocks and is read as it is.
func readableUntil(r io.Reader, deadline time.Time, timeout time.Duration) (io.Reader, func()) {
	f, ok := r.(*os.File)
	if !ok {
		return r, func() {}
	}
	fd := int(f.Fd())
	if err := syscall.SetNonblock(fd, true); err != nil {
		return r, func() {}
	}
	restore := func() { syscall.SetNonblock(fd, false) }
	pinned = os.NewFile(uintptr(fd), f.Name())
	if err := pinned.SetReadDeadline(deadline); err != nil {
		// Not pollable (a regular file): reads do not block.
		restore()
		return r, func() {}
	}
	return deadlineReader{pinned, timeout}, restore
}

type deadlineReader struct {
	f       *os.File
	timeout time.Duration
}

func (d deadlineReader) Read(p []byte) (int, error) {
	n, err := d.f.Read(p)
	if err != nil && err != io.EOF && os.IsTimeout(err) {
		err = fmt.Errorf("stdin not closed within %v: %w", d.timeout, err)
	}
	return n, err
}
