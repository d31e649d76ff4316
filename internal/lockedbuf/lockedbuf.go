// Package lockedbuf is a bytes.Buffer safe for one writer and concurrent
// readers: what tests use to collect a child process's output while they
// read it.
package lockedbuf

import (
	"bytes"
	"sync"
)

// Buffer collects a process's output written from one goroutine while a
// test reads it from another. The zero value is ready to use.
type Buffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *Buffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

// String returns everything written so far.
func (l *Buffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}
