package agent

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"strings"
	"sync"
	"time"

	"github.com/mtwatch/mtwatch/lib/dispatch"
	"github.com/mtwatch/mtwatch/lib/domid"
	"github.com/mtwatch/mtwatch/lib/node"
	"github.com/mtwatch/mtwatch/lib/xenstore"
)

// inflight bounds the XenStore requests one reconcile keeps in flight.
const inflight = 64

// maxIgnored bounds the memory of entries already logged as ignored.
const maxIgnored = 4096

// nodeEvent handles an event of the mtwatch directory. The event only says
// "look again": what counts is what a read finds, since xenstored merges
// events and a node can come and go between the event and the read.
func (a *Agent) nodeEvent(ctx context.Context, c *xenstore.Client, path string) error {
	if id, ok := node.FromPath(path); ok {
		return a.checkNode(ctx, c, id)
	}
	rest, below := strings.CutPrefix(path, node.Dir+"/")
	if !below {
		// The directory itself (removed, or its perms changed): rescan.
		return a.reconcile(ctx, c)
	}
	name, _, _ := strings.Cut(rest, "/")
	if _, err := domid.ParseGuest(name); err == nil {
		a.ignore(rest, "below a node (nodes have no children)")
		return nil
	}
	a.ignore(name, "not a guest domid")
	return nil
}

// ignore logs an entry of the directory that does not count, once per
// entry and reason.
func (a *Agent) ignore(name, reason string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.ignored[name] == reason {
		return
	}
	if len(a.ignored) >= maxIgnored {
		clear(a.ignored)
	}
	a.ignored[name] = reason
	a.log.Warn("ignoring entry of the mtwatch directory", "path", node.Dir+"/"+name, "reason", reason)
}

func (a *Agent) forgetIgnored(name string) {
	a.mu.Lock()
	delete(a.ignored, name)
	a.mu.Unlock()
}

// checkNode re-reads the node of id and applies what it finds.
func (a *Agent) checkNode(ctx context.Context, c *xenstore.Client, id domid.ID) error {
	var (
		n          node.Node
		nerr       error
		introduced bool
		ierr       error
	)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		introduced, ierr = c.IsDomainIntroduced(ctx, id)
	}()
	n, nerr = node.Get(ctx, c, id)
	wg.Wait()
	if ierr != nil {
		return ierr
	}
	present := false
	switch {
	case nerr == nil:
		if !validValue(n.UUID) {
			a.ignore(id.String(), fmt.Sprintf("value is not a vm uuid (%d bytes)", len(n.UUID)))
			return nil
		}
		present = true
		a.forgetIgnored(id.String())
	case errors.Is(nerr, fs.ErrNotExist):
		a.forgetIgnored(id.String())
	case errors.Is(nerr, node.ErrUntrusted):
		a.ignore(id.String(), nerr.Error())
	default:
		return nerr
	}
	a.mu.Lock()
	st := a.doms[id]
	if st == nil {
		if !present && !introduced {
			a.mu.Unlock()
			return nil
		}
		st = &domState{}
		a.doms[id] = st
	}
	st.node, st.introduced = present, introduced
	if present {
		st.uuid = n.UUID
	} else {
		st.uuid = ""
	}
	a.apply(id, st)
	needName := !st.nameRead && a.doms[id] == st
	a.mu.Unlock()
	if needName {
		a.readNames(ctx, c, []domid.ID{id})
	}
	return nil
}

// validValue: a node's value is a VM uuid or empty. Anything else (only
// dom0 can write a trusted node, but a bug can) is logged and changes
// nothing.
func validValue(v string) bool { return v == "" || node.ValidUUID(v) }

// apply creates or destroys the worker of id as the rule wants, and forgets
// a domain that has neither node nor introduction. Called with a.mu held.
func (a *Agent) apply(id domid.ID, st *domState) {
	want := st.node || (a.auto && st.introduced) || st.backend
	switch {
	case want && !st.worker:
		if err := a.d.CreateDomain(id); err != nil && !errors.Is(err, dispatch.ErrDomainExists) {
			a.log.Error("cannot create domain worker", "domid", id, "err", err)
			return
		}
		st.worker = true
		a.log.Debug("domain worker created", "domid", id, "node", st.node, "introduced", st.introduced, "backend", st.backend)
	case !want && st.worker:
		if err := a.d.DestroyDomain(id); err != nil && !errors.Is(err, dispatch.ErrNoDomain) {
			a.log.Error("cannot destroy domain worker", "domid", id, "err", err)
			return
		}
		st.worker = false
		a.log.Debug("domain worker destroyed", "domid", id)
	}
	if !st.node || st.introduced {
		st.absent, st.stale = time.Time{}, false
	} else if st.absent.IsZero() {
		st.absent = time.Now()
	}
	if !st.node && !st.introduced && !st.backend && !st.worker {
		delete(a.doms, id)
	}
}

// reconcile makes the workers match c's nodes and introduced domains: at
// start, after a reconnection and whenever the directory itself changed.
func (a *Agent) reconcile(ctx context.Context, c *xenstore.Client) error {
	if a.driver {
		return a.reconcileBackends(ctx, c)
	}
	l, err := node.Scan(ctx, c)
	if err != nil {
		return err
	}
	for _, ig := range l.Ignored {
		a.ignore(ig.Name, ig.Reason)
	}
	nodes := make(map[domid.ID]string, len(l.Nodes))
	for _, n := range l.Nodes {
		nodes[n.Domid] = n.UUID
	}
	candidates, err := a.domainIDs(ctx, c)
	if err != nil {
		return err
	}
	a.mu.Lock()
	for id := range a.doms {
		candidates[id] = struct{}{}
	}
	a.mu.Unlock()
	for id := range nodes {
		candidates[id] = struct{}{}
	}
	intro, err := a.introducedAmong(ctx, c, candidates)
	if err != nil {
		return err
	}
	var names []domid.ID
	a.mu.Lock()
	for id := range candidates {
		uuid, hasNode := nodes[id]
		st := a.doms[id]
		if hasNode && !validValue(uuid) {
			a.mu.Unlock()
			a.ignore(id.String(), fmt.Sprintf("value is not a vm uuid (%d bytes)", len(uuid)))
			a.mu.Lock()
			if st == nil {
				continue
			}
			hasNode, uuid = st.node, st.uuid // changes nothing
		}
		if st == nil {
			if !hasNode && !intro[id] {
				continue
			}
			st = &domState{}
			a.doms[id] = st
		}
		st.node, st.uuid, st.introduced = hasNode, uuid, intro[id]
		a.apply(id, st)
		if a.doms[id] == st && !st.nameRead {
			names = append(names, id)
		}
	}
	a.mu.Unlock()
	a.readNames(ctx, c, names)
	return nil
}

// reconcileBackends makes the workers of a driver domain match its
// frontends: the domids under backend/<type>/ of its home, whatever the
// type. Entries that are not guest domids (or are the driver domain
// itself) route nowhere and are skipped.
func (a *Agent) reconcileBackends(ctx context.Context, c *xenstore.Client) error {
	types, err := c.Directory(ctx, backendDir)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	lists := make([][]string, len(types))
	err = forEach(ctx, len(types), func(i int) error {
		l, err := c.Directory(ctx, backendDir+"/"+types[i])
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
		lists[i] = l
		return nil
	})
	if err != nil {
		return err
	}
	found := map[domid.ID]bool{}
	for _, l := range lists {
		for _, n := range l {
			if id, err := domid.ParseGuest(n); err == nil && id != a.domid {
				found[id] = true
			}
		}
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	for id, st := range a.doms {
		if !found[id] {
			st.backend = false
			a.frontends[id].Store(false)
			a.apply(id, st)
		}
	}
	for id := range found {
		st := a.doms[id]
		if st == nil {
			st = &domState{}
			a.doms[id] = st
		}
		st.backend = true
		a.apply(id, st)
		a.frontends[id].Store(true) // once its worker exists
	}
	return nil
}

// domainIDs returns the guest domids under /local/domain.
func (a *Agent) domainIDs(ctx context.Context, c *xenstore.Client) (map[domid.ID]struct{}, error) {
	names, err := c.Directory(ctx, "/local/domain")
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, err
	}
	ids := make(map[domid.ID]struct{}, len(names))
	for _, n := range names {
		if id, err := domid.ParseGuest(n); err == nil {
			ids[id] = struct{}{}
		}
	}
	return ids, nil
}

// introducedAmong asks xenstored which of ids are introduced, many requests
// in flight at once.
func (a *Agent) introducedAmong(ctx context.Context, c *xenstore.Client, ids map[domid.ID]struct{}) (map[domid.ID]bool, error) {
	list := make([]domid.ID, 0, len(ids))
	for id := range ids {
		list = append(list, id)
	}
	res := make([]bool, len(list))
	err := forEach(ctx, len(list), func(i int) (err error) {
		res[i], err = c.IsDomainIntroduced(ctx, list[i])
		return err
	})
	if err != nil {
		return nil, err
	}
	out := make(map[domid.ID]bool, len(list))
	for i, id := range list {
		out[id] = res[i]
	}
	return out, nil
}

// introduced handles @introduceDomain: the domains under /local/domain and
// the nodes' domains not known as introduced are asked about.
func (a *Agent) introduced(ctx context.Context, c *xenstore.Client) error {
	ids, err := a.domainIDs(ctx, c)
	if err != nil {
		return err
	}
	a.mu.Lock()
	for id, st := range a.doms {
		if st.introduced {
			delete(ids, id)
		} else {
			ids[id] = struct{}{}
		}
	}
	a.mu.Unlock()
	a.nameKick.Store(true)
	return a.setIntroduced(ctx, c, ids)
}

// released handles @releaseDomain: the domains known as introduced are
// asked about.
func (a *Agent) released(ctx context.Context, c *xenstore.Client) error {
	ids := map[domid.ID]struct{}{}
	a.mu.Lock()
	for id, st := range a.doms {
		if st.introduced {
			ids[id] = struct{}{}
		}
	}
	a.mu.Unlock()
	a.nameKick.Store(true)
	return a.setIntroduced(ctx, c, ids)
}

func (a *Agent) setIntroduced(ctx context.Context, c *xenstore.Client, ids map[domid.ID]struct{}) error {
	intro, err := a.introducedAmong(ctx, c, ids)
	if err != nil {
		return err
	}
	var names []domid.ID
	a.mu.Lock()
	for id, in := range intro {
		st := a.doms[id]
		if st == nil {
			if !in {
				continue
			}
			st = &domState{}
			a.doms[id] = st
		}
		if st.introduced != in {
			a.log.Debug("domain introduction changed", "domid", id, "introduced", in)
		}
		st.introduced = in
		a.apply(id, st)
		if a.doms[id] == st && !st.nameRead {
			names = append(names, id)
		}
	}
	a.mu.Unlock()
	a.readNames(ctx, c, names)
	return nil
}

// nameRefresh is how often the names of all known domains are read again:
// `xl rename` writes /local/domain/<id>/name and fires no event the agent
// watches. After @introduceDomain or @releaseDomain (a toolstack at work)
// they are read again at the next nameKickTick, so at most once per tick
// however many domains a host starts at once.
const (
	nameRefresh  = 10 * time.Second
	nameKickTick = time.Second
)

// readNames queues ids for the name reader: the control API answers from
// memory, never from XenStore, and names are not worth delaying a worker
// for. Each id is queued at most once (nameQueued), and the queue holds
// every possible domid, so it never blocks.
func (a *Agent) readNames(_ context.Context, _ *xenstore.Client, ids []domid.ID) {
	if a.driver {
		return // other domains' homes are not a driver domain's to read
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, id := range ids {
		if st := a.doms[id]; st != nil && !st.nameRead && !st.nameQueued {
			st.nameQueued = true
			a.nameq <- id
		}
	}
}

// refreshNames queues every known domain for the name reader, read or not,
// each at most once: a renamed domain shows its new name within
// nameRefresh, or within nameKickTick of a domain's introduction or
// release. Polling rather than a watch per domain's name: a guest
// owns /local/domain/<id> and could flood such a watch, which would also
// have to be registered again on every reconnection; reading every known
// name once per 10 s is at most 32,751 pipelined reads.
func (a *Agent) refreshNames() {
	if a.driver {
		return
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	for id, st := range a.doms {
		if !st.nameQueued {
			st.nameQueued = true
			a.nameq <- id
		}
	}
}

// nameReader caches /local/domain/<id>/name for the domains queued, many
// reads in flight at once, and queues every known domain again as
// nameRefresh says.
func (a *Agent) nameReader() {
	defer a.wg.Done()
	tick := time.NewTicker(nameKickTick)
	defer tick.Stop()
	ticks := 0 // since the last refresh
	batch := make([]domid.ID, 0, inflight*4)
	for {
		batch = batch[:0]
		select {
		case <-a.runCtx.Done():
			return
		case <-tick.C:
			ticks++
			if a.nameKick.Swap(false) || ticks >= int(nameRefresh/nameKickTick) {
				ticks = 0
				a.refreshNames()
			}
			continue
		case id := <-a.nameq:
			batch = append(batch, id)
		}
	more:
		for len(batch) < cap(batch) {
			select {
			case id := <-a.nameq:
				batch = append(batch, id)
			default:
				break more
			}
		}
		names := make([]string, len(batch))
		read := make([]bool, len(batch))
		if c := a.client(); c != nil {
			forEach(a.runCtx, len(batch), func(i int) error {
				v, err := c.Read(a.runCtx, "/local/domain/"+batch[i].String()+"/name")
				if err == nil || errors.Is(err, fs.ErrNotExist) {
					names[i], read[i] = string(v), true
				}
				return nil
			})
		}
		a.mu.Lock()
		for i, id := range batch {
			if st := a.doms[id]; st != nil {
				st.nameQueued = false // a failed read is retried at the next reconcile
				if read[i] {
					st.name, st.nameRead = names[i], true
				}
			}
		}
		a.mu.Unlock()
	}
}

// staleTick is how often stale nodes are looked for.
func (a *Agent) staleTick() time.Duration {
	g := time.Duration(a.staleGrace.Load())
	if g <= 0 {
		return time.Second
	}
	return min(max(g/4, 20*time.Millisecond), time.Second)
}

// checkStale marks nodes whose domain has not been introduced for longer
// than the grace period, and removes them with reap_stale. A node whose
// domain is introduced is never removed: xenstored is asked again right
// before.
func (a *Agent) checkStale(ctx context.Context, c *xenstore.Client) error {
	grace := time.Duration(a.staleGrace.Load())
	reap := a.reapStale.Load()
	now := time.Now()
	type victim struct {
		id   domid.ID
		uuid string
	}
	var victims []victim
	a.mu.Lock()
	for id, st := range a.doms {
		if grace <= 0 || !st.node || st.introduced || st.absent.IsZero() {
			st.stale = false
			continue
		}
		if now.Sub(st.absent) < grace {
			continue
		}
		if !st.stale {
			st.stale = true
			a.log.Warn("stale mtwatch node: its domain has not been introduced for longer than the grace period",
				"domid", id, "path", node.Path(id), "grace", grace, "reap", reap)
		}
		if reap {
			victims = append(victims, victim{id, st.uuid})
		}
	}
	a.mu.Unlock()
	for _, v := range victims {
		in, err := c.IsDomainIntroduced(ctx, v.id)
		if err != nil {
			return err
		}
		if in {
			continue // the introduce watch will catch up
		}
		if v.uuid != "" {
			_, err = node.DestroyIf(ctx, c, v.id, v.uuid)
		} else {
			err = node.Destroy(ctx, c, v.id)
		}
		if err != nil {
			return err
		}
		a.log.Warn("removed stale mtwatch node", "domid", v.id, "path", node.Path(v.id))
	}
	return nil
}

// forEach calls fn(0..n-1) with at most inflight calls at once; the first
// error stops new calls and is returned.
func forEach(ctx context.Context, n int, fn func(i int) error) error {
	if n == 0 {
		return nil
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	next := make(chan int)
	var (
		wg    sync.WaitGroup
		once  sync.Once
		first error
	)
	for range min(n, inflight) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				if err := fn(i); err != nil {
					once.Do(func() { first = err; cancel() })
				}
			}
		}()
	}
feed:
	for i := range n {
		select {
		case next <- i:
		case <-ctx.Done():
			break feed
		}
	}
	close(next)
	wg.Wait()
	if first == nil && ctx.Err() != nil {
		return ctx.Err()
	}
	return first
}
