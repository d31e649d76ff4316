package sim

import (
	"encoding/json"
	"fmt"
	"io"
	"math"
	"slices"
	"strings"
	"text/tabwriter"
	"time"
)

// Report is what a run measured. Durations are in microseconds.
type Report struct {
	Label       string    `json:"label,omitempty"`
	Domains     int       `json:"domains"`
	Concurrency int       `json:"concurrency"`
	HangDomain  uint16    `json:"hang_domain,omitempty"`
	StartedAt   time.Time `json:"started_at"`
	WallMS      int64     `json:"wall_ms"`
	Summary     Summary   `json:"summary"`
	Results     []Result  `json:"domains_detail"`
}

// Summary splits the figures between healthy domains and the hung one.
type Summary struct {
	// Device set-up: backend InitWait to hotplug-status=connected, every
	// device of the healthy domains.
	HealthySetup Stats `json:"healthy_device_setup"`
	HungSetup    Stats `json:"hung_device_setup"`
	// Domain create: the first XenStore write to the "started" hook done;
	// destroy: the first device closed to the node removed.
	HealthyCreate  Stats `json:"healthy_create"`
	HealthyDestroy Stats `json:"healthy_destroy"`
	HungCreate     Stats `json:"hung_create"`
	HungDestroy    Stats `json:"hung_destroy"`
	// Failed counts healthy domains with an error.
	Failed int `json:"failed"`
}

// Stats summarises durations.
type Stats struct {
	N     int   `json:"n"`
	P50US int64 `json:"p50_us"`
	P99US int64 `json:"p99_us"`
	MaxUS int64 `json:"max_us"`
}

// Result is one domain.
type Result struct {
	Domid     uint16         `json:"domid"`
	UUID      string         `json:"uuid"`
	Hung      bool           `json:"hung,omitempty"`
	CreateUS  int64          `json:"create_us"`
	DestroyUS int64          `json:"destroy_us"`
	Devices   []DeviceResult `json:"devices"`
	Errors    []string       `json:"errors,omitempty"`
}

// DeviceResult is one device of a domain.
type DeviceResult struct {
	Type     string `json:"type"`
	Devid    int    `json:"devid"`
	Status   string `json:"status"`
	Hung     bool   `json:"hung,omitempty"` // given the hang script
	SetupUS  int64  `json:"setup_us"`
	RemoveUS int64  `json:"remove_us"`
	Error    string `json:"error,omitempty"`
}

func newReport(cfg Config, start time.Time, wall time.Duration, doms []*domain) *Report {
	r := &Report{
		Label:       cfg.Label,
		Domains:     cfg.Domains,
		Concurrency: cfg.Concurrency,
		HangDomain:  uint16(cfg.HangDomain),
		StartedAt:   start,
		WallMS:      wall.Milliseconds(),
	}
	var hs, us, hc, hd, uc, ud []time.Duration
	for _, d := range doms {
		res := Result{Domid: uint16(d.id), UUID: d.uuid, Hung: d.hung,
			CreateUS: d.created.Microseconds(), DestroyUS: d.destroy.Microseconds(), Errors: d.errs}
		for _, v := range d.devices {
			res.Devices = append(res.Devices, DeviceResult{Type: v.kind, Devid: v.devid, Status: v.status, Hung: v.hung,
				SetupUS: v.setup.Microseconds(), RemoveUS: v.remove.Microseconds(), Error: v.err})
			if v.status == StatusConnected || v.status == StatusError || v.status == StatusTimeout {
				if d.hung {
					us = append(us, v.setup)
				} else {
					hs = append(hs, v.setup)
				}
			}
		}
		r.Results = append(r.Results, res)
		if !d.started {
			continue
		}
		if d.hung {
			uc, ud = append(uc, d.created), append(ud, d.destroy)
			continue
		}
		hc, hd = append(hc, d.created), append(hd, d.destroy)
		if len(d.errs) > 0 {
			r.Summary.Failed++
		}
	}
	r.Summary.HealthySetup, r.Summary.HungSetup = stats(hs), stats(us)
	r.Summary.HealthyCreate, r.Summary.HealthyDestroy = stats(hc), stats(hd)
	r.Summary.HungCreate, r.Summary.HungDestroy = stats(uc), stats(ud)
	return r
}

// Percentile returns the p-th percentile (0 < p <= 100) of sorted ds by the
// nearest-rank method, 0 for none.
func Percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	rank := int(math.Ceil(p / 100 * float64(len(sorted))))
	return sorted[min(max(rank, 1), len(sorted))-1]
}

func stats(ds []time.Duration) Stats {
	if len(ds) == 0 {
		return Stats{}
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	return Stats{N: len(s), P50US: Percentile(s, 50).Microseconds(),
		P99US: Percentile(s, 99).Microseconds(), MaxUS: s[len(s)-1].Microseconds()}
}

// WriteJSON writes the report, indented.
func (r *Report) WriteJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(r)
}

// ReadReport decodes a report written by WriteJSON.
func ReadReport(rd io.Reader) (*Report, error) {
	var r Report
	if err := json.NewDecoder(rd).Decode(&r); err != nil {
		return nil, fmt.Errorf("sim report: %w", err)
	}
	return &r, nil
}

// FormatUS renders microseconds for people: 850µs, 12.3ms, 10.0s.
func FormatUS(us int64) string {
	switch {
	case us < 1000:
		return fmt.Sprintf("%dµs", us)
	case us < 1000_000:
		return fmt.Sprintf("%.1fms", float64(us)/1e3)
	}
	return fmt.Sprintf("%.1fs", float64(us)/1e6)
}

// WriteComparison prints reports side by side, one column per report, in
// the shape of a short table.
func WriteComparison(w io.Writer, reports ...*Report) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	head := []string{""}
	for _, r := range reports {
		head = append(head, r.Label)
	}
	fmt.Fprintln(tw, strings.Join(head, "\t")+"\t")
	pair := func(s Stats) string {
		if s.N == 0 {
			return "-"
		}
		return FormatUS(s.P50US) + " / " + FormatUS(s.P99US)
	}
	rows := []struct {
		name string
		get  func(*Report) string
	}{
		{"healthy device set-up p50 / p99", func(r *Report) string { return pair(r.Summary.HealthySetup) }},
		{"hung domain's device set-up", func(r *Report) string {
			if r.Summary.HungSetup.N == 0 {
				return "-"
			}
			return FormatUS(r.Summary.HungSetup.MaxUS)
		}},
		{"healthy domain create p50 / p99", func(r *Report) string { return pair(r.Summary.HealthyCreate) }},
		{"healthy domain destroy p50 / p99", func(r *Report) string { return pair(r.Summary.HealthyDestroy) }},
		{"healthy domains failed", func(r *Report) string { return fmt.Sprint(r.Summary.Failed) }},
		{"whole run", func(r *Report) string { return FormatUS(r.WallMS * 1000) }},
	}
	for _, row := range rows {
		cells := []string{row.name}
		for _, r := range reports {
			cells = append(cells, row.get(r))
		}
		fmt.Fprintln(tw, strings.Join(cells, "\t")+"\t")
	}
	return tw.Flush()
}
