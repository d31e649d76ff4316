// Command mtwatch-bench measures mtwatchd's core (lib/agent, run in this
// process with a no-op or latency-recording handler plugin) against a
// private real xenstored, each figure side by side with its baseline in the
// same run, the variants interleaved over several runs: event throughput
// against a bare libxenstore watcher, isolation of healthy domains from
// stalled ones, a guest flooding its watched path, and worker churn at
// 10,000 domains; and device set-up under bin/mtwatchd's hotplug plugin
// beside the unmodified xl devd on the same bursts (devd.go), and a storm of
// 1,000 domains booting and shutting down under it, the scripts counting
// themselves against max_scripts (storm.go, --only storm). It prints
// Markdown tables and writes a JSON file and the
// isolation scenario's latency CDF (SVG). `make bench` runs it; the results
// are in docs/performance.md.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"strings"
	"syscall"
	"time"

	"github.com/mtwatch/mtwatch/lib/xenstore/xenstoredtest"
)

type options struct {
	runs             int
	tpRuns           int
	domains          int
	writes           int
	isoDomains       int
	rounds           int
	interval         time.Duration
	stall            time.Duration
	floodFor         time.Duration
	floodInterval    time.Duration
	scaleDomains     int
	only             string
	jsonOut          string
	svgOut           string
	cbenchSrc        string
	devdBurst        int
	devdDomains      int
	devdDelay        time.Duration
	devdWait         time.Duration
	devdTimeout      time.Duration
	devdCases        string
	devdRunners      string
	mtwatchd         string
	stormDomains     int
	stormDevices     int
	stormConcurrency int
	stormDelay       time.Duration
	stormMaxScripts  int
}

// results is the JSON file.
type results struct {
	Command    string            `json:"command"`
	Conditions map[string]string `json:"conditions"`
	Throughput *throughputResult `json:"throughput,omitempty"`
	Isolation  *isolationResult  `json:"isolation,omitempty"`
	Flood      *floodResult      `json:"flood,omitempty"`
	Scale      *scaleResult      `json:"scale,omitempty"`
	Devd       *devdResult       `json:"devd,omitempty"`
	Storm      *stormResult      `json:"storm,omitempty"`
	Error      string            `json:"error,omitempty"`
}

func main() {
	if sock := os.Getenv(envWriter); sock != "" {
		os.Exit(writerMain(sock))
	}
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	var o options
	fs := flag.NewFlagSet("mtwatch-bench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.IntVar(&o.runs, "runs", 3, "runs of every scenario; variants are interleaved within each run")
	fs.IntVar(&o.tpRuns, "throughput-runs", 9, "runs of the throughput scenario, whose rates vary most from run to run; 0: --runs")
	fs.IntVar(&o.domains, "domains", 1000, "throughput: domains with workers the event stream spreads over")
	fs.IntVar(&o.writes, "writes", 100000, "throughput: writes per run")
	fs.IntVar(&o.isoDomains, "iso-domains", 100, "isolation and flood: domains (a tenth of them stalled in isolation; one floods)")
	fs.IntVar(&o.rounds, "rounds", 20, "isolation: rounds of one event per healthy domain")
	fs.DurationVar(&o.interval, "interval", 10*time.Millisecond, "isolation: time between rounds")
	fs.DurationVar(&o.stall, "stall", 500*time.Millisecond, "isolation: how long a stalled domain's handler blocks")
	fs.DurationVar(&o.floodFor, "flood", 30*time.Second, "flood: how long the guest floods its path")
	fs.DurationVar(&o.floodInterval, "flood-interval", 100*time.Millisecond, "flood: time between rounds of the other domains' events")
	fs.IntVar(&o.scaleDomains, "scale", 10000, "scale: domains created and destroyed through the node protocol")
	fs.IntVar(&o.devdBurst, "devd-burst", 100, "devd: healthy domains of one vif each in the burst (one more hangs)")
	fs.IntVar(&o.devdDomains, "devd-domains", 21, "devd: domains of four disks (one of one domain's disks hangs)")
	fs.DurationVar(&o.devdDelay, "devd-delay", 300*time.Millisecond, "devd: how long the four-disk domains' scripts work")
	fs.DurationVar(&o.devdWait, "devd-wait", libxlHotplugTimeout+5*time.Second, "devd: how long the simulator waits for a device's hotplug-status")
	fs.DurationVar(&o.devdTimeout, "devd-script-timeout", libxlHotplugTimeout, "devd: the hotplug plugin's script timeout (xl devd's is libxl's fixed 40 s)")
	fs.StringVar(&o.devdCases, "devd-cases", "burst,multi", "devd: the bursts, comma-separated: burst (one vif per domain), multi (four disks per domain)")
	fs.StringVar(&o.devdRunners, "devd-runners", "mtwatchd,xl-devd,floor", "devd: the runners, comma-separated: mtwatchd, xl-devd, floor (the lower bound: a script started at InitWait and nothing else)")
	fs.StringVar(&o.mtwatchd, "mtwatchd", "bin/mtwatchd", "devd and storm: the mtwatchd binary (make build)")
	fs.IntVar(&o.stormDomains, "storm-domains", 1000, "storm: domains created, then destroyed")
	fs.IntVar(&o.stormDevices, "storm-devices", 2, "storm: disks per domain (1 or 2)")
	fs.IntVar(&o.stormConcurrency, "storm-concurrency", 64, "storm: domains created (and destroyed) at once")
	fs.DurationVar(&o.stormDelay, "storm-delay", 50*time.Millisecond, "storm: how long every script works")
	fs.IntVar(&o.stormMaxScripts, "storm-max-scripts", 0, "storm: the hotplug plugin's max_scripts (0: its default)")
	fs.StringVar(&o.only, "only", "throughput,isolation,flood,scale,devd", "scenarios to run, comma-separated (storm: only when named)")
	fs.StringVar(&o.jsonOut, "json", "docs/performance-agent.json", "write the results here (empty: none)")
	fs.StringVar(&o.svgOut, "svg", "docs/isolation-cdf.svg", "write the isolation latency CDF here (empty: none)")
	fs.StringVar(&o.cbenchSrc, "cbench", "lib/xenstore/bench/cbench.c", "source of the libxenstore watcher")
	logFile := fs.String("agent-log", "", "append the agent's debug log to this file")
	cpuProfile := fs.String("cpuprofile", "", "write a CPU profile of this process (the agent, the bench's own goroutines) here")
	if err := fs.Parse(args); err != nil {
		if err == flag.ErrHelp {
			return 0
		}
		return 2
	}
	if o.tpRuns == 0 {
		o.tpRuns = o.runs
	}
	if fs.NArg() > 0 || o.runs < 1 || o.tpRuns < 1 || o.domains < 1 || o.writes < 1 || o.isoDomains < 10 || o.rounds < 1 ||
		o.interval <= 0 || o.stall <= 0 || o.floodInterval <= 0 || o.floodFor < o.floodInterval || o.scaleDomains < 1 || o.scaleDomains > 32000 ||
		o.devdBurst < 1 || o.devdBurst > 30000 || o.devdDomains < 2 || o.devdDomains > 30000 || o.devdDelay < 0 || o.devdWait <= 0 || o.devdTimeout <= 0 ||
		o.stormDomains < 1 || o.stormDomains > 30000 || o.stormDevices < 1 || o.stormDevices > 2 || o.stormConcurrency < 1 ||
		o.stormDelay < 0 || o.stormMaxScripts < 0 {
		fmt.Fprintln(stderr, "mtwatch-bench: bad arguments (see -h)")
		return 2
	}
	if *logFile != "" {
		f, err := os.OpenFile(*logFile, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
		if err != nil {
			fmt.Fprintf(stderr, "mtwatch-bench: %v\n", err)
			return 2
		}
		defer f.Close()
		agentLog = f
	}
	if *cpuProfile != "" {
		f, err := os.Create(*cpuProfile)
		if err != nil {
			fmt.Fprintf(stderr, "mtwatch-bench: %v\n", err)
			return 2
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			fmt.Fprintf(stderr, "mtwatch-bench: %v\n", err)
			return 2
		}
		defer pprof.StopCPUProfile()
	}
	want := map[string]bool{}
	for _, s := range strings.Split(o.only, ",") {
		switch s {
		case "throughput", "isolation", "flood", "scale", "devd", "storm":
			want[s] = true
		default:
			fmt.Fprintf(stderr, "mtwatch-bench: --only: unknown scenario %q\n", s)
			return 2
		}
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	res := &results{Command: "mtwatch-bench " + strings.Join(args, " "), Conditions: conditions()}
	res.Conditions["load_before"] = loadavg()
	// A fresh xenstored per scenario, without tracing (it would dominate
	// every figure).
	scenario := func(name string, fn func(*xenstoredtest.Server) error) error {
		if !want[name] || ctx.Err() != nil {
			return ctx.Err()
		}
		logf("%s ...", name)
		var cfg xenstoredtest.Config
		if kind, _ := xenstoredtest.KindFromEnv(); kind == xenstoredtest.Oxenstored && name == "throughput" {
			// The throughput writer outruns any watcher by design. Past
			// quota-maxwatchevents (1024) oxenstored 4.17 stops reading
			// from the writer and can withhold its last event for good
			// (connections.ml never adds to has_pending_watchevents; see
			// lib/agent's TestFloodPastWatchEventQuota): the scenario would
			// measure that stall, not the watcher. A quota above the
			// events of a run keeps it a throughput measurement.
			cfg.Settings = []string{"quota-maxwatchevents = 16777216"}
		}
		srv, err := xenstoredtest.Launch(ctx, cfg)
		if err != nil {
			return err
		}
		defer srv.Close()
		return fn(srv)
	}
	err := scenario("throughput", func(srv *xenstoredtest.Server) (err error) {
		res.Throughput, err = benchThroughput(ctx, &o, srv)
		return err
	})
	if err == nil {
		err = scenario("isolation", func(srv *xenstoredtest.Server) (err error) {
			res.Isolation, err = benchIsolation(ctx, &o, srv)
			return err
		})
	}
	if err == nil {
		err = scenario("flood", func(srv *xenstoredtest.Server) (err error) {
			res.Flood, err = benchFlood(ctx, &o, srv)
			return err
		})
	}
	if err == nil {
		err = scenario("scale", func(srv *xenstoredtest.Server) (err error) {
			res.Scale, err = benchScale(ctx, &o, srv)
			return err
		})
	}
	// Each run of the devd scenario has its own xenstored.
	if err == nil && want["devd"] && ctx.Err() == nil {
		logf("devd ...")
		res.Devd, err = benchDevd(ctx, &o)
	}
	// So has each run of the storm, and its own mtwatchd.
	if err == nil && want["storm"] && ctx.Err() == nil {
		logf("storm ...")
		res.Storm, err = benchStorm(ctx, &o)
	}
	// The scenarios that ran are reported even when a later one failed: the
	// failure is a finding too.
	code := 0
	if err != nil {
		fmt.Fprintf(stderr, "mtwatch-bench: %v\n", err)
		res.Error = err.Error()
		code = 1
	}
	res.Conditions["load_after"] = loadavg()
	writeMarkdown(stdout, res)
	if o.jsonOut != "" {
		b, _ := json.MarshalIndent(res, "", "  ")
		if err := os.WriteFile(o.jsonOut, append(b, '\n'), 0o644); err != nil {
			fmt.Fprintf(stderr, "mtwatch-bench: %v\n", err)
			return 1
		}
	}
	if o.svgOut != "" && res.Isolation != nil {
		cond := fmt.Sprintf("%d runs pooled; %s, %s vCPUs, load %s", o.runs, res.Conditions["cpu"], res.Conditions["cpus"], res.Conditions["load_before"])
		if err := plotCDF(res.Isolation, o.svgOut, cond); err != nil {
			fmt.Fprintf(stderr, "mtwatch-bench: plot: %v\n", err)
			return 1
		}
	}
	return code
}

func conditions() map[string]string {
	c := map[string]string{
		"go":   runtime.Version(),
		"cpus": fmt.Sprint(runtime.NumCPU()),
		"date": time.Now().UTC().Format(time.RFC3339),
	}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if k, v, ok := strings.Cut(l, ":"); ok && strings.TrimSpace(k) == "model name" {
				c["cpu"] = strings.TrimSpace(v)
				break
			}
		}
	}
	if kind, err := xenstoredtest.KindFromEnv(); err == nil {
		if exe, err := filepath.EvalSymlinks(xenstoredtest.Binary(kind)); err == nil {
			c["xenstored"] = exe
		}
	}
	return c
}

// loadavg is the 1, 5 and 15 minute load: on a shared host it says how
// much else ran.
func loadavg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	return strings.Join(strings.Fields(string(b))[:3], " ")
}

func goal(ok bool, met string) string {
	if ok {
		return met + ": met"
	}
	return met + ": **not met**"
}

func writeMarkdown(w io.Writer, r *results) {
	p := func(format string, args ...any) { fmt.Fprintf(w, format+"\n", args...) }
	p("Conditions: %s; %s vCPUs; %s; load average %s before, %s after.", r.Conditions["cpu"], r.Conditions["cpus"],
		r.Conditions["go"], r.Conditions["load_before"], r.Conditions["load_after"])
	if t := r.Throughput; t != nil {
		p("\n### 1. Throughput: %d writes per run over %d domains, no-op handlers\n", t.Writes, t.Domains)
		p("| watcher | events/s | events per write | CPU per event | vs libxenstore | per-run ratio | goal |")
		p("|---|---|---|---|---|---|---|")
		for _, v := range []string{string(modeMtwatch), string(modeSingle), string(modeMtwatchAllCPUs), variantLibxenstore} {
			ratio, paired, g := "1", "1", ""
			if v != variantLibxenstore {
				ratio = "**" + fmtRatio(t.Ratio[v]) + "x**"
				paired = t.PairedRatio[v].format(fmtRatio)
				if v == string(modeMtwatch) {
					g = goal(t.Ratio[v] >= 0.95, ">= 0.95x")
				}
			}
			name := "agent, " + v
			if v == variantLibxenstore {
				name = "bare libxenstore watcher (cbench watch)"
			}
			p("| %s | %s | %s | %s | %s | %s | %s |", name, t.EventsPerSec[v].format(fmtRate), t.EventsPerWrite[v].format(fmtRatio),
				t.CPUPerEvent[v].format(fmtCPU), ratio, paired, g)
		}
	}
	if i := r.Isolation; i != nil {
		p("\n### 2. Isolation: %d domains, %d stalled (%s per event), %d rounds every %s\n", i.Domains, i.Stalled, i.Stall, i.Rounds, i.Interval)
		p("| variant | healthy p50 | healthy p99 | goal |")
		p("|---|---|---|---|")
		for _, v := range []string{isoMtwatch, isoSingle, isoNone} {
			g := ""
			if v == isoMtwatch {
				g = goal(i.Ratio <= 2, fmt.Sprintf("p99 within 2x of no stall (%.2fx)", i.Ratio))
			}
			p("| %s | %s | %s | %s |", v, i.P50[v].format(fmtDur), i.P99[v].format(fmtDur), g)
		}
	}
	if f := r.Flood; f != nil {
		p("\n### 3. Flood: one of %d domains rewrites its watched path for %s (%s writes/s); the others get an event each every %s\n",
			f.Domains, f.Duration, f.FloodWritesPerSec.format(fmtRate), f.Interval)
		p("| variant | peak RSS (MiB) | Go heap after (MiB) | others' p50 | others' p99 | goal |")
		p("|---|---|---|---|---|---|")
		for _, v := range []string{floodOn, floodOff} {
			g := ""
			if v == floodOn {
				g = goal(f.PeakRSSMiB[v].Max < 64, "RSS < 64 MiB")
			}
			p("| %s | %s | %s | %s | %s | %s |", v, f.PeakRSSMiB[v].format(fmtMiB), f.HeapMiB[v].format(fmtMiB), f.P50[v].format(fmtDur), f.P99[v].format(fmtDur), g)
		}
		p("\nThe flooding domain's events: %s ran, %s merged into a pending one, %s dropped.",
			f.FloodProcessed.format(fmtRate), f.FloodCoalesced.format(fmtRate), f.FloodDropped.format(fmtRate))
	}
	if r.Error != "" {
		p("\n**Failed:** %s", r.Error)
	}
	if s := r.Scale; s != nil {
		p("\n### 4. Scale and churn: %d domains created, then destroyed, through the node protocol\n", s.Domains)
		p("| variant | created/s | destroyed/s |")
		p("|---|---|---|")
		for _, v := range []string{scaleAgent, scaleBare} {
			p("| %s | %s | %s |", v, s.CreatedPerSec[v].format(fmtRate), s.DestroyedPerSec[v].format(fmtRate))
		}
		p("\nRSS with %d live workers: %s MiB (%s MiB before the nodes; Go heap %s MiB).", s.Domains,
			s.RSSMiB.format(fmtMiB), s.BaseRSSMiB.format(fmtMiB), s.HeapMiB.format(fmtMiB))
	}
	if d := r.Devd; d != nil {
		writeDevdMarkdown(w, d)
	}
	if s := r.Storm; s != nil {
		writeStormMarkdown(w, s)
	}
}
