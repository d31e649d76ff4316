package plugins_test

import (
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/mtwatch/mtwatch/lib/config"
	"github.com/mtwatch/mtwatch/plugin"
	"github.com/mtwatch/mtwatch/plugin/exec"
	"github.com/mtwatch/mtwatch/plugin/hotplug"
)

// TestDocExample: the exec and hotplug sections of docs/mtwatchd.toml,
// enabled, are valid configurations of the plugins.
func TestDocExample(t *testing.T) {
	data, err := os.ReadFile(filepath.Join(root, "docs/mtwatchd.toml"))
	if err != nil {
		t.Fatal(err)
	}
	text := strings.ReplaceAll(string(data), "enabled = false", "enabled = true")
	cfg, err := config.Parse("mtwatchd.toml", []byte(text))
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{exec.Name, hotplug.Name} {
		reg, ok := plugin.Lookup(name)
		if !ok {
			t.Fatalf("%s not registered", name)
		}
		sec := cfg.Plugin(name)
		if on, err := sec.Enabled(false); err != nil || !on {
			t.Fatalf("%s: enabled %v, %v", name, on, err)
		}
		_, err := reg.New(&plugin.InitContext{Name: name, Logger: slog.New(slog.DiscardHandler), Config: sec, Metrics: prometheus.NewRegistry()})
		if err != nil {
			t.Errorf("%s: %v", name, err)
		}
	}
}
