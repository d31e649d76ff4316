package agent_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/mtwatch/mtwatch/lib/agent"
	"github.com/mtwatch/mtwatch/lib/xenstore"
	"github.com/mtwatch/mtwatch/lib/xenstore/xenstoredtest"
	"github.com/mtwatch/mtwatch/plugin"
	"github.com/mtwatch/mtwatch/plugin/hotplug"
)

// TestDriverDomainPastWatchQuota: driver domain 5 serves more frontends
// than xenstored lets it hold watches (C xenstored's default 128 per
// domain, oxenstored's quota-maxwatch 100), each with a vif waiting at
// InitWait when the agent starts, and again when it reconnects. The
// start-up scan takes no watch per frontend: the agent never loses its
// connection over a refused WATCH, holds its few watches only, and every
// device's add script runs once.
func TestDriverDomainPastWatchQuota(t *testing.T) {
	t.Parallel()
	const frontends = 140
	kind, err := xenstoredtest.KindFromEnv()
	if err != nil {
		t.Fatal(err)
	}
	// The watch quota stays the default. The node quota is raised: the
	// toolstack's nodes in the driver domain's home count against the
	// driver domain (their owner), about ten per device here.
	cfg := xenstoredtest.Config{Args: []string{"-E", "4000"}}
	if kind == xenstoredtest.Oxenstored {
		cfg = xenstoredtest.Config{Settings: []string{"quota-maxentity = 4000"}}
	}
	in := xenstoredtest.StartWith(t, cfg)
	db := newDriverBus(in, 5)
	dir := t.TempDir()
	log := filepath.Join(dir, "runs.log")
	script := fmt.Sprintf("#!/bin/sh\necho \"$1 $XENBUS_PATH\" >>%q\n", log)
	if err := os.WriteFile(filepath.Join(dir, "logged"), []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	t.Cleanup(cancel)
	c, err := xenstore.Dial(ctx, xenstore.WithPath(in.Socket()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	var bases []string
	for fe := 11; fe < 11+frontends; fe++ {
		base := fmt.Sprintf("backend/vif/%d/0", fe)
		err := c.Transaction(ctx, func(tx *xenstore.Tx) error {
			for _, kv := range [][2]string{{"online", "1"}, {"script", "logged"}, {"type", "vif"}, {"state", "2"}} {
				if err := tx.Write(ctx, driverHome+base+"/"+kv[0], []byte(kv[1])); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		bases = append(bases, base)
	}

	h := start(t, in, fmt.Sprintf("[plugins.hotplug]\nenabled = true\nscripts_dir = %q\n", dir),
		func(o *agent.Options) { o.Dial = db.dial }, plugin.Registration{Name: hotplug.Name, New: hotplug.New})
	h.waitHotplug("every add", func(st hotplug.Status) bool { return st.OK == frontends })
	checkRuns := func(when string) {
		t.Helper()
		b, _ := os.ReadFile(log)
		seen := map[string]int{}
		for _, l := range strings.Split(strings.TrimSpace(string(b)), "\n") {
			seen[l]++
		}
		for _, base := range bases {
			if n := seen["online "+base]; n != 1 {
				t.Errorf("%s: %s: add ran %d times", when, base, n)
			}
		}
		if len(seen) != len(bases) {
			t.Errorf("%s: %d distinct runs, want %d", when, len(seen), len(bases))
		}
	}
	quiet := func(reconnects int) {
		t.Helper()
		// A loop of reconnections shows within this.
		time.Sleep(500 * time.Millisecond)
		if st := h.a.Status().Xenstore; st.State != "connected" || st.Reconnects != uint64(reconnects) {
			t.Fatalf("xenstore status %+v, want connected after %d reconnections", st, reconnects)
		}
		if n, _ := db.dials(); n != reconnects+1 {
			t.Fatalf("%d dials, want %d", n, reconnects+1)
		}
		if st := db.bus.Stats(); st.Watches > 3 {
			t.Errorf("the bus holds %d watches: %q", st.Watches, db.bus.Watches())
		}
	}
	quiet(0)
	checkRuns("after start")

	// A reconnection scans every frontend again: nothing is refused and
	// no script runs again.
	_, f := db.dials()
	f.Close()
	h.waitLog("reconnected to xenstored")
	h.waitHotplug("the scan after the reconnection", func(st hotplug.Status) bool { return st.Devices == frontends })
	quiet(1)
	checkRuns("after a reconnection")
	if strings.Contains(h.logs.String(), "argument list too long") || strings.Contains(h.logs.String(), "invalid argument") {
		t.Errorf("a request was refused:\n%s", h.logs.String())
	}
}
