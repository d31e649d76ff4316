package log_test

import (
	"context"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
	"github.com/sirupsen/logrus/hooks/test"

	"github.com/mtwatch/mtwatch/lib/agent"
	"github.com/mtwatch/mtwatch/lib/config"
	"github.com/mtwatch/mtwatch/lib/domid"
	"github.com/mtwatch/mtwatch/lib/node"
	"github.com/mtwatch/mtwatch/lib/xenstore"
	"github.com/mtwatch/mtwatch/lib/xenstore/xenstoredtest"
	"github.com/mtwatch/mtwatch/plugin"
	logplugin "github.com/mtwatch/mtwatch/plugin/log"
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
	lr, hook := test.NewNullLogger()
	lr.SetLevel(logrus.InfoLevel)
	reg, _ := plugin.Lookup(logplugin.Name)
	a, err := agent.New(agent.Options{Config: cfg, Logrus: lr, Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), Plugins: []plugin.Registration{reg}})
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
	for {
		for _, e := range hook.AllEntries() {
			if e.Data["path"] == "backend/vbd/5/0/state" {
				t.Fatalf("unwatched path logged: %v", e.Data)
			}
			if e.Data["path"] == "backend/vif/5/0/state" {
				if e.Level != logrus.InfoLevel || e.Data["plugin"] != "log" || e.Data["domid"] != domid.ID(5) || e.Data["worker"] != domid.ID(5) {
					t.Fatalf("entry %v %v", e.Level, e.Data)
				}
				return
			}
		}
		if ctx.Err() != nil {
			t.Fatal("event not logged")
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
