package agent

import (
	"context"
	"log/slog"
	"testing"
	"time"

	"github.com/mtwatch/mtwatch/lib/config"
	"github.com/mtwatch/mtwatch/lib/dispatch"
	"github.com/mtwatch/mtwatch/lib/xenstore/xenstoredtest"
	"github.com/mtwatch/mtwatch/plugin"
)

type watchingPlugin struct {
	ic *plugin.InitContext
	w  plugin.Watch
}

func (p *watchingPlugin) Start(ctx context.Context, _ plugin.Runtime) (err error) {
	p.w, err = p.ic.Watches.Watch(ctx, dispatch.WatchConfig{
		Path:    "backend",
		Handler: func(context.Context, dispatch.Event) error { return nil },
	})
	return err
}

func (p *watchingPlugin) Stop(context.Context) error { return nil }

// TestRegisterXSOnce: a plugin's Watch and a reconnection can both register
// the same watch on the same new connection; the second is a no-op, not an
// EEXIST that would make the plugin's Watch fail and drop its watch.
func TestRegisterXSOnce(t *testing.T) {
	in := xenstoredtest.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cfg := config.Default()
	cfg.Agent.Xenstore = in.Socket()
	p := &watchingPlugin{}
	a, err := New(Options{
		Config: cfg, Logger: slog.New(slog.DiscardHandler),
		Plugins: []plugin.Registration{{Name: "w", EnabledByDefault: true, New: func(ic *plugin.InitContext) (plugin.Plugin, error) {
			p.ic = ic
			return p, nil
		}}},
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Start(ctx); err != nil {
		t.Fatal(err)
	}
	defer a.Shutdown(context.Background())
	a.conn.mu.Lock()
	w := a.conn.watches[p.w.Token()]
	xw := w.xw
	a.conn.mu.Unlock()
	if err := a.conn.register(ctx, a.conn.client(), w); err != nil {
		t.Fatalf("second registration on the same connection: %v", err)
	}
	a.conn.mu.Lock()
	defer a.conn.mu.Unlock()
	if w.xw != xw || xw.Err() != nil {
		t.Fatal("the watch was replaced or ended")
	}
}
