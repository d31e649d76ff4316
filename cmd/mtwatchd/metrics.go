package main

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/mtwatch/mtwatch/internal/buildinfo"
)

// registry is the agent's Prometheus registry, holding besides the agent's
// own metrics what an operator expects of any daemon: the process collector
// (CPU, memory, open file descriptors against their limit, start time), the
// Go runtime collector, and mtwatch_build_info, so a fleet's dashboards can
// tell which hosts run which build.
func registry() *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		collectors.NewGoCollector(),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "mtwatch_build_info",
			Help: "Always 1; the labels name the running build.",
			ConstLabels: prometheus.Labels{
				"version":   version,
				"revision":  buildinfo.Revision(),
				"goversion": buildinfo.GoVersion(),
			},
		}, func() float64 { return 1 }),
	)
	return reg
}
