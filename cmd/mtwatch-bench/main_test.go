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
		for _, peer := range []string{peerMtwatch, peerXlDevd} {
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
