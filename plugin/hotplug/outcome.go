package hotplug

import (
	"fmt"
	"slices"
	"time"

	"github.com/mtwatch/mtwatch/plugin"
	"github.com/mtwatch/mtwatch/plugin/internal/proc"
)

// This file records what scripts did: the counters, the metrics, the
// messages, the status and the stalls.

// describe turns a run's result into its message and outcome, the result
// label of mtwatch_hotplug_scripts_total.
func describe(prog, action string, res proc.Result, timeout time.Duration) (string, proc.Outcome) {
	o := res.Outcome()
	switch {
	case o == proc.OutcomeOK:
		return "", o
	case o == proc.OutcomeTimeout:
		return fmt.Sprintf("%s %s timed out after %v: killed", prog, action, timeout), o
	case o == proc.OutcomeError:
		return fmt.Sprintf("cannot execute %s: %v", prog, res.Err), o
	case res.Signal != 0:
		return fmt.Sprintf("%s %s failed: killed by signal %v", prog, action, res.Signal), o
	default:
		return fmt.Sprintf("%s %s failed: exit status %d", prog, action, res.ExitCode), o
	}
}

// count counts one execution's result.
func (p *Plugin) count(k devKey, action string, result proc.Outcome) {
	p.scripts.WithLabelValues(k.typ, action, string(result)).Inc()
	switch result {
	case proc.OutcomeOK:
		p.ok.Add(1)
	case proc.OutcomeTimeout:
		p.timedOut.Add(1)
	default:
		p.failed.Add(1)
	}
}

// RunningScript describes a script running now.
type RunningScript struct {
	Domid   uint16    `json:"domid"`
	Device  string    `json:"device"`
	Action  string    `json:"action"`
	Script  string    `json:"script"`
	Started time.Time `json:"started"`
	// PID is the script's process id, which is also its process group's;
	// 0 in the moment before it starts.
	PID int `json:"pid,omitempty"`
	// Adopted: left running by an earlier mtwatchd, waited for.
	Adopted bool `json:"adopted,omitempty"`
	// Confinement of an adopted script: "cgroup <dir>", the command
	// cgroup that ends it at its timeout, or "process group <pid>" where
	// it has none the agent may end.
	Confinement string `json:"confinement,omitempty"`
}

// Status is what the plugin reports in the control API.
type Status struct {
	Mode       string          `json:"mode"`
	Types      []string        `json:"types"`
	MaxScripts int             `json:"max_scripts"`
	Devices    int             `json:"devices"`
	Runs       uint64          `json:"runs"`
	OK         uint64          `json:"ok"`
	Failed     uint64          `json:"failed"`
	TimedOut   uint64          `json:"timed_out"`
	Waiting    int             `json:"waiting"`
	Peak       int             `json:"peak_running"`
	Running    []RunningScript `json:"running"`
	// Stuck counts devices in set-up or teardown past stuck_after (watch
	// mode).
	Stuck int `json:"stuck"`
	// NeedQEMU lists qdisk and 9pfs backends: they need the QEMU that xl
	// devd starts.
	NeedQEMU []string `json:"need_qemu"`
}

// Status reports the counters and the scripts running now.
func (p *Plugin) Status() any {
	set := p.settings()
	s := Status{Mode: p.mode, Types: set.cfg.Types, MaxScripts: set.cfg.MaxScripts, Running: []RunningScript{}, NeedQEMU: []string{}}
	_, s.Waiting, s.Peak = p.pool.counts()
	now := time.Now()
	p.mu.Lock()
	s.Devices = len(p.devs) + len(p.watched)
	for _, d := range p.devs {
		if j := d.job; j != nil && j.running {
			s.Running = append(s.Running, RunningScript{Domid: uint16(d.k.dom), Device: d.k.path(), Action: j.action,
				Script: j.prog, Started: j.started, PID: j.pid, Adopted: j.adopt != nil, Confinement: j.confinement})
		}
	}
	for _, w := range p.watched {
		if now.Sub(w.since) >= set.cfg.StuckAfter {
			s.Stuck++
		}
	}
	for k := range p.qemu {
		s.NeedQEMU = append(s.NeedQEMU, k.path())
	}
	p.mu.Unlock()
	slices.SortFunc(s.Running, func(a, b RunningScript) int { return a.Started.Compare(b.Started) })
	slices.Sort(s.NeedQEMU)
	s.Runs, s.OK, s.Failed, s.TimedOut = p.runs.Load(), p.ok.Load(), p.failed.Load(), p.timedOut.Load()
	return s
}

// Stalls implements plugin.Staller: scripts running, or waiting for a slot,
// longer than threshold; in watch mode, devices in set-up or teardown
// longer than stuck_after.
func (p *Plugin) Stalls(threshold time.Duration) []plugin.Stall {
	var out []plugin.Stall
	now := time.Now()
	stuck := p.settings().cfg.StuckAfter
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, d := range p.devs {
		j := d.job
		switch {
		case j == nil || threshold <= 0:
		case j.running && now.Sub(j.started) >= threshold:
			out = append(out, plugin.Stall{Domid: d.k.dom, Path: d.k.path(), Started: j.started,
				Detail: fmt.Sprintf("hotplug %s script %s running", j.action, j.prog)})
		case !j.running && !j.finished && now.Sub(j.enqueued) >= threshold:
			out = append(out, plugin.Stall{Domid: d.k.dom, Path: d.k.path(), Started: j.enqueued,
				Detail: "hotplug script waiting for one of the max_scripts slots"})
		}
	}
	for k, w := range p.watched {
		if now.Sub(w.since) >= stuck {
			out = append(out, plugin.Stall{Domid: k.dom, Path: k.path(), Started: w.since, Detail: w.detail()})
		}
	}
	return out
}
