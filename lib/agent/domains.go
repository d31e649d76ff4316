package agent

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mtwatch/mtwatch/internal/fanout"
	"github.com/mtwatch/mtwatch/lib/control"
	"github.com/mtwatch/mtwatch/lib/dispatch"
	"github.com/mtwatch/mtwatch/lib/domid"
	"github.com/mtwatch/mtwatch/lib/node"
	"github.com/mtwatch/mtwatch/lib/xenstore"
)

// inflight bounds the XenStore requests one reconcile keeps in flight.
const inflight = 64

// maxIgnored bounds the memory of entries already logged as ignored.
const maxIgnored = 4096

// domainTable is what the agent knows of the guest domains, and the rule
// that gives them workers: it reads the nodes, the introductions or (in a
// driver domain) the frontends from a connection it is handed, creates and
// destroys the domain workers of the dispatcher to match, caches the
// domains' names for the control API and marks (and with reap_stale
// removes) stale nodes. Helpers whose name ends in Locked must be called
// with mu held.
type domainTable struct {
	log *slog.Logger
	d   *dispatch.Dispatcher
	// Fixed before the table is first used: with auto-detection, an
	// introduced domain has a worker; with useNode, a domain with a
	// trusted node; with useLibxl, a domain with a dom0-only /libxl/<domid>;
	// in a driver domain (self is not dom0) its frontends do.
	auto     bool
	useNode  bool
	useLibxl bool
	driver   bool
	self     domid.ID

	staleGrace atomic.Int64 // nanoseconds; 0 disables
	reapStale  atomic.Bool

	mu   sync.Mutex
	doms map[domid.ID]*domState
	// frontends mirrors the domains with st.backend, for the backend
	// watch's callback, which takes no lock; written under mu.
	frontends *[domid.FirstReserved]atomic.Bool
	// libxls mirrors st.libxl, for the /libxl watch's callback.
	libxls  *[domid.FirstReserved]atomic.Bool
	ignored map[string]string // entries of the mtwatch dir logged as ignored, with the reason
	// Domids whose events wait in the dispatcher for a worker (OnStage),
	// for the session to check: each queued at most once (stagedSet), so
	// the queue, which holds every domid, never blocks.
	stagedq    chan domid.ID
	stagedSet  *[domid.FirstReserved]atomic.Bool
	stagedKick chan struct{} // capacity 1
	nameq      chan domid.ID // domains whose name to read
	// nameKick: a domain was introduced or released; every known name is
	// read again at the name reader's next tick.
	nameKick atomic.Bool
}

// domState is what the agent knows of one guest domain.
type domState struct {
	node       bool
	uuid       string
	introduced bool
	backend    bool // a driver domain has a backend directory of this frontend
	name       string
	nameRead   bool
	nameQueued bool
	absent     time.Time // when a node was first seen without introduction
	stale      bool
	worker     bool // CreateDomain done and not undone
	// libxl: /libxl/<domid> exists, owned by dom0 with perms n0; vm: the
	// uuid of /local/domain/<domid>/vm, read with it.
	libxl bool
	vm    string
	// inc is the incarnation the worker was created for (lib/dispatch):
	// the VM uuid, "" when unknown.
	inc string
	// released: the agent saw the domain introduced, then not any more.
	released bool
}

// setIntroduced records whether the domain is introduced, and whether it
// was seen released (introduced, then not).
func (st *domState) setIntroduced(in bool) {
	if st.introduced != in {
		st.released = !in
	}
	st.introduced = in
}

// incarnation names the domain's incarnation: the node's VM uuid, else the
// one /local/domain/<domid>/vm names (libxl and xenopsd write it in the
// domain's first transaction), else unknown.
func (st *domState) incarnation() string {
	if st.uuid != "" {
		return st.uuid
	}
	return st.vm
}

func newDomainTable(log *slog.Logger, d *dispatch.Dispatcher, auto bool) *domainTable {
	return &domainTable{
		log:        log,
		d:          d,
		auto:       auto,
		useNode:    true,
		doms:       map[domid.ID]*domState{},
		frontends:  new([domid.FirstReserved]atomic.Bool),
		libxls:     new([domid.FirstReserved]atomic.Bool),
		ignored:    map[string]string{},
		nameq:      make(chan domid.ID, domid.FirstReserved),
		stagedq:    make(chan domid.ID, domid.FirstReserved),
		stagedSet:  new([domid.FirstReserved]atomic.Bool),
		stagedKick: make(chan struct{}, 1),
	}
}

// setSources fixes which of the node and /libxl sources give workers,
// before the table is used (agent.sources; introductions are auto).
func (t *domainTable) setSources(node, libxl bool) { t.useNode, t.useLibxl = node, libxl }

// hasLibxl: id has a trusted /libxl/<domid>. It takes no lock, for the
// /libxl watch's callback.
func (t *domainTable) hasLibxl(id domid.ID) bool { return id.IsGuest() && t.libxls[id].Load() }

// setSelf fixes the domain the agent runs in, before the table is used.
func (t *domainTable) setSelf(id domid.ID) { t.self, t.driver = id, id != domid.Dom0 }

// setStale applies agent.stale_grace and agent.reap_stale.
func (t *domainTable) setStale(grace time.Duration, reap bool) {
	t.staleGrace.Store(int64(grace))
	t.reapStale.Store(reap)
}

// isFrontend: a driver domain has a backend directory of id. It takes no
// lock, for the backend watch's callback.
func (t *domainTable) isFrontend(id domid.ID) bool { return t.frontends[id].Load() }

// nodeEvent handles an event of the mtwatch directory. The event only says
// "look again": what counts is what a read finds, since xenstored merges
// events and a node can come and go between the event and the read.
func (t *domainTable) nodeEvent(ctx context.Context, c *xenstore.Client, path string) error {
	if id, ok := node.FromPath(path); ok {
		return t.checkNode(ctx, c, id)
	}
	rest, below := strings.CutPrefix(path, node.Dir+"/")
	if !below {
		// The directory itself (removed, or its perms changed): rescan.
		return t.reconcile(ctx, c)
	}
	name, _, _ := strings.Cut(rest, "/")
	if _, err := domid.ParseGuest(name); err == nil {
		t.ignore(rest, "below a node (nodes have no children)")
		return nil
	}
	t.ignore(name, "not a guest domid")
	return nil
}

// ignore logs an entry of the directory that does not count, once per
// entry and reason.
func (t *domainTable) ignore(name, reason string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.ignoreLocked(name, reason)
}

func (t *domainTable) ignoreLocked(name, reason string) {
	if t.ignored[name] == reason {
		return
	}
	if len(t.ignored) >= maxIgnored {
		clear(t.ignored)
	}
	t.ignored[name] = reason
	t.log.Warn("ignoring entry of the mtwatch directory", "path", node.Dir+"/"+name, "reason", reason)
}

func (t *domainTable) forgetIgnored(name string) {
	t.mu.Lock()
	delete(t.ignored, name)
	t.mu.Unlock()
}

// checkNode re-reads the node of id and applies what it finds.
func (t *domainTable) checkNode(ctx context.Context, c *xenstore.Client, id domid.ID) error {
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
			t.ignore(id.String(), fmt.Sprintf("value is not a vm uuid (%d bytes)", len(n.UUID)))
			return nil
		}
		present = true
		t.forgetIgnored(id.String())
	case errors.Is(nerr, fs.ErrNotExist):
		t.forgetIgnored(id.String())
	case errors.Is(nerr, node.ErrUntrusted):
		t.ignore(id.String(), nerr.Error())
	default:
		return nerr
	}
	t.mu.Lock()
	st := t.doms[id]
	if st == nil {
		if !present && !introduced {
			t.mu.Unlock()
			return nil
		}
		st = &domState{}
		t.doms[id] = st
	}
	st.node = present
	st.setIntroduced(introduced)
	if present {
		st.uuid = n.UUID
	} else {
		st.uuid = ""
	}
	t.applyLocked(id, st)
	needName := !st.nameRead && t.doms[id] == st
	t.mu.Unlock()
	if needName {
		t.readNames([]domid.ID{id})
	}
	return nil
}

// validValue: a node's value is a VM uuid or empty. Anything else (only
// dom0 can write a trusted node, but a bug can) is logged and changes
// nothing.
func validValue(v string) bool { return v == "" || node.ValidUUID(v) }

// apply creates or destroys the worker of id as the rule wants, and forgets
// a domain that has neither node nor introduction.
func (t *domainTable) applyLocked(id domid.ID, st *domState) {
	want := (t.useNode && st.node) || (t.useLibxl && st.libxl) || (t.auto && st.introduced) || st.backend
	inc := st.incarnation()
	switch {
	case want && st.worker && inc != "" && st.inc != "" && inc != st.inc:
		// The domid was reused and the old domain's end went unseen
		// (xenstored merged the events): the new incarnation's worker
		// does not wait for the old one's handlers.
		if err := t.d.CreateIncarnation(id, inc); err != nil {
			t.log.Error("cannot create domain worker", "domid", id, "incarnation", inc, "err", err)
			return
		}
		st.inc = inc
		t.log.Info("domain worker of a new incarnation; the old one's handlers are cancelled after a grace", "domid", id, "uuid", inc)
	case want && !st.worker:
		if err := t.d.CreateIncarnation(id, inc); err != nil && !errors.Is(err, dispatch.ErrDomainExists) {
			t.log.Error("cannot create domain worker", "domid", id, "err", err)
			return
		}
		st.worker, st.inc = true, inc
		t.log.Debug("domain worker created", "domid", id, "node", st.node, "libxl", st.libxl, "introduced", st.introduced, "backend", st.backend, "uuid", inc)
	case !want && st.worker:
		if err := t.d.DestroyDomain(id); err != nil && !errors.Is(err, dispatch.ErrNoDomain) {
			t.log.Error("cannot destroy domain worker", "domid", id, "err", err)
			return
		}
		st.worker = false
		t.log.Debug("domain worker destroyed", "domid", id)
	}
	if !st.node || st.introduced {
		st.absent, st.stale = time.Time{}, false
	} else if st.absent.IsZero() {
		st.absent = time.Now()
	}
	if !st.node && !st.introduced && !st.backend && !st.worker && !st.libxl {
		delete(t.doms, id)
	}
}

// reconcile makes the workers match c's nodes and introduced domains: at
// start, after a reconnection and whenever the directory itself changed.
func (t *domainTable) reconcile(ctx context.Context, c *xenstore.Client) error {
	if t.driver {
		return t.reconcileBackends(ctx, c)
	}
	l, err := node.Scan(ctx, c)
	if err != nil {
		return err
	}
	for _, ig := range l.Ignored {
		t.ignore(ig.Name, ig.Reason)
	}
	nodes := make(map[domid.ID]string, len(l.Nodes))
	for _, n := range l.Nodes {
		nodes[n.Domid] = n.UUID
	}
	candidates, err := t.domainIDs(ctx, c)
	if err != nil {
		return err
	}
	libxls, err := t.scanLibxl(ctx, c)
	if err != nil {
		return err
	}
	t.mu.Lock()
	for id := range t.doms {
		candidates[id] = struct{}{}
	}
	t.mu.Unlock()
	for id := range nodes {
		candidates[id] = struct{}{}
	}
	for id := range libxls {
		candidates[id] = struct{}{}
	}
	intro, err := t.introducedAmong(ctx, c, candidates)
	if err != nil {
		return err
	}
	var names []domid.ID
	t.mu.Lock()
	for id := range candidates {
		uuid, hasNode := nodes[id]
		st := t.doms[id]
		if hasNode && !validValue(uuid) {
			t.ignoreLocked(id.String(), fmt.Sprintf("value is not a vm uuid (%d bytes)", len(uuid)))
			if st == nil {
				continue
			}
			hasNode, uuid = st.node, st.uuid // changes nothing
		}
		lx, hasLibxl := libxls[id]
		if st == nil {
			if !hasNode && !intro[id] && !hasLibxl {
				continue
			}
			st = &domState{}
			t.doms[id] = st
		}
		st.node, st.uuid = hasNode, uuid
		st.setIntroduced(intro[id])
		st.libxl, st.vm = hasLibxl, lx.vm
		t.libxls[id].Store(hasLibxl)
		t.applyLocked(id, st)
		if t.doms[id] == st && !st.nameRead {
			names = append(names, id)
		}
	}
	t.mu.Unlock()
	t.readNames(names)
	return nil
}

// reconcileBackends makes the workers of a driver domain match its
// frontends: the domids under backend/<type>/ of its home, whatever the
// type. Entries that are not guest domids (or are the driver domain
// itself) route nowhere and are skipped.
func (t *domainTable) reconcileBackends(ctx context.Context, c *xenstore.Client) error {
	types, err := c.Directory(ctx, backendDir)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	lists := make([][]string, len(types))
	err = fanout.Each(ctx, len(types), inflight, func(i int) error {
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
			if id, err := domid.ParseGuest(n); err == nil && id != t.self {
				found[id] = true
			}
		}
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	for id, st := range t.doms {
		if !found[id] {
			st.backend = false
			t.frontends[id].Store(false)
			t.applyLocked(id, st)
		}
	}
	for id := range found {
		st := t.doms[id]
		if st == nil {
			st = &domState{}
			t.doms[id] = st
		}
		st.backend = true
		t.applyLocked(id, st)
		t.frontends[id].Store(true) // once its worker exists
	}
	return nil
}

// domainIDs returns the guest domids under /local/domain.
func (t *domainTable) domainIDs(ctx context.Context, c *xenstore.Client) (map[domid.ID]struct{}, error) {
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
func (t *domainTable) introducedAmong(ctx context.Context, c *xenstore.Client, ids map[domid.ID]struct{}) (map[domid.ID]bool, error) {
	list := make([]domid.ID, 0, len(ids))
	for id := range ids {
		list = append(list, id)
	}
	res := make([]bool, len(list))
	err := fanout.Each(ctx, len(list), inflight, func(i int) (err error) {
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
func (t *domainTable) introduced(ctx context.Context, c *xenstore.Client) error {
	ids, err := t.domainIDs(ctx, c)
	if err != nil {
		return err
	}
	t.mu.Lock()
	for id, st := range t.doms {
		if st.introduced {
			delete(ids, id)
		} else {
			ids[id] = struct{}{}
		}
	}
	t.mu.Unlock()
	t.nameKick.Store(true)
	return t.setIntroduced(ctx, c, ids)
}

// released handles @releaseDomain: the domains known as introduced are
// asked about.
func (t *domainTable) released(ctx context.Context, c *xenstore.Client) error {
	ids := map[domid.ID]struct{}{}
	t.mu.Lock()
	for id, st := range t.doms {
		if st.introduced {
			ids[id] = struct{}{}
		}
	}
	t.mu.Unlock()
	t.nameKick.Store(true)
	return t.setIntroduced(ctx, c, ids)
}

func (t *domainTable) setIntroduced(ctx context.Context, c *xenstore.Client, ids map[domid.ID]struct{}) error {
	intro, err := t.introducedAmong(ctx, c, ids)
	if err != nil {
		return err
	}
	var names []domid.ID
	t.mu.Lock()
	for id, in := range intro {
		st := t.doms[id]
		if st == nil {
			if !in {
				continue
			}
			st = &domState{}
			t.doms[id] = st
		}
		if st.introduced != in {
			t.log.Debug("domain introduction changed", "domid", id, "introduced", in)
		}
		st.setIntroduced(in)
		t.applyLocked(id, st)
		if t.doms[id] == st && !st.nameRead {
			names = append(names, id)
		}
	}
	t.mu.Unlock()
	t.readNames(names)
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
func (t *domainTable) readNames(ids []domid.ID) {
	if t.driver {
		return // other domains' homes are not a driver domain's to read
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, id := range ids {
		if st := t.doms[id]; st != nil && !st.nameRead && !st.nameQueued {
			st.nameQueued = true
			t.nameq <- id
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
func (t *domainTable) refreshNames() {
	if t.driver {
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	for id, st := range t.doms {
		if !st.nameQueued {
			st.nameQueued = true
			t.nameq <- id
		}
	}
}

// nameReader caches /local/domain/<id>/name for the domains queued, many
// reads in flight at once, through the connection client returns (none
// while reconnecting), and queues every known domain again as nameRefresh
// says; until ctx ends.
func (t *domainTable) nameReader(ctx context.Context, client func() *xenstore.Client) {
	tick := time.NewTicker(nameKickTick)
	defer tick.Stop()
	ticks := 0 // since the last refresh
	batch := make([]domid.ID, 0, inflight*4)
	for {
		batch = batch[:0]
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
			ticks++
			if t.nameKick.Swap(false) || ticks >= int(nameRefresh/nameKickTick) {
				ticks = 0
				t.refreshNames()
			}
			continue
		case id := <-t.nameq:
			batch = append(batch, id)
		}
	more:
		for len(batch) < cap(batch) {
			select {
			case id := <-t.nameq:
				batch = append(batch, id)
			default:
				break more
			}
		}
		names := make([]string, len(batch))
		read := make([]bool, len(batch))
		if c := client(); c != nil {
			fanout.Each(ctx, len(batch), inflight, func(i int) error {
				v, err := c.Read(ctx, batch[i].Home()+"/name")
				if err == nil || errors.Is(err, fs.ErrNotExist) {
					names[i], read[i] = string(v), true
				}
				return nil
			})
		}
		t.mu.Lock()
		for i, id := range batch {
			if st := t.doms[id]; st != nil {
				st.nameQueued = false // a failed read is retried at the next reconcile
				if read[i] {
					st.name, st.nameRead = names[i], true
				}
			}
		}
		t.mu.Unlock()
	}
}

// staleTick is how often stale nodes are looked for.
func (t *domainTable) staleTick() time.Duration {
	g := time.Duration(t.staleGrace.Load())
	if g <= 0 {
		return time.Second
	}
	return min(max(g/4, 20*time.Millisecond), time.Second)
}

// checkStale marks nodes whose domain has not been introduced for longer
// than the grace period, and removes them with reap_stale. A node whose
// domain is introduced is never removed: xenstored is asked again right
// before.
func (t *domainTable) checkStale(ctx context.Context, c *xenstore.Client) error {
	if err := t.reapDead(ctx, c); err != nil {
		return err
	}
	grace := time.Duration(t.staleGrace.Load())
	reap := t.reapStale.Load()
	now := time.Now()
	type victim struct {
		id   domid.ID
		uuid string
	}
	var victims []victim
	t.mu.Lock()
	for id, st := range t.doms {
		if grace <= 0 || !st.node || st.introduced || st.absent.IsZero() {
			st.stale = false
			continue
		}
		if now.Sub(st.absent) < grace {
			continue
		}
		if !st.stale {
			st.stale = true
			t.log.Warn("stale mtwatch node: its domain has not been introduced for longer than the grace period",
				"domid", id, "path", node.Path(id), "grace", grace, "reap", reap)
		}
		if reap {
			victims = append(victims, victim{id, st.uuid})
		}
	}
	t.mu.Unlock()
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
		t.log.Warn("removed stale mtwatch node", "domid", v.id, "path", node.Path(v.id))
	}
	return nil
}

// counts returns how many guest domains the table knows, how many have a
// trusted node and how many of those are stale.
func (t *domainTable) counts() (domains, nodes, stale int) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, d := range t.doms {
		if d.node {
			nodes++
		}
		if d.stale {
			stale++
		}
	}
	return len(t.doms), nodes, stale
}

// entries returns the control API's domain list, dom0 first, then the
// guests the table or the dispatcher (byID) knows, and those with plugin
// stalls (ps: a hotplug remove script of a domain already gone still has
// its row), by domid; cur describes a running handler.
func (t *domainTable) entries(byID map[domid.ID]dispatch.DomainStats, ps map[domid.ID]pluginStalls, cur func(*dispatch.RunningHandler) *control.Current) []control.Domain {
	t.mu.Lock()
	out := make([]control.Domain, 0, len(t.doms)+1)
	out = append(out, t.entryLocked(domid.Dom0, byID[domid.Dom0], ps[domid.Dom0], cur))
	for id := range t.doms {
		out = append(out, t.entryLocked(id, byID[id], ps[id], cur))
	}
	for id, ds := range byID {
		if _, known := t.doms[id]; !known && id != domid.Dom0 {
			out = append(out, t.entryLocked(id, ds, ps[id], cur))
		}
	}
	for id, s := range ps {
		if _, known := t.doms[id]; known || id == domid.Dom0 {
			continue
		}
		if _, inDispatch := byID[id]; !inDispatch {
			out = append(out, t.entryLocked(id, dispatch.DomainStats{}, s, cur))
		}
	}
	t.mu.Unlock()
	slices.SortFunc(out[1:], func(x, y control.Domain) int { return cmp.Compare(x.Domid, y.Domid) })
	return out
}

// entry returns the control API's entry of id, if the table, the
// dispatcher (inDispatch) or a plugin stall (ps) knows it; dom0 always has
// one.
func (t *domainTable) entry(id domid.ID, ds dispatch.DomainStats, inDispatch bool, ps pluginStalls, cur func(*dispatch.RunningHandler) *control.Current) (control.Domain, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if _, known := t.doms[id]; id != domid.Dom0 && !known && !inDispatch && ps.n == 0 {
		return control.Domain{}, false
	}
	return t.entryLocked(id, ds, ps, cur), true
}

func (t *domainTable) entryLocked(id domid.ID, ds dispatch.DomainStats, ps pluginStalls, cur func(*dispatch.RunningHandler) *control.Current) control.Domain {
	d := control.Domain{
		Domid:            uint16(id),
		Worker:           control.WorkerNone,
		Queued:           ds.Queued,
		Dispatched:       ds.Dispatched,
		Processed:        ds.Processed,
		Coalesced:        ds.Coalesced,
		Filtered:         ds.Filtered,
		Dropped:          ds.Dropped,
		LastLatencyUS:    ds.LastLatency.Microseconds(),
		MaxLatencyUS:     ds.MaxLatency.Microseconds(),
		Current:          cur(ds.Current),
		Staged:           ds.Staged,
		PluginStalls:     ps.n,
		PluginStallAgeMS: ps.oldestMS,
	}
	switch {
	case id == domid.Dom0:
		d.Worker = control.WorkerDefault
	case ds.Worker:
		d.Worker = control.WorkerLive
	case ds.Draining > 0:
		d.Worker = control.WorkerDraining
	}
	if st := t.doms[id]; st != nil {
		d.Name, d.UUID, d.Node, d.Introduced, d.Stale = st.name, st.uuid, st.node, st.introduced, st.stale
		d.Backend, d.Libxl = st.backend, st.libxl
		if d.UUID == "" {
			d.UUID = st.vm
		}
	}
	if id == domid.Dom0 {
		d.Name = "Domain-0"
	}
	return d
}

// nameStalls fills in the names of the stalled handlers' domains.
func (t *domainTable) nameStalls(stalls []control.Stall) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for i := range stalls {
		if d := t.doms[domid.ID(stalls[i].Domid)]; d != nil {
			stalls[i].Name = d.name
		}
	}
}

// libxlPath is /libxl/<domid>.
func libxlPath(id domid.ID) string { return libxlDir + "/" + id.String() }

// libxlInfo is what a read of /libxl/<domid> found.
type libxlInfo struct {
	vm string // the VM uuid of /local/domain/<domid>/vm, "" when unknown
}

// readLibxl reads whether id has a trusted /libxl/<domid>: owned by dom0
// with no access for anybody else (perms exactly n0), as libxl__domain_make
// (xen tools/libs/light/libxl_create.c) and xenopsd's Domain.make (xen-api
// ocaml/xenopsd/xc/domain.ml) create it; a node a guest could write gives
// nothing. With it, the VM uuid that /local/domain/<domid>/vm names
// ("/vm/<uuid>", written in the same transaction).
func readLibxl(ctx context.Context, c *xenstore.Client, id domid.ID) (info libxlInfo, ok bool, err error) {
	var (
		vm   []byte
		verr error
		wg   sync.WaitGroup
	)
	wg.Add(1)
	go func() {
		defer wg.Done()
		vm, verr = c.Read(ctx, id.Home()+"/vm")
	}()
	perms, err := c.GetPerms(ctx, libxlPath(id))
	wg.Wait()
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return libxlInfo{}, false, nil
	case err != nil:
		return libxlInfo{}, false, err
	case len(perms) != 1 || perms[0] != (xenstore.Perm{Domid: domid.Dom0, Access: xenstore.AccessNone}):
		return libxlInfo{}, false, fmt.Errorf("%s has perms %s, want n0: %w", libxlPath(id), perms, node.ErrUntrusted)
	}
	if verr == nil {
		if u, found := strings.CutPrefix(string(vm), "/vm/"); found {
			if u, err := node.CanonicalUUID(u); err == nil {
				info.vm = u
			}
		}
	}
	return info, true, nil
}

// scanLibxl reads every /libxl/<domid> (dom0 with the libxl source only).
func (t *domainTable) scanLibxl(ctx context.Context, c *xenstore.Client) (map[domid.ID]libxlInfo, error) {
	if !t.useLibxl || t.driver {
		return nil, nil
	}
	names, err := c.Directory(ctx, libxlDir)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, err
	}
	var ids []domid.ID
	for _, n := range names {
		if id, err := domid.ParseGuest(n); err == nil {
			ids = append(ids, id)
		}
	}
	infos := make([]libxlInfo, len(ids))
	oks := make([]bool, len(ids))
	err = fanout.Each(ctx, len(ids), inflight, func(i int) error {
		var err error
		infos[i], oks[i], err = readLibxl(ctx, c, ids[i])
		if errors.Is(err, node.ErrUntrusted) {
			t.log.Warn("ignoring a /libxl entry that is not dom0's alone", "domid", ids[i], "err", err)
			return nil
		}
		return err
	})
	if err != nil {
		return nil, err
	}
	out := make(map[domid.ID]libxlInfo, len(ids))
	for i, id := range ids {
		if oks[i] {
			out[id] = infos[i]
		}
	}
	return out, nil
}

// checkLibxl re-reads /libxl/<domid> of id after an event for it.
func (t *domainTable) checkLibxl(ctx context.Context, c *xenstore.Client, id domid.ID) error {
	info, ok, err := readLibxl(ctx, c, id)
	if errors.Is(err, node.ErrUntrusted) {
		t.log.Warn("ignoring a /libxl entry that is not dom0's alone", "domid", id, "err", err)
		err = nil
	}
	if err != nil {
		return err
	}
	t.mu.Lock()
	st := t.doms[id]
	if st == nil {
		if !ok {
			t.mu.Unlock()
			t.libxls[id].Store(false)
			return nil
		}
		st = &domState{}
		t.doms[id] = st
	}
	st.libxl, st.vm = ok, info.vm
	t.libxls[id].Store(ok)
	t.applyLocked(id, st)
	needName := ok && !st.nameRead && t.doms[id] == st
	t.mu.Unlock()
	if needName {
		t.readNames([]domid.ID{id})
	}
	return nil
}

// staged is the dispatcher's OnStage: events of guest id wait for a worker.
// It runs with the dispatcher locked, so it only queues id for the session
// (checkStaged) and never blocks.
func (t *domainTable) staged(id domid.ID) {
	if !id.IsGuest() || t.stagedSet[id].Swap(true) {
		return
	}
	t.stagedq <- id // room for every domid, each queued once
	select {
	case t.stagedKick <- struct{}{}:
	default:
	}
}

// checkStaged decides, for each domid whose events wait for a worker, what
// becomes of them: nothing yet if a source gives it a worker (the worker
// promotes them when the source's event is handled); else they are flushed
// at once: if the domid is a domain all the same (/local/domain/<domid>,
// an untrusted /libxl/<domid>, or introduced, with that source off), they
// run in order on a worker of their own with a live context; if it is no
// domain (a dead domain's late events), with a cancelled context, as a
// destroyed domain's last events run. Never on the default worker.
func (t *domainTable) checkStaged(ctx context.Context, c *xenstore.Client) error {
	var ids []domid.ID
	for more := true; more; {
		select {
		case id := <-t.stagedq:
			t.stagedSet[id].Store(false) // staged again later: checked again
			ids = append(ids, id)
		default:
			more = false
		}
	}
	return fanout.Each(ctx, len(ids), inflight, func(i int) error {
		id := ids[i]
		t.mu.Lock()
		st := t.doms[id]
		worker := st != nil && st.worker
		hasNode := st != nil && st.node
		t.mu.Unlock()
		if worker {
			return nil
		}
		if t.driver {
			return t.checkStagedFrontend(ctx, c, id)
		}
		var (
			lx          bool
			lerr        error
			home, intro bool
			herr, ierr  error
			wg          sync.WaitGroup
		)
		wg.Add(2)
		go func() {
			defer wg.Done()
			_, lx, lerr = readLibxl(ctx, c, id)
		}()
		go func() {
			defer wg.Done()
			intro, ierr = c.IsDomainIntroduced(ctx, id)
		}()
		_, herr = c.GetPerms(ctx, id.Home())
		wg.Wait()
		untrusted := errors.Is(lerr, node.ErrUntrusted)
		if untrusted {
			lerr = nil
		}
		home = herr == nil
		if herr != nil && !errors.Is(herr, fs.ErrNotExist) {
			return herr
		}
		if err := errors.Join(lerr, ierr); err != nil {
			t.stagedRetry(id)
			return err
		}
		if (t.useNode && hasNode) || (t.useLibxl && lx) || (t.auto && intro) {
			return nil // its worker is on the way
		}
		exists := home || intro || lx || untrusted || hasNode
		n, err := t.d.FlushStaged(id, !exists)
		if n > 0 {
			t.log.Debug("staged events flushed: no worker source for the domid", "domid", id, "events", n, "domain_exists", exists)
		}
		return err
	})
}

// checkStagedFrontend is checkStaged in a driver domain, which may read
// neither other domains' homes nor /libxl, nor ask whether a domain is
// introduced: its only source of workers is its backend directory
// (reconcileBackends). A frontend that has a directory there has its
// worker on the way; events of one that has none (its last device gone,
// a late event of a start-up scan) run at once, with a live context: the
// driver domain cannot tell whether the domain still exists.
func (t *domainTable) checkStagedFrontend(ctx context.Context, c *xenstore.Client, id domid.ID) error {
	types, err := c.Directory(ctx, backendDir)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		t.stagedRetry(id)
		return err
	}
	for _, typ := range types {
		_, err := c.GetPerms(ctx, backendDir+"/"+typ+"/"+id.String())
		if err == nil {
			return nil
		}
		if !errors.Is(err, fs.ErrNotExist) {
			t.stagedRetry(id)
			return err
		}
	}
	n, err := t.d.FlushStaged(id, false)
	if n > 0 {
		t.log.Debug("staged events flushed: the frontend has no backend directory", "domid", id, "events", n)
	}
	return err
}

// stagedRetry queues id again after a failed check.
func (t *domainTable) stagedRetry(id domid.ID) { t.staged(id) }

// provablyDead reports whether guest id is gone for good: not introduced
// (the caller knows), and neither /libxl/<domid> nor /local/domain/<domid>
// exists: libxl removes both in devices_destroy_cb (xen
// tools/libs/light/libxl_domain.c) and xenopsd in Domain.destroy, and
// xenstored removes a released domain's own nodes.
func provablyDead(ctx context.Context, c *xenstore.Client, id domid.ID) (bool, error) {
	for _, p := range []string{libxlPath(id), id.Home()} {
		_, err := c.GetPerms(ctx, p)
		if err == nil {
			return false, nil
		}
		if !errors.Is(err, fs.ErrNotExist) {
			return false, err
		}
	}
	return true, nil
}

// reapDead removes at once the nodes of domains that are provably dead, and
// with them their workers (a guest shut down from inside under xl leaves its
// node behind: no hook runs): seen introduced, then released, and without
// /libxl/<domid> and /local/domain/<domid>. Any other node whose domain is
// not introduced (never seen introduced: not built yet, or released while
// the agent was not running) is left to stale_grace.
func (t *domainTable) reapDead(ctx context.Context, c *xenstore.Client) error {
	if t.driver {
		return nil
	}
	type cand struct {
		id   domid.ID
		uuid string
	}
	var cands []cand
	t.mu.Lock()
	for id, st := range t.doms {
		if st.node && st.released && !st.introduced && !st.libxl {
			cands = append(cands, cand{id, st.uuid})
		}
	}
	t.mu.Unlock()
	return fanout.Each(ctx, len(cands), inflight, func(i int) error {
		v := cands[i]
		in, err := c.IsDomainIntroduced(ctx, v.id)
		if err != nil || in {
			return err
		}
		dead, err := provablyDead(ctx, c, v.id)
		if err != nil || !dead {
			return err
		}
		if v.uuid != "" {
			_, err = node.DestroyIf(ctx, c, v.id, v.uuid)
		} else {
			err = node.Destroy(ctx, c, v.id)
		}
		if err != nil {
			return err
		}
		t.log.Info("removed the mtwatch node of a dead domain (released, no /libxl/<domid>, no /local/domain/<domid>)",
			"domid", v.id, "path", node.Path(v.id))
		t.mu.Lock()
		if st := t.doms[v.id]; st != nil && st.uuid == v.uuid {
			st.node, st.uuid = false, ""
			t.applyLocked(v.id, st)
		}
		t.mu.Unlock()
		return nil
	})
}
