package admin

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"
	"sync"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/mtwatch/mtwatch/lib/control"
	"github.com/mtwatch/mtwatch/lib/domid"
	"github.com/mtwatch/mtwatch/lib/node"
	"github.com/mtwatch/mtwatch/lib/xenstore"
)

func watchCommand() *cli.Command {
	return &cli.Command{
		Name:      "watch",
		Usage:     "watch XenStore paths and show which worker each event routes to",
		ArgsUsage: "<path>...",
		Description: `Like xenstore-watch, but every event line also says which domain the path belongs
to and which worker mtwatchd runs it on, with the agent's own routing code (the default
DomainOf of a plugin watch, lib/domid.FromPath): the tool to debug a plugin's routing.

A guest's event runs on that guest's worker: its live one, or, before it has one, the worker it
waits for (or one of its own, when none comes); only in single-worker mode does it run on the
default worker. Without the agent the worker shown is the domain's, and stderr says so. Dom0's
paths and paths of no domain always run on the default worker. An event of a domain's
mtwatch node also says node=<domid>: the agent re-reads that node and starts or retires the
domain's worker (lib/node.FromPath).`,
		Flags: []cli.Flag{
			&cli.BoolFlag{Name: "json", Usage: "print one JSON object per event"},
			&cli.IntFlag{Name: "count", Aliases: []string{"n"}, Usage: "exit after `N` events (0: until interrupted)"},
		},
		OnUsageError: onUsageError,
		Action:       runWatch,
	}
}

// Route is one line of mtwatch watch --json.
type Route struct {
	Path  string `json:"path"`
	Token string `json:"token"`
	// Domain is the guest the path belongs to, nil for dom0 and paths of
	// no domain.
	Domain *uint16 `json:"domain"`
	// Worker is the domid of the worker that runs the event, or "default".
	Worker string `json:"worker"`
	// Node is set for the event of a domain's mtwatch node: the agent
	// itself reacts to it (lib/node.FromPath) by re-reading the node and
	// starting or retiring that domain's worker.
	Node *uint16 `json:"node,omitempty"`
}

// routeOf is the routing the agent applies to a plugin watch that sets
// neither DomainOf nor Owner: dispatch.Register substitutes domid.FromPath,
// and dom0 or no domain means the default worker.
func routeOf(path string) (domid.ID, bool) {
	id, ok := domid.FromPath(path)
	if !ok || !id.IsGuest() {
		return 0, false
	}
	return id, true
}

// workerView knows which domains have workers, from the agent.
type workerView struct {
	cl      *control.Client
	timeout time.Duration
	warn    io.Writer

	mu     sync.Mutex
	at     time.Time
	down   bool
	single bool
}

func (v *workerView) hasWorker(ctx context.Context, id domid.ID) bool {
	v.mu.Lock()
	defer v.mu.Unlock()
	if time.Since(v.at) > time.Second {
		v.refresh(ctx)
	}
	if v.down {
		return true // shown as the domain's; stderr said why
	}
	// A guest's events never run on the default worker outside
	// single-worker mode: without a worker they wait for one.
	return !v.single
}

func (v *workerView) refresh(ctx context.Context) {
	ctx, cancel := context.WithTimeout(ctx, v.timeout)
	defer cancel()
	v.at = time.Now()
	st, err := v.cl.Status(ctx)
	if err != nil {
		if !v.down {
			why := err.Error()
			if errors.Is(err, control.ErrAgentNotRunning) {
				why = "agent not running"
			}
			fmt.Fprintf(v.warn, "mtwatch: %s: the worker shown is the domain the path belongs to\n", why)
		}
		v.down = true
		return
	}
	v.down = false
	v.single = st.Mode == control.ModeSingleWorker
}

func runWatch(c *cli.Context) error {
	if err := rejectFlagsAfterArgs(c); err != nil {
		return err
	}
	if c.NArg() == 0 {
		return usagef("watch takes at least one <path>")
	}
	count := c.Int("count")
	if count < 0 {
		return usagef("watch: --count must not be negative, got %d", count)
	}
	paths := c.Args().Slice()
	for _, p := range paths {
		if err := xenstore.ValidatePath(p); err != nil && p != "@introduceDomain" && p != "@releaseDomain" {
			return usagef("watch %q: %v", p, err)
		}
	}
	g := globalsOf(c)
	xs, err := g.dial(c.Context)
	if err != nil {
		return err
	}
	defer xs.Close()

	ctx, cancel := context.WithCancel(c.Context)
	defer cancel()
	events := make(chan xenstore.Event)
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	for i, p := range paths {
		rctx, rcancel := context.WithTimeout(ctx, g.timeout)
		w, err := xs.Watch(rctx, p, strconv.Itoa(i))
		rcancel()
		if err != nil {
			return failf("watch %s: %v", p, err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case ev, ok := <-w.Events():
					if !ok {
						return
					}
					select {
					case events <- ev:
					case <-ctx.Done():
						return
					}
				case <-ctx.Done():
					return
				}
			}
		}()
	}
	view := &workerView{cl: g.client(), timeout: g.timeout, warn: stderrOf(c)}
	defer view.cl.Close()
	enc := json.NewEncoder(c.App.Writer)
	for n := 0; count == 0 || n < count; n++ {
		var ev xenstore.Event
		select {
		case <-ctx.Done():
			return nil
		case ev = <-events:
		}
		i, _ := strconv.Atoi(ev.Token)
		r := Route{Path: ev.Path, Token: paths[i], Worker: "default"}
		if id, ok := routeOf(ev.Path); ok {
			v := uint16(id)
			r.Domain = &v
			if view.hasWorker(ctx, id) {
				r.Worker = id.String()
			}
		}
		if id, ok := node.FromPath(ev.Path); ok {
			v := uint16(id)
			r.Node = &v
		}
		if g.json {
			err = enc.Encode(r)
		} else {
			dom := "-"
			if r.Domain != nil {
				dom = strconv.Itoa(int(*r.Domain))
			}
			nodeOf := ""
			if r.Node != nil {
				nodeOf = " node=" + strconv.Itoa(int(*r.Node))
			}
			_, err = fmt.Fprintf(c.App.Writer, "%s domain=%s worker=%s%s\n", escapeControls(r.Path), dom, r.Worker, nodeOf)
		}
		if err != nil {
			return failf("write: %v", err)
		}
	}
	return nil
}
