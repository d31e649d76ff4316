package hotplug

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/mtwatch/mtwatch/lib/dispatch"
	"github.com/mtwatch/mtwatch/lib/domid"
	"github.com/mtwatch/mtwatch/lib/xenstore"
	"github.com/mtwatch/mtwatch/plugin/internal/proc"
)

// This file runs the jobs the pool admits, each on its own goroutine: the
// script's executions, the journal records around them, and the end of
// the job handed back to the device's domain worker as an event.

// startJob is the pool's start: it runs j on a goroutine counted for Stop.
func (p *Plugin) startJob(j *job) {
	p.jobs.Add(1)
	go func() {
		defer p.jobs.Done()
		p.runJob(j)
		p.pool.done(j)
		p.post(j.k)
	}()
}

// post makes the device's domain worker look at it again.
func (p *Plugin) post(k devKey) {
	w := p.watch.Load()
	if w == nil {
		return
	}
	if err := (*w).Post(k.path()); err != nil && !errors.Is(err, dispatch.ErrStopped) && !errors.Is(err, dispatch.ErrUnknownWatch) {
		p.devLog(k).Warn("cannot hand a finished hotplug script back to its domain", "err", err)
	}
}

func (p *Plugin) runJob(j *job) {
	set := p.settings()
	p.mu.Lock()
	j.running, j.started = true, time.Now()
	p.mu.Unlock()
	stopped := false
	switch {
	case p.group.Context().Err() != nil:
		j.log.Warn("hotplug script not run: mtwatchd stopping")
		stopped = true
	case j.adopt != nil:
		stopped = p.waitAdopted(j, set)
	case j.add:
		stopped = p.runAdd(j, set)
	default:
		stopped = p.runRemove(j, set)
	}
	p.mu.Lock()
	j.running, j.finished, j.stopped = false, true, stopped
	p.mu.Unlock()
}

// stubdom reports whether the guest has a stub domain, as
// libxl_get_stubdom_id reads it.
func (p *Plugin) stubdom(dom domid.ID) bool {
	dm, _, _ := p.read(fmt.Sprintf("/local/domain/%d/image/device-model-domid", dom))
	return atoi(dm) != 0
}

// runAdd runs the add's executions, as libxl's device_hotplug: a failure
// ends it and is reported in XenStore. It returns true when mtwatchd's stop
// cut it short: nothing is recorded then, and the next start runs it again.
func (p *Plugin) runAdd(j *job, set *settings) bool {
	for n := 0; ; n++ {
		stub := n > 0 && j.k.typ == "vif" && p.stubdom(j.k.dom)
		ex, skip, err := scriptFor(&set.cfg, p.env, j.k, j.nodes, true, n, stub)
		if skip {
			break
		}
		action := actionName(j.k.typ, true, n)
		if err != nil {
			p.count(j.k, action, proc.OutcomeError)
			p.failAdd(j, action, err.Error())
			return false
		}
		res, started := p.exec(j, ex, action, set)
		if !started || res.Cancelled {
			return true
		}
		j.ran = true
		if msg, result := describe(ex.prog, action, res, set.cfg.Timeout); result != proc.OutcomeOK {
			p.count(j.k, action, result)
			p.failAdd(j, action, msg)
			return false
		}
		p.count(j.k, action, proc.OutcomeOK)
	}
	p.endAdd(j, "")
	return false
}

// runRemove runs the remove's executions; as libxl, a failed one is logged
// and the next still runs. Then the journal record goes and, in a driver
// domain, the backend directory as xl devd removes it.
func (p *Plugin) runRemove(j *job, set *settings) bool {
	ok := true
	for n := 0; ; n++ {
		stub := n > 0 && j.k.typ == "vif" && p.stubdom(j.k.dom)
		ex, skip, err := scriptFor(&set.cfg, p.env, j.k, j.nodes, false, n, stub)
		if skip {
			break
		}
		action := actionName(j.k.typ, false, n)
		if err != nil {
			// libxl ends the device's hotplug on an error before the
			// script runs.
			p.count(j.k, action, proc.OutcomeError)
			j.log.Warn(err.Error(), "action", action)
			ok = false
			break
		}
		res, started := p.exec(j, ex, action, set)
		if !started || res.Cancelled {
			return true
		}
		if msg, result := describe(ex.prog, action, res, set.cfg.Timeout); result != proc.OutcomeOK {
			p.count(j.k, action, result)
			j.log.Warn(msg, "action", action)
			ok = false
			continue
		}
		p.count(j.k, action, proc.OutcomeOK)
	}
	p.endRemove(j, ok)
	return false
}

// exec runs one execution. started is false when mtwatchd is stopping.
func (p *Plugin) exec(j *job, ex execution, action string, set *settings) (proc.Result, bool) {
	log := j.log.With("action", action, "script", ex.prog)
	p.mu.Lock()
	j.prog, j.action, j.started = ex.prog, action, time.Now()
	p.mu.Unlock()
	log.Debug("running hotplug script")
	rec := record{Action: "add", Phase: phaseRunning, Inc: j.inc, nodes: j.nodes}
	if !j.add {
		rec.Action = "remove"
	}
	env := ex.env
	if j.inc != "" {
		env = proc.SetEnv(slices.Clone(env), incEnv, j.inc)
	}
	res := p.group.Run(proc.Spec{
		Path:    ex.prog,
		Args:    ex.argv,
		Env:     env,
		Timeout: set.cfg.Timeout,
		Grace:   set.cfg.Grace,
		Line: func(stream, line string) {
			log.Info(line, "stream", stream)
		},
		Started: func(pid int) {
			p.mu.Lock()
			j.pid = pid
			p.mu.Unlock()
			// Recorded before the script can have done much: a crash
			// from here on finds it by pid and start time.
			rec.PID, rec.Began = pid, time.Now().Unix()
			rec.Start, _ = procStart(pid)
			if rec.Inc == "" {
				return // a remove of a device set up before the plugin ran
			}
			// Bounded: the script's timeout is armed once this returns.
			ctx, cancel := context.WithTimeout(context.WithoutCancel(p.group.Context()), 5*time.Second)
			defer cancel()
			if err := p.store.Write(ctx, journalPath(j.k), rec.encode()); err != nil {
				log.Warn("cannot journal the hotplug script's pid", "err", err)
			}
		},
	})
	if errors.Is(res.Err, proc.ErrStopping) {
		log.Warn("hotplug script not run: mtwatchd stopping")
		return res, false
	}
	if res.Cancelled {
		p.count(j.k, action, proc.OutcomeError)
		log.Warn("hotplug script killed: mtwatchd stopping")
		return res, true
	}
	p.runs.Add(1)
	p.duration.WithLabelValues(j.k.typ, action).Observe(res.Duration.Seconds())
	log.Debug("hotplug script ended", "exit", res.ExitCode, "duration", res.Duration.Round(time.Millisecond))
	return res, true
}

// failAdd reports a failed add as a script's fatal() does, hotplug-error
// and hotplug-status=error, and journals the add done, in one transaction;
// the report is written only into the incarnation the add was for: never
// into a directory gone (writing would create it again) or written again
// for a new device.
func (p *Plugin) failAdd(j *job, action, msg string) {
	j.log.Warn(msg, "action", action)
	p.endAdd(j, msg)
}

// endAdd journals the add done; with msg, it also reports the failure.
func (p *Plugin) endAdd(j *job, msg string) {
	base := j.k.path()
	rec := record{Action: "add", Phase: phaseDone, Inc: j.inc, nodes: j.nodes}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(p.group.Context()), 10*time.Second)
	defer cancel()
	if msg == "" {
		// Nothing to write into the backend directory: no transaction,
		// one round trip (the marker is read only to tell the log).
		ops := []xenstore.Op{xenstore.Read(base + "/" + markerNode), xenstore.Write(journalPath(j.k), rec.encode())}
		_ = p.store.Pipeline(ctx, ops)
		if err := ops[1].Err; err != nil {
			j.log.Error("cannot record the end of the hotplug add", "err", err)
		}
		if string(ops[0].Value) != j.inc {
			j.log.Info("hotplug add ended after its device went: its result is not the new device's")
		}
		return
	}
	stale := false
	err := p.store.Transaction(ctx, func(tx *xenstore.Tx) error {
		stale = false
		m, err := tx.Read(ctx, base+"/"+markerNode)
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
		if string(m) != j.inc {
			stale = true
		} else if msg != "" {
			if err := writeError(ctx, tx, base, msg); err != nil {
				return err
			}
		}
		return tx.Write(ctx, journalPath(j.k), rec.encode())
	})
	if err != nil {
		j.log.Error("cannot record the end of the hotplug add", "err", err)
	}
	if stale {
		j.log.Info("hotplug add ended after its device went: its result is not the new device's")
	}
}

// writeError writes hotplug-error and hotplug-status=error; a message the
// script wrote itself is kept.
func writeError(ctx context.Context, tx *xenstore.Tx, base, msg string) error {
	if st, err := tx.Read(ctx, base+"/hotplug-status"); err != nil || string(st) != "error" {
		if err := tx.Write(ctx, base+"/hotplug-error", []byte(msg)); err != nil {
			return err
		}
	} else if _, err := tx.Read(ctx, base+"/hotplug-error"); errors.Is(err, os.ErrNotExist) {
		if err := tx.Write(ctx, base+"/hotplug-error", []byte(msg)); err != nil {
			return err
		}
	}
	return tx.Write(ctx, base+"/hotplug-status", []byte("error"))
}

// scriptNodes are what the scripts write into a backend directory
// (tools/hotplug/Linux: xen-hotplug-common.sh's success and fatal,
// block-common.sh's write_dev, block's loop node).
var scriptNodes = []string{"hotplug-status", "hotplug-error", "physical-device", "physical-device-path", "node"}

// endRemove ends an incarnation in one transaction: its journal record
// goes; a directory written again for a new device loses what this
// incarnation's scripts wrote into it (a script still running when the
// toolstack replaced the directory writes into the new one); what scripts
// left of a removed directory (no state) is removed, as xen-hotplug-cleanup
// does on the udev path; and in a driver domain, after a successful remove,
// the backend directory and its parents left empty are removed as xl devd
// does (libxl__device_destroy: libxl__xs_path_cleanup of the backend path
// by the driver domain), so that dom0's libxl does not wait for them.
func (p *Plugin) endRemove(j *job, ok bool) {
	base := j.k.path()
	ctx, cancel := context.WithTimeout(context.WithoutCancel(p.group.Context()), 10*time.Second)
	defer cancel()
	driver := p.rt.Domid != domid.Dom0
	err := p.store.Transaction(ctx, func(tx *xenstore.Tx) error {
		if err := tx.Rm(ctx, journalPath(j.k)); err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
		_, err := tx.Read(ctx, base+"/state")
		hasState := err == nil
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
		m, err := tx.Read(ctx, base+"/"+markerNode)
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
		mine := j.inc == "" || string(m) == j.inc
		switch {
		case hasState && !mine && j.inc != "" && len(m) == 0:
			for _, n := range scriptNodes {
				if err := tx.Rm(ctx, base+"/"+n); err != nil && !errors.Is(err, os.ErrNotExist) {
					return err
				}
			}
		case !hasState:
			if err := tx.Rm(ctx, base); err != nil && !errors.Is(err, os.ErrNotExist) {
				return err
			}
		case driver && ok && mine:
			return pathCleanup(ctx, tx, base)
		}
		return nil
	})
	if err != nil {
		j.log.Warn("cannot clean up after the hotplug remove", "err", err)
	}
	// The domain's journal directory, once empty, goes too: a record
	// created meanwhile makes the transaction conflict and see it.
	dir := journalDir + "/" + j.k.typ + "/" + j.k.dom.String()
	err = p.store.Transaction(ctx, func(tx *xenstore.Tx) error {
		kids, err := tx.Directory(ctx, dir)
		if err != nil || len(kids) > 0 {
			return err
		}
		return tx.Rm(ctx, dir)
	})
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		j.log.Warn("cannot remove the domain's empty hotplug journal directory", "err", err)
	}
}

// pathCleanup is libxl__xs_path_cleanup: remove path, then each parent that
// has neither a value nor children.
func pathCleanup(ctx context.Context, tx *xenstore.Tx, path string) error {
	if err := tx.Rm(ctx, path); err != nil {
		return err
	}
	for i := strings.LastIndexByte(path, '/'); i > 0; i = strings.LastIndexByte(path, '/') {
		path = path[:i]
		v, err := tx.Read(ctx, path)
		if err != nil || len(v) != 0 {
			return nil
		}
		kids, err := tx.Directory(ctx, path)
		if err != nil || len(kids) != 0 {
			return nil
		}
		if err := tx.Rm(ctx, path); err != nil {
			return err
		}
	}
	return nil
}

// waitAdopted waits for a script an earlier mtwatchd left running, within
// the timeout counted from its start, then ends it as its own runner would
// have: the whole of the command cgroup it runs in (what it started, and
// what left its process group with setsid or a double fork, included), or
// its process group where it has none. Its exit status is lost with that
// mtwatchd: an add that ended without writing hotplug-status counts as
// failed.
func (p *Plugin) waitAdopted(j *job, set *settings) bool {
	r := j.adopt
	p.mu.Lock()
	j.prog, j.action, j.started = r.Script, r.Action, r.began()
	p.mu.Unlock()
	orphan := proc.Adopt(r.PID)
	p.mu.Lock()
	j.pid, j.confinement = r.PID, orphan.String()
	p.mu.Unlock()
	if r.alive() {
		// Once the script is over its cgroup goes, now or, if it left a
		// daemon there, once that exits. (A script gone before Adopt read
		// its pid's cgroup may have had the pid reused by a process whose
		// cgroup is not its: that one is left alone.)
		defer orphan.Release()
	}
	j.log.Debug("waiting for a hotplug script left running", "pid", r.PID, "confinement", orphan.String())
	deadline := r.began().Add(set.cfg.Timeout)
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	timedOut := false
	// Only the script itself is waited for: one that exits may leave a
	// daemon behind in its cgroup, as libxl allows. A timeout or a stop
	// ends the whole cgroup.
	for r.alive() {
		select {
		case <-p.group.Context().Done():
			orphan.End(set.cfg.Grace)
			return true
		case now := <-tick.C:
			if now.After(deadline) && !timedOut {
				timedOut = true
				orphan.End(set.cfg.Grace)
			}
		}
	}
	j.ran = true
	action := actionName(j.k.typ, j.add, 0)
	if !j.add {
		p.endRemove(j, true)
		return false
	}
	_, hs, _ := p.read(j.k.path() + "/hotplug-status")
	switch {
	case timedOut:
		p.count(j.k, action, proc.OutcomeTimeout)
		p.failAdd(j, action, fmt.Sprintf("hotplug script (pid %d, left running by an earlier mtwatchd) timed out after %v: killed", r.PID, set.cfg.Timeout))
	case !hs:
		p.count(j.k, action, proc.OutcomeFailed)
		p.failAdd(j, action, fmt.Sprintf("hotplug script (pid %d, left running by an earlier mtwatchd) ended without hotplug-status", r.PID))
	default:
		p.count(j.k, action, proc.OutcomeOK)
		p.endAdd(j, "")
	}
	return false
}
