package agent

import (
	"net/http"
	"strconv"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/mtwatch/mtwatch/lib/dispatch"
	"github.com/mtwatch/mtwatch/lib/domid"
)

// metrics is the agent's Prometheus collector. Counters come from one
// snapshot of the dispatcher per scrape, so the event path pays nothing for
// them. Per-domain series are gauges of live domains only (queued events,
// stall age): cardinality stays bounded by the number of live domains.
type metrics struct {
	a       *Agent
	latency prometheus.Histogram

	workers, domains, nodes, stale, stalled, reconnects, connected, queued, stallAge, pluginStallAge *prometheus.Desc
	ev                                                                                               eventDescs
}

// eventDescs are the event counters, split so that every sum means
// something: each event dispatched to a watch, and each overflow notice,
// ends in one handler call or one discard, so
//
//	dispatched + overflow_notices = handler_calls + discarded (all reasons) + pending
//
// and pending (the queued-events gauges) is 0 on an idle agent. Unmatched
// events never reach a watch; failures and stalls count handler calls
// again, by what went wrong with them.
type eventDescs struct {
	dispatched, unmatched, overflows, calls, discarded, failures, stalls *prometheus.Desc
	// Staging: a guest's events that waited for its worker, and what
	// became of them; a guest's handler calls on the default worker.
	staged, unstaged, guestOnDefault *prometheus.Desc
}

func newMetrics(a *Agent) *metrics {
	return &metrics{
		a: a,
		latency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "mtwatch_handler_duration_seconds",
			Help:    "Run time of plugin handler calls.",
			Buckets: prometheus.ExponentialBuckets(0.0001, 4, 10), // 100us .. 26s
		}),
		ev: eventDescs{
			dispatched:     prometheus.NewDesc("mtwatch_events_dispatched_total", "Watch events that matched a registered watch; each ends as one handler call or one discard.", nil, nil),
			unmatched:      prometheus.NewDesc("mtwatch_events_unmatched_total", "Watch events whose token matched no registered watch (not dispatched).", nil, nil),
			overflows:      prometheus.NewDesc("mtwatch_overflow_notices_total", "Overflow notices queued for a watch after its domain's queue was full; each ends as one handler call or one discard.", nil, nil),
			calls:          prometheus.NewDesc("mtwatch_handler_calls_total", "Handler calls run to their end, for events and overflow notices.", nil, nil),
			discarded:      prometheus.NewDesc("mtwatch_events_discarded_total", "Events (and, for purged, notices) that ended without a handler call: filtered by the watch, coalesced into an identical pending one, dropped on a full domain queue, purged by unregister or stop.", []string{"reason"}, nil),
			failures:       prometheus.NewDesc("mtwatch_handler_failures_total", "Handler calls that returned an error or panicked (counted in mtwatch_handler_calls_total too).", []string{"reason"}, nil),
			stalls:         prometheus.NewDesc("mtwatch_handler_stalls_total", "Handler calls that ran past the stall threshold.", nil, nil),
			staged:         prometheus.NewDesc("mtwatch_events_staged_total", "A guest's events (counted in mtwatch_events_dispatched_total) that waited for its worker instead of running on the default worker.", nil, nil),
			unstaged:       prometheus.NewDesc("mtwatch_events_unstaged_total", "Staged events handed on: promoted to the guest's worker when it came, or flushed to a worker of their own when none would.", []string{"to"}, nil),
			guestOnDefault: prometheus.NewDesc("mtwatch_guest_events_on_default_worker_total", "Handler calls of a guest's events on the default worker: 0 outside single-worker mode.", nil, nil),
		},
		workers:    prometheus.NewDesc("mtwatch_workers", "Domain workers, live or draining.", nil, nil),
		domains:    prometheus.NewDesc("mtwatch_domains", "Guest domains known (node or introduced).", nil, nil),
		nodes:      prometheus.NewDesc("mtwatch_nodes", "Trusted mtwatch nodes.", nil, nil),
		stale:      prometheus.NewDesc("mtwatch_stale_nodes", "Nodes whose domain has not been introduced for longer than the grace period.", nil, nil),
		stalled:    prometheus.NewDesc("mtwatch_stalled_handlers", "Running handlers past the stall threshold, and plugins' work stalled off the workers (a hotplug script, a stuck device).", nil, nil),
		reconnects: prometheus.NewDesc("mtwatch_xenstore_reconnects_total", "Reconnections to xenstored.", nil, nil),
		connected:  prometheus.NewDesc("mtwatch_xenstore_connected", "1 while connected to xenstored.", nil, nil),
		queued:     prometheus.NewDesc("mtwatch_domain_queued_events", "Events pending for a domain with a worker.", []string{"domid"}, nil),
		stallAge:   prometheus.NewDesc("mtwatch_domain_stall_age_seconds", "Age of the stalled handler of a domain's worker; domid 0 is the default worker, whatever domain its event belongs to.", []string{"domid"}, nil),
		pluginStallAge: prometheus.NewDesc("mtwatch_domain_plugin_stall_age_seconds",
			"Age of a domain's oldest work of a plugin stalled off the workers (a hotplug script, a device stuck in set-up or teardown).", []string{"domid", "plugin"}, nil),
	}
}

func (m *metrics) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{m.ev.dispatched, m.ev.unmatched, m.ev.overflows, m.ev.calls, m.ev.discarded, m.ev.failures, m.ev.stalls, m.workers, m.domains, m.nodes, m.stale, m.stalled, m.reconnects, m.connected, m.queued, m.stallAge, m.pluginStallAge, m.ev.staged, m.ev.unstaged, m.ev.guestOnDefault} {
		ch <- d
	}
	m.latency.Describe(ch)
}

func (m *metrics) Collect(ch chan<- prometheus.Metric) {
	a := m.a
	m.latency.Collect(ch)
	st := a.d.Stats()
	t := st.Totals
	m.ev.collect(ch, t)
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
	for _, ds := range st.Domains {
		if ds.Domid == domid.Dom0 || !ds.Worker {
			continue
		}
		ch <- prometheus.MustNewConstMetric(m.queued, prometheus.GaugeValue, float64(ds.Queued), strconv.Itoa(int(ds.Domid)))
	}
	// One series per worker: the default worker's stall (which holds up
	// dom0's events and paths of no domain) as domid 0; a domain with a
	// draining generation and a live one stalled at once shows the older.
	// A plugin's stalled work holds up no worker: it is the domain's own,
	// one series per domain and plugin, never the default worker's.
	type domPlugin struct {
		id     domid.ID
		plugin string
	}
	age := map[domid.ID]int64{}
	pluginAge := map[domPlugin]int64{}
	for _, sl := range stalls {
		switch sl.Worker {
		case "plugin":
			k := domPlugin{domid.ID(sl.Domid), sl.Watch}
			pluginAge[k] = max(pluginAge[k], sl.AgeMS)
		case "domain":
			age[domid.ID(sl.Domid)] = max(age[domid.ID(sl.Domid)], sl.AgeMS)
		default:
			age[domid.Dom0] = max(age[domid.Dom0], sl.AgeMS)
		}
	}
	for id, ms := range age {
		ch <- prometheus.MustNewConstMetric(m.stallAge, prometheus.GaugeValue, float64(ms)/1000, strconv.Itoa(int(id)))
	}
	for k, ms := range pluginAge {
		ch <- prometheus.MustNewConstMetric(m.pluginStallAge, prometheus.GaugeValue, float64(ms)/1000, strconv.Itoa(int(k.id)), k.plugin)
	}
}

func (e eventDescs) collect(ch chan<- prometheus.Metric, t dispatch.Counters) {
	counter := func(d *prometheus.Desc, v uint64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}
	counter(e.dispatched, t.Dispatched)
	counter(e.unmatched, t.Unmatched)
	counter(e.overflows, t.Overflows)
	counter(e.calls, t.Processed)
	counter(e.discarded, t.Filtered, "filtered")
	counter(e.discarded, t.Coalesced, "coalesced")
	counter(e.discarded, t.Dropped, "dropped")
	counter(e.discarded, t.Purged, "purged")
	counter(e.failures, t.Errors, "error")
	counter(e.failures, t.Panics, "panic")
	counter(e.stalls, t.Stalls)
	counter(e.staged, t.Staged)
	counter(e.unstaged, t.Promoted, "worker")
	counter(e.unstaged, t.Flushed, "flush")
	counter(e.guestOnDefault, t.GuestOnDefault)
}

// MetricsHandler serves the agent's registry in the Prometheus text format.
func (a *Agent) MetricsHandler() http.Handler {
	return promhttp.HandlerFor(a.reg, promhttp.HandlerOpts{})
}
