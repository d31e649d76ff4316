// Package control is mtwatchd's control API: HTTP/1.1 with JSON bodies on a
// unix socket, the schema below, the server that serves it from an agent's
// state, and the Go client the mtwatch CLI uses. The schema is documented in
// docs/control-api.md; keys are snake_case and durations carry their unit in
// the key name.
package control

import "time"

// DefaultSocket is where mtwatchd listens unless told otherwise.
const DefaultSocket = "/run/mtwatch/control.sock"

// Worker states of a domain.
const (
	WorkerLive     = "live"     // the domain has a running domain worker
	WorkerDraining = "draining" // destroyed: finishing the events queued before
	WorkerNone     = "none"     // the domain's events run on the default worker
	WorkerDefault  = "default"  // dom0's entry: it is the default worker
)

// Modes of the agent.
const (
	ModeMultiWorker  = "multi-worker"
	ModeSingleWorker = "single-worker"
)

// Status is GET /v1/status.
type Status struct {
	Version       string    `json:"version"`
	PID           int       `json:"pid"`
	StartedAt     time.Time `json:"started_at"`
	UptimeSeconds float64   `json:"uptime_s"`
	// Mode is ModeMultiWorker or ModeSingleWorker.
	Mode       string `json:"mode"`
	AutoDetect bool   `json:"auto_detect"`
	// StallThresholdMS: a handler running longer is stalled.
	StallThresholdMS int64 `json:"stall_threshold_ms"`
	// GOMAXPROCS is the agent's Go threads running at once
	// (agent.gomaxprocs, or the GOMAXPROCS environment variable).
	GOMAXPROCS int            `json:"gomaxprocs"`
	Xenstore   XenstoreStatus `json:"xenstore"`
	// Domains counts the guest domains the agent knows (node or
	// introduced); Workers the domain workers, live or draining; Nodes the
	// trusted mtwatch nodes; Stale the nodes past the stale grace period.
	Domains int `json:"domains"`
	Workers int `json:"workers"`
	Nodes   int `json:"nodes"`
	Stale   int `json:"stale"`
	// Stalled counts running handlers past the stall threshold and
	// plugins' work stalled off the workers: the length of Stalls.
	Stalled       int            `json:"stalled"`
	DefaultWorker DefaultWorker  `json:"default_worker"`
	Totals        Totals         `json:"totals"`
	Plugins       []PluginStatus `json:"plugins"`
	// Sources are what gives a guest a worker (agent.sources in force).
	Sources []string `json:"sources,omitempty"`
	// Canary is nil when the canary is off.
	Canary *Canary `json:"canary,omitempty"`
}

// XenstoreStatus is the agent's connection to xenstored.
type XenstoreStatus struct {
	// Path is the socket or device the agent dials.
	Path string `json:"path"`
	// State is "connected" or "disconnected".
	State          string    `json:"state"`
	ConnectedSince time.Time `json:"connected_since,omitzero"`
	Reconnects     uint64    `json:"reconnects"`
	LastError      string    `json:"last_error,omitempty"`
}

// DefaultWorker is the default worker: dom0's events, paths of no domain,
// domains without a worker (and every event in single-worker mode).
type DefaultWorker struct {
	Queued        int      `json:"queued"`
	Processed     uint64   `json:"processed"`
	LastLatencyUS int64    `json:"last_latency_us"`
	MaxLatencyUS  int64    `json:"max_latency_us"`
	Current       *Current `json:"current"`
}

// Totals are the dispatcher's cumulative counters.
type Totals struct {
	Dispatched uint64 `json:"dispatched"`
	Unmatched  uint64 `json:"unmatched"`
	Processed  uint64 `json:"processed"`
	Coalesced  uint64 `json:"coalesced"`
	Filtered   uint64 `json:"filtered"`
	Dropped    uint64 `json:"dropped"`
	Overflows  uint64 `json:"overflows"`
	Purged     uint64 `json:"purged"`
	Panics     uint64 `json:"panics"`
	Errors     uint64 `json:"errors"`
	Stalls     uint64 `json:"stalls"`
	// Staged: events of a guest that waited for its worker; Promoted: of
	// those, handed to the worker when it came; Flushed: run on a drain
	// worker because no worker came. GuestOnDefault: a guest's events run
	// on the default worker (single-worker mode only).
	Staged         uint64 `json:"staged"`
	Promoted       uint64 `json:"promoted"`
	Flushed        uint64 `json:"flushed"`
	GuestOnDefault uint64 `json:"guest_on_default"`
}

// Canary is the write to watch-event probe: a private node written every
// interval, timed from the write to its watch event.
type Canary struct {
	IntervalMS    int64  `json:"interval_ms"`
	ThresholdMS   int64  `json:"threshold_ms"`
	Samples       uint64 `json:"samples"`
	LastLatencyUS int64  `json:"last_latency_us"`
	MaxLatencyUS  int64  `json:"max_latency_us"`
	// Alarm: the last write's event came later than the threshold, or has
	// not come for that long (PendingMS).
	Alarm     bool   `json:"alarm"`
	Alarms    uint64 `json:"alarms"`
	PendingMS int64  `json:"pending_ms"`
	LastError string `json:"last_error,omitempty"`
}

// PluginStatus is one plugin in Status.
type PluginStatus struct {
	Name    string `json:"name"`
	Enabled bool   `json:"enabled"`
	Watches int    `json:"watches"`
	// Status is what the plugin reports (plugin.Reporter), if anything.
	Status any `json:"status,omitempty"`
}

// Domain is one element of GET /v1/domains and GET /v1/domains/{domid}.
// Dom0 is listed first with Worker WorkerDefault; its counters are those of
// dom0's events and of paths of no domain.
type Domain struct {
	Domid uint16 `json:"domid"`
	// Name is /local/domain/<domid>/name, "" when unknown.
	Name string `json:"name"`
	// UUID is the node's value (the VM uuid), "" when none.
	UUID string `json:"uuid"`
	// Node: a trusted mtwatch node exists; Introduced: xenstored has the
	// domain introduced (auto-detection); Stale: a node whose domain has not
	// been introduced for longer than the grace period.
	Node       bool `json:"node"`
	Introduced bool `json:"introduced"`
	Stale      bool `json:"stale"`
	// Backend: in a driver domain, the domain is a frontend with a
	// backend directory under the driver domain's home.
	Backend bool `json:"backend,omitempty"`
	// Libxl: a dom0-owned /libxl/<domid> with perms n0 exists.
	Libxl bool `json:"libxl,omitempty"`
	// Staged: events waiting for the domain's worker.
	Staged int `json:"staged,omitempty"`
	// Worker is WorkerLive, WorkerDraining, WorkerNone or WorkerDefault.
	Worker        string   `json:"worker"`
	Queued        int      `json:"queued"`
	Dispatched    uint64   `json:"dispatched"`
	Processed     uint64   `json:"processed"`
	Coalesced     uint64   `json:"coalesced"`
	Filtered      uint64   `json:"filtered"`
	Dropped       uint64   `json:"dropped"`
	LastLatencyUS int64    `json:"last_latency_us"`
	MaxLatencyUS  int64    `json:"max_latency_us"`
	Current       *Current `json:"current"`
	// PluginStalls counts the domain's plugin work stalled off the workers
	// (the stalls of GET /v1/stalls with worker "plugin" and this domid: a
	// hotplug script, a device stuck in set-up or teardown);
	// PluginStallAgeMS is the age of the oldest, 0 when there is none. A
	// stalled handler of the domain's worker is Current's.
	PluginStalls     int   `json:"plugin_stalls"`
	PluginStallAgeMS int64 `json:"plugin_stall_age_ms"`
}

// StallAgeMS is the age of the domain's oldest stall, its worker's stalled
// handler or its plugins' stalled work; -1 when nothing of the domain is
// stalled. It is what mtwatch list and top show as Stalled.
func (d Domain) StallAgeMS() int64 {
	age := int64(-1)
	if d.Current != nil && d.Current.Stalled {
		age = d.Current.AgeMS
	}
	if d.PluginStalls > 0 {
		age = max(age, d.PluginStallAgeMS)
	}
	return age
}

// Stalls counts the domain's stalls: its worker's stalled handler and its
// plugins' stalled work.
func (d Domain) Stalls() int {
	n := d.PluginStalls
	if d.Current != nil && d.Current.Stalled {
		n++
	}
	return n
}

// Current is a running handler call.
type Current struct {
	Path    string `json:"path"`
	Watch   string `json:"watch"`
	Token   string `json:"token"`
	AgeMS   int64  `json:"age_ms"`
	Stalled bool   `json:"stalled"`
}

// Stall is one element of GET /v1/stalls: a running handler past the stall
// threshold, or a plugin's work stalled off the workers (a hotplug script, a
// device stuck in set-up). The list is oldest first.
type Stall struct {
	Domid uint16 `json:"domid"`
	Name  string `json:"name"`
	// Worker is "default" or "domain" for a handler, "plugin" for a
	// plugin's work; Watch is then the plugin's name.
	Worker  string    `json:"worker"`
	Watch   string    `json:"watch"`
	Token   string    `json:"token"`
	Path    string    `json:"path"`
	Started time.Time `json:"started"`
	AgeMS   int64     `json:"age_ms"`
	// Detail says what a plugin's stall is about.
	Detail string `json:"detail,omitempty"`
}

// Error is the body of every non-2xx answer.
type Error struct {
	Error string `json:"error"`
}

// Source is the agent state the server answers from. Its methods must be
// safe for concurrent use and must not block on XenStore: the control API
// answers while xenstored is gone.
type Source interface {
	Status() Status
	// Domains lists dom0 first, then the guests by domid.
	Domains() []Domain
	Domain(domid uint16) (Domain, bool)
	// Stalls lists running handlers past the stall threshold and plugins'
	// stalled work, oldest first. Every stall's domain has an entry in
	// Domains, whose plugin_stalls count it.
	Stalls() []Stall
}
