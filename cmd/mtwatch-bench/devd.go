package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/mtwatch/mtwatch/internal/lockedbuf"
	"github.com/mtwatch/mtwatch/lib/domid"
	"github.com/mtwatch/mtwatch/lib/sim"
	"github.com/mtwatch/mtwatch/lib/xenstore"
	"github.com/mtwatch/mtwatch/lib/xenstore/xenstoredtest"
)

// The script runners compared in the devd scenario: mtwatchd's hotplug
// plugin, and the unmodified Debian `xl devd -F`, which runs every device's
// script as a child process of its one libxl event loop
// (libxl_device_events_handler, device_hotplug and libxl__async_exec_start
// in tools/libs/light).
const (
	peerMtwatch = "mtwatchd hotplug plugin"
	peerXlDevd  = "xl devd"
)

// libxlHotplugTimeout is LIBXL_HOTPLUG_TIMEOUT (libxl_internal.h): xl devd
// kills a script still running after it. The plugin is given the same.
const libxlHotplugTimeout = 40 * time.Second

// devdCase is one burst both runners face.
type devdCase struct {
	name        string
	domains     int      // including the hung one, domid 1
	devices     []string // every domain's devices (sim.Config.Devices)
	hangDevices int      // of domain 1's devices, the first this many hang (0: all)
	delay       time.Duration
}

// devdResult is the scenario's part of the JSON file. Durations are in
// microseconds; every figure is a spread over the runs.
type devdResult struct {
	// Wait bounds the simulator's wait for a device's hotplug-status.
	Wait string `json:"device_wait"`
	// PluginTimeout is the hotplug plugin's script timeout; xl devd's is
	// libxl's 40 s.
	PluginTimeout string          `json:"plugin_script_timeout"`
	Cases         []devdCaseStats `json:"cases"`
}

type devdCaseStats struct {
	Name        string   `json:"name"`
	Domains     int      `json:"domains"`
	Devices     []string `json:"devices_per_domain"`
	HangDevices int      `json:"hung_devices,omitempty"`
	ScriptDelay string   `json:"script_delay"`
	// Healthy domains' devices: set-up latency, from the backend's state 2
	// (InitWait) to hotplug-status.
	DeviceP50 map[string]spread `json:"healthy_device_p50_us"`
	DeviceP99 map[string]spread `json:"healthy_device_p99_us"`
	DeviceMax map[string]spread `json:"healthy_device_max_us"`
	// Healthy domains: the set-up of a domain's slowest device.
	DomainP50 map[string]spread `json:"healthy_domain_p50_us"`
	DomainP99 map[string]spread `json:"healthy_domain_p99_us"`
	// The hung domain's other devices, every run's values in run order.
	Siblings map[string][]float64 `json:"hung_domain_siblings_us,omitempty"`
	// What became of the hung device in each run: "<status> after <time>".
	Hung map[string][]string `json:"hung_device"`
	// Healthy devices without hotplug-status=connected, per run.
	Failed map[string][]int  `json:"healthy_devices_failed"`
	Wall   map[string]spread `json:"wall_ms"`
}

// devdCases are the two bursts of docs/performance.md, those named in
// --devd-cases.
func devdCases(o *options) ([]devdCase, error) {
	all := map[string]devdCase{
		"burst": {name: fmt.Sprintf("%d domains, one vif each, domain 1's script hangs", o.devdBurst+1),
			domains: o.devdBurst + 1, devices: []string{"vif"}},
		"multi": {name: fmt.Sprintf("%d domains x 4 disks, %v scripts, one of domain 1's disks hangs", o.devdDomains, o.devdDelay),
			domains: o.devdDomains, devices: []string{"vbd", "vbd", "vbd", "vbd"}, hangDevices: 1, delay: o.devdDelay},
	}
	var out []devdCase
	for _, name := range []string{"burst", "multi"} {
		if slices.Contains(strings.Split(o.devdCases, ","), name) {
			out = append(out, all[name])
		}
	}
	for _, name := range strings.Split(o.devdCases, ",") {
		if _, ok := all[name]; !ok {
			return nil, fmt.Errorf("--devd-cases: unknown case %q (burst, multi)", name)
		}
	}
	return out, nil
}

// devdPeers are the runners named in --devd-runners.
func devdPeers(o *options) ([]string, error) {
	names := map[string]string{"mtwatchd": peerMtwatch, "xl-devd": peerXlDevd, "floor": peerFloor}
	var out []string
	for _, name := range strings.Split(o.devdRunners, ",") {
		p, ok := names[name]
		if !ok {
			return nil, fmt.Errorf("--devd-runners: unknown runner %q (mtwatchd, xl-devd, floor)", name)
		}
		if !slices.Contains(out, p) {
			out = append(out, p)
		}
	}
	return out, nil
}

// benchDevd runs every case with both runners, each on a fresh private
// xenstored, the runners' order alternating between runs.
func benchDevd(ctx context.Context, o *options) (*devdResult, error) {
	xl, err := xenstoredtest.XlProgram()
	if err != nil {
		return nil, err
	}
	xlLib, err := xenstoredtest.XlctrlLibrary()
	if err != nil {
		return nil, err
	}
	if _, err := os.Stat(o.mtwatchd); err != nil {
		return nil, fmt.Errorf("mtwatchd binary: %w (make build)", err)
	}
	if _, err := exec.LookPath("xenstore-write"); err != nil {
		return nil, fmt.Errorf("%w: xenstore-write (the scripts' client): install Debian package xenstore-utils", xenstoredtest.ErrNotInstalled)
	}
	cases, err := devdCases(o)
	if err != nil {
		return nil, err
	}
	peers, err := devdPeers(o)
	if err != nil {
		return nil, err
	}
	res := &devdResult{Wait: o.devdWait.String(), PluginTimeout: o.devdTimeout.String()}
	for _, c := range cases {
		cs := devdCaseStats{Name: c.name, Domains: c.domains, Devices: c.devices, HangDevices: c.hangDevices,
			ScriptDelay: c.delay.String(), Siblings: map[string][]float64{}, Hung: map[string][]string{}, Failed: map[string][]int{}}
		runs := map[string]map[string][]float64{} // figure -> peer -> per run
		add := func(fig, peer string, v float64) {
			if runs[fig] == nil {
				runs[fig] = map[string][]float64{}
			}
			runs[fig][peer] = append(runs[fig][peer], v)
		}
		for run := range o.runs {
			for _, peer := range rotate(peers, run) {
				logf("devd: %s: %s, run %d", c.name, peer, run+1)
				rep, err := devdRun(ctx, o, c, peer, xl, xlLib)
				if err != nil {
					return res, fmt.Errorf("devd: %s: %s: %w", c.name, peer, err)
				}
				m := measureDevd(rep)
				add("dev50", peer, us(percentile(m.devices, 50)))
				add("dev99", peer, us(percentile(m.devices, 99)))
				add("devmax", peer, us(percentile(m.devices, 100)))
				add("dom50", peer, us(percentile(m.domains, 50)))
				add("dom99", peer, us(percentile(m.domains, 99)))
				add("wall", peer, float64(rep.WallMS))
				for _, s := range m.siblings {
					cs.Siblings[peer] = append(cs.Siblings[peer], us(s))
				}
				cs.Hung[peer] = append(cs.Hung[peer], m.hung)
				cs.Failed[peer] = append(cs.Failed[peer], m.failed)
			}
		}
		spreads := func(fig string) map[string]spread {
			out := map[string]spread{}
			for _, p := range peers {
				out[p] = newSpread(runs[fig][p])
			}
			return out
		}
		cs.DeviceP50, cs.DeviceP99, cs.DeviceMax = spreads("dev50"), spreads("dev99"), spreads("devmax")
		cs.DomainP50, cs.DomainP99, cs.Wall = spreads("dom50"), spreads("dom99"), spreads("wall")
		res.Cases = append(res.Cases, cs)
	}
	return res, nil
}

// devdMeasure is one run's figures.
type devdMeasure struct {
	devices  []time.Duration // healthy domains' devices, sorted
	domains  []time.Duration // healthy domains' slowest device, sorted
	siblings []time.Duration // the hung domain's devices with a working script
	hung     string
	failed   int
}

func measureDevd(rep *sim.Report) devdMeasure {
	var m devdMeasure
	var hung []string
	for _, r := range rep.Results {
		var slowest time.Duration
		for _, d := range r.Devices {
			setup := time.Duration(d.SetupUS) * time.Microsecond
			switch {
			case d.Hung:
				hung = append(hung, d.Status+" after "+fmtDur(float64(d.SetupUS)))
			case r.Hung:
				m.siblings = append(m.siblings, setup)
			default:
				if d.Status != sim.StatusConnected {
					m.failed++
					continue
				}
				m.devices = append(m.devices, setup)
				slowest = max(slowest, setup)
			}
		}
		if !r.Hung && slowest > 0 {
			m.domains = append(m.domains, slowest)
		}
	}
	slices.Sort(m.devices)
	slices.Sort(m.domains)
	m.hung = strings.Join(hung, ", ")
	return m
}

// devdRun is one case with one runner: a fresh xenstored, the runner on it,
// the simulator's burst, the runner stopped.
func devdRun(ctx context.Context, o *options, c devdCase, peer, xl, xlLib string) (*sim.Report, error) {
	dir, err := os.MkdirTemp("", "devd")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	scripts := filepath.Join(dir, "scripts")
	if err := writeDevdScripts(scripts, c.delay); err != nil {
		return nil, err
	}
	srv, err := xenstoredtest.Launch(ctx, xenstoredtest.Config{})
	if err != nil {
		return nil, err
	}
	defer srv.Close()
	// The runners and their scripts get this environment and no other
	// MTWATCH_* setting of the caller's shell.
	env := append(cleanEnv(), srv.Env()...)
	var stop func() error
	var hook sim.Hook
	switch peer {
	case peerMtwatch:
		stop, _, err = startMtwatchd(ctx, o.mtwatchd, o.devdTimeout, "", srv, scripts, dir, env)
		if err == nil {
			hc, derr := dial(ctx, srv)
			if derr != nil {
				stop()
				return nil, derr
			}
			defer hc.Close()
			// libvirt's hook writes the node at "started"; auto-detection
			// gives the domains their workers from @introduceDomain on.
			hook = sim.NodeHook{Client: hc}
		}
	case peerXlDevd:
		stop, err = startXlDevd(ctx, xl, xlLib, srv, scripts, dir, env)
	case peerFloor:
		stop, err = startFloor(ctx, srv, env)
	}
	if err != nil {
		return nil, err
	}
	rep, err := sim.Run(ctx, sim.Config{
		Domains:       c.domains,
		Concurrency:   8,
		Devices:       c.devices,
		HangDomain:    1,
		HangDevices:   c.hangDevices,
		ScriptsDir:    scripts,
		DeviceTimeout: o.devdWait,
		Dial:          func(ctx context.Context) (*xenstore.Client, error) { return dial(ctx, srv) },
		Hypervisor:    sim.Xenemu{Server: srv},
		Hook:          hook,
		Label:         peer,
	})
	if serr := stop(); err == nil && serr != nil {
		err = serr
	}
	return rep, err
}

// writeDevdScripts writes the scripts both runners run: "block" and
// "vif-bridge" report what /etc/xen/scripts/block and vif-bridge report,
// after delay of work; "hang" never finishes adding its device (an iSCSI
// login timing out) until the runner's timeout kills it.
func writeDevdScripts(dir string, delay time.Duration) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	work := ""
	if delay > 0 {
		work = fmt.Sprintf("sleep %.3f; ", delay.Seconds())
	}
	ok := "#!/bin/sh\ncase \"$1\" in\n" +
		"add | online) " + work + "exec xenstore-write \"$XENBUS_PATH/hotplug-status\" connected ;;\n" +
		"*) exec xenstore-rm \"$XENBUS_PATH/hotplug-status\" ;;\nesac\n"
	hang := "#!/bin/sh\ncase \"$1\" in\n" +
		"add | online) exec sleep 120 ;;\n" +
		"*) exec xenstore-rm \"$XENBUS_PATH/hotplug-status\" ;;\nesac\n"
	probe := "#!/bin/sh\ncase \"$1\" in\n" +
		"add | online) exec xenstore-write \"$XENBUS_PATH/hotplug-status\" connected ;;\n" +
		"*) exec xenstore-rm \"$XENBUS_PATH/hotplug-status\" ;;\nesac\n"
	for name, body := range map[string]string{"block": ok, "vif-bridge": ok, "hang": hang, "probe": probe} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o755); err != nil {
			return err
		}
	}
	return nil
}

// cleanEnv is this process's environment without MTWATCH_* variables: a
// runner started by the bench reads its settings from its command line.
func cleanEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "MTWATCH_") && !strings.HasPrefix(kv, "NOTIFY_SOCKET=") {
			env = append(env, kv)
		}
	}
	return env
}

// startMtwatchd runs bin/mtwatchd with the hotplug plugin on srv, in dom0
// as a host would (a worker per domain, auto-detection on, GOMAXPROCS 1:
// the defaults), and returns once it has sent READY=1, with its pid. extra
// is appended to the [plugins.hotplug] section.
func startMtwatchd(ctx context.Context, bin string, timeout time.Duration, extra string, srv *xenstoredtest.Server, scripts, dir string, env []string) (func() error, int, error) {
	conf := filepath.Join(dir, "mtwatchd.toml")
	text := fmt.Sprintf("[agent]\nshutdown_timeout = \"10s\"\n\n[log]\nlevel = \"warning\"\n\n"+
		"[plugins.hotplug]\nenabled = true\nscripts_dir = %q\ntimeout = %q\n# no libxl runs the scripts here: run them (auto would watch in dom0)\nmode = \"run\"\n%s",
		scripts, timeout.String(), extra)
	if err := os.WriteFile(conf, []byte(text), 0o644); err != nil {
		return nil, 0, err
	}
	notify := filepath.Join(dir, "notify")
	ln, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: notify, Net: "unixgram"})
	if err != nil {
		return nil, 0, err
	}
	defer ln.Close()
	cmd := exec.Command(bin, "--config", conf, "--xenstore", srv.Socket(), "--control", filepath.Join(dir, "control.sock"))
	cmd.Env = append(env, "NOTIFY_SOCKET="+notify)
	out := &lockedbuf.Buffer{}
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, 0, err
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	stop := func() error {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case err := <-exited:
			if err != nil {
				return fmt.Errorf("mtwatchd: %w\n%s", err, out.String())
			}
			return nil
		case <-time.After(30 * time.Second):
			_ = cmd.Process.Kill()
			<-exited
			return fmt.Errorf("mtwatchd did not stop within 30 s of SIGTERM\n%s", out.String())
		}
	}
	ready := make(chan error, 1)
	go func() {
		buf := make([]byte, 4096)
		for {
			n, err := ln.Read(buf)
			if err != nil {
				ready <- err
				return
			}
			for _, l := range strings.Split(string(buf[:n]), "\n") {
				if l == "READY=1" {
					ready <- nil
					return
				}
			}
		}
	}()
	select {
	case err = <-ready:
	case err = <-exited:
		exited <- err
		err = fmt.Errorf("mtwatchd exited before READY=1: %v\n%s", err, out.String())
	case <-time.After(30 * time.Second):
		err = fmt.Errorf("no READY=1 from mtwatchd within 30 s\n%s", out.String())
	case <-ctx.Done():
		err = ctx.Err()
	}
	if err != nil {
		stop()
		return nil, 0, err
	}
	return stop, cmd.Process.Pid, nil
}

// probeDomid is the frontend domid of the device that tells xl devd is
// ready: outside every simulated domain.
const probeDomid = domid.ID(32000)

// startXlDevd runs the unmodified `xl devd -F` on srv under the xlctrl
// preload, in a process group of its own (its scripts are its children),
// and returns once it has run the add and remove scripts of a probe device.
func startXlDevd(ctx context.Context, xl, lib string, srv *xenstoredtest.Server, scripts, dir string, env []string) (func() error, error) {
	c, err := dial(ctx, srv)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	// xl devd learns its own domid from the relative node "domid"
	// (libxl__get_domid), which xen-init-dom0 writes on a host.
	if err := c.Write(ctx, "/local/domain/0/domid", []byte("0")); err != nil {
		return nil, err
	}
	cmd := exec.Command(xl, "devd", "-F")
	cmd.Dir = dir
	cmd.Env = append(env, "LD_PRELOAD="+lib, "XENEMU_DIR="+srv.Dir())
	out := &lockedbuf.Buffer{}
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	stop := func() error {
		// The whole group: a script still running (the hung one) goes too.
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		err := <-exited
		var ee *exec.ExitError
		if errors.As(err, &ee) && ee.Sys().(syscall.WaitStatus).Signal() == syscall.SIGKILL {
			return nil // what stopped it
		}
		return fmt.Errorf("xl devd ended before it was stopped: %v\n%s", err, out.String())
	}
	if err := probeXlDevd(ctx, c, scripts); err != nil {
		stop()
		return nil, fmt.Errorf("xl devd: %w\n%s", err, out.String())
	}
	return stop, nil
}

// probeXlDevd adds a device and waits for its script's hotplug-status, then
// closes it and waits for xl devd to remove its backend directory
// (libxl__device_destroy after the remove script).
func probeXlDevd(ctx context.Context, c *xenstore.Client, scripts string) error {
	be := fmt.Sprintf("/local/domain/0/backend/vif/%d/0", probeDomid)
	err := c.Transaction(ctx, func(tx *xenstore.Tx) error {
		for _, kv := range [][2]string{{"frontend-id", probeDomid.String()}, {"online", "1"},
			{"script", filepath.Join(scripts, "probe")}, {"type", "vif"}, {"state", "2"}} {
			if err := tx.Write(ctx, be+"/"+kv[0], []byte(kv[1])); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	wait := func(what string, done func() (bool, error)) error {
		deadline := time.Now().Add(15 * time.Second)
		for {
			ok, err := done()
			if err != nil || ok {
				return err
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("probe device %s: no %s within 15 s", be, what)
			}
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(5 * time.Millisecond):
			}
		}
	}
	err = wait("hotplug-status", func() (bool, error) {
		v, err := c.Read(ctx, be+"/hotplug-status")
		if errors.Is(err, fs.ErrNotExist) {
			return false, nil
		}
		return err == nil && string(v) == "connected", err
	})
	if err != nil {
		return err
	}
	err = c.Transaction(ctx, func(tx *xenstore.Tx) error {
		if err := tx.Write(ctx, be+"/online", []byte("0")); err != nil {
			return err
		}
		return tx.Write(ctx, be+"/state", []byte("6"))
	})
	if err != nil {
		return err
	}
	return wait("removal", func() (bool, error) {
		_, err := c.Read(ctx, be)
		if errors.Is(err, fs.ErrNotExist) {
			return true, nil
		}
		return false, err
	})
}

func writeDevdMarkdown(w io.Writer, d *devdResult) {
	p := func(format string, args ...any) { fmt.Fprintf(w, format+"\n", args...) }
	for i, c := range d.Cases {
		// The runners that ran (--devd-runners), in the usual order.
		var peers []string
		for _, peer := range []string{peerMtwatch, peerXlDevd, peerFloor} {
			if _, ok := c.DeviceP50[peer]; ok {
				peers = append(peers, peer)
			}
		}
		p("\n### 5%c. Device set-up beside xl devd: %s\n", 'a'+i, c.Name)
		p("Set-up: the backend's state 2 (InitWait) to hotplug-status; each runner on its own fresh xenstored, same scripts, same burst (8 domains created at once).\n")
		p("| runner | healthy device p50 | p99 | max | healthy domain (slowest device) p50 | p99 | hung device | whole run |")
		p("|---|---|---|---|---|---|---|---|")
		for _, peer := range peers {
			p("| %s | %s | %s | %s | %s | %s | %s | %s |", peer, c.DeviceP50[peer].format(fmtDur), c.DeviceP99[peer].format(fmtDur),
				c.DeviceMax[peer].format(fmtDur), c.DomainP50[peer].format(fmtDur), c.DomainP99[peer].format(fmtDur),
				strings.Join(c.Hung[peer], "; "), c.Wall[peer].format(func(ms float64) string { return fmtDur(ms * 1e3) }))
		}
		if m, x := c.DeviceP99[peerMtwatch], c.DeviceP99[peerXlDevd]; len(m.Runs) > 0 && len(m.Runs) == len(x.Runs) {
			// Each run's ratio pairs the two runners' runs of the same
			// round (their order alternates between rounds).
			rs := make([]string, len(m.Runs))
			for i := range m.Runs {
				rs[i] = fmt.Sprintf("%.2fx", m.Runs[i]/x.Runs[i])
			}
			p("\nHealthy device p99, %s against %s: %.2fx (medians; per run %s).", peerMtwatch, peerXlDevd, m.Median/x.Median, strings.Join(rs, ", "))
		}
		if c.HangDevices > 0 {
			p("")
			for _, peer := range peers {
				vs := make([]string, len(c.Siblings[peer]))
				for i, v := range c.Siblings[peer] {
					vs[i] = fmtDur(v)
				}
				p("The hung domain's %d other devices under %s (all runs, in order): %s.", len(c.Devices)-c.HangDevices, peer, strings.Join(vs, ", "))
			}
		}
		for _, peer := range peers {
			if slices.ContainsFunc(c.Failed[peer], func(n int) bool { return n > 0 }) {
				p("\n**%s: healthy devices without hotplug-status=connected, per run: %v.**", peer, c.Failed[peer])
			}
		}
	}
}
