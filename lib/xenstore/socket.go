package xenstore

import (
	"context"
	"errors"
	"math/rand/v2"
	"os"
	"syscall"
	"time"
)

// dialSocket connects to the xenstored socket at path within ctx. The
// connected socket is used as a non-blocking os.File: the runtime poller
// parks the reader and wakes it on the thread that waits for the reply, as
// net.Conn would, but without the net package (and cgo resolver) whose
// start-up costs a short-lived process, a toolstack hook, about 0.7 ms, a
// third of its run time.
func dialSocket(ctx context.Context, path string) (*os.File, error) {
	// xenstored listens with a backlog of one, and a burst of clients
	// (hooks of domains started together) finds it full. A unix socket then
	// fails with EAGAIN at once where libxenstore's blocking connect would
	// wait; wait likewise, with backoff, until ctx ends.
	for delay := time.Millisecond; ; delay = min(2*delay, 50*time.Millisecond) {
		fd, err := syscall.Socket(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC|syscall.SOCK_NONBLOCK, 0)
		if err != nil {
			return nil, &os.PathError{Op: "dial", Path: path, Err: err}
		}
		err = syscall.Connect(fd, &syscall.SockaddrUnix{Name: path})
		if err == nil {
			// Non-blocking, so os.NewFile registers it with the poller.
			return os.NewFile(uintptr(fd), path), nil
		}
		syscall.Close(fd)
		if !errors.Is(err, syscall.EAGAIN) {
			return nil, &os.PathError{Op: "dial", Path: path, Err: err}
		}
		if !backoff(ctx, delay/2+rand.N(delay)) {
			return nil, &os.PathError{Op: "dial", Path: path, Err: ctx.Err()}
		}
	}
}

// backoff sleeps before a retry (of a connect here, of a transaction in
// tx.go); false if ctx ended.
func backoff(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}
