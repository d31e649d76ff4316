// Package config loads mtwatchd's TOML configuration: the [agent], [log] and
// [control] sections and one [plugins.<name>] section per plugin. Decoding is
// strict: a key nothing reads is an error naming the file, the line and the
// key, so a typo never silently leaves a default in force.
package config

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/BurntSushi/toml"

	"github.com/mtwatch/mtwatch/lib/control"
	"github.com/mtwatch/mtwatch/lib/domid"
	"github.com/mtwatch/mtwatch/lib/logging"
)

// DefaultFile is where mtwatchd looks for its configuration.
const DefaultFile = "/etc/mtwatch/mtwatchd.toml"

// ErrInvalid is returned when the configuration's content is invalid;
// every such error wraps it.
var ErrInvalid = errors.New("invalid configuration")

// Duration is a time.Duration written as a string: "60s", "1m30s", "0".
type Duration struct{ time.Duration }

// UnmarshalText implements encoding.TextUnmarshaler.
func (d *Duration) UnmarshalText(b []byte) error {
	v, err := time.ParseDuration(string(b))
	if err != nil {
		return err
	}
	if v < 0 {
		return fmt.Errorf("negative duration %q", b)
	}
	d.Duration = v
	return nil
}

// MarshalText implements encoding.TextMarshaler.
func (d Duration) MarshalText() ([]byte, error) { return []byte(d.Duration.String()), nil }

// Config is the whole configuration.
type Config struct {
	// File is the file the configuration came from, "" for the defaults.
	File    string  `toml:"-"`
	Agent   Agent   `toml:"agent"`
	Log     Log     `toml:"log"`
	Control Control `toml:"control"`

	plugins map[string]*Section
	index   *lineIndex
}

// Agent is the [agent] section. The doc tags are the reference file's
// comments (Example).
type Agent struct {
	// Xenstore is the xenstored socket or device; "" means the defaults
	// (XENSTORED_PATH, the xenstored socket, /dev/xen/xenbus).
	Xenstore string `toml:"xenstore" doc:"XenStore socket or device. \"\" tries $XENSTORED_PATH, then ${XENSTORED_RUNDIR:-/var/run/xenstored}/socket, /run/xenstored/socket and /dev/xen/xenbus. Flag --xenstore, env MTWATCH_XENSTORE."`
	// Domid is the domain the agent runs in: "auto" (the default) learns
	// it from the connection, a number sets it. 0 is dom0 mode (the mtwatch
	// directory, introduced domains); a guest domid is driver-domain mode
	// (workers follow the frontends of the domain's backend directory).
	Domid           string   `toml:"domid" doc:"The domain mtwatchd runs in. \"auto\" reads the domid node of the connection's home (0 when absent on a privileged connection); a number sets it. 0 is dom0 mode; a guest domid is driver-domain mode: workers follow the frontends with a backend directory under /local/domain/<domid>/backend, and the mtwatch directory and auto_detect do not apply. Flag --domid."`
	AutoDetect      bool     `toml:"auto_detect" doc:"A domain has a worker while it has a node under /local/domain/0/mtwatch, or, with auto-detection, while it is introduced to xenstored (@introduceDomain / @releaseDomain). false: the node alone decides, as in the original kernel patch. Flag --auto-detect."`
	StaleGrace      Duration `toml:"stale_grace" doc:"A node whose domain has not been introduced for this long is stale: reported in the control API and the log. \"0s\" disables the check."`
	ReapStale       bool     `toml:"reap_stale" doc:"Remove stale nodes. A node whose domain is introduced is never removed."`
	SingleWorker    bool     `toml:"single_worker" doc:"Run every event on the default worker, as Linux's single kernel xenwatch thread runs every watch callback. Flag --single-worker."`
	QueueCapacity   int      `toml:"queue_capacity" doc:"Events pending per domain (dom0 and paths of no domain count as one); beyond it events are dropped and the watch's handler gets an overflow notice so it can resync."`
	StallThreshold  Duration `toml:"stall_threshold" doc:"A handler running longer than this is reported as stalled (log, GET /v1/stalls, metrics). \"0s\" turns stall detection off."`
	ShutdownTimeout Duration `toml:"shutdown_timeout" doc:"On SIGTERM: how long queued events, running handlers and the plugins' Stop get in all. Queued events run until the largest grace of the running exec/hotplug plugins plus 1s before the end; then running handlers are cancelled, what is queued is dropped and that reserve is left for the plugins to SIGTERM, SIGKILL and reap their commands. Keep it above that grace plus 1s plus the drain time wanted."`
	// GOMAXPROCS is how many threads run the agent's Go code at once;
	// 0 is the Go runtime's default (the CPUs the process may use). The
	// default, 1, suits an event router whose handlers wait rather than
	// compute: each event handed to a worker goroutine would otherwise
	// wake a second thread (docs/performance.md measures it). The
	// GOMAXPROCS environment variable, when set, overrides it.
	GOMAXPROCS int `toml:"gomaxprocs" doc:"Threads running the agent's Go code at once; 0 is one per CPU. One suits an event router whose handlers wait rather than compute: with more, each event handed to an idle worker wakes a second thread (docs/mtwatchd.md). The GOMAXPROCS environment variable, if set, overrides it. Flag --gomaxprocs."`
	// Sources are what gives a guest domain a worker in dom0 (SourceNode,
	// SourceLibxl, SourceIntroduce; the last also needs AutoDetect).
	Sources []string `toml:"sources" doc:"What gives a guest domain a worker in dom0, any of: \"node\", a trusted /local/domain/0/mtwatch/<domid> (the hooks); \"libxl\", a /libxl/<domid> owned by dom0 with perms exactly n0, which libxl (libxl__domain_make) and xenopsd (Domain.make) create in the domain's very first transaction, so xl, libvirt-libxl and XAPI domains get their worker before any device event, with no hook; \"introduce\", introduced to xenstored (also needs auto_detect)."`
	// StagingTimeout bounds how long a guest's events wait for its worker.
	StagingTimeout Duration `toml:"staging_timeout" doc:"Events of a guest domid that has no worker yet wait for it (at most queue_capacity per domid), never on the default worker. If the domid is no domain (no node, no /libxl/<domid>, no /local/domain/<domid>, not introduced) they run at once on a worker of their own with a cancelled context; whatever still waits after this runs on a worker of its own."`
	// CanaryInterval: how often the canary node is written (0: no canary);
	// CanaryThreshold: the write to watch-event latency past which it warns.
	CanaryInterval  Duration `toml:"canary_interval" doc:"The canary: a private node (/local/domain/0/mtwatch-canary, perms n0) written this often; the time from each write to its watch event is in the control API and the histogram mtwatch_canary_latency_seconds. A slow canary with idle handlers means xenstored, or the kernel's single xenwatch thread over /dev/xen/xenbus, is slow. \"0s\" turns the canary off."`
	CanaryThreshold Duration `toml:"canary_threshold" doc:"A canary write whose watch event takes longer than this raises the alarm (logged once per episode, mtwatch_canary_alarm)."`
}

// Worker sources (Agent.Sources).
const (
	SourceNode      = "node"
	SourceLibxl     = "libxl"
	SourceIntroduce = "introduce"
)

// HasSource reports whether the worker source name is on; "introduce" also
// needs auto_detect.
func (a Agent) HasSource(name string) bool {
	if name == SourceIntroduce && !a.AutoDetect {
		return false
	}
	return slices.Contains(a.Sources, name)
}

// FixedDomid returns the configured domid, or fixed false for "auto" (and
// an empty value).
func (a Agent) FixedDomid() (id domid.ID, fixed bool, err error) {
	if a.Domid == "" || a.Domid == "auto" {
		return 0, false, nil
	}
	id, err = domid.Parse(a.Domid)
	if err != nil {
		return 0, false, fmt.Errorf("domid %q: want auto, 0 or a guest domid: %w", a.Domid, err)
	}
	return id, true, nil
}

// Log is the [log] section.
type Log struct {
	// Level is the log level: trace, debug, info, warning, error.
	Level string `toml:"level" doc:"trace, debug, info, warning, error. Flag --log-level."`
	// Format is "text", "json", or "auto": the journal when stderr is
	// connected to it, else text.
	Format string `toml:"format" doc:"auto (the journal when stderr is connected to it, else text), text or json. Flag --log-format."`
}

// Control is the [control] section.
type Control struct {
	Socket        string `toml:"socket" doc:"The control API's unix socket (mode 0600). Under mtwatchd.socket, systemd passes the socket instead. Flag --control, env MTWATCH_CONTROL."`
	MetricsListen string `toml:"metrics_listen" doc:"HOST:PORT to serve GET /metrics over TCP for Prometheus; \"\" serves it on the control socket only. Flag --metrics-listen."`
}

// Default returns the configuration used when no file exists.
func Default() *Config {
	return &Config{
		Agent: Agent{
			AutoDetect:      true,
			Domid:           "auto",
			StaleGrace:      Duration{60 * time.Second},
			QueueCapacity:   1024,
			StallThreshold:  Duration{10 * time.Second},
			ShutdownTimeout: Duration{10 * time.Second},
			GOMAXPROCS:      1,
			Sources:         []string{SourceNode, SourceLibxl, SourceIntroduce},
			StagingTimeout:  Duration{10 * time.Second},
			CanaryInterval:  Duration{5 * time.Second},
			CanaryThreshold: Duration{time.Second},
		},
		Log:     Log{Level: "info", Format: "auto"},
		Control: Control{Socket: control.DefaultSocket},
		plugins: map[string]*Section{},
		index:   &lineIndex{},
	}
}

// Load reads path. A missing file is an error only if explicit (given on the
// command line); otherwise the defaults apply.
func Load(path string, explicit bool) (*Config, error) {
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) && !explicit {
		return Default(), nil
	}
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	defer f.Close()
	// Read no more than the bound, whatever the file is (a device, a file
	// growing meanwhile): a huge file must not take the agent's memory.
	data, err := io.ReadAll(io.LimitReader(f, MaxFileSize+1))
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	if len(data) > MaxFileSize {
		return nil, &Error{File: path, Msg: fmt.Sprintf("larger than %d bytes", MaxFileSize)}
	}
	return Parse(path, data)
}

// MaxFileSize bounds the configuration file: a thousand rules fit in a
// tenth of it.
const MaxFileSize = 1 << 20

// Parse decodes data, read from file (used in messages), over the defaults.
func Parse(file string, data []byte) (*Config, error) {
	c := Default()
	c.File = file
	c.index = indexLines(data)
	var raw struct {
		Agent   *Agent                    `toml:"agent"`
		Log     *Log                      `toml:"log"`
		Control *Control                  `toml:"control"`
		Plugins map[string]toml.Primitive `toml:"plugins"`
	}
	raw.Agent, raw.Log, raw.Control = &c.Agent, &c.Log, &c.Control
	md, err := toml.Decode(string(data), &raw)
	if err != nil {
		var pe toml.ParseError
		if errors.As(err, &pe) {
			return nil, &Error{File: file, Line: pe.Position.Line, Key: pe.LastKey, Msg: pe.Message}
		}
		// Type mismatches name the key; find its line.
		return nil, c.errorForDecode(err)
	}
	for _, k := range md.Undecoded() {
		if len(k) >= 2 && k[0] == "plugins" {
			continue // the plugin's own section decides
		}
		return nil, c.errorAt(k.String(), "unknown key %q", k.String())
	}
	for name, prim := range raw.Plugins {
		c.plugins[name] = &Section{cfg: c, name: name, prim: prim, md: md, present: true}
	}
	if err := c.Validate(); err != nil {
		return nil, err
	}
	return c, nil
}

// Validate checks what decoding cannot: the domid, gomaxprocs, the queue
// capacity, the log format and level, and the metrics address. Parse calls
// it; a caller that changes the configuration afterwards (mtwatchd's flags)
// calls it again. An error names the file, the line and the key.
func (c *Config) Validate() error {
	if _, _, err := c.Agent.FixedDomid(); err != nil {
		return c.errorAt("agent.domid", "%v", err)
	}
	if c.Agent.GOMAXPROCS < 0 {
		return c.errorAt("agent.gomaxprocs", "gomaxprocs %d: want 0 (every CPU) or more", c.Agent.GOMAXPROCS)
	}
	if c.Agent.QueueCapacity <= 0 {
		return c.errorAt("agent.queue_capacity", "queue_capacity %d: must be positive", c.Agent.QueueCapacity)
	}
	if len(c.Agent.Sources) == 0 {
		return c.errorAt("agent.sources", "sources is empty: want some of %q, %q, %q", SourceNode, SourceLibxl, SourceIntroduce)
	}
	for i, src := range c.Agent.Sources {
		switch src {
		case SourceNode, SourceLibxl, SourceIntroduce:
		default:
			return c.errorAt("agent.sources", "source %q: want %q, %q or %q", src, SourceNode, SourceLibxl, SourceIntroduce)
		}
		if slices.Contains(c.Agent.Sources[:i], src) {
			return c.errorAt("agent.sources", "source %q given twice", src)
		}
	}
	if c.Agent.StagingTimeout.Duration <= 0 {
		return c.errorAt("agent.staging_timeout", "staging_timeout %v: must be positive", c.Agent.StagingTimeout.Duration)
	}
	if c.Agent.CanaryInterval.Duration > 0 && c.Agent.CanaryThreshold.Duration <= 0 {
		return c.errorAt("agent.canary_threshold", "canary_threshold %v: must be positive", c.Agent.CanaryThreshold.Duration)
	}
	switch c.Log.Format {
	case "auto", "text", "json":
	default:
		return c.errorAt("log.format", "format %q: want auto, text or json", c.Log.Format)
	}
	if err := logging.CheckLevel(c.Log.Level); err != nil {
		return c.errorAt("log.level", "%v", err)
	}
	if a := c.Control.MetricsListen; a != "" {
		if err := checkListen(a); err != nil {
			return c.errorAt("control.metrics_listen", "%q: %v", a, err)
		}
	}
	return nil
}

// checkListen checks a TCP listen address, HOST:PORT (HOST may be empty),
// without resolving HOST: that is the listener's business at start.
func checkListen(addr string) error {
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("want HOST:PORT: %w", err)
	}
	if port == "" {
		return errors.New("want HOST:PORT: missing port")
	}
	if _, err := net.LookupPort("tcp", port); err != nil {
		return fmt.Errorf("port %q: %w", port, err)
	}
	return nil
}

// errorForDecode turns a decode error into an Error with the line of the key
// it names, when it names one.
func (c *Config) errorForDecode(err error) error {
	msg := err.Error()
	// BurntSushi/toml: `toml: line N (last key "a.b"): ...`, the line
	// left out when it is not known.
	var line int
	fmt.Sscanf(msg, "toml: line %d", &line)
	key := ""
	if _, rest, ok := strings.Cut(msg, `(last key "`); ok {
		if k, after, ok := strings.Cut(rest, `"): `); ok {
			key, msg = k, after
		}
	}
	if i := strings.Index(msg, "): "); i >= 0 && strings.HasPrefix(msg, "toml: line ") {
		msg = msg[i+3:]
	}
	msg = strings.TrimPrefix(msg, "toml: ")
	if line == 0 && key != "" {
		line = c.index.find(key)
	}
	return &Error{File: c.File, Line: line, Key: key, Msg: msg}
}

// Plugins returns the names of the [plugins.<name>] sections in the file.
func (c *Config) Plugins() []string {
	names := make([]string, 0, len(c.plugins))
	for n := range c.plugins {
		names = append(names, n)
	}
	slices.Sort(names)
	return names
}

// Plugin returns the section of plugin name; an empty one if the file has
// none, so the plugin runs on its defaults.
func (c *Config) Plugin(name string) *Section {
	if s, ok := c.plugins[name]; ok {
		return s
	}
	return &Section{cfg: c, name: name}
}

// Errorf returns an error naming the file and the line of key (dotted, from
// the top: "agent.stale_grace", "plugins.exec.rule[2].path").
func (c *Config) Errorf(key, format string, args ...any) error {
	return c.errorAt(key, format, args...)
}

func (c *Config) errorAt(key, format string, args ...any) error {
	line := c.index.find(key)
	if line == 0 {
		// Not in the file: a default; name the section instead.
		sec := key
		if i := strings.LastIndexByte(sec, '.'); i >= 0 {
			sec = sec[:i]
		}
		return &Error{File: c.File, Line: c.index.find(sec), Key: key, Msg: fmt.Sprintf(format, args...)}
	}
	return &Error{File: c.File, Line: line, Key: key, Msg: fmt.Sprintf(format, args...)}
}

// Error is a configuration error: "file:line: key: message".
type Error struct {
	File string
	Line int // 0 when unknown
	Key  string
	Msg  string
}

func (e *Error) Error() string {
	var b strings.Builder
	if e.File == "" {
		b.WriteString("config (defaults)")
	} else {
		b.WriteString(e.File)
	}
	if e.Line > 0 {
		fmt.Fprintf(&b, ":%d", e.Line)
	}
	b.WriteString(": ")
	if e.Key != "" {
		b.WriteString(e.Key + ": ")
	}
	b.WriteString(e.Msg)
	return b.String()
}

// Unwrap makes every Error satisfy errors.Is(err, ErrInvalid).
func (e *Error) Unwrap() error { return ErrInvalid }

// restartKey is a key a reload cannot change: the running process keeps
// its value until restarted.
type restartKey struct {
	name string
	same func(a, b *Config) bool
	keep func(dst, src *Config)
}

func restartOnlyKey[T comparable](name string, field func(*Config) *T) restartKey {
	return restartKey{
		name: name,
		same: func(a, b *Config) bool { return *field(a) == *field(b) },
		keep: func(dst, src *Config) { *field(dst) = *field(src) },
	}
}

// restartOnly lists every restart-only key: the connection and the
// dispatcher's shape are made once, the listeners and the log format at
// start.
var restartOnly = []restartKey{
	restartOnlyKey("agent.xenstore", func(c *Config) *string { return &c.Agent.Xenstore }),
	restartOnlyKey("agent.domid", func(c *Config) *string { return &c.Agent.Domid }),
	restartOnlyKey("agent.auto_detect", func(c *Config) *bool { return &c.Agent.AutoDetect }),
	restartOnlyKey("agent.single_worker", func(c *Config) *bool { return &c.Agent.SingleWorker }),
	restartOnlyKey("agent.queue_capacity", func(c *Config) *int { return &c.Agent.QueueCapacity }),
	restartOnlyKey("control.socket", func(c *Config) *string { return &c.Control.Socket }),
	restartOnlyKey("control.metrics_listen", func(c *Config) *string { return &c.Control.MetricsListen }),
	restartOnlyKey("log.format", func(c *Config) *string { return &c.Log.Format }),
	{
		name: "agent.sources",
		same: func(a, b *Config) bool { return slices.Equal(a.Agent.Sources, b.Agent.Sources) },
		keep: func(dst, src *Config) { dst.Agent.Sources = slices.Clone(src.Agent.Sources) },
	},
	restartOnlyKey("agent.staging_timeout", func(c *Config) *Duration { return &c.Agent.StagingTimeout }),
	restartOnlyKey("agent.canary_interval", func(c *Config) *Duration { return &c.Agent.CanaryInterval }),
	restartOnlyKey("agent.canary_threshold", func(c *Config) *Duration { return &c.Agent.CanaryThreshold }),
}

// Reloaded returns what a reload from the running configuration c to next
// applies: next, with the running value of every restart-only key, and the
// restart-only keys whose value next changes (they apply at the next
// restart). Plugin sections are next's: whether a plugin reloads is its
// own business.
func (c *Config) Reloaded(next *Config) (applied *Config, needRestart []string) {
	cp := *next
	for _, k := range restartOnly {
		if !k.same(c, next) {
			needRestart = append(needRestart, k.name)
		}
		k.keep(&cp, c)
	}
	return &cp, needRestart
}
