package proctest

import (
	"os"
	"os/exec"
	"testing"
	"time"
)

func TestAlive(t *testing.T) {
	if !Alive(os.Getpid()) {
		t.Fatal("this process is not alive")
	}
	cmd := exec.Command("sleep", "60")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	pid := cmd.Process.Pid
	if !Alive(pid) {
		t.Fatal("a running child is not alive")
	}
	cmd.Process.Kill()
	// Killed but not reaped: a zombie, which does not count.
	for i := 0; Alive(pid); i++ {
		if i > 1000 {
			t.Fatal("a killed child is still alive")
		}
		time.Sleep(time.Millisecond)
	}
	cmd.Wait()
	if Alive(pid) {
		t.Fatal("a reaped child is alive")
	}
}
