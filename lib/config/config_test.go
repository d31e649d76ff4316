package config

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

func TestParseErrors(t *testing.T) {
	tests := []struct {
		name, data, want string
	}{
		{"unknown top key", "[agent]\nauto_detect = false\nstale_gracee = \"1s\"\n", "f.toml:3: agent.stale_gracee: unknown key"},
		{"unknown section", "[agent]\n\n[logg]\nlevel = \"x\"\n", "f.toml:3: logg"},
		{"bad duration", "[agent]\nstale_grace = \"soon\"\n", "f.toml:2"},
		{"wrong type", "[agent]\n\nauto_detect = 3\n", "f.toml:3"},
		{"syntax", "[agent]\nx = = 1\n", "f.toml:2"},
		{"bad format", "[log]\nformat = \"xml\"\n", "f.toml:2: log.format"},
		{"bad capacity", "[agent]\nqueue_capacity = 0\n", "f.toml:2: agent.queue_capacity"},
		{"bad gomaxprocs", "[agent]\n\ngomaxprocs = -1\n", "f.toml:3: agent.gomaxprocs"},
		{"bad domid", "[agent]\ndomid = \"dom5\"\n", "f.toml:2: agent.domid"},
		{"reserved domid", "[agent]\ndomid = \"32752\"\n", "f.toml:2: agent.domid"},
		{"duration names its key", "[agent]\nstale_grace = \"soon\"\n", "f.toml:2: agent.stale_grace: "},
		{"type names its key", "[agent]\n\nauto_detect = 3\n", "f.toml:3: agent.auto_detect: "},
		{"bad level", "[log]\nformat = \"text\"\nlevel = \"loud\"\n", "f.toml:3: log.level: "},
		{"metrics without port", "[control]\nmetrics_listen = \"localhost\"\n", "f.toml:2: control.metrics_listen: "},
		{"metrics bad port", "[control]\nmetrics_listen = \":http-ish\"\n", "f.toml:2: control.metrics_listen: "},
		{"metrics port out of range", "[control]\nmetrics_listen = \"127.0.0.1:70000\"\n", "f.toml:2: control.metrics_listen: "},
		{"unknown source", "[agent]\nsources = [\"node\", \"xl\"]\n", `f.toml:2: agent.sources: source "xl"`},
		{"source twice", "[agent]\nsources = [\"libxl\", \"libxl\"]\n", `f.toml:2: agent.sources: source "libxl" given twice`},
		{"no source", "[agent]\n\nsources = []\n", "f.toml:3: agent.sources: sources is empty"},
		{"zero staging timeout", "[agent]\nstaging_timeout = \"0s\"\n", "f.toml:2: agent.staging_timeout"},
		{"zero canary threshold", "[agent]\ncanary_threshold = \"0s\"\n", "f.toml:2: agent.canary_threshold"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse("f.toml", []byte(tt.data))
			if err == nil || !strings.Contains(err.Error(), tt.want) || !errors.Is(err, ErrInvalid) {
				t.Fatalf("err = %v, want containing %q and ErrInvalid", err, tt.want)
			}
		})
	}
}

func TestParseDefaultsAndOverrides(t *testing.T) {
	c, err := Parse("f.toml", []byte("[agent]\nstale_grace = \"0s\"\nreap_stale = true\n[control]\nsocket = \"/tmp/s\"\n"))
	if err != nil {
		t.Fatal(err)
	}
	d := Default()
	if c.Agent.StaleGrace.Duration != 0 || !c.Agent.ReapStale || c.Control.Socket != "/tmp/s" ||
		c.Agent.AutoDetect != d.Agent.AutoDetect || c.Agent.ShutdownTimeout.Duration != 10*time.Second {
		t.Fatalf("config %+v", c)
	}
}

func TestLoadMissing(t *testing.T) {
	p := filepath.Join(t.TempDir(), "none.toml")
	if _, err := Load(p, false); err != nil {
		t.Fatalf("missing default file: %v", err)
	}
	if _, err := Load(p, true); err == nil {
		t.Fatal("missing explicit file accepted")
	}
}

func TestPluginSection(t *testing.T) {
	data := `# plugins
[plugins.exec]
enabled = true
timeout = "3s"

[[plugins.exec.rule]]
path = "backend/vif"

[[plugins.exec.rule]]
path = "backend/vbd"
scrpit = "/bin/true"

[plugins.other]
enabled = false
`
	c, err := Parse("f.toml", []byte(data))
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(c.Plugins(), ","); got != "exec,other" {
		t.Fatalf("plugins %s", got)
	}
	s := c.Plugin("exec")
	if on, err := s.Enabled(false); err != nil || !on {
		t.Fatalf("enabled %v %v", on, err)
	}
	if on, _ := c.Plugin("other").Enabled(true); on {
		t.Fatal("other enabled")
	}
	if on, _ := c.Plugin("absent").Enabled(true); !on {
		t.Fatal("absent plugin takes its default")
	}
	var v struct {
		Timeout Duration `toml:"timeout"`
		Rule    []struct {
			Path   string `toml:"path"`
			Script string `toml:"script"`
		} `toml:"rule"`
	}
	err = s.Decode(&v)
	if err == nil || !strings.Contains(err.Error(), "f.toml:11: plugins.exec.rule.scrpit") {
		t.Fatalf("decode err = %v", err)
	}
	if e := s.Errorf("rule[1].path", "bad"); !strings.Contains(e.Error(), "f.toml:10: plugins.exec.rule[1].path: bad") {
		t.Fatalf("Errorf = %v", e)
	}
	if e := s.Errorf("rule[0].path", "bad"); !strings.Contains(e.Error(), "f.toml:7:") {
		t.Fatalf("Errorf = %v", e)
	}
	if e := s.Errorf("env", "bad"); !strings.Contains(e.Error(), "f.toml:2:") {
		t.Fatalf("Errorf of a default = %v", e)
	}
}

// The example shipped in docs/ must load and equal the defaults.
func TestDocExampleIsDefaults(t *testing.T) {
	data, err := os.ReadFile("../../docs/mtwatchd.toml")
	if err != nil {
		t.Fatal(err)
	}
	c, err := Parse("mtwatchd.toml", data)
	if err != nil {
		t.Fatal(err)
	}
	d := Default()
	if !reflect.DeepEqual(c.Agent, d.Agent) || c.Log != d.Log || c.Control != d.Control {
		t.Fatalf("docs/mtwatchd.toml differs from the defaults:\n%+v\n%+v", c, d)
	}
}

func TestFixedDomid(t *testing.T) {
	for _, tt := range []struct {
		text  string
		id    uint16
		fixed bool
	}{
		{"", 0, false},
		{"[agent]\ndomid = \"auto\"\n", 0, false},
		{"[agent]\ndomid = \"0\"\n", 0, true},
		{"[agent]\ndomid = \"5\"\n", 5, true},
	} {
		c, err := Parse("f.toml", []byte(tt.text))
		if err != nil {
			t.Fatal(err)
		}
		id, fixed, err := c.Agent.FixedDomid()
		if err != nil || uint16(id) != tt.id || fixed != tt.fixed {
			t.Errorf("%q: FixedDomid = %d, %v, %v; want %d, %v", tt.text, id, fixed, err, tt.id, tt.fixed)
		}
	}
}

// TestValidateAfterChange: a value set after parsing (a flag) is checked by
// Validate, naming the key.
func TestValidateAfterChange(t *testing.T) {
	c, err := Parse("f.toml", []byte("[agent]\nauto_detect = false\n"))
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Validate(); err != nil {
		t.Fatalf("valid configuration: %v", err)
	}
	for _, tt := range []struct {
		set  func(*Config)
		want string
	}{
		{func(c *Config) { c.Agent.Domid = "x" }, "agent.domid"},
		{func(c *Config) { c.Agent.GOMAXPROCS = -1 }, "agent.gomaxprocs"},
		{func(c *Config) { c.Agent.QueueCapacity = -1 }, "agent.queue_capacity"},
		{func(c *Config) { c.Log.Format = "xml" }, "log.format"},
		{func(c *Config) { c.Log.Level = "loud" }, "log.level"},
		{func(c *Config) { c.Control.MetricsListen = "nowhere" }, "control.metrics_listen"},
	} {
		cp := *c
		tt.set(&cp)
		var ce *Error
		if err := cp.Validate(); !errors.As(err, &ce) || ce.Key != tt.want {
			t.Errorf("Validate = %v, want an Error of key %s", err, tt.want)
		}
	}
	for _, ok := range []string{":9100", "127.0.0.1:0", "[::1]:9100", "localhost:9100"} {
		cp := *c
		cp.Control.MetricsListen = ok
		if err := cp.Validate(); err != nil {
			t.Errorf("metrics_listen %q: %v", ok, err)
		}
	}
}

// TestReloaded: a reload keeps every restart-only key's running value and
// names exactly the ones that changed.
func TestReloaded(t *testing.T) {
	run, err := Parse("f.toml", []byte("[agent]\nstall_threshold = \"1s\"\n"))
	if err != nil {
		t.Fatal(err)
	}
	next, err := Parse("f.toml", []byte("[agent]\nstall_threshold = \"2s\"\nqueue_capacity = 7\n[control]\nsocket = \"/x\"\n"))
	if err != nil {
		t.Fatal(err)
	}
	applied, restart := run.Reloaded(next)
	if got := strings.Join(restart, ","); got != "agent.queue_capacity,control.socket" {
		t.Fatalf("restart-only keys changed: %s", got)
	}
	if applied.Agent.StallThreshold.Duration != 2*time.Second || applied.Agent.QueueCapacity != run.Agent.QueueCapacity ||
		applied.Control.Socket != run.Control.Socket {
		t.Fatalf("applied %+v", applied)
	}
	srcs, err := Parse("f.toml", []byte("[agent]\nstall_threshold = \"1s\"\nsources = [\"libxl\"]\n"))
	if err != nil {
		t.Fatal(err)
	}
	if applied, restart := run.Reloaded(srcs); strings.Join(restart, ",") != "agent.sources" || !slices.Equal(applied.Agent.Sources, run.Agent.Sources) {
		t.Fatalf("sources: restart %v, applied %v", restart, applied.Agent.Sources)
	}
	if _, restart := run.Reloaded(run); len(restart) != 0 {
		t.Fatalf("an unchanged file needs a restart for %v", restart)
	}
}

// TestExample: every key of a plugin's section is in the reference file,
// commented out at its default under its doc; a key without a doc tag is an
// error, so no knob ships undocumented.
func TestExample(t *testing.T) {
	type rule struct {
		Path string `toml:"path" doc:"watched"`
		Old  string `toml:"old" doc:"was path" deprecated:"path"`
	}
	type section struct {
		Grace Duration          `toml:"grace" doc:"Grace before SIGKILL."`
		Types []string          `toml:"types" doc:"Types."`
		Env   map[string]string `toml:"env" doc:"Environment."`
		Rule  []rule            `toml:"rule" doc:"Rules:"`
	}
	text, err := Example([]PluginDefaults{{Name: "p", Enabled: false, Doc: "Does p.", Config: section{
		Grace: Duration{5 * time.Second}, Types: []string{"vbd"}, Env: map[string]string{"B": "2", "A": "1"},
	}}})
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"[plugins.p]\n# Does p.\nenabled = false\n",
		"# Grace before SIGKILL.\n# grace = \"5s\"\n",
		"# types = [\"vbd\"]\n",
		"# env = { \"A\" = \"1\", \"B\" = \"2\" }\n",
		"# Rules:\n# [[plugins.p.rule]]\n#   path = \"\"    # watched\n",
		"# stall_threshold = \"10s\"\n",
	} {
		if !strings.Contains(text, want) {
			t.Errorf("example lacks %q:\n%s", want, text)
		}
	}
	if strings.Contains(text, " old = ") {
		t.Errorf("a deprecated key is in the example:\n%s", text)
	}
	if _, err := Parse("f.toml", []byte(text)); err != nil {
		t.Fatalf("the example does not load: %v", err)
	}
	type undocumented struct {
		Knob int `toml:"knob"`
	}
	if _, err := Example([]PluginDefaults{{Name: "q", Config: undocumented{}}}); err == nil || !strings.Contains(err.Error(), "knob") {
		t.Fatalf("a key without a doc tag: %v", err)
	}
}

// TestDefaultOf: a key's default is written as the reference file writes
// it; a key outside [agent], [log] and [control], or no key, is an error.
func TestDefaultOf(t *testing.T) {
	for _, tc := range []struct{ key, want string }{
		{"agent.gomaxprocs", "1"},
		{"agent.domid", `"auto"`},
		{"agent.auto_detect", "true"},
		{"agent.stall_threshold", `"10s"`},
		{"agent.sources", `["node", "libxl", "introduce"]`},
		{"log.level", `"info"`},
		{"control.metrics_listen", `""`},
		{"agent.bogus", ""},
		{"plugins.log.enabled", ""},
		{"agent", ""},
		{"", ""},
	} {
		got, err := DefaultOf(tc.key)
		if tc.want == "" {
			if err == nil || !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), strconv.Quote(tc.key)) {
				t.Errorf("DefaultOf(%q) = %q, %v; want an error naming it", tc.key, got, err)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("DefaultOf(%q) = %q, %v; want %q", tc.key, got, err, tc.want)
		}
	}
}

// TestLoadBoundsSize: a file over MaxFileSize, or a device that never
// ends, is an error naming the file, read no further than the bound.
func TestLoadBoundsSize(t *testing.T) {
	big := filepath.Join(t.TempDir(), "big.toml")
	f, err := os.Create(big)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteString("[agent]\n")
	f.Truncate(200 << 20) // sparse: 200 MB that take no disk
	f.Close()
	for _, path := range []string{big, "/dev/zero"} {
		_, err := Load(path, true)
		var ce *Error
		if !errors.As(err, &ce) || !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), "larger than") {
			t.Errorf("Load(%s) = %v, want an error naming it and the bound", path, err)
		}
	}
	ok := filepath.Join(t.TempDir(), "ok.toml")
	os.WriteFile(ok, []byte("[agent]\n"), 0o644)
	if _, err := Load(ok, true); err != nil {
		t.Fatal(err)
	}
}

func TestSources(t *testing.T) {
	for _, tc := range []struct {
		data string
		want map[string]bool
	}{
		{"", map[string]bool{SourceNode: true, SourceLibxl: true, SourceIntroduce: true}},
		{"[agent]\nauto_detect = false\n", map[string]bool{SourceNode: true, SourceLibxl: true}},
		{"[agent]\nsources = [\"node\"]\n", map[string]bool{SourceNode: true}},
		{"[agent]\nsources = [\"introduce\", \"libxl\"]\n", map[string]bool{SourceLibxl: true, SourceIntroduce: true}},
	} {
		c, err := Parse("f.toml", []byte(tc.data))
		if err != nil {
			t.Fatal(err)
		}
		for _, src := range []string{SourceNode, SourceLibxl, SourceIntroduce} {
			if got := c.Agent.HasSource(src); got != tc.want[src] {
				t.Errorf("%q: HasSource(%s) = %v", tc.data, src, got)
			}
		}
	}
}
