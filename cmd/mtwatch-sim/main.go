// Command mtwatch-sim is a toolstack simulator for sandboxes and
// benchmarks: it drives guest domains through libxl's XenStore operations
// (lib/sim) against a sandbox xenstored, with the libvirt hook's node, and
// reports device set-up latency and domain create/destroy times. It only
// drives xenstoreds running under the xenemu emulation library: it never
// touches a real host's domains.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/mtwatch/mtwatch/lib/domid"
	"github.com/mtwatch/mtwatch/lib/sim"
	"github.com/mtwatch/mtwatch/lib/xenstore"
	"github.com/mtwatch/mtwatch/lib/xenstore/xenstoredtest"
)

const usage = `usage: mtwatch-sim [options]
       mtwatch-sim compare <report.json>...

Creates guest domains in a sandbox xenstored the way libxl does (domain make
transaction, INTRODUCE, vbd and vif backends waiting for their hotplug
scripts, libvirt's "started" hook writing the mtwatch node), then destroys
them (devices closed and removed, the domain's tree, its death, the node's
removal), and reports per-device set-up latency (backend InitWait to
hotplug-status=connected) and per-domain create/destroy times.

"compare" prints reports written with --json side by side.

Exit codes: 0 every healthy domain went through, 1 a healthy domain failed or
XenStore failed, 2 usage.

Options:
`

type options struct {
	domains, concurrency, first, hang  int
	xenstore, xenemuDir, scriptsDir    string
	hookPath                           string
	noHook                             bool
	deviceTimeout, removeTimeout, hold time.Duration
	jsonOut, label                     string
	progress                           string
	liveCmd                            string
	liveInterval                       time.Duration
}

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) > 0 && args[0] == "compare" {
		return compare(args[1:], stdout, stderr)
	}
	var o options
	fs := flag.NewFlagSet("mtwatch-sim", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprint(stderr, usage); fs.PrintDefaults() }
	fs.IntVar(&o.domains, "domains", 20, "number of guest domains")
	fs.IntVar(&o.concurrency, "concurrency", 8, "domains created or destroyed at once (one XenStore connection each)")
	fs.IntVar(&o.first, "first-domid", 1, "domid of the first domain")
	fs.IntVar(&o.hang, "hang-domain", 0, "domid whose devices get the hanging script (0: none)")
	fs.StringVar(&o.xenstore, "xenstore", "", "xenstored socket (default $MTWATCH_XENSTORE, $XENSTORED_PATH, the usual socket)")
	fs.StringVar(&o.xenemuDir, "xenemu-dir", "", "the sandbox's xenemu control directory (default $XENEMU_DIR, $XENSTORED_RUNDIR)")
	fs.StringVar(&o.scriptsDir, "scripts-dir", "/etc/xen/scripts", "directory of the hotplug scripts named in the backends' script nodes")
	fs.StringVar(&o.hookPath, "hook", "", "run this mtwatch-hook binary for the node (default: in-process, lib/node)")
	fs.BoolVar(&o.noHook, "no-hook", false, "write no mtwatch node (auto-detection alone)")
	fs.DurationVar(&o.deviceTimeout, "device-timeout", 60*time.Second, "how long a device waits for its hotplug-status")
	fs.DurationVar(&o.removeTimeout, "remove-timeout", 60*time.Second, "how long a closed device waits for its remove script")
	fs.DurationVar(&o.hold, "hold", 0, "keep every domain up this long before destroying them")
	fs.StringVar(&o.jsonOut, "json", "", "write the report as JSON to this file (- for stdout)")
	fs.StringVar(&o.label, "label", "", "name of the run in the report (e.g. the agent's mode)")
	fs.StringVar(&o.progress, "progress", "auto", "progress display: auto (a bar on a terminal), bar, lines, none")
	fs.StringVar(&o.liveCmd, "live", "", "shell command whose output is shown above the progress bar, refreshed, or without a terminal once per phase (e.g. \"mtwatch list\")")
	fs.DurationVar(&o.liveInterval, "live-interval", time.Second, "refresh interval of --live")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "mtwatch-sim: unexpected argument %q\n", fs.Arg(0))
		return 2
	}
	cfg, code := o.config(stderr)
	if code != 0 {
		return code
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	hookClient, err := cfg.Dial(ctx)
	if err != nil {
		fmt.Fprintf(stderr, "mtwatch-sim: %v\n", err)
		return 1
	}
	defer hookClient.Close()
	switch {
	case o.noHook:
	case o.hookPath != "":
		cfg.Hook = sim.ExecHook{Path: o.hookPath, Env: []string{"MTWATCH_XENSTORE=" + o.xenstore}}
	default:
		cfg.Hook = sim.NodeHook{Client: hookClient}
	}

	disp := newDisplay(stderr, o.progress, 2*cfg.Domains, o.liveCmd, o.liveInterval)
	cfg.Progress = disp.progress
	cfg.PhaseDone = disp.phaseDone
	disp.start(ctx)
	rep, err := sim.Run(ctx, cfg)
	disp.stop()
	if rep != nil {
		if o.jsonOut != "" {
			if werr := writeJSON(o.jsonOut, rep, stdout); werr != nil {
				fmt.Fprintf(stderr, "mtwatch-sim: %v\n", werr)
				return 1
			}
		}
		if o.jsonOut != "-" {
			sim.WriteComparison(stdout, rep)
		}
	}
	if err != nil {
		fmt.Fprintf(stderr, "mtwatch-sim: %v\n", err)
		return 1
	}
	if rep.Summary.Failed > 0 {
		for _, r := range rep.Results {
			if !r.Hung && len(r.Errors) > 0 {
				fmt.Fprintf(stderr, "mtwatch-sim: domain %d: %v\n", r.Domid, r.Errors)
			}
		}
		return 1
	}
	return 0
}

// config turns the flags into a sim.Config, or an exit code.
func (o *options) config(stderr io.Writer) (sim.Config, int) {
	bad := func(format string, args ...any) (sim.Config, int) {
		fmt.Fprintf(stderr, "mtwatch-sim: "+format+"\n", args...)
		return sim.Config{}, 2
	}
	if o.domains <= 0 {
		return bad("--domains %d: need at least one", o.domains)
	}
	if o.first <= 0 || o.first+o.domains-1 >= int(domid.FirstReserved) {
		return bad("--first-domid %d with %d domains: domids must be guest domids (1..%d)", o.first, o.domains, domid.FirstReserved-1)
	}
	if o.hang < 0 || o.hang > 0 && (o.hang < o.first || o.hang >= o.first+o.domains) {
		return bad("--hang-domain %d: not one of the simulated domids %d..%d", o.hang, o.first, o.first+o.domains-1)
	}
	switch o.progress {
	case "auto", "bar", "lines", "none":
	default:
		return bad("--progress %q: want auto, bar, lines or none", o.progress)
	}
	if o.xenstore == "" {
		o.xenstore = os.Getenv("MTWATCH_XENSTORE")
	}
	if o.xenstore == "" {
		o.xenstore = xenstore.Paths()[0]
	}
	dir := o.xenemuDir
	for _, env := range []string{"XENEMU_DIR", "XENSTORED_RUNDIR"} {
		if dir == "" {
			dir = os.Getenv(env)
		}
	}
	if dir == "" {
		return bad("no sandbox: give --xenemu-dir or set XENSTORED_RUNDIR (make sandbox prints it); " +
			"mtwatch-sim only drives a sandbox xenstored")
	}
	// Attached, not owned: the simulator never stops the sandbox.
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	srv, err := xenstoredtest.Attach(ctx, dir)
	cancel()
	if err != nil {
		return bad("not a sandbox xenstored: %v", err)
	}
	hv := sim.Xenemu{Server: srv}
	path := o.xenstore
	return sim.Config{
		Domains:       o.domains,
		FirstDomid:    domid.ID(o.first),
		Concurrency:   o.concurrency,
		HangDomain:    domid.ID(o.hang),
		ScriptsDir:    o.scriptsDir,
		DeviceTimeout: o.deviceTimeout,
		RemoveTimeout: o.removeTimeout,
		Hold:          o.hold,
		Hypervisor:    hv,
		Label:         o.label,
		Dial: func(ctx context.Context) (*xenstore.Client, error) {
			return xenstore.Dial(ctx, xenstore.WithPath(path))
		},
	}, 0
}

func writeJSON(name string, rep *sim.Report, stdout io.Writer) error {
	if name == "-" {
		return rep.WriteJSON(stdout)
	}
	f, err := os.Create(name)
	if err != nil {
		return err
	}
	if err := rep.WriteJSON(f); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

func compare(files []string, stdout, stderr io.Writer) int {
	if len(files) == 0 {
		fmt.Fprint(stderr, "usage: mtwatch-sim compare <report.json>...\n")
		return 2
	}
	var reps []*sim.Report
	for _, name := range files {
		f, err := os.Open(name)
		if err != nil {
			fmt.Fprintf(stderr, "mtwatch-sim: %v\n", err)
			return 2
		}
		rep, err := sim.ReadReport(f)
		f.Close()
		if err != nil {
			fmt.Fprintf(stderr, "mtwatch-sim: %s: %v\n", name, err)
			return 2
		}
		if rep.Label == "" {
			rep.Label = name
		}
		reps = append(reps, rep)
	}
	if err := sim.WriteComparison(stdout, reps...); err != nil {
		fmt.Fprintf(stderr, "mtwatch-sim: %v\n", err)
		return 1
	}
	return 0
}
