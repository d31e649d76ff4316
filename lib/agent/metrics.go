package agent

import (
	"net/http"
	"strconv"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/mtwatch/mtwatch/lib/domid"
)

// metrics is the agent's Prometheus collector. Counters come from one
// snapshot of the dispatcher per scrape, so the event path pays nothing for
// them. Per-domain series are gauges of live domains only (queued events,
// stall age): cardinality stays bounded by the number of live domains.
type metrics struct {
	a       *Agent
	latency prometheus.Histogram

	events, workers, domains, nodes, stale, stalled, reconnects, connected, queued, stallAge, barrier *prometheus.Desc
}

func newMetrics(a *Agent) *metrics {
	return &metrics{
		a: a,
		latency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "mtwatch_handler_duration_seconds",
			Help:    "Run time of plugin handler calls.",
			Buckets: prometheus.ExponentialBuckets(0.0001, 4, 10), // 100us .. 26s
		}),
		events:     prometheus.NewDesc("mtwatch_events_total", "Watch events by outcome (dispatched, processed, coalesced, filtered, dropped, unmatched, overflows, purged, panics, errors, stalls).", []string{"outcome"}, nil),
		workers:    prometheus.NewDesc("mtwatch_workers", "Domain workers, live or draining.", nil, nil),
		domains:    prometheus.NewDesc("mtwatch_domains", "Guest domains known (node or introduced).", nil, nil),
		nodes:      prometheus.NewDesc("mtwatch_nodes", "Trusted mtwatch nodes.", nil, nil),
		stale:      prometheus.NewDesc("mtwatch_stale_nodes", "Nodes whose domain has not been introduced for longer than the grace period.", nil, nil),
		stalled:    prometheus.NewDesc("mtwatch_stalled_handlers", "Running handlers past the stall threshold.", nil, nil),
		reconnects: prometheus.NewDesc("mtwatch_xenstore_reconnects_total", "Reconnections to xenstored.", nil, nil),
		connected:  prometheus.NewDesc("mtwatch_xenstore_connected", "1 while connected to xenstored.", nil, nil),
		queued:     prometheus.NewDesc("mtwatch_domain_queued_events", "Events pending for a domain with a worker.", []string{"domid"}, nil),
		stallAge:   prometheus.NewDesc("mtwatch_domain_stall_age_seconds", "Age of a domain's stalled handler.", []string{"domid"}, nil),
		barrier:    prometheus.NewDesc("mtwatch_barrier_timeouts_total", "Times plugin events held behind a domain introduction or node event were dispatched before the agent had handled it (a bound of the hold was reached).", nil, nil),
	}
}

func (m *metrics) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{m.events, m.workers, m.domains, m.nodes, m.stale, m.stalled, m.reconnects, m.connected, m.queued, m.stallAge, m.barrier} {
		ch <- d
	}
	m.latency.Describe(ch)
}

func (m *metrics) Collect(ch chan<- prometheus.Metric) {
	a := m.a
	m.latency.Collect(ch)
	st := a.d.Stats()
	t := st.Totals
	for _, c := range []struct {
		name string
		v    uint64
	}{
		{"dispatched", t.Dispatched}, {"processed", t.Processed}, {"coalesced", t.Coalesced},
		{"filtered", t.Filtered}, {"dropped", t.Dropped}, {"unmatched", t.Unmatched},
		{"overflows", t.Overflows}, {"purged", t.Purged}, {"panics", t.Panics},
		{"errors", t.Errors}, {"stalls", t.Stalls},
	} {
		ch <- prometheus.MustNewConstMetric(m.events, prometheus.CounterValue, float64(c.v), c.name)
	}
	ch <- prometheus.MustNewConstMetric(m.workers, prometheus.GaugeValue, float64(st.Workers))
	stalls := a.stalls(st)
	ch <- prometheus.MustNewConstMetric(m.stalled, prometheus.GaugeValue, float64(len(stalls)))
	s := a.status(st, stalls)
	ch <- prometheus.MustNewConstMetric(m.domains, prometheus.GaugeValue, float64(s.Domains))
	ch <- prometheus.MustNewConstMetric(m.nodes, prometheus.GaugeValue, float64(s.Nodes))
	ch <- prometheus.MustNewConstMetric(m.stale, prometheus.GaugeValue, float64(s.Stale))
	ch <- prometheus.MustNewConstMetric(m.reconnects, prometheus.CounterValue, float64(s.Xenstore.Reconnects))
	conn := 0.0
	if s.Xenstore.State == "connected" {
		conn = 1
	}
	ch <- prometheus.MustNewConstMetric(m.connected, prometheus.GaugeValue, conn)
	ch <- prometheus.MustNewConstMetric(m.barrier, prometheus.CounterValue, float64(a.bar.timeouts()))
	for _, ds := range st.Domains {
		if ds.Domid == domid.Dom0 || !ds.Worker {
			continue
		}
		ch <- prometheus.MustNewConstMetric(m.queued, prometheus.GaugeValue, float64(ds.Queued), strconv.Itoa(int(ds.Domid)))
	}
	for _, sl := range stalls {
		if sl.Worker == "domain" {
			ch <- prometheus.MustNewConstMetric(m.stallAge, prometheus.GaugeValue, float64(sl.AgeMS)/1000, strconv.Itoa(int(sl.Domid)))
		}
	}
}

// MetricsHandler serves the agent's registry in the Prometheus text format.
func (a *Agent) MetricsHandler() http.Handler {
	return promhttp.HandlerFor(a.reg, promhttp.HandlerOpts{})
}
