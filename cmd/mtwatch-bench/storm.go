package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/mtwatch/mtwatch/lib/control"
	"github.com/mtwatch/mtwatch/lib/sim"
	"github.com/mtwatch/mtwatch/lib/xenstore"
	"github.com/mtwatch/mtwatch/lib/xenstore/xenstoredtest"
)

// stormResult is the storm scenario's part of the JSON file: a host booting
// (then shutting down) many guests at once under bin/mtwatchd's hotplug
// plugin in mode run. Durations are in microseconds, memory in MiB; every
// figure is a spread over the runs.
type stormResult struct {
	Domains     int      `json:"domains"`
	Devices     []string `json:"devices_per_domain"`
	Concurrency int      `json:"domains_created_at_once"`
	ScriptDelay string   `json:"script_delay"`
	// Cap is max_scripts as the plugin reported it in its status.
	Cap int `json:"max_scripts"`
	// ScriptsPeak: the most scripts running at once, counted by the
	// scripts themselves (add and remove); PluginPeak: the plugin's own
	// count (peak_running in /v1/status).
	ScriptsPeak spread `json:"scripts_peak"`
	PluginPeak  spread `json:"plugin_peak_running"`
	// Scripts run per run (add and remove), from the scripts' log.
	Scripts   spread `json:"scripts_run"`
	SetupP50  spread `json:"device_setup_p50_us"`
	SetupP99  spread `json:"device_setup_p99_us"`
	SetupMax  spread `json:"device_setup_max_us"`
	RemoveP99 spread `json:"device_remove_p99_us"`
	// Failed: devices without hotplug-status=connected, per run;
	// DomainErrors: domains whose creation or destruction failed (a remove
	// script not run, a device left behind), per run, and the first error.
	Failed       []int    `json:"devices_failed"`
	DomainErrors []int    `json:"domain_errors"`
	FirstError   []string `json:"first_error,omitempty"`
	// PluginRuns and PluginOK: scripts the plugin started and saw succeed
	// (runs and ok in its status).
	PluginRuns spread `json:"plugin_runs"`
	PluginOK   spread `json:"plugin_ok"`
	// mtwatchd's resident set: after READY=1, its high-water mark (VmHWM:
	// the process lives for one run only), after every domain was created,
	// and at the end, every domain destroyed.
	RSSStartMiB   spread `json:"rss_start_mib"`
	RSSPeakMiB    spread `json:"rss_peak_mib"`
	RSSCreatedMiB spread `json:"rss_all_created_mib"`
	RSSEndMiB     spread `json:"rss_end_mib"`
	// CreateMS: until every domain was created (all devices connected);
	// WallMS: the whole run, creation and destruction.
	CreateMS spread `json:"create_ms"`
	WallMS   spread `json:"wall_ms"`
	// CPU time (user + system) of mtwatchd and of xenstored over the run:
	// which of them the storm's time went to.
	MtwatchdCPUMS  spread `json:"mtwatchd_cpu_ms"`
	XenstoredCPUMS spread `json:"xenstored_cpu_ms"`
}

// stormRun is one run's figures.
type stormRun struct {
	cap, scriptsPeak, pluginPeak, scripts, failed int
	domainErrs, pluginRuns, pluginOK              int
	firstErr                                      string
	setup, remove                                 []time.Duration
	rssStart, rssPeak, rssCreated, rssEnd         float64
	create, wall, cpu, xsCPU                      time.Duration
}

func stormDevices(n int) []string {
	devs := make([]string, n)
	for i := range devs {
		// Disks: libxl adds a domain's disks at once, so a domain's
		// scripts compete for the cap with each other too.
		devs[i] = "vbd"
	}
	return devs
}

// benchStorm runs the storm o.runs times, each on a fresh xenstored and a
// fresh mtwatchd. It fails if the scripts ever counted more of themselves
// running at once than max_scripts, or a device was not connected; the
// figures measured are returned either way.
func benchStorm(ctx context.Context, o *options) (*stormResult, error) {
	if _, err := os.Stat(o.mtwatchd); err != nil {
		return nil, fmt.Errorf("mtwatchd binary: %w (make build)", err)
	}
	res := &stormResult{Domains: o.stormDomains, Devices: stormDevices(o.stormDevices), Concurrency: o.stormConcurrency,
		ScriptDelay: o.stormDelay.String()}
	var runs []stormRun
	var err error
	for run := range o.runs {
		logf("storm: %d domains, run %d", o.stormDomains, run+1)
		var r stormRun
		r, err = stormOnce(ctx, o)
		if err != nil {
			err = fmt.Errorf("storm: run %d: %w", run+1, err)
			break
		}
		runs = append(runs, r)
		if r.scriptsPeak > r.cap || r.pluginPeak > r.cap {
			err = fmt.Errorf("storm: run %d: %d scripts running at once by their own count (%d by the plugin's), max_scripts %d",
				run+1, r.scriptsPeak, r.pluginPeak, r.cap)
			break
		}
		if r.failed > 0 || r.domainErrs > 0 {
			err = fmt.Errorf("storm: run %d: %d devices not connected, %d domains with errors (%s)", run+1, r.failed, r.domainErrs, r.firstErr)
			break
		}
	}
	fig := func(f func(stormRun) float64) spread {
		vs := make([]float64, len(runs))
		for i, r := range runs {
			vs[i] = f(r)
		}
		return newSpread(vs)
	}
	for _, r := range runs {
		res.Cap = r.cap
		res.Failed = append(res.Failed, r.failed)
		res.DomainErrors = append(res.DomainErrors, r.domainErrs)
		if r.firstErr != "" {
			res.FirstError = append(res.FirstError, r.firstErr)
		}
	}
	res.ScriptsPeak = fig(func(r stormRun) float64 { return float64(r.scriptsPeak) })
	res.PluginPeak = fig(func(r stormRun) float64 { return float64(r.pluginPeak) })
	res.Scripts = fig(func(r stormRun) float64 { return float64(r.scripts) })
	res.PluginRuns = fig(func(r stormRun) float64 { return float64(r.pluginRuns) })
	res.PluginOK = fig(func(r stormRun) float64 { return float64(r.pluginOK) })
	res.SetupP50 = fig(func(r stormRun) float64 { return us(percentile(r.setup, 50)) })
	res.SetupP99 = fig(func(r stormRun) float64 { return us(percentile(r.setup, 99)) })
	res.SetupMax = fig(func(r stormRun) float64 { return us(percentile(r.setup, 100)) })
	res.RemoveP99 = fig(func(r stormRun) float64 { return us(percentile(r.remove, 99)) })
	res.RSSStartMiB = fig(func(r stormRun) float64 { return r.rssStart })
	res.RSSPeakMiB = fig(func(r stormRun) float64 { return r.rssPeak })
	res.RSSCreatedMiB = fig(func(r stormRun) float64 { return r.rssCreated })
	res.RSSEndMiB = fig(func(r stormRun) float64 { return r.rssEnd })
	res.CreateMS = fig(func(r stormRun) float64 { return float64(r.create.Milliseconds()) })
	res.WallMS = fig(func(r stormRun) float64 { return float64(r.wall.Milliseconds()) })
	res.MtwatchdCPUMS = fig(func(r stormRun) float64 { return float64(r.cpu.Milliseconds()) })
	res.XenstoredCPUMS = fig(func(r stormRun) float64 { return float64(r.xsCPU.Milliseconds()) })
	if len(runs) == 0 {
		return nil, err
	}
	return res, err
}

// stormOnce is one run: a fresh xenstored without tracing, mtwatchd on it,
// the simulator's storm, mtwatchd's status and memory, mtwatchd stopped.
func stormOnce(ctx context.Context, o *options) (stormRun, error) {
	var r stormRun
	dir, err := os.MkdirTemp("", "storm")
	if err != nil {
		return r, err
	}
	defer os.RemoveAll(dir)
	scripts, count := filepath.Join(dir, "scripts"), filepath.Join(dir, "running.log")
	if err := writeStormScripts(scripts, count, o.stormDelay); err != nil {
		return r, err
	}
	srv, err := xenstoredtest.Launch(ctx, xenstoredtest.Config{})
	if err != nil {
		return r, err
	}
	defer srv.Close()
	extra := ""
	if o.stormMaxScripts > 0 {
		extra = fmt.Sprintf("max_scripts = %d\n", o.stormMaxScripts)
	}
	stop, pid, err := startMtwatchd(ctx, o.mtwatchd, libxlHotplugTimeout, extra, srv, scripts, dir, append(cleanEnv(), srv.Env()...))
	if err != nil {
		return r, err
	}
	stopped := false
	defer func() {
		if !stopped {
			stop()
		}
	}()
	ctl := control.NewClient(filepath.Join(dir, "control.sock"))
	defer ctl.Close()
	hc, err := dial(ctx, srv)
	if err != nil {
		return r, err
	}
	defer hc.Close()
	if r.rssStart, _, err = procMemMiB(pid); err != nil {
		return r, err
	}
	t0 := time.Now()
	rep, err := sim.Run(ctx, sim.Config{
		Domains:       o.stormDomains,
		Concurrency:   o.stormConcurrency,
		Devices:       stormDevices(o.stormDevices),
		ScriptsDir:    scripts,
		DeviceTimeout: 2 * libxlHotplugTimeout,
		RemoveTimeout: 2 * libxlHotplugTimeout,
		Dial:          func(ctx context.Context) (*xenstore.Client, error) { return dial(ctx, srv) },
		Hypervisor:    sim.Xenemu{Server: srv},
		Hook:          sim.NodeHook{Client: hc},
		Label:         peerMtwatch,
		PhaseDone: func(phase string) {
			if phase == sim.PhaseCreate {
				r.create = time.Since(t0)
				r.rssCreated, _, _ = procMemMiB(pid)
			}
		},
	})
	if err != nil {
		return r, err
	}
	r.wall = time.Since(t0)
	st, err := hotplugStatus(ctx, ctl)
	if err != nil {
		return r, err
	}
	r.cap, r.pluginPeak, r.pluginRuns, r.pluginOK = st.MaxScripts, st.Peak, int(st.Runs), int(st.OK)
	if r.rssEnd, r.rssPeak, err = procMemMiB(pid); err != nil {
		return r, err
	}
	if r.cpu, err = procCPU(pid); err != nil {
		return r, err
	}
	if r.xsCPU, err = procCPU(srv.Pid()); err != nil {
		return r, err
	}
	stopped = true
	if err := stop(); err != nil {
		return r, err
	}
	if r.scriptsPeak, r.scripts, err = countRunning(count); err != nil {
		return r, err
	}
	for _, d := range rep.Results {
		if len(d.Errors) > 0 {
			if r.domainErrs == 0 {
				r.firstErr = fmt.Sprintf("domain %d: %s", d.Domid, d.Errors[0])
			}
			r.domainErrs++
		}
		for _, v := range d.Devices {
			if v.Status != sim.StatusConnected {
				r.failed++
				continue
			}
			r.setup = append(r.setup, time.Duration(v.SetupUS)*time.Microsecond)
			r.remove = append(r.remove, time.Duration(v.RemoveUS)*time.Microsecond)
		}
	}
	slices.Sort(r.setup)
	slices.Sort(r.remove)
	return r, nil
}

// writeStormScripts writes "block", which appends "+" to count when it
// starts and "-" when it is about to exit, and works delay in between, for
// add and remove alike. O_APPEND writes of one line are atomic, so the
// file's order is the order the scripts started and ended in: its highest
// running sum is the most scripts alive at once. Counted inside each
// script's life, it cannot count more than the processes really running,
// and with delay between the marks it misses no overlap of them.
func writeStormScripts(dir, count string, delay time.Duration) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	body := fmt.Sprintf("#!/bin/sh\ncount=%s\necho + >>\"$count\"\nsleep %.3f\n", shellQuote(count), delay.Seconds()) +
		"case \"$1\" in\n" +
		"add | online) xenstore-write \"$XENBUS_PATH/hotplug-status\" connected ;;\n" +
		"*) xenstore-rm \"$XENBUS_PATH/hotplug-status\" ;;\nesac\n" +
		"rc=$?\necho - >>\"$count\"\nexit $rc\n"
	return os.WriteFile(filepath.Join(dir, "block"), []byte(body), 0o755)
}

func shellQuote(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }

// countRunning returns the highest running sum of the count file's marks
// and the scripts that started; a script that started and never ended
// is an error.
func countRunning(path string) (peak, started int, err error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, 0, fmt.Errorf("the scripts' count: %w", err)
	}
	defer f.Close()
	n := 0
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		switch sc.Text() {
		case "+":
			n++
			started++
			peak = max(peak, n)
		case "-":
			n--
		default:
			return 0, 0, fmt.Errorf("the scripts' count %s: bad line %q", path, sc.Text())
		}
	}
	if err := sc.Err(); err != nil {
		return 0, 0, err
	}
	if n != 0 {
		return peak, started, fmt.Errorf("the scripts' count %s: %d scripts never ended", path, n)
	}
	return peak, started, nil
}

// hotplugStatus is the hotplug plugin's part of mtwatchd's /v1/status.
func hotplugStatus(ctx context.Context, c *control.Client) (hotplugStatusJSON, error) {
	var hs hotplugStatusJSON
	st, err := c.Status(ctx)
	if err != nil {
		return hs, err
	}
	for _, p := range st.Plugins {
		if p.Name == "hotplug" {
			b, err := json.Marshal(p.Status)
			if err != nil {
				return hs, err
			}
			return hs, json.Unmarshal(b, &hs)
		}
	}
	return hs, fmt.Errorf("no hotplug plugin in mtwatchd's status")
}

// hotplugStatusJSON is what the storm reads of the plugin's status
// (plugin/hotplug's Status).
type hotplugStatusJSON struct {
	MaxScripts int    `json:"max_scripts"`
	Peak       int    `json:"peak_running"`
	Runs       uint64 `json:"runs"`
	OK         uint64 `json:"ok"`
}

// procMemMiB reads a process's VmRSS and VmHWM.
func procMemMiB(pid int) (rss, hwm float64, err error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, 0, err
	}
	for _, l := range strings.Split(string(b), "\n") {
		f := strings.Fields(l)
		if len(f) < 2 {
			continue
		}
		kb, _ := strconv.ParseFloat(f[1], 64)
		switch f[0] {
		case "VmRSS:":
			rss = kb / 1024
		case "VmHWM:":
			hwm = kb / 1024
		}
	}
	if rss == 0 || hwm == 0 {
		return 0, 0, fmt.Errorf("no VmRSS or VmHWM in /proc/%d/status", pid)
	}
	return rss, hwm, nil
}

// procCPU reads a process's user and system time (/proc/<pid>/stat
// fields 14 and 15, in USER_HZ: 100 on Linux).
func procCPU(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// The command name, in parentheses, may hold spaces: count from after it.
	i := strings.LastIndexByte(string(b), ')')
	f := strings.Fields(string(b[i+1:]))
	if i < 0 || len(f) < 13 {
		return 0, fmt.Errorf("/proc/%d/stat: unexpected %q", pid, b)
	}
	ut, err1 := strconv.ParseInt(f[11], 10, 64)
	st, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("/proc/%d/stat: unexpected %q", pid, b)
	}
	return time.Duration(ut+st) * 10 * time.Millisecond, nil
}

func writeStormMarkdown(w io.Writer, s *stormResult) {
	p := func(format string, args ...any) { fmt.Fprintf(w, format+"\n", args...) }
	p("\n### 6. Storm: %d domains x %d disks under bin/mtwatchd's hotplug plugin (mode run), %d domains created at once, %s scripts\n",
		s.Domains, len(s.Devices), s.Concurrency, s.ScriptDelay)
	p("Scripts running at once, as the scripts count themselves (add and remove): **%s** of max_scripts %d (plugin's own count: %s); %s scripts ran (the plugin: %s started, %s succeeded). %s.\n",
		s.ScriptsPeak.format(fmtInt), s.Cap, s.PluginPeak.format(fmtInt), s.Scripts.format(fmtInt), s.PluginRuns.format(fmtInt), s.PluginOK.format(fmtInt),
		goal(s.ScriptsPeak.Max <= float64(s.Cap) && s.PluginPeak.Max <= float64(s.Cap), "never above the cap"))
	p("| device set-up p50 | p99 | max | remove p99 | all created | whole run (create + destroy) | devices failed | domains with errors |")
	p("|---|---|---|---|---|---|---|---|")
	ms := func(v float64) string { return fmtDur(v * 1e3) }
	p("| %s | %s | %s | %s | %s | %s | %v | %v |", s.SetupP50.format(fmtDur), s.SetupP99.format(fmtDur), s.SetupMax.format(fmtDur),
		s.RemoveP99.format(fmtDur), s.CreateMS.format(ms), s.WallMS.format(ms), s.Failed, s.DomainErrors)
	p("\nCPU time over the run: mtwatchd %s, xenstored %s.", s.MtwatchdCPUMS.format(ms), s.XenstoredCPUMS.format(ms))
	p("\nmtwatchd's RSS (MiB): %s at start, peak (VmHWM) %s, %s with every domain created, %s at the end (every domain destroyed).",
		s.RSSStartMiB.format(fmtMiB), s.RSSPeakMiB.format(fmtMiB), s.RSSCreatedMiB.format(fmtMiB), s.RSSEndMiB.format(fmtMiB))
}

func fmtInt(v float64) string { return strconv.FormatFloat(v, 'f', 0, 64) }
