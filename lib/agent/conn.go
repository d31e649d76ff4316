package agent

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/mtwatch/mtwatch/lib/node"
	"github.com/mtwatch/mtwatch/lib/xenstore"
)

// Tokens of the agent's own watches. Plugin tokens are "<plugin>/<n>" and
// plugin names cannot contain the colon.
const (
	tokenNodes     = "mtwatchd:nodes"
	tokenIntroduce = "mtwatchd:introduce"
	tokenRelease   = "mtwatchd:release"
)

// session is one connection to xenstored with the agent's own watches; its
// run loop is the only writer of domain state while it runs.
type session struct {
	a                   *Agent
	c                   *xenstore.Client
	nodes, intro, relea *xenstore.Watch
}

// connect registers the agent's watches and the plugins' on c, then
// reconciles the workers with c's nodes and introduced domains.
func (a *Agent) connect(ctx context.Context, c *xenstore.Client, reconnect bool) (*session, error) {
	s := &session{a: a, c: c}
	var err error
	if s.nodes, err = c.Watch(ctx, node.Dir, tokenNodes); err != nil {
		return nil, fmt.Errorf("agent: %w", err)
	}
	if s.intro, err = c.Watch(ctx, "@introduceDomain", tokenIntroduce); err != nil {
		s.close()
		return nil, fmt.Errorf("agent: %w", err)
	}
	if s.relea, err = c.Watch(ctx, "@releaseDomain", tokenRelease); err != nil {
		s.close()
		return nil, fmt.Errorf("agent: %w", err)
	}
	a.cmu.Lock()
	a.cur = c
	a.connectedSince = time.Now()
	a.lastErr = ""
	if reconnect {
		a.reconnects++
	}
	pws := make([]*pluginWatch, 0, len(a.pw))
	for _, w := range a.pw {
		pws = append(pws, w)
	}
	a.cmu.Unlock()
	for _, w := range pws {
		if err := a.registerXS(ctx, c, w); err != nil {
			a.log.Error("cannot register watch", "plugin", w.plugin.name, "path", w.path, "watch", w.token, "err", err)
		}
	}
	if err := a.reconcile(ctx, c); err != nil {
		s.close()
		return nil, fmt.Errorf("agent: reconcile: %w", err)
	}
	return s, nil
}

func (s *session) close() {
	for _, w := range []*xenstore.Watch{s.nodes, s.intro, s.relea} {
		if w != nil {
			w.Unwatch(context.Background())
		}
	}
}

// supervise runs the session's loop and, when xenstored goes away, redials
// with capped exponential backoff and reconnects. Running handlers and the
// workers of domains that still exist are left alone throughout.
func (a *Agent) supervise(s *session) {
	defer a.wg.Done()
	for {
		err := s.run(a.runCtx)
		if a.runCtx.Err() != nil {
			return
		}
		a.cmu.Lock()
		a.cur = nil
		a.lastErr = err.Error()
		a.cmu.Unlock()
		s.c.Close()
		a.log.Error("lost xenstored; reconnecting", "err", err)
		a.notify("STATUS=xenstored lost, reconnecting: " + err.Error())
		for {
			c, err := a.dialLoop(a.runCtx)
			if err != nil {
				return // shutting down
			}
			if _, err := node.Repair(a.runCtx, c); err != nil {
				a.log.Error("cannot repair the mtwatch directory after reconnecting", "err", err)
			}
			s, err = a.connect(a.runCtx, c, true)
			if err == nil {
				break
			}
			c.Close()
			a.cmu.Lock()
			a.cur = nil
			a.lastErr = err.Error()
			a.cmu.Unlock()
			a.log.Error("reconnect failed", "err", err)
			select {
			case <-a.runCtx.Done():
				return
			case <-time.After(minBackoff):
			}
		}
		a.log.Info("reconnected to xenstored")
		a.notify("STATUS=" + a.statusLine())
	}
}

// run handles the agent's own watch events until the connection fails or
// ctx ends. The first event of each watch is the one xenstored sends on
// registration; connect reconciled after registering, so it is skipped.
func (s *session) run(ctx context.Context) error {
	a := s.a
	defer s.close()
	tick := time.NewTicker(a.staleTick())
	defer tick.Stop()
	skip := map[*xenstore.Watch]bool{s.nodes: true, s.intro: true, s.relea: true}
	first := func(w *xenstore.Watch) bool {
		if skip[w] {
			delete(skip, w)
			return true
		}
		return false
	}
	ended := func(w *xenstore.Watch) error {
		if err := w.Err(); err != nil && errors.Is(err, xenstore.ErrWatchOverflow) {
			return nil
		}
		if err := s.c.Err(); err != nil {
			return err
		}
		return fmt.Errorf("watch %s ended: %w", w.Path(), w.Err())
	}
	// A node event whose handling failed (a read refused, an overflow whose
	// rescan found the directory still changing under a burst of creates)
	// would leave that domain's worker wrong until some later event: the
	// whole directory is rescanned instead, with a capped backoff, until a
	// rescan succeeds.
	var rescan <-chan time.Time
	backoff := minBackoff
	for {
		var err error
		nodeErr := false
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-s.c.Done():
			return s.c.Err()
		case <-rescan:
			rescan = nil
			nodeErr = true
			if err = a.reconcile(ctx, s.c); err == nil {
				backoff = minBackoff
			}
		case ev, ok := <-s.nodes.Events():
			nodeErr = true
			if !ok {
				if err := ended(s.nodes); err != nil {
					return err
				}
				// Overflowed: register again and rescan everything.
				if s.nodes, err = s.c.Watch(ctx, node.Dir, tokenNodes); err != nil {
					return err
				}
				skip[s.nodes] = true
				err = a.reconcile(ctx, s.c)
				break
			}
			if first(s.nodes) {
				continue
			}
			err = a.nodeEvent(ctx, s.c, ev.Path)
		case _, ok := <-s.intro.Events():
			if !ok {
				if err := ended(s.intro); err != nil {
					return err
				}
				if s.intro, err = s.c.Watch(ctx, "@introduceDomain", tokenIntroduce); err != nil {
					return err
				}
			}
			if first(s.intro) {
				continue
			}
			err = a.introduced(ctx, s.c)
		case _, ok := <-s.relea.Events():
			if !ok {
				if err := ended(s.relea); err != nil {
					return err
				}
				if s.relea, err = s.c.Watch(ctx, "@releaseDomain", tokenRelease); err != nil {
					return err
				}
			}
			if first(s.relea) {
				continue
			}
			err = a.released(ctx, s.c)
		case <-tick.C:
			err = a.checkStale(ctx, s.c)
			tick.Reset(a.staleTick())
		}
		if err != nil {
			if s.c.Err() != nil {
				return s.c.Err()
			}
			if ctx.Err() != nil {
				return ctx.Err()
			}
			a.log.Error("xenstore request failed", "err", err)
			if nodeErr && rescan == nil {
				a.log.Info("rescanning the mtwatch directory", "in", backoff)
				rescan = time.After(backoff)
				backoff = min(2*backoff, maxBackoff)
			}
		}
	}
}

// client returns the current connection, nil while reconnecting.
func (a *Agent) client() *xenstore.Client {
	a.cmu.Lock()
	defer a.cmu.Unlock()
	return a.cur
}

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
		c := a.client()
		if c == nil {
			continue
		}
		ctx, cancel := context.WithTimeout(a.bgCtx, interval)
		_, err := c.GetPerms(ctx, node.Dir)
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
