// Package canary measures the part of the event path mtwatch does not own:
// it writes a private node at an interval and times each write to the watch
// event it causes. A slow canary with idle handlers means xenstored (or, over
// /dev/xen/xenbus, the kernel's single xenwatch thread) is slow; a stalled
// handler with a fast canary means a handler is stuck.
package canary

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/mtwatch/mtwatch/lib/domid"
	"github.com/mtwatch/mtwatch/lib/xenstore"
)

// Defaults for Config fields left zero.
const (
	DefaultInterval  = 5 * time.Second
	DefaultThreshold = time.Second
	// DefaultPath is dom0's canary: beside, not inside, the node directory
	// (lib/node), whose entries must all be domids.
	DefaultPath = "/local/domain/0/mtwatch-canary"
	// Token is the canary watch's token.
	Token = "mtwatch-canary"
)

// ErrConfig is returned by New when a Config field is out of range.
var ErrConfig = errors.New("invalid canary configuration")

// Config configures a Canary. The zero value is usable.
type Config struct {
	// Interval between writes; a write whose event has not come yet is
	// not repeated. Zero means DefaultInterval.
	Interval time.Duration
	// Threshold: a write whose event takes longer raises the alarm (logged
	// once per episode). Zero means DefaultThreshold.
	Threshold time.Duration
	// Path of the canary node, and Owner, the domain that owns it with no
	// access for anybody else (n<Owner>: dom0's home for dom0, the driver
	// domain's own home in driver-domain mode). Zero values mean
	// DefaultPath and dom0.
	Path  string
	Owner domid.ID
	// Logger receives the alarm and its end. Nil means slog.Default().
	Logger *slog.Logger
}

// Status is a snapshot of the canary.
type Status struct {
	Interval, Threshold     time.Duration
	Samples                 uint64        // events timed
	LastLatency, MaxLatency time.Duration // write to watch event
	Alarm                   bool          // the last write's event is (or was) later than Threshold
	Alarms                  uint64        // alarm episodes so far
	PendingFor              time.Duration // age of the write waiting for its event; 0 if none
	LastError               string        // last failed write, "" once one succeeded again
}

// Canary is the write to watch-event probe. Run drives it on one
// connection; Status and the metrics read it from any goroutine.
type Canary struct {
	cfg  Config
	log  *slog.Logger
	hist prometheus.Histogram
	// alarmDesc and alarmsDesc are the gauge and counter of the alarm.
	alarmDesc, alarmsDesc *prometheus.Desc

	mu        sync.Mutex
	seq       uint64
	pending   bool // a write waits for its event
	writing   bool // a write waits for its reply
	sentAt    time.Time
	timer     *time.Timer // raises the alarm when the pending write is late
	samples   uint64
	last, max time.Duration
	alarm     bool
	alarms    uint64
	lastErr   string
}

// New validates cfg and returns a Canary.
func New(cfg Config) (*Canary, error) {
	if cfg.Interval < 0 || cfg.Threshold < 0 {
		return nil, fmt.Errorf("canary: interval %v, threshold %v: %w", cfg.Interval, cfg.Threshold, ErrConfig)
	}
	if cfg.Interval == 0 {
		cfg.Interval = DefaultInterval
	}
	if cfg.Threshold == 0 {
		cfg.Threshold = DefaultThreshold
	}
	if cfg.Path == "" {
		cfg.Path = DefaultPath
	}
	if cfg.Owner.IsReserved() {
		return nil, fmt.Errorf("canary: owner %d: %w", cfg.Owner, ErrConfig)
	}
	c := &Canary{cfg: cfg, log: cfg.Logger}
	if c.log == nil {
		c.log = slog.Default()
	}
	c.hist = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "mtwatch_canary_latency_seconds",
		Help:    "Time from a write of the canary node to its watch event: xenstored and, over /dev/xen/xenbus, the kernel's xenwatch thread.",
		Buckets: prometheus.ExponentialBuckets(0.0001, 4, 10), // 100us .. 26s
	})
	c.alarmDesc = prometheus.NewDesc("mtwatch_canary_alarm", "1 while the canary's last write got its watch event later than the threshold, or none yet.", nil, nil)
	c.alarmsDesc = prometheus.NewDesc("mtwatch_canary_alarms_total", "Canary alarm episodes.", nil, nil)
	return c, nil
}

// Place sets the canary node and its owner, for a caller that learns
// where it belongs only once connected: an agent whose domid is "auto"
// learns from its first connection that it runs in a driver domain, which
// cannot write dom0's home. It must be called before Run.
func (c *Canary) Place(path string, owner domid.ID) error {
	if path == "" || owner.IsReserved() {
		return fmt.Errorf("canary: node %q owned by %d: %w", path, owner, ErrConfig)
	}
	c.cfg.Path, c.cfg.Owner = path, owner
	return nil
}

// Run writes the canary every interval on xs and times its events, until ctx
// ends or xs fails. It returns ctx's error or the connection's.
func (c *Canary) Run(ctx context.Context, xs *xenstore.Client) error {
	perms := xenstore.Perms{{Domid: c.cfg.Owner, Access: xenstore.AccessNone}}
	// Created and made private before the watch: no guest can read it, and
	// a guest could not have created it (only dom0 or the owner writes under
	// the owner's home).
	if err := xs.Write(ctx, c.cfg.Path, []byte("0")); err != nil {
		return fmt.Errorf("canary: create %s: %w", c.cfg.Path, err)
	}
	if err := xs.SetPerms(ctx, c.cfg.Path, perms); err != nil {
		return fmt.Errorf("canary: set perms of %s: %w", c.cfg.Path, err)
	}
	// The watch's first event is the one xenstored sends on registration.
	// No write is made before it came: xenstored merges identical pending
	// events (XSA-326), so a write's event could otherwise merge into it,
	// or it could pass for the write's.
	first, registered := true, make(chan struct{})
	w, err := xs.WatchFunc(ctx, c.cfg.Path, Token, func(xenstore.Event) {
		if first {
			first = false
			close(registered)
			return
		}
		c.event(time.Now())
	})
	if err != nil {
		return fmt.Errorf("canary: %w", err)
	}
	defer func() {
		uctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Second)
		defer cancel()
		w.Unwatch(uctx) //nolint:errcheck // best effort: the connection may be gone
		c.reset()
	}()
	select {
	case <-registered:
	case <-ctx.Done():
		return ctx.Err()
	case <-xs.Done():
		return fmt.Errorf("canary: %w", xs.Err())
	}
	t := time.NewTicker(c.cfg.Interval)
	defer t.Stop()
	for {
		if err := c.probe(ctx, xs); err != nil {
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-xs.Done():
			return fmt.Errorf("canary: %w", xs.Err())
		case <-t.C:
		}
	}
}

// probe writes the next value unless a write still waits for its event. A
// failed write is recorded, not fatal, unless the connection is gone.
func (c *Canary) probe(ctx context.Context, xs *xenstore.Client) error {
	c.mu.Lock()
	if c.pending {
		c.mu.Unlock()
		return nil
	}
	c.seq++
	seq := c.seq
	c.pending, c.writing = true, true
	c.sentAt = time.Now()
	c.timer = time.AfterFunc(c.cfg.Threshold, func() { c.late(seq) })
	c.mu.Unlock()

	err := xs.Write(ctx, c.cfg.Path, []byte(strconv.FormatUint(seq, 10)))
	c.mu.Lock()
	defer c.mu.Unlock()
	c.writing = false
	if err == nil {
		c.lastErr = ""
		if !c.pending {
			c.timer.Stop()
		}
		return nil
	}
	c.lastErr = err.Error()
	if c.pending && c.seq == seq {
		c.pending = false
		c.timer.Stop()
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	if xs.Err() != nil {
		return fmt.Errorf("canary: write %s: %w", c.cfg.Path, err)
	}
	c.log.Warn("canary: write failed", "path", c.cfg.Path, "err", err)
	return nil
}

// event runs on the connection's reading goroutine: it must not block.
// Spurious events (xenstored may send them) find no write pending and are
// ignored; xenstored does not merge the event of a write into an older one
// here, since only one write is ever pending. The timer keeps running while
// the write's reply has not come: a spurious event that took the write's
// place must not hide a xenstored that stopped answering.
func (c *Canary) event(now time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.pending {
		return
	}
	c.pending = false
	if !c.writing {
		c.timer.Stop()
	}
	lat := now.Sub(c.sentAt)
	c.samples++
	c.last, c.max = lat, max(c.max, lat)
	c.hist.Observe(lat.Seconds())
	switch {
	case lat > c.cfg.Threshold && !c.alarm:
		// The timer lost the race with the event: still an alarm.
		c.alarm = true
		c.alarms++
		c.log.Warn("canary: watch event later than the threshold: xenstored or the kernel's xenwatch path is slow",
			"path", c.cfg.Path, "latency", lat, "threshold", c.cfg.Threshold)
	case lat <= c.cfg.Threshold && c.alarm:
		c.alarm = false
		c.log.Info("canary: watch events on time again", "path", c.cfg.Path, "latency", lat)
	}
}

// late runs on the timer's goroutine when write seq has waited Threshold,
// for its event or for its reply (an event that is no write's, a spurious
// one, may have cleared pending, but xenstored has not answered).
func (c *Canary) late(seq uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !(c.pending || c.writing) || c.seq != seq || c.alarm {
		return
	}
	c.alarm = true
	c.alarms++
	c.log.Warn("canary: no watch event yet for a write: xenstored or the kernel's xenwatch path is slow or stuck (handlers are not involved)",
		"path", c.cfg.Path, "waited", time.Since(c.sentAt), "threshold", c.cfg.Threshold)
}

// reset forgets a pending write when its connection ends.
func (c *Canary) reset() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.pending {
		c.pending = false
		c.timer.Stop()
	}
	c.writing = false
}

// Status returns a snapshot.
func (c *Canary) Status() Status {
	c.mu.Lock()
	defer c.mu.Unlock()
	s := Status{
		Interval: c.cfg.Interval, Threshold: c.cfg.Threshold,
		Samples: c.samples, LastLatency: c.last, MaxLatency: c.max,
		Alarm: c.alarm, Alarms: c.alarms, LastError: c.lastErr,
	}
	if c.pending || c.writing {
		s.PendingFor = time.Since(c.sentAt)
	}
	return s
}

// Describe implements prometheus.Collector.
func (c *Canary) Describe(ch chan<- *prometheus.Desc) {
	c.hist.Describe(ch)
	ch <- c.alarmDesc
	ch <- c.alarmsDesc
}

// Collect implements prometheus.Collector.
func (c *Canary) Collect(ch chan<- prometheus.Metric) {
	c.hist.Collect(ch)
	s := c.Status()
	alarm := 0.0
	if s.Alarm {
		alarm = 1
	}
	ch <- prometheus.MustNewConstMetric(c.alarmDesc, prometheus.GaugeValue, alarm)
	ch <- prometheus.MustNewConstMetric(c.alarmsDesc, prometheus.CounterValue, float64(s.Alarms))
}
