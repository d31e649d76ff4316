package daemontest

import (
	"net"
	"strings"
	"testing"
	"time"
)

func send(n *NotifySocket, msg string) error {
	c, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: n.Path, Net: "unixgram"})
	if err != nil {
		return err
	}
	defer c.Close()
	_, err = c.Write([]byte(msg))
	return err
}

// TestNotifyWait: a line sent before or while waiting is found, one per
// line of a datagram; a process that exits without it, or the timeout,
// ends the wait with an error saying which.
func TestNotifyWait(t *testing.T) {
	n := ListenNotify(t)
	if err := send(n, "STATUS=starting\nREADY=1"); err != nil {
		t.Fatal(err)
	}
	if err := n.wait("READY=1", 5*time.Second, nil); err != nil {
		t.Fatal(err)
	}
	sent := make(chan error, 1)
	go func() {
		time.Sleep(50 * time.Millisecond)
		sent <- send(n, "WATCHDOG=1")
	}()
	if err := n.wait("WATCHDOG=1", 5*time.Second, nil); err != nil {
		t.Fatal(err)
	}
	if err := <-sent; err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(n.Lines(), ","); got != "STATUS=starting,READY=1,WATCHDOG=1" {
		t.Errorf("lines %s", got)
	}

	exited := make(chan struct{})
	close(exited)
	begin := time.Now()
	err := n.wait("STOPPING=1", 5*time.Second, exited)
	if err == nil || !strings.Contains(err.Error(), "exited without") {
		t.Errorf("after the process exited: %v", err)
	}
	if d := time.Since(begin); d > time.Second {
		t.Errorf("waited %v after the process exited", d)
	}
	if err := n.wait("STOPPING=1", 100*time.Millisecond, nil); err == nil || !strings.Contains(err.Error(), "within 100ms") {
		t.Errorf("timeout: %v", err)
	}
}
