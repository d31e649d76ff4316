package proc

import (
	"context"
	"errors"
	"strconv"
	"testing"
	"time"

	"github.com/mtwatch/mtwatch/internal/proctest"
)

// TestGroupStop: Stop ends a running command and waits for it, and the
// group starts nothing afterwards.
func TestGroupStop(t *testing.T) {
	g := NewGroup()
	started := make(chan int, 1)
	res := make(chan Result, 1)
	go func() {
		spec := sh(`echo $$; exec sleep 30`)
		spec.Grace = 100 * time.Millisecond
		spec.Line = func(_, line string) {
			if pid, err := strconv.Atoi(line); err == nil {
				started <- pid
			}
		}
		res <- g.Run(spec)
	}()
	pid := <-started
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := g.Stop(ctx); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	// Stop returned only once the command had ended and been reaped: its
	// pid is gone, not a zombie, not running.
	if proctest.Alive(pid) {
		t.Fatal("Stop returned before the running command ended")
	}
	if r := <-res; !r.Cancelled || errors.Is(r.Err, ErrStopping) {
		t.Errorf("running command: %+v, want cancelled after start", r)
	}
	if g.Context().Err() == nil {
		t.Error("context not ended by Stop")
	}
	r := g.Run(sh(`exit 0`))
	if r.ExitCode != -1 || !r.Cancelled || !errors.Is(r.Err, ErrStopping) || !errors.Is(r.Err, context.Canceled) {
		t.Errorf("Run after Stop: %+v, want refused with ErrStopping", r)
	}
}

// TestGroupStopTimeout: Stop gives up when its ctx ends first.
func TestGroupStopTimeout(t *testing.T) {
	g := NewGroup()
	started := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		spec := sh(`trap '' TERM; echo up; while :; do sleep 0.05; done`)
		spec.Grace = 2 * time.Second
		spec.Line = func(_, line string) {
			if line == "up" {
				close(started)
			}
		}
		g.Run(spec)
	}()
	<-started
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if err := g.Stop(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Stop = %v, want deadline exceeded", err)
	}
	<-done // SIGKILL after the grace
}
