package main

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/mtwatch/mtwatch/internal/testenv"
)

// TestMain lets the test binary serve as the writer process, as the
// command re-executes itself for it.
func TestMain(m *testing.M) {
	if sock := os.Getenv(envWriter); sock != "" {
		os.Exit(writerMain(sock))
	}
	testenv.Scrub()
	os.Exit(m.Run())
}

func TestUsage(t *testing.T) {
	for _, args := range [][]string{
		{"--runs", "0"},
		{"--only", "latency"},
		{"--scale", "40000"},
		{"--flood", "1ms"},
		{"--devd-domains", "1"},
		{"--devd-wait", "0s"},
		{"--storm-devices", "3"},
		{"--storm-domains", "0"},
		{"extra"},
	} {
		var out, errb bytes.Buffer
		if code := run(args, &out, &errb); code != 2 || errb.Len() == 0 {
			t.Errorf("%v: exit %d, stderr %q; want 2 and a message", args, code, errb.String())
		}
	}
}

func TestPercentileAndSpread(t *testing.T) {
	ds := []time.Duration{1, 2, 3, 4, 5, 6, 7, 8, 9, 10}
	for _, tc := range []struct {
		p    float64
		want time.Duration
	}{{50, 5}, {99, 10}, {10, 1}, {1, 1}} {
		if got := percentile(ds, tc.p); got != tc.want {
			t.Errorf("p%v = %v, want %v", tc.p, got, tc.want)
		}
	}
	for _, tc := range []struct {
		in             []float64
		med, min, maxv float64
	}{{[]float64{3, 1, 2}, 2, 1, 3}, {[]float64{4, 1, 3, 2}, 2.5, 1, 4}} {
		s := newSpread(tc.in)
		if s.Median != tc.med || s.Min != tc.min || s.Max != tc.maxv || len(s.Runs) != len(tc.in) || s.Runs[0] != tc.in[0] {
			t.Errorf("newSpread(%v) = %+v", tc.in, s)
		}
	}
	if got := rotate([]string{"a", "b", "c"}, 4); strings.Join(got, "") != "bca" {
		t.Errorf("rotate: %v", got)
	}
}

// TestSmallRun runs every scenario at a tiny size against a real xenstored
// and checks that each variant was measured and the outputs written.
func TestSmallRun(t *testing.T) {
	dir := t.TempDir()
	jsonOut, svgOut := filepath.Join(dir, "r.json"), filepath.Join(dir, "cdf.svg")
	var out, errb bytes.Buffer
	code := run([]string{"--only", "throughput,isolation,flood,scale", "--runs", "1", "--throughput-runs", "0", "--domains", "50", "--writes", "2000", "--iso-domains", "20",
		"--rounds", "3", "--stall", "50ms", "--flood", "300ms", "--scale", "200",
		"--cbench", "../../lib/xenstore/bench/cbench.c", "--json", jsonOut, "--svg", svgOut}, &out, &errb)
	if code != 0 {
		t.Fatalf("exit %d\n%s", code, errb.String())
	}
	var r results
	b, err := os.ReadFile(jsonOut)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &r); err != nil {
		t.Fatal(err)
	}
	for _, v := range []string{string(modeMtwatch), string(modeSingle), string(modeMtwatchAllCPUs), variantLibxenstore} {
		if r.Throughput == nil || r.Throughput.EventsPerSec[v].Median <= 0 {
			t.Errorf("throughput %s not measured: %+v", v, r.Throughput)
		}
	}
	for _, v := range []string{isoMtwatch, isoSingle, isoNone} {
		if r.Isolation == nil || r.Isolation.P99[v].Median <= 0 {
			t.Errorf("isolation %s not measured", v)
		}
	}
	// The single worker runs the healthy events after the stalled ones.
	if r.Isolation != nil && r.Isolation.P50[isoSingle].Median < 50e3 {
		t.Errorf("single-worker p50 %v µs is below one stall (50 ms)", r.Isolation.P50[isoSingle].Median)
	}
	if r.Flood == nil || r.Flood.PeakRSSMiB[floodOn].Median <= 0 || r.Flood.FloodWritesPerSec.Median <= 0 {
		t.Errorf("flood not measured: %+v", r.Flood)
	}
	if r.Scale == nil || r.Scale.CreatedPerSec[scaleAgent].Median <= 0 || r.Scale.DestroyedPerSec[scaleBare].Median <= 0 {
		t.Errorf("scale not measured: %+v", r.Scale)
	}
	if svg, err := os.ReadFile(svgOut); err != nil || !bytes.Contains(svg, []byte("<svg")) {
		t.Errorf("no SVG: %v", err)
	}
	for _, h := range []string{"### 1. Throughput", "### 2. Isolation", "### 3. Flood", "### 4. Scale"} {
		if !strings.Contains(out.String(), h) {
			t.Errorf("no %q table in the output", h)
		}
	}
}

// TestDevdSmall runs the devd scenario at a tiny size: the real mtwatchd and
// the real xl devd, each on its own xenstored, run the same bursts' scripts.
// A missing xl fails it: the comparison is the point.
func TestDevdSmall(t *testing.T) {
	dir := t.TempDir()
	bin := filepath.Join(dir, "mtwatchd")
	// From mtwatch's own module: this command is a module of its own.
	if out, err := exec.Command("go", "-C", "../..", "build", "-o", bin, "./cmd/mtwatchd").CombinedOutput(); err != nil {
		t.Fatalf("build mtwatchd: %v\n%s", err, out)
	}
	jsonOut := filepath.Join(dir, "r.json")
	var out, errb bytes.Buffer
	code := run([]string{"--only", "devd", "--runs", "1", "--devd-burst", "6", "--devd-domains", "3",
		"--devd-delay", "100ms", "--devd-wait", "4s", "--devd-script-timeout", "1s",
		"--mtwatchd", bin, "--json", jsonOut, "--svg", ""}, &out, &errb)
	if code != 0 {
		t.Fatalf("exit %d\n%s", code, errb.String())
	}
	var r results
	b, err := os.ReadFile(jsonOut)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &r); err != nil {
		t.Fatal(err)
	}
	if r.Devd == nil || len(r.Devd.Cases) != 2 {
		t.Fatalf("devd: %+v", r.Devd)
	}
	for i, c := range r.Devd.Cases {
		for _, peer := range []string{peerMtwatch, peerXlDevd, peerFloor} {
			// Every healthy device connected, after its script ran (the
			// four-disk case's scripts take 100 ms).
			floor := 0.0
			if i == 1 {
				floor = 100e3
			}
			if p50 := c.DeviceP50[peer].Median; p50 <= floor || c.Failed[peer][0] != 0 {
				t.Errorf("case %d, %s: p50 %v µs, failed %v", i, peer, p50, c.Failed[peer])
			}
			if len(c.Hung[peer]) != 1 || c.Hung[peer][0] == "" || strings.HasPrefix(c.Hung[peer][0], "connected") {
				t.Errorf("case %d, %s: hung device %q", i, peer, c.Hung[peer])
			}
		}
	}
	if sib := r.Devd.Cases[1].Siblings[peerXlDevd]; len(sib) != 3 {
		t.Errorf("xl devd: siblings %v, want 3", sib)
	}
	if !strings.Contains(out.String(), "beside xl devd") {
		t.Errorf("no devd table in the output:\n%s", out.String())
	}
}

// TestStormSmall runs the storm at a small size with max_scripts 4: the
// real mtwatchd runs 120 scripts of 30 domains created 8 at once, 16 disks
// asking for a script at a time, and the scripts' own count shows the cap
// reached and held.
func TestStormSmall(t *testing.T) {
	dir := t.TempDir()
	bin := filepath.Join(dir, "mtwatchd")
	if out, err := exec.Command("go", "-C", "../..", "build", "-o", bin, "./cmd/mtwatchd").CombinedOutput(); err != nil {
		t.Fatalf("build mtwatchd: %v\n%s", err, out)
	}
	jsonOut := filepath.Join(dir, "r.json")
	var out, errb bytes.Buffer
	code := run([]string{"--only", "storm", "--runs", "1", "--storm-domains", "30", "--storm-concurrency", "8",
		"--storm-max-scripts", "4", "--mtwatchd", bin, "--json", jsonOut, "--svg", ""}, &out, &errb)
	if code != 0 {
		t.Fatalf("exit %d\n%s", code, errb.String())
	}
	var r results
	b, err := os.ReadFile(jsonOut)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &r); err != nil {
		t.Fatal(err)
	}
	s := r.Storm
	if s == nil {
		t.Fatalf("no storm results:\n%s", b)
	}
	if s.Cap != 4 || s.ScriptsPeak.Max != 4 || s.PluginPeak.Max != 4 {
		t.Errorf("cap %d, peak %v by the scripts, %v by the plugin: want 4, 4, 4", s.Cap, s.ScriptsPeak.Runs, s.PluginPeak.Runs)
	}
	// An add and a remove per disk.
	if s.Scripts.Median != 120 || s.Failed[0] != 0 {
		t.Errorf("%v scripts, %v failed: want 120, 0", s.Scripts.Runs, s.Failed)
	}
	// 16 disks wanting a script, 4 running at a time, 50 ms each: the
	// slowest waited at least three others' turns.
	if s.SetupMax.Median < 150e3 || s.RSSPeakMiB.Median < s.RSSStartMiB.Median || s.RSSEndMiB.Median <= 0 || s.MtwatchdCPUMS.Median <= 0 || s.XenstoredCPUMS.Median <= 0 {
		t.Errorf("set-up max %v µs, RSS start %v, peak %v, end %v MiB", s.SetupMax.Median, s.RSSStartMiB.Median, s.RSSPeakMiB.Median, s.RSSEndMiB.Median)
	}
	if !strings.Contains(out.String(), "### 6. Storm") {
		t.Errorf("no storm table in the output:\n%s", out.String())
	}
}

func TestCountRunning(t *testing.T) {
	for _, tc := range []struct {
		name          string
		log           string
		peak, started int
		bad           bool
	}{
		{"serial", "+\n-\n+\n-\n", 1, 2, false},
		{"overlap", "+\n+\n-\n+\n+\n-\n-\n-\n", 3, 4, false},
		{"empty", "", 0, 0, false},
		{"never ended", "+\n+\n-\n", 2, 2, true},
		{"garbage", "+\nx\n-\n", 0, 0, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := filepath.Join(t.TempDir(), "count")
			if err := os.WriteFile(p, []byte(tc.log), 0o644); err != nil {
				t.Fatal(err)
			}
			peak, started, err := countRunning(p)
			if (err != nil) != tc.bad || peak != tc.peak || started != tc.started {
				t.Errorf("countRunning(%q) = %d, %d, %v; want %d, %d, error %v", tc.log, peak, started, err, tc.peak, tc.started, tc.bad)
			}
		})
	}
}
