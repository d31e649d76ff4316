package xenstore

import (
	"context"
	"errors"
	"math/rand/v2"
	"os"
	"syscall"
	"time"
)

// sockFile is a connected unix socket used with blocking I/O by the single
// reader goroutine and the flushing caller. It deliberately bypasses the
// net package: the runtime's network poller is not needed with one reader
// per connection, and starting it costs a short-lived process (a toolstack
// hook) about 0.7 ms, a third of its run time.
type sockFile struct {
	*os.File
	fd int
}

// dialSocket connects to the xenstored socket at path within ctx.
func dialSocket(ctx context.Context, path string) (*sockFile, error) {
	// The connect is non-blocking so that ctx bounds it: xenstored listens
	// with a backlog of one, and a burst of clients (hooks of domains
	// started together) finds it full. A unix socket then fails with
	// EAGAIN at once where libxenstore's blocking connect would wait; wait
	// likewise, with backoff, until ctx ends.
	for delay := time.Millisecond; ; delay = min(2*delay, 50*time.Millisecond) {
		fd, err := syscall.Socket(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC|syscall.SOCK_NONBLOCK, 0)
		if err != nil {
			return nil, &os.PathError{Op: "dial", Path: path, Err: err}
		}
		err = syscall.Connect(fd, &syscall.SockaddrUnix{Name: path})
		if err == nil {
			if err := syscall.SetNonblock(fd, false); err != nil {
				syscall.Close(fd)
				return nil, &os.PathError{Op: "dial", Path: path, Err: err}
			}
			return &sockFile{File: os.NewFile(uintptr(fd), path), fd: fd}, nil
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

// Close wakes the reader blocked in read(2) (shutdown makes it return
// end-of-file), then releases the descriptor; os.File defers the close(2)
// until that read has returned, so the number is never reused under it.
func (s *sockFile) Close() error {
	syscall.Shutdown(s.fd, syscall.SHUT_RDWR)
	return s.File.Close()
}
