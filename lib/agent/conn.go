package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/mtwatch/mtwatch/lib/control"
	"github.com/mtwatch/mtwatch/lib/dispatch"
	"github.com/mtwatch/mtwatch/lib/xenstore"
	"github.com/mtwatch/mtwatch/plugin"
)

// Reconnection backoff bounds.
const (
	minBackoff = 100 * time.Millisecond
	maxBackoff = 5 * time.Second
)

// connection is the agent's link to xenstored: it dials with backoff, holds
// the current client (none while reconnecting) and what the control API
// says of it, and keeps the plugins' XenStore watches registered on
// whichever client is current.
type connection struct {
	log    *slog.Logger
	dial   func(ctx context.Context) (*xenstore.Client, error)
	notify func(state string)
	// event receives the plugins' watch events, on the client's reading
	// goroutine (Agent.dispatch).
	event func(path, token string)

	// mu guards the client and the plugin watches, so that a watch added
	// while the agent reconnects is registered exactly once.
	mu         sync.Mutex
	cur        *xenstore.Client
	since      time.Time
	reconnects uint64
	lastErr    string
	watches    map[string]*pluginWatch // by token
	closing    bool                    // shutting down: no new XenStore watches
	tokenSeq   map[string]int          // per plugin
}

func newConnection(log *slog.Logger, dial func(context.Context) (*xenstore.Client, error), notify func(string), event func(path, token string)) *connection {
	return &connection{
		log: log, dial: dial, notify: notify, event: event,
		watches:  map[string]*pluginWatch{},
		tokenSeq: map[string]int{},
	}
}

// dialer returns the dial function of a configured xenstored path (empty:
// the default).
func dialer(path string) func(context.Context) (*xenstore.Client, error) {
	return func(ctx context.Context) (*xenstore.Client, error) {
		var opts []xenstore.Option
		if path != "" {
			opts = append(opts, xenstore.WithPath(path))
		}
		return xenstore.Dial(ctx, opts...)
	}
}

// dialBackoff dials with capped exponential backoff until it succeeds or
// ctx ends.
func (cn *connection) dialBackoff(ctx context.Context) (*xenstore.Client, error) {
	wait := minBackoff
	for attempt := 0; ; attempt++ {
		c, err := cn.dial(ctx)
		if err == nil {
			return c, nil
		}
		cn.mu.Lock()
		cn.lastErr = err.Error()
		cn.mu.Unlock()
		if attempt == 0 {
			cn.log.Warn("cannot connect to xenstored; retrying", "err", err)
			cn.notify("STATUS=xenstored unreachable: " + err.Error())
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("agent: connect to xenstored: %w (last error: %v)", ctx.Err(), err)
		case <-time.After(wait):
		}
		wait = min(wait*2, maxBackoff)
	}
}

// adopt makes c the current client and returns the plugin watches to
// register on it.
func (cn *connection) adopt(c *xenstore.Client, reconnect bool) []*pluginWatch {
	cn.mu.Lock()
	defer cn.mu.Unlock()
	cn.cur = c
	cn.since = time.Now()
	cn.lastErr = ""
	if reconnect {
		cn.reconnects++
	}
	pws := make([]*pluginWatch, 0, len(cn.watches))
	for _, w := range cn.watches {
		pws = append(pws, w)
	}
	return pws
}

// forget closes c, which is no longer current if it was, and records why.
func (cn *connection) forget(c *xenstore.Client, why error) {
	cn.mu.Lock()
	if cn.cur == c {
		cn.cur = nil
	}
	cn.lastErr = why.Error()
	cn.mu.Unlock()
	c.Close()
}

// client returns the current client, nil while reconnecting.
func (cn *connection) client() *xenstore.Client {
	cn.mu.Lock()
	defer cn.mu.Unlock()
	return cn.cur
}

// status is what the control API says of the connection.
func (cn *connection) status(path string) control.XenstoreStatus {
	cn.mu.Lock()
	defer cn.mu.Unlock()
	s := control.XenstoreStatus{
		Path:       path,
		State:      "disconnected",
		Reconnects: cn.reconnects,
		LastError:  cn.lastErr,
	}
	if cn.cur != nil {
		s.State = "connected"
		s.ConnectedSince = cn.since
		// The socket or device that answered, when none was configured.
		if p := cn.cur.Path(); p != "" {
			s.Path = p
		}
	}
	if s.Path == "" {
		// Not connected and none configured: the candidates, in the order
		// they are tried.
		s.Path = strings.Join(xenstore.Paths(), ",")
	}
	return s
}

// close stops registering XenStore watches and returns those of the
// plugins, for the caller to remove; the client stays for the plugins'
// Stop until closeClient.
func (cn *connection) close() []*xenstore.Watch {
	cn.mu.Lock()
	defer cn.mu.Unlock()
	cn.closing = true
	var xws []*xenstore.Watch
	for _, w := range cn.watches {
		if w.xw != nil {
			xws = append(xws, w.xw)
			w.xw = nil
		}
	}
	return xws
}

// closeClient closes the current client, at the very end of a shutdown.
func (cn *connection) closeClient() {
	cn.mu.Lock()
	defer cn.mu.Unlock()
	if cn.cur != nil {
		cn.cur.Close()
	}
}

// newToken returns a token for a watch of plugin name: "<plugin>/<n>",
// unused by any watch the connection has.
func (cn *connection) newToken(name string) string {
	cn.mu.Lock()
	defer cn.mu.Unlock()
	for {
		cn.tokenSeq[name]++
		token := fmt.Sprintf("%s/%d", name, cn.tokenSeq[name])
		if _, dup := cn.watches[token]; !dup {
			return token
		}
	}
}

// add keeps w registered from now on, on the current client (registered
// now, if there is one) and on every later one.
func (cn *connection) add(ctx context.Context, w *pluginWatch) error {
	cn.mu.Lock()
	cn.watches[w.token] = w
	c := cn.cur
	cn.mu.Unlock()
	if c == nil {
		return nil
	}
	if err := cn.register(ctx, c, w); err != nil && !connLost(err) {
		return err
	}
	return nil
}

// watchesOf returns the watches of plugin p; nil p: every plugin's.
func (cn *connection) watchesOf(p *hostedPlugin) []*pluginWatch {
	cn.mu.Lock()
	defer cn.mu.Unlock()
	var mine []*pluginWatch
	for _, w := range cn.watches {
		if p == nil || w.plugin == p {
			mine = append(mine, w)
		}
	}
	return mine
}

// connLost: the registration will be made again on the next connection.
func connLost(err error) bool {
	return errors.Is(err, xenstore.ErrConnectionLost) || errors.Is(err, xenstore.ErrClosed)
}

// pluginWatch is a plugin's watch: the dispatcher registration, and the
// XenStore watch of the current connection.
type pluginWatch struct {
	cn          *connection
	plugin      *hostedPlugin
	path, token string
	reg         *dispatch.Registration
	skipInitial bool // dispatch.WatchConfig.SkipInitial

	// Under cn.mu.
	xw      *xenstore.Watch
	on      *xenstore.Client // the connection xw is (being) registered on
	removed bool
}

// register registers w's XenStore watch on c, its events handed to the
// dispatcher on the goroutine that reads the
// connection (xenstore.WatchFunc): no queue and no goroutine hand-off
// between xenstored and the domain queues, which took the agent's event
// rate from half the bare libxenstore watcher's (docs/performance.md).
// Dispatch never waits for a handler, so the
// connection's replies keep flowing to the handlers that make calls. A
// WatchFunc watch does not overflow: the dispatcher's per-domain queues are
// the only bound, and report their own overflows. An event of a connection
// that was just replaced is still dispatched: it only means "look again".
//
// A plugin's Watch and a reconnection can both try to register w on the
// same new connection; the first claims it (w.on), so the second neither
// fails with EEXIST nor registers twice.
func (cn *connection) register(ctx context.Context, c *xenstore.Client, w *pluginWatch) error {
	cn.mu.Lock()
	if w.on == c || w.removed || cn.closing {
		cn.mu.Unlock()
		return nil
	}
	w.on = c
	cn.mu.Unlock()
	token, event := w.token, cn.event
	// xenstored sends the initial event while it handles the WATCH, before
	// any later change can fire the new watch (C xenstored: do_watch in
	// tools/xenstore/xenstored_watch.c, send_ack then send_event), and the
	// connection keeps order: the registration's first event is the
	// initial one. Only the connection's reader touches first.
	first := w.skipInitial
	xw, err := c.WatchFunc(ctx, w.path, token, func(ev xenstore.Event) {
		if first {
			first = false
			if ev.Path == w.path {
				return
			}
		}
		event(ev.Path, token)
	})
	cn.mu.Lock()
	if err != nil {
		if w.on == c {
			w.on = nil
		}
		cn.mu.Unlock()
		return err
	}
	if w.removed || cn.closing || cn.cur != c || w.on != c {
		cn.mu.Unlock()
		unwatch(xw)
		return nil
	}
	w.xw = xw
	cn.mu.Unlock()
	return nil
}

// unwatchTimeout bounds the removal of a watch nobody waits for.
const unwatchTimeout = time.Second

// unwatch removes xw, waiting unwatchTimeout at most for xenstored.
func unwatch(xw *xenstore.Watch) {
	ctx, cancel := context.WithTimeout(context.Background(), unwatchTimeout)
	defer cancel()
	xw.Unwatch(ctx)
}

// Unwatch implements plugin.Watch.
func (w *pluginWatch) Unwatch(ctx context.Context) error {
	err := w.unwatchXS(ctx)
	return errors.Join(err, w.reg.Unregister(ctx))
}

// Detach implements plugin.Detacher.
func (w *pluginWatch) Detach(ctx context.Context) error {
	err := w.unwatchXS(ctx)
	w.reg.Detach()
	return err
}

// unwatchXS removes w's XenStore watch.
func (w *pluginWatch) unwatchXS(ctx context.Context) error {
	cn := w.cn
	cn.mu.Lock()
	if cn.watches[w.token] == w {
		delete(cn.watches, w.token)
	}
	w.removed = true
	xw := w.xw
	w.xw = nil
	cn.mu.Unlock()
	var err error
	if xw != nil {
		if e := xw.Unwatch(ctx); e != nil && !connLost(e) && !errors.Is(e, xenstore.ErrUnwatched) {
			err = e
		}
	}
	return err
}

var _ plugin.Detacher = (*pluginWatch)(nil)

// Post implements plugin.Watch.
func (w *pluginWatch) Post(path string) error { return w.reg.Post(path) }

func (w *pluginWatch) Path() string               { return w.path }
func (w *pluginWatch) Token() string              { return w.token }
func (w *pluginWatch) Stats() dispatch.WatchStats { return w.reg.Stats() }

// store is the plugins' XenStore handle: whatever client is current.
type store struct{ cn *connection }

var errReconnecting = fmt.Errorf("%w: mtwatchd is reconnecting to xenstored", xenstore.ErrClosed)

func (s store) c() (*xenstore.Client, error) {
	if c := s.cn.client(); c != nil {
		return c, nil
	}
	return nil, errReconnecting
}

// wrap makes an error of a lost connection satisfy errors.Is(err,
// xenstore.ErrClosed), as plugin.Store promises.
func wrap(err error) error {
	if err != nil && errors.Is(err, xenstore.ErrConnectionLost) && !errors.Is(err, xenstore.ErrClosed) {
		return fmt.Errorf("%w: %w", xenstore.ErrClosed, err)
	}
	return err
}

func (s store) Read(ctx context.Context, path string) ([]byte, error) {
	c, err := s.c()
	if err != nil {
		return nil, err
	}
	v, err := c.Read(ctx, path)
	return v, wrap(err)
}

func (s store) Write(ctx context.Context, path string, value []byte) error {
	c, err := s.c()
	if err != nil {
		return err
	}
	return wrap(c.Write(ctx, path, value))
}

func (s store) Mkdir(ctx context.Context, path string) error {
	c, err := s.c()
	if err != nil {
		return err
	}
	return wrap(c.Mkdir(ctx, path))
}

func (s store) Rm(ctx context.Context, path string) error {
	c, err := s.c()
	if err != nil {
		return err
	}
	return wrap(c.Rm(ctx, path))
}

func (s store) Directory(ctx context.Context, path string) ([]string, error) {
	c, err := s.c()
	if err != nil {
		return nil, err
	}
	v, err := c.Directory(ctx, path)
	return v, wrap(err)
}

func (s store) GetPerms(ctx context.Context, path string) (xenstore.Perms, error) {
	c, err := s.c()
	if err != nil {
		return nil, err
	}
	v, err := c.GetPerms(ctx, path)
	return v, wrap(err)
}

func (s store) SetPerms(ctx context.Context, path string, perms xenstore.Perms) error {
	c, err := s.c()
	if err != nil {
		return err
	}
	return wrap(c.SetPerms(ctx, path, perms))
}

func (s store) Transaction(ctx context.Context, fn func(tx *xenstore.Tx) error) error {
	c, err := s.c()
	if err != nil {
		return err
	}
	return wrap(c.Transaction(ctx, fn))
}

func (s store) Pipeline(ctx context.Context, ops []xenstore.Op) error {
	c, err := s.c()
	if err != nil {
		for i := range ops {
			ops[i].Err = err
		}
		return err
	}
	err = c.Pipeline(ctx, ops)
	for i := range ops {
		ops[i].Err = wrap(ops[i].Err)
	}
	return wrap(err)
}
