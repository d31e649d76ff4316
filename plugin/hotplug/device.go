package hotplug

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/mtwatch/mtwatch/lib/xenstore"
)

// This file is a device's state machine, libxl's rules run on the worker
// of the device's domain: add at InitWait once, remove at Closed with
// online 0 or when the device is gone, if its add ran. Each decision is
// taken on the worker; the script it starts runs off the worker (runner.go),
// and its end comes back as the domain's next event (Watch.Post), so a
// device's actions run one after another and in order while the devices of
// a domain, and of all domains, run side by side.

// device is what the plugin remembers of one incarnation of a device.
type device struct {
	k devKey
	// inc is the incarnation's id, the marker written at its add; "" for a
	// device found connected without one (set up before the plugin ran).
	inc   string
	added bool // its add ran or runs (or it was found with hotplug-status)
	nodes nodes
	job   *job // queued, running, or finished and not yet looked at
}

// job is one action on a device: an add or a remove, each of one or two
// executions of the script, or the wait for a script an earlier mtwatchd
// left running.
type job struct {
	k     devKey
	add   bool
	inc   string
	nodes nodes
	adopt *record // a script left running before a restart
	log   *slog.Logger

	queued   bool      // waiting for admission; under pool.mu
	enqueued time.Time // when it was submitted

	// Under Plugin.mu.
	running bool
	started time.Time
	prog    string
	action  string
	pid     int // the running execution's process (group) id, 0 before it starts
	// confinement of a script left running by an earlier mtwatchd: its
	// command cgroup or, failing that, its process group.
	confinement string
	finished    bool
	ran         bool // a script ran (an add: the device needs its remove)
	stopped     bool // ended because mtwatchd stops: nothing was recorded
}

// view is what XenStore says of a device now.
type view struct {
	exists, hasState, hasOnline, hasStatus bool
	state, online                          int
	marker                                 string
}

func (v view) closed() bool {
	return v.hasState && v.state == stateClosed && v.hasOnline && v.online == 0
}

// view reads what XenStore says of a device now, and with nodes also what
// its scripts need (nodeOps), all in one pipeline: on a busy xenstored
// each round trip waits for the daemon's next turn, and these reads are on
// the way from the backend's InitWait to the script's start.
func (p *Plugin) view(k devKey, withNodes bool) (view, nodes, error) {
	var v view
	base := k.path()
	ops := []xenstore.Op{
		xenstore.Read(base + "/state"),
		xenstore.Read(base + "/online"),
		xenstore.Read(base + "/" + markerNode),
		xenstore.Read(base + "/hotplug-status"),
	}
	if withNodes {
		ops = append(ops, nodeOps(k)...)
	}
	_ = p.store.Pipeline(p.group.Context(), ops)
	for _, op := range ops {
		if op.Err != nil && !errors.Is(op.Err, os.ErrNotExist) {
			return v, nodes{}, fmt.Errorf("hotplug: read %s: %w", op.Path, op.Err)
		}
	}
	has := func(i int) bool { return ops[i].Err == nil }
	v.hasState, v.state = has(0), atoi(string(ops[0].Value))
	v.exists = v.hasState
	if !v.hasState {
		// A directory without state: being written, or what a script
		// left of a removed one.
		_, exists, err := p.read(base)
		if err != nil {
			return v, nodes{}, err
		}
		v.exists = exists
	}
	v.hasOnline, v.online = has(1), atoi(string(ops[1].Value))
	v.marker = string(ops[2].Value)
	v.hasStatus = has(3)
	var n nodes
	if withNodes {
		n = parseNodes(k, ops[4:])
	}
	return v, n, nil
}

// same reports whether the directory is still the incarnation d: a
// directory removed, or removed and written again by the toolstack, has
// lost the marker written at d's add.
func (d *device) same(v view) bool {
	return v.hasState && (d.inc == "" || v.marker == d.inc)
}

// evaluate takes the device's next step. A step that ends an incarnation
// (its remove finished) looks again at once, for the next incarnation.
func (p *Plugin) evaluate(k devKey, scan bool) error {
	for range 3 {
		again, err := p.step(k, scan)
		if err != nil || !again {
			return err
		}
	}
	return nil
}

func (p *Plugin) step(k devKey, scan bool) (again bool, err error) {
	p.mu.Lock()
	d := p.devs[k]
	var j *job
	finished := false
	if d != nil && d.job != nil {
		j, finished = d.job, d.job.finished
	}
	p.mu.Unlock()

	if j != nil && !finished {
		if !j.add || j.adopt != nil {
			return false, nil // runs to its end; its end is an event
		}
		v, _, err := p.view(k, false)
		if err != nil || d.same(v) {
			return false, err
		}
		// Gone or replaced before its add was admitted: it never runs.
		if !p.pool.cancel(j) {
			return false, nil // admitted meanwhile: its end is an event
		}
		j.log.Info("hotplug add dropped: the device went before it ran")
		p.forget(k)
		p.unjournal(k)
		return true, nil
	}
	if finished {
		p.mu.Lock()
		d.job = nil
		stopped := j.stopped
		p.mu.Unlock()
		if stopped {
			return false, nil
		}
		if !j.add {
			// The incarnation is over; what is there now is another one.
			p.forget(k)
			return true, nil
		}
	}

	// A device not known yet may be about to get its add: its nodes come
	// in the same pipeline.
	v, n, err := p.view(k, d == nil || !d.added)
	if err != nil {
		return false, err
	}
	switch {
	case d != nil && d.added && (!d.same(v) || v.closed()):
		// Closed, gone, or replaced by a new incarnation (the same vdev
		// attached again): this one gets its remove before the new one
		// gets anything.
		return false, p.submitRemove(d)
	case d != nil && d.added:
		return false, nil
	case d != nil:
		p.forget(k) // never added: nothing to undo
	}
	if !v.hasState {
		return false, nil // gone, or no state yet
	}
	p.mu.Lock()
	rec, journaled := p.journal[k]
	delete(p.journal, k)
	p.mu.Unlock()
	if journaled {
		return p.recover(k, v, rec)
	}
	if !v.hasOnline {
		return false, nil // as xl devd: a backend without online is not ready
	}
	if v.closed() && !scan {
		return false, nil // already disconnected, or never attached
	}
	d = &device{k: k, inc: v.marker, added: v.hasStatus, nodes: n}
	if d.inc != "" && !validInc(d.inc) {
		d.inc = ""
	}
	p.remember(d)
	switch {
	case v.state == stateInitWait && !d.added:
		// A marker without a journal record (the record was lost): the
		// same incarnation, whose add never reported.
		return false, p.submitAdd(d, d.inc)
	case v.closed() && d.added:
		return false, p.submitRemove(d)
	}
	return false, nil
}

// recover continues from a journal record an earlier mtwatchd left: the
// script it names still runs (wait for it), or ended (done or interrupted).
func (p *Plugin) recover(k devKey, v view, rec record) (bool, error) {
	d := &device{k: k, inc: rec.Inc, added: true, nodes: rec.nodes}
	same := v.hasState && v.marker == rec.Inc
	if rec.Phase == phaseRunning && rec.PID == 0 {
		// Crashed between the script's start and the record of its pid:
		// the script carries its incarnation in its environment.
		if pid, st, ok := findByInc(rec.Inc); ok {
			rec.PID, rec.Start, rec.Began = pid, st, time.Now().Unix()
		}
	}
	log := p.devLog(k).With("action", rec.Action, "phase", rec.Phase, "pid", rec.PID)
	switch {
	case rec.alive():
		log.Info("hotplug script left running before a restart: waiting for it")
		p.remember(d)
		p.submit(d, &job{k: k, add: rec.Action == "add", inc: rec.Inc, nodes: rec.nodes, adopt: &rec})
		return false, nil
	case rec.Action == "remove":
		log.Info("hotplug remove interrupted by a restart: running it again")
		p.remember(d)
		return false, p.submitRemove(d)
	case rec.Phase == phaseDone && same:
		p.remember(d)
		return false, nil
	case rec.Phase == phaseDone || (rec.PID != 0 && !same):
		// Its add ran; the device went while mtwatchd was away.
		p.remember(d)
		return false, p.submitRemove(d)
	case !same:
		// Never started, and the device went: nothing to undo.
		p.unjournal(k)
		return true, nil
	case v.hasStatus:
		// It ended after the crash, having reported.
		p.remember(d)
		rec.Phase = phaseDone
		if err := p.store.Write(p.group.Context(), journalPath(k), rec.encode()); err != nil {
			return false, fmt.Errorf("hotplug: write %s: %w", journalPath(k), err)
		}
		return false, nil
	}
	log.Info("hotplug add interrupted by a restart: running it again")
	d.added = false
	p.remember(d)
	return false, p.submitAdd(d, rec.Inc)
}

func (p *Plugin) remember(d *device) {
	p.mu.Lock()
	p.devs[d.k] = d
	p.mu.Unlock()
}

func (p *Plugin) forget(k devKey) {
	p.mu.Lock()
	delete(p.devs, k)
	p.mu.Unlock()
}

func (p *Plugin) devLog(k devKey) *slog.Logger {
	return p.log.With("domid", k.dom.String(), "device", k.path())
}

// nodeOps are the reads of what the scripts' argv and environment need;
// parseNodes takes their results.
func nodeOps(k devKey) []xenstore.Op {
	base := k.path()
	ops := []xenstore.Op{xenstore.Read(base + "/script")}
	if k.typ == "vif" {
		ops = append(ops, xenstore.Read(base+"/gatewaydev"), xenstore.Read(base+"/type"))
	}
	return ops
}

func parseNodes(k devKey, ops []xenstore.Op) nodes {
	n := nodes{Script: string(ops[0].Value)}
	if k.typ == "vif" {
		n.GatewayDev, n.NicType = string(ops[1].Value), string(ops[2].Value)
	}
	return n
}

// submitAdd marks the incarnation (a new id, or inc when an interrupted add
// runs again) in a transaction and journals its add beside it, then queues
// the add. A directory gone meanwhile gets nothing.
func (p *Plugin) submitAdd(d *device, inc string) error {
	// A new incarnation's record is new too; an add run again keeps the
	// record an earlier run left (with its script's pid) until the
	// transaction replaces it.
	fresh := inc == ""
	if fresh {
		inc = newInc()
	}
	base := d.k.path()
	rec := record{Action: "add", Phase: phaseRunning, Inc: inc, nodes: d.nodes}
	ctx, cancel := context.WithTimeout(p.group.Context(), 10*time.Second)
	defer cancel()
	// A new record is written outside the transaction, beside it: a
	// transaction creating the record's node would change its parent, and
	// every add starting at the same time would conflict with every other
	// (EAGAIN). Its order against the marker does not matter, only that
	// both are in XenStore before the script starts: a record whose marker
	// never got written is about a device whose add never ran, which the
	// next start finds as a record without its incarnation (recover).
	journaled := make(chan error, 1)
	if fresh {
		go func() { journaled <- p.store.Write(ctx, journalPath(d.k), rec.encode()) }()
	} else {
		journaled <- nil
	}
	err := p.store.Transaction(ctx, func(tx *xenstore.Tx) error {
		// One round trip: the writes go out with the reads that decide
		// them, and a failed check aborts the transaction, writes and all.
		ops := []xenstore.Op{
			xenstore.Read(base + "/state"),
			xenstore.Read(base + "/" + markerNode),
			xenstore.Write(base+"/"+markerNode, []byte(inc)),
		}
		if !fresh {
			ops = append(ops, xenstore.Write(journalPath(d.k), rec.encode()))
		}
		_ = tx.Pipeline(ctx, ops)
		if err := ops[0].Err; err != nil {
			return err
		}
		if m := ops[1].Value; ops[1].Err == nil && string(m) != inc {
			return fmt.Errorf("%w: %s is incarnation %s", errOtherIncarnation, base, m)
		}
		if err := ops[1].Err; err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
		var errs []error
		for _, op := range ops[2:] {
			errs = append(errs, op.Err)
		}
		return errors.Join(errs...)
	})
	jerr := <-journaled
	if err != nil {
		p.forget(d.k)
		if fresh {
			p.unjournal(d.k) // the new record is about an add that never ran
		}
		if errors.Is(err, os.ErrNotExist) || errors.Is(err, errOtherIncarnation) {
			return nil // an event of the new directory follows
		}
		return fmt.Errorf("hotplug: start add of %s: %w", base, err)
	}
	if jerr != nil {
		// The marker without a record is this incarnation's add not
		// yet run (step), which the next look submits again.
		p.forget(d.k)
		return fmt.Errorf("hotplug: write %s: %w", journalPath(d.k), jerr)
	}
	d.inc, d.added = inc, true
	p.submit(d, &job{k: d.k, add: true, inc: inc, nodes: d.nodes})
	return nil
}

var errOtherIncarnation = errors.New("another incarnation")

// submitRemove journals the remove and queues it.
func (p *Plugin) submitRemove(d *device) error {
	rec := record{Action: "remove", Phase: phaseRunning, Inc: d.inc, nodes: d.nodes}
	if rec.Inc == "" {
		rec.Inc = newInc() // found connected without a marker: a journal id only
	}
	if err := p.store.Write(p.group.Context(), journalPath(d.k), rec.encode()); err != nil {
		return fmt.Errorf("hotplug: write %s: %w", journalPath(d.k), err)
	}
	p.submit(d, &job{k: d.k, add: false, inc: d.inc, nodes: d.nodes})
	return nil
}

func (p *Plugin) submit(d *device, j *job) {
	j.enqueued = time.Now()
	j.log = p.devLog(d.k)
	p.mu.Lock()
	d.job = j
	p.mu.Unlock()
	p.pool.submit(j)
}

// unjournal removes a device's record.
func (p *Plugin) unjournal(k devKey) {
	err := p.store.Rm(p.group.Context(), journalPath(k))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		p.devLog(k).Warn("cannot remove hotplug journal record", "err", err)
	}
}

// devName is "<type>/<domid>/<devid>", for messages.
func (k devKey) String() string { return k.typ + "/" + k.dom.String() + "/" + k.devid }
