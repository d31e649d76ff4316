package log_test

import (
	"context"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/mtwatch/mtwatch/lib/agent"
	"github.com/mtwatch/mtwatch/lib/config"
	"github.com/mtwatch/mtwatch/lib/domid"
	"github.com/mtwatch/mtwatch/lib/node"
	"github.com/mtwatch/mtwatch/lib/xenstore"
	"github.com/mtwatch/mtwatch/lib/xenstore/xenstoredtest"
	"github.com/mtwatch/mtwatch/plugin"
	logplugin "github.com/mtwatch/mtwatch/plugin/log"
	"github.com/mtwatch/mtwatch/plugin/plugintest"
)

func TestLogsEventsWithDomainAndWorker(t *testing.T) {
	in := xenstoredtest.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cfg, err := config.Parse("t.toml", []byte("[agent]\nauto_detect = false\n[plugins.log]\nlevel = \"info\"\npaths = [\"backend/vif\"]\n"))
	if err != nil {
		t.Fatal(err)
	}
	cfg.Agent.Xenstore = in.Socket()
	logs := &plugintest.Logs{Level: slog.LevelInfo}
	reg, _ := plugin.Lookup(logplugin.Name)
	a, err := agent.New(agent.Options{Config: cfg, Logger: slog.New(logs.Handler(nil)), Plugins: []plugin.Registration{reg}})
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Start(ctx); err != nil {
		t.Fatal(err)
	}
	defer a.Shutdown(context.Background())
	c, err := xenstore.Dial(ctx, xenstore.WithPath(in.Socket()))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := node.Create(ctx, c, 5, ""); err != nil {
		t.Fatal(err)
	}
	for {
		if d, _ := a.Domain(5); d.Worker == "live" {
			break
		}
		time.Sleep(time.Millisecond)
	}
	c.Write(ctx, "backend/vbd/5/0/state", []byte("1")) // not watched
	c.Write(ctx, "backend/vif/5/0/state", []byte("1"))
	waitEntry(t, ctx, logs, "backend/vif/5/0/state", "backend/vbd/5/0/state")

	// SIGHUP's path: the new paths are watched, the old ones no longer.
	cfg2, err := config.Parse("t.toml", []byte("[plugins.log]\nlevel = \"info\"\npaths = [\"backend/vbd\"]\n"))
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Reload(ctx, cfg2); err != nil {
		t.Fatal(err)
	}
	logs.Reset()
	c.Write(ctx, "backend/vif/5/1/state", []byte("1"))
	c.Write(ctx, "backend/vbd/5/1/state", []byte("1"))
	waitEntry(t, ctx, logs, "backend/vbd/5/1/state", "backend/vif/5/1/state")
}

// waitEntry waits for the entry of path, failing on one of never.
func waitEntry(t *testing.T, ctx context.Context, logs *plugintest.Logs, path, never string) {
	t.Helper()
	for {
		for _, e := range logs.Records() {
			if e.Attrs["path"] == never {
				t.Fatalf("unwatched path logged: %v", e.Attrs)
			}
			if e.Attrs["path"] == path {
				if e.Level != slog.LevelInfo || e.Attrs["plugin"] != "log" || e.Attrs["domid"] != domid.ID(5) || e.Attrs["worker"] != domid.ID(5) {
					t.Fatalf("entry %v %v", e.Level, e.Attrs)
				}
				return
			}
		}
		if ctx.Err() != nil {
			t.Fatalf("%s not logged", path)
		}
		time.Sleep(time.Millisecond)
	}
}

func TestConfigErrors(t *testing.T) {
	reg, _ := plugin.Lookup(logplugin.Name)
	for text, want := range map[string]string{
		"[plugins.log]\nlevel = \"warn\"\n":               "t.toml:2: plugins.log.level",
		"[plugins.log]\npaths = [\"ok\", \"bad path\"]\n": "t.toml:2: plugins.log.paths[1]",
		"[plugins.log]\nlevels = \"info\"\n":              "t.toml:2: plugins.log.levels",
	} {
		cfg, err := config.Parse("t.toml", []byte(text))
		if err != nil {
			t.Fatal(err)
		}
		_, err = agent.New(agent.Options{Config: cfg, Plugins: []plugin.Registration{reg}})
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: err %v, want %q", text, err, want)
		}
	}
}
