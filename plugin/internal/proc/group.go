package proc

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/prometheus/client_golang/prometheus"
)

// ErrStopping is wrapped by Result.Err when Group.Run refused to start a
// command because the group is stopping.
var ErrStopping = errors.New("not started, stopping")

// Group owns the lifetime of a plugin's commands: they run under its
// context, which Stop cancels, and Stop waits for every one started. The
// zero value is not usable; use NewGroup.
type Group struct {
	life   context.Context
	cancel context.CancelFunc
	// mu orders Run's Add before Stop's Wait: once Stop has cancelled life
	// under it, no command is counted any more.
	mu   sync.Mutex
	cmds sync.WaitGroup
}

// NewGroup returns a group whose context lives until Stop.
func NewGroup() *Group {
	g := &Group{}
	g.life, g.cancel = context.WithCancel(context.Background())
	return g
}

// Context ends when Stop is called; it is the context for the plugin's own
// XenStore requests and goroutines made on behalf of its commands.
func (g *Group) Context() context.Context { return g.life }

// Run runs spec under the group's context, counted for Stop. Once Stop was
// called it starts nothing and returns a Result with ExitCode -1, Cancelled
// set and an Err wrapping both ErrStopping and the context's error.
func (g *Group) Run(spec Spec) Result {
	g.mu.Lock()
	if err := g.life.Err(); err != nil {
		g.mu.Unlock()
		return Result{ExitCode: -1, Cancelled: true, Err: fmt.Errorf("%s: %w: %w", spec.Path, ErrStopping, err)}
	}
	g.cmds.Add(1)
	g.mu.Unlock()
	defer g.cmds.Done()
	return Run(g.life, spec)
}

// Stop cancels the group's context, so that running commands' process
// groups are ended and no new one starts, and waits within ctx for those
// running to be gone: the agent must not exit while one still has its grace
// period to run out before the SIGKILL. It returns ctx's error if that ends
// first.
func (g *Group) Stop(ctx context.Context) error {
	g.mu.Lock()
	g.cancel()
	g.mu.Unlock()
	return Wait(ctx, &g.cmds)
}

// Wait waits for wg within ctx and returns ctx's error if that ends first;
// the goroutine waiting for wg then ends with wg.
func Wait(ctx context.Context, wg *sync.WaitGroup) error {
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Register registers a plugin's collectors with reg; a nil reg (no metrics
// endpoint) registers nothing.
func Register(reg prometheus.Registerer, cs ...prometheus.Collector) error {
	if reg == nil {
		return nil
	}
	for _, c := range cs {
		if err := reg.Register(c); err != nil {
			return fmt.Errorf("register metrics: %w", err)
		}
	}
	return nil
}
