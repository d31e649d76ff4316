package agent

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/mtwatch/mtwatch/internal/fanout"
	"github.com/mtwatch/mtwatch/lib/domid"
	"github.com/mtwatch/mtwatch/lib/node"
	"github.com/mtwatch/mtwatch/lib/xenstore"
)

// Tokens of the agent's own watches. Plugin tokens are "<plugin>/<n>" and
// plugin names cannot contain the colon.
const (
	tokenNodes     = "mtwatchd:nodes"
	tokenIntroduce = "mtwatchd:introduce"
	tokenRelease   = "mtwatchd:release"
	tokenBackend   = "mtwatchd:backend"
	tokenLibxl     = "mtwatchd:libxl"
)

// libxlDir is where libxl and xenopsd keep their private record of each
// domain, /libxl/<domid>.
const libxlDir = "/libxl"

// backendDir is where a driver domain's backends are, relative to its home.
const backendDir = "backend"

// maxNodePaths bounds the distinct node paths a session keeps to look at;
// past it the whole directory is rescanned instead (the bound the channel
// watch's queue used to give).
const maxNodePaths = 1024

// session is one client of xenstored with the agent's own watches; its run
// loop is the only writer of the domain table while it runs.
//
// The agent's watches are WatchFunc watches: their callbacks run on the
// connection's reading goroutine, in stream order with the plugins' events,
// and only record what to look at under s.mu; the run loop makes the round
// trips. A callback never blocks and never calls the client. A plugin event
// of a domain whose worker the run loop has not created yet waits for it in
// the dispatcher (staging).
type session struct {
	a                   *Agent
	c                   *xenstore.Client
	nodes, intro, relea *xenstore.Watch // dom0
	libxl               *xenstore.Watch // dom0, with the libxl source
	backend             *xenstore.Watch // a driver domain
	wake                chan struct{}   // capacity 1: work was recorded

	mu   sync.Mutex
	work sessionWork
}

// sessionWork is what the agent's watch events asked the session to look
// at since it last looked.
type sessionWork struct {
	paths   map[string]struct{}   // node events, distinct paths
	rescan  bool                  // the directory itself changed, or too many paths
	intro   bool                  // @introduceDomain
	release bool                  // @releaseDomain
	backend bool                  // a driver domain's backend directory changed
	libxl   map[domid.ID]struct{} // /libxl/<domid> created, removed or changed perms
	// holds: the dispatcher holds these domids' events (Hold) until the
	// session has looked at them; the last hold's number.
	holds   map[domid.ID]uint64
	relibxl bool // /libxl itself changed, or too many domids
}

// connect registers the agent's watches and the plugins' on c, then
// reconciles the workers with c's nodes, /libxl and introduced domains.
// Plugin events of a guest read meanwhile wait in the dispatcher for its
// worker (staging), so those of a domain the new xenstored knows run on it.
func (a *Agent) connect(ctx context.Context, c *xenstore.Client, reconnect bool) (*session, error) {
	s := &session{a: a, c: c, wake: make(chan struct{}, 1)}
	if err := s.watch(ctx); err != nil {
		s.close()
		a.d.ReleaseAll() // what its callbacks held
		return nil, fmt.Errorf("agent: %w", err)
	}
	for _, w := range a.conn.adopt(c, reconnect) {
		if err := a.conn.register(ctx, c, w); err != nil {
			a.log.Error("cannot register watch", "plugin", w.plugin.name, "path", w.path, "watch", w.token, "err", err)
		}
	}
	if err := a.domains.reconcile(ctx, c); err != nil {
		s.close()
		a.d.ReleaseAll() // what its callbacks held
		return nil, fmt.Errorf("agent: reconcile: %w", err)
	}
	return s, nil
}

// watch registers the agent's own watches: in dom0 the mtwatch directory
// and the domain introductions and releases; in a driver domain its backend
// directory; with the libxl source, /libxl too. They are registered before
// the plugins' watches, so xenstored sends the agent's event of a write
// before theirs.
func (s *session) watch(ctx context.Context) error {
	c := s.c
	var err error
	if s.a.driver {
		s.backend, err = c.WatchFunc(ctx, backendDir, tokenBackend, s.callback(s.onBackend))
		return err
	}
	if s.nodes, err = c.WatchFunc(ctx, node.Dir, tokenNodes, s.callback(s.onNode)); err != nil {
		return err
	}
	if s.intro, err = c.WatchFunc(ctx, "@introduceDomain", tokenIntroduce, s.callback(s.onIntroduce)); err != nil {
		return err
	}
	if s.a.domains.useLibxl {
		if s.libxl, err = c.WatchFunc(ctx, libxlDir, tokenLibxl, s.callback(s.onLibxl)); err != nil {
			return err
		}
	}
	s.relea, err = c.WatchFunc(ctx, "@releaseDomain", tokenRelease, s.callback(s.onRelease))
	return err
}

// callback wraps on as a WatchFunc function that skips the watch's first
// event, the one xenstored sends on registration: connect reconciles after
// registering. Calls of one watch never overlap, so first needs no lock.
func (s *session) callback(on func(path string)) func(xenstore.Event) {
	first := true
	return func(ev xenstore.Event) {
		if first {
			first = false
			return
		}
		on(ev.Path)
	}
}

// onNode, onIntroduce and onRelease run on the connection's reading
// goroutine.
func (s *session) onNode(path string) {
	var (
		id   domid.ID
		seq  uint64
		isID bool
	)
	if id, isID = node.FromPath(path); isID {
		seq = s.a.d.Hold(id) // as for /libxl/<domid>
	}
	s.record(func(w *sessionWork) {
		if isID {
			w.hold(id, seq)
		}
		if w.rescan {
			return
		}
		if _, below := strings.CutPrefix(path, node.Dir+"/"); !below || len(w.paths) >= maxNodePaths {
			// The directory itself (removed, perms changed), or a burst
			// of creates: rescan everything.
			w.rescan, w.paths = true, nil
			return
		}
		if w.paths == nil {
			w.paths = make(map[string]struct{})
		}
		w.paths[path] = struct{}{}
	})
}

func (s *session) onIntroduce(string) {
	s.record(func(w *sessionWork) { w.intro = true })
}

// onLibxl: /libxl/<domid> itself changed (created in the domain's first
// transaction, removed at its destruction, or its perms changed): the run
// loop looks at it again. Changes inside a known one (libxl's device
// records, the bulk of the events) change nothing and are skipped.
func (s *session) onLibxl(path string) {
	rest, below := strings.CutPrefix(path, libxlDir+"/")
	if !below {
		s.record(func(w *sessionWork) { w.relibxl, w.libxl = true, nil })
		return
	}
	name, more, deep := strings.Cut(rest, "/")
	id, err := domid.ParseGuest(name)
	if err != nil {
		return // no domain's: /libxl/0, or an entry libxl does not make
	}
	if deep && more != "" && s.a.domains.hasLibxl(id) {
		return
	}
	// Until the run loop has looked, id's events wait: if the domid was
	// reused, they are the new incarnation's, not the live worker's.
	seq := s.a.d.Hold(id)
	s.record(func(w *sessionWork) {
		w.hold(id, seq)
		if w.relibxl {
			return
		}
		if len(w.libxl) >= maxNodePaths {
			w.relibxl, w.libxl = true, nil
			return
		}
		if w.libxl == nil {
			w.libxl = make(map[domid.ID]struct{})
		}
		w.libxl[id] = struct{}{}
	})
}

// onBackend: a change under the backend directory may add or remove a
// frontend; the run loop reads the directory again. A new frontend's first
// device events wait for its worker in the dispatcher. A change inside a device of a frontend that has its
// directory already (a state change, the bulk of the events) adds or
// removes no frontend, and is neither held nor re-read: a frontend's
// directory goes only with an event for it or above it.
func (s *session) onBackend(path string) {
	if id, deep := frontendOf(path); deep && s.a.domains.isFrontend(id) {
		return
	}
	s.record(func(w *sessionWork) { w.backend = true })
}

// frontendOf parses backend/<type>/<frontend>/<more>: deep when <more> is
// there.
func frontendOf(path string) (id domid.ID, deep bool) {
	rest, ok := strings.CutPrefix(path, backendDir+"/")
	if !ok {
		return 0, false
	}
	parts := strings.SplitN(rest, "/", 3)
	if len(parts) < 3 || parts[2] == "" {
		return 0, false
	}
	id, err := domid.ParseGuest(parts[1])
	return id, err == nil
}

func (s *session) onRelease(string) {
	s.record(func(w *sessionWork) { w.release = true })
}

// record notes work for the run loop.
func (s *session) record(note func(*sessionWork)) {
	s.mu.Lock()
	note(&s.work)
	s.mu.Unlock()
	select {
	case s.wake <- struct{}{}:
	default: // already signalled: the run loop takes everything at once
	}
}

// hold notes the dispatcher's hold seq of id, for release once handled.
func (w *sessionWork) hold(id domid.ID, seq uint64) {
	if seq == 0 {
		return
	}
	if w.holds == nil {
		w.holds = make(map[domid.ID]uint64)
	}
	w.holds[id] = seq
}

// take returns the work recorded so far and forgets it.
func (s *session) take() sessionWork {
	s.mu.Lock()
	defer s.mu.Unlock()
	w := s.work
	s.work = sessionWork{}
	return w
}

// close removes the session's watches; a xenstored that does not answer
// (stopped, hung) delays it by unwatchTimeout at most, so Shutdown and a
// reconnection never hang on it.
func (s *session) close() {
	ctx, cancel := context.WithTimeout(context.Background(), unwatchTimeout)
	defer cancel()
	for _, w := range []*xenstore.Watch{s.nodes, s.intro, s.relea, s.libxl, s.backend} {
		if w != nil {
			w.Unwatch(ctx)
		}
	}
}

// run handles the agent's own watch events until the connection fails or
// ctx ends.
func (s *session) run(ctx context.Context) error {
	a := s.a
	// Holds this session took and did not release: the next session
	// reconciles. Deferred first, so it runs once the watches are gone and
	// no callback can take another.
	defer a.d.ReleaseAll()
	defer s.close()
	if a.canary != nil {
		// The canary runs on the session's client, so it times the path
		// the plugins' events take; it ends with the session.
		cctx, cancel := context.WithCancel(ctx)
		done := make(chan struct{})
		go func() {
			defer close(done)
			if err := a.canary.Run(cctx, s.c); err != nil && cctx.Err() == nil && s.c.Err() == nil {
				a.log.Error("canary stopped", "err", err)
			}
		}()
		defer func() { cancel(); <-done }()
	}
	tick := time.NewTicker(a.domains.staleTick())
	defer tick.Stop()
	// Handling that failed (a read refused, a rescan that found the
	// directory still changing under a burst of creates) would leave
	// workers wrong until some later event: the whole directory and the
	// introduced domains are rescanned instead, with a capped backoff,
	// until a rescan succeeds.
	var rescan <-chan time.Time
	backoff := minBackoff
	for {
		var err error
		retry := false
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-s.c.Done():
			return s.c.Err()
		case <-events(s.nodes): // yields nothing; closed when the watch ends
			return s.ended(s.nodes)
		case <-events(s.intro):
			return s.ended(s.intro)
		case <-events(s.relea):
			return s.ended(s.relea)
		case <-events(s.backend):
			return s.ended(s.backend)
		case <-events(s.libxl):
			return s.ended(s.libxl)
		case <-a.domains.stagedKick:
			// Domids whose events wait for a worker that has not come:
			// flushed at once if they are no domain.
			err = a.domains.checkStaged(ctx, s.c)
		case <-rescan:
			rescan = nil
			retry = true
			if err = a.fault("rescan"); err == nil {
				err = a.domains.reconcile(ctx, s.c)
			}
			if err == nil {
				backoff = minBackoff
			}
		case <-s.wake:
			w := s.take()
			err = s.handle(ctx, w)
			// Released even on failure: the rescan below puts the workers
			// right, and holding events until then would delay them.
			for id, seq := range w.holds {
				a.d.Release(id, seq)
			}
			retry = err != nil
		case <-tick.C:
			err = a.domains.checkStale(ctx, s.c)
			tick.Reset(a.domains.staleTick())
		}
		if err != nil {
			if s.c.Err() != nil {
				return s.c.Err()
			}
			if ctx.Err() != nil {
				return ctx.Err()
			}
			a.log.Error("xenstore request failed", "err", err)
			if retry && rescan == nil {
				a.log.Info("rescanning the mtwatch directory", "in", backoff)
				rescan = time.After(backoff)
				backoff = min(2*backoff, maxBackoff)
			}
		}
	}
}

// events is w's channel, nil (never ready) for a watch the session does
// not have in its mode.
func events(w *xenstore.Watch) <-chan xenstore.Event {
	if w == nil {
		return nil
	}
	return w.Events()
}

// fault is the test hook of nodeFault.
func (a *Agent) fault(op string) error {
	if f := a.nodeFault.Load(); f != nil {
		return (*f)(op)
	}
	return nil
}

// ended reports why one of the session's watches ended.
func (s *session) ended(w *xenstore.Watch) error {
	if err := s.c.Err(); err != nil {
		return err
	}
	return fmt.Errorf("watch %s ended: %w", w.Path(), w.Err())
}

// handle does the work recorded by the agent's watch events: node events
// (many in flight), a rescan, the introduced and released domains.
func (s *session) handle(ctx context.Context, w sessionWork) error {
	a := s.a
	var errs []error
	if err := a.fault("node"); err != nil && (w.rescan || len(w.paths) > 0) {
		return err
	}
	if (w.backend || w.relibxl) && !w.rescan {
		errs = append(errs, a.domains.reconcile(ctx, s.c))
	} else if len(w.libxl) > 0 {
		ids := make([]domid.ID, 0, len(w.libxl))
		for id := range w.libxl {
			ids = append(ids, id)
		}
		errs = append(errs, fanout.Each(ctx, len(ids), inflight, func(i int) error {
			return a.domains.checkLibxl(ctx, s.c, ids[i])
		}))
	}
	if w.rescan {
		a.log.Info("rescanning the mtwatch directory after a change of the directory itself or a burst of node events")
		errs = append(errs, a.domains.reconcile(ctx, s.c))
	} else if len(w.paths) > 0 {
		paths := make([]string, 0, len(w.paths))
		for p := range w.paths {
			paths = append(paths, p)
		}
		errs = append(errs, fanout.Each(ctx, len(paths), inflight, func(i int) error {
			return a.domains.nodeEvent(ctx, s.c, paths[i])
		}))
	}
	if w.intro {
		errs = append(errs, a.domains.introduced(ctx, s.c))
	}
	if w.release {
		errs = append(errs, a.domains.released(ctx, s.c))
		// A node left by a guest that shut itself down under xl goes now,
		// not after stale_grace, once the domain is provably dead.
		errs = append(errs, a.domains.reapDead(ctx, s.c))
	}
	return errors.Join(errs...)
}
