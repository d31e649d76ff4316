package builtins_test

import (
	"path/filepath"
	"reflect"
	"testing"

	"github.com/mtwatch/mtwatch/internal/goldenfile"
	"github.com/mtwatch/mtwatch/lib/config"
	"github.com/mtwatch/mtwatch/plugin"
	_ "github.com/mtwatch/mtwatch/plugin/builtins"
)

// TestConfigExampleCurrent fails when docs/mtwatchd.toml is not what the
// agent's and the shipped plugins' defaults generate: run make
// config-example (go test -update) and commit it. The file must also
// configure exactly the defaults.
func TestConfigExampleCurrent(t *testing.T) {
	regs := plugin.All()
	var plugins []config.PluginDefaults
	for _, r := range regs {
		if r.Doc == "" || r.Defaults == nil {
			t.Errorf("plugin %s: its registration lacks Doc or Defaults", r.Name)
			continue
		}
		plugins = append(plugins, config.PluginDefaults{Name: r.Name, Enabled: r.EnabledByDefault, Doc: r.Doc, Config: r.Defaults()})
	}
	text, err := config.Example(plugins)
	if err != nil {
		t.Fatal(err)
	}
	c, err := config.Parse("mtwatchd.toml", []byte(text))
	if err != nil {
		t.Fatalf("the generated file does not load: %v", err)
	}
	if d := config.Default(); !reflect.DeepEqual(c.Agent, d.Agent) || c.Log != d.Log || c.Control != d.Control {
		t.Fatalf("the generated file is not the defaults:\n%+v\n%+v", c, d)
	}
	for _, r := range regs {
		if on, err := c.Plugin(r.Name).Enabled(r.EnabledByDefault); err != nil || on != r.EnabledByDefault {
			t.Errorf("plugin %s: enabled %v, %v; want its default", r.Name, on, err)
		}
	}
	goldenfile.Check(t, filepath.Join("..", "..", "docs", "mtwatchd.toml"), text)
}
