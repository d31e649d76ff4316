package main

import (
	"context"
	"io"
	"os"
	"os/exec"
	"syscall"
	"testing"
	"time"

	"github.com/mtwatch/mtwatch/internal/daemontest"
	"github.com/mtwatch/mtwatch/lib/control"
	"github.com/mtwatch/mtwatch/lib/node"
	"github.com/mtwatch/mtwatch/lib/xenstore/xenstoredtest"
)

// TestDaemonStderrReaderGone: the agent's stderr is a pipe to a reader
// that exits (head, as a logger or svlogd that dies would): the agent's
// next log lines meet EPIPE and it keeps working, and SIGTERM still exits 0.
func TestDaemonStderrReaderGone(t *testing.T) {
	t.Parallel()
	in := xenstoredtest.Start(t)
	sock := daemontest.SocketPath(t)
	pr, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	reader := exec.Command("head", "-n", "1")
	reader.Stdin, reader.Stdout = pr, io.Discard
	if err := reader.Start(); err != nil {
		t.Fatal(err)
	}
	pr.Close()
	readerDone := make(chan error, 1)
	go func() { readerDone <- reader.Wait() }()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	d := spawnBinary(t, self, pw, in, sock, nil, "--log-level=debug")
	pw.Close()
	select {
	case <-readerDone:
	case <-time.After(30 * time.Second):
		reader.Process.Kill()
		t.Fatal("the agent logged nothing in 30 s")
	}
	d.WaitReady()
	// Lines to log, each now a write to a pipe without a reader.
	for range 3 {
		d.Signal(syscall.SIGHUP)
		time.Sleep(50 * time.Millisecond)
	}
	time.Sleep(200 * time.Millisecond)
	select {
	case <-d.Exited():
		t.Fatalf("the agent died once its stderr reader had gone: %v", d.Cmd.ProcessState)
	default:
	}
	in.Run("xenstore-write", node.Dir+"/4", "")
	cl := control.NewClient(sock)
	defer cl.Close()
	waitWorkers(t, cl, 4)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := cl.Status(ctx); err != nil {
		t.Fatalf("control API after the log reader exited: %v", err)
	}
	d.Stop()
}
