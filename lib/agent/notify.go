package agent

import (
	"context"
	"fmt"
	"time"

	"github.com/mtwatch/mtwatch/lib/node"
)

// watchdog sends WATCHDOG=1 every interval, each time only after a XenStore
// round trip succeeded: a hung reader or a vanished xenstored stops the
// pings and systemd restarts the agent.
func (a *Agent) watchdog(interval time.Duration) {
	defer a.bg.Done()
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-a.bgCtx.Done():
			return
		case <-t.C:
		}
		c := a.conn.client()
		if c == nil {
			continue
		}
		ctx, cancel := context.WithTimeout(a.bgCtx, interval)
		probe := node.Dir
		if a.driver {
			probe = a.domid.Home() // dom0's directory is not ours to read
		}
		_, err := c.GetPerms(ctx, probe)
		cancel()
		if err == nil {
			a.notify("WATCHDOG=1")
		} else if a.bgCtx.Err() == nil {
			a.log.Warn("watchdog round trip to xenstored failed", "err", err)
		}
	}
}

// statusLoop keeps systemd's STATUS= current.
func (a *Agent) statusLoop() {
	defer a.bg.Done()
	t := time.NewTicker(time.Second)
	defer t.Stop()
	last := ""
	for {
		select {
		case <-a.bgCtx.Done():
			return
		case <-t.C:
		}
		if s := a.statusLine(); s != last {
			last = s
			a.notify("STATUS=" + s)
		}
	}
}

func (a *Agent) statusLine() string {
	st := a.Status()
	return fmt.Sprintf("%d domains, %d workers, %d stalled; xenstored %s", st.Domains, st.Workers, st.Stalled, st.Xenstore.State)
}
