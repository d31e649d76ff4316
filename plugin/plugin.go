// Package plugin is the registry of mtwatchd's handler plugins and the
// contract between a plugin and the agent that hosts it. A plugin registers
// itself from init (plugin.Register), the agent builds every enabled plugin
// from its [plugins.<name>] configuration section, and the plugin's watches
// run on the agent's dispatcher: each event on the worker of the domain it
// belongs to.
package plugin

import (
	"context"
	"fmt"
	"log/slog"
	"regexp"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/mtwatch/mtwatch/lib/dispatch"
	"github.com/mtwatch/mtwatch/lib/domid"
	"github.com/mtwatch/mtwatch/lib/xenstore"
)

// Registration describes a plugin to the agent.
type Registration struct {
	// Name is the plugin's name: its configuration section is
	// [plugins.<Name>] and its log entries carry plugin=<Name>.
	Name string
	// EnabledByDefault: the plugin runs unless its section says
	// enabled = false. Plugins that run scripts or change XenStore are off by
	// default.
	EnabledByDefault bool
	// Doc says in a sentence or two what the plugin does, for the
	// reference configuration file (docs/mtwatchd.toml).
	Doc string
	// Defaults returns the plugin's section at its defaults: a struct
	// whose fields' toml tags name the keys and doc tags describe them,
	// the one the plugin decodes its section over. The reference
	// configuration file is generated from it; nil for a plugin without
	// keys.
	Defaults func() any
	// New builds the plugin. It validates the configuration (ic.Config) and
	// must not start any work: the agent calls Start once every enabled
	// plugin was built, so a configuration error stops the agent before
	// anything ran. What the agent learns only by running (Runtime) is not
	// known yet.
	New func(ic *InitContext) (Plugin, error)
}

// Plugin is a built plugin.
type Plugin interface {
	// Start registers the plugin's watches through InitContext.Watches and
	// starts its work, in the domain rt names; it returns once the plugin
	// is ready. The agent tells systemd READY=1 only after every plugin
	// started.
	Start(ctx context.Context, rt Runtime) error
	// Stop ends the plugin's work within ctx. The agent removes the watches
	// the plugin registered after Stop returns.
	Stop(ctx context.Context) error
}

// Runtime is what the agent knows only once it runs, given to Start. With
// [agent] domid = "auto" the agent learns its domain from its first
// connection to xenstored, after every plugin was built.
type Runtime struct {
	// Domid is the domain the agent runs in: dom0, or a driver domain.
	Domid domid.ID
	// Home is that domain's XenStore home, /local/domain/<Domid>, which
	// relative paths resolve against.
	Home string
}

// Reloader is implemented by plugins whose configuration can change while
// they run (SIGHUP). Reload gets the new section; on error the plugin keeps
// its running configuration.
type Reloader interface {
	Reload(ctx context.Context, cfg Section) error
}

// Reporter is implemented by plugins that have status to show in the
// control API (GET /v1/status, "plugins"). Status must be cheap and safe for
// concurrent use; its value is encoded as JSON.
type Reporter interface {
	Status() any
}

// StopGracer is implemented by plugins whose Stop ends processes they
// started: StopGrace is the longest such a process may take between SIGTERM
// and SIGKILL. On shutdown the agent stops waiting for queued events that
// long, plus a second, before its deadline, so that Stop has the time to
// kill the process groups and wait for them.
type StopGracer interface {
	StopGrace() time.Duration
}

// Staller is implemented by plugins whose work can stall outside a watch
// handler (a script running off the workers, a device stuck in set-up).
// Stalls lists those running longer than threshold (the agent's stall
// threshold); a plugin with a threshold of its own may apply that instead.
// It must be cheap, must not block on XenStore, and is safe for concurrent
// use. The agent adds them to GET /v1/stalls, mtwatch stalls and metrics.
type Staller interface {
	Stalls(threshold time.Duration) []Stall
}

// Stall is one stalled piece of a plugin's work.
type Stall struct {
	Domid domid.ID
	// Path is the XenStore path the work is about (a device's backend).
	Path    string
	Started time.Time
	// Detail says what is stalled, for a person.
	Detail string
}

// Section is a plugin's configuration section, [plugins.<name>], without its
// "enabled" key, which the agent handles.
type Section interface {
	// Decode decodes the section into v (a pointer to a struct with toml
	// tags). A key v has no field for is an error naming file, line and key.
	Decode(v any) error
	// Errorf returns a configuration error naming the file and line of key.
	// key is dotted and relative to the section; an element of an array of
	// tables is indexed from 0: "rule[2].path". A key that is not in the
	// file (a default) names the section instead.
	Errorf(key string, format string, args ...any) error
	// File is the configuration file's path, "" when the agent runs on
	// defaults.
	File() string
}

// Store is the XenStore handle a plugin gets. It is the agent's connection:
// it survives xenstored restarts (calls during an outage fail with an error
// that wraps xenstore.ErrClosed or a context error, and work again once the
// agent has reconnected). *xenstore.Client satisfies it, which is what a
// plugin's unit tests use.
type Store interface {
	Read(ctx context.Context, path string) ([]byte, error)
	Write(ctx context.Context, path string, value []byte) error
	Mkdir(ctx context.Context, path string) error
	Rm(ctx context.Context, path string) error
	Directory(ctx context.Context, path string) ([]string, error)
	GetPerms(ctx context.Context, path string) (xenstore.Perms, error)
	SetPerms(ctx context.Context, path string, perms xenstore.Perms) error
	Transaction(ctx context.Context, fn func(tx *xenstore.Tx) error) error
	// Pipeline is xenstore.Client.Pipeline: ops sent together, in order,
	// for one round trip.
	Pipeline(ctx context.Context, ops []xenstore.Op) error
}

// Watcher registers watches on behalf of a plugin: the XenStore watch and
// its dispatcher registration, kept across xenstored restarts.
type Watcher interface {
	// Watch registers cfg. cfg.Token may be empty: the agent then picks a
	// unique one ("<plugin>/<n>"). The returned Watch is removed by Unwatch,
	// or by the agent when the plugin stops.
	Watch(ctx context.Context, cfg dispatch.WatchConfig) (Watch, error)
}

// Watch is a registered watch of a plugin.
type Watch interface {
	// Unwatch removes the XenStore watch and the dispatcher registration:
	// pending events of the watch are purged and a running handler of it is
	// waited for (unless Unwatch runs from that handler).
	Unwatch(ctx context.Context) error
	// Post queues an event for path on the watch as if xenstored had sent
	// it (dispatch.Registration.Post): a plugin's way to have the domain's
	// worker look at something that happened off the workers.
	Post(path string) error
	Path() string
	Token() string
	Stats() dispatch.WatchStats
}

// Detacher is implemented by the watches the agent gives plugins. Detach
// removes the watch as Unwatch does, but does not wait for a running
// handler of it, which runs to its end: for a plugin that must not wait for
// one (a reload waiting for a command would hold every later reload).
type Detacher interface {
	Detach(ctx context.Context) error
}

// InitContext is what a plugin is built from.
type InitContext struct {
	// Name is the plugin's name.
	Name string
	// Logger is the agent's logger with plugin=<Name>. Attributes named
	// domid, path, watch and plugin become the journal's DOMID, XS_PATH,
	// WATCH and PLUGIN fields; an error is logged as "err".
	Logger *slog.Logger
	// Config is the plugin's configuration section.
	Config Section
	// Store is the agent's XenStore connection.
	Store Store
	// Watches registers the plugin's watches.
	Watches Watcher
	// Metrics registers the plugin's Prometheus collectors, served at
	// /metrics. Per-domain labels are not allowed: cardinality must stay
	// bounded by the number of live domains, which the agent's own gauges
	// already cover.
	Metrics prometheus.Registerer
}

var (
	mu       sync.Mutex
	registry = map[string]Registration{}
	validRe  = regexp.MustCompile(`^[a-z][a-z0-9-]*$`)
)

// Register adds a plugin to the registry. It is called from init and panics
// on a malformed or duplicate name, or a missing New: both are programming
// errors a build must not ship.
func Register(r Registration) {
	mu.Lock()
	defer mu.Unlock()
	if !validRe.MatchString(r.Name) {
		panic(fmt.Sprintf("plugin: malformed name %q", r.Name))
	}
	if r.New == nil {
		panic(fmt.Sprintf("plugin %s: no New", r.Name))
	}
	if _, dup := registry[r.Name]; dup {
		panic(fmt.Sprintf("plugin %s: registered twice", r.Name))
	}
	registry[r.Name] = r
}

// Lookup returns the registration of the plugin called name.
func Lookup(name string) (Registration, bool) {
	mu.Lock()
	defer mu.Unlock()
	r, ok := registry[name]
	return r, ok
}

// All returns every registered plugin, by name.
func All() []Registration {
	mu.Lock()
	defer mu.Unlock()
	out := make([]Registration, 0, len(registry))
	for _, r := range registry {
		out = append(out, r)
	}
	slices.SortFunc(out, func(a, b Registration) int { return strings.Compare(a.Name, b.Name) })
	return out
}
