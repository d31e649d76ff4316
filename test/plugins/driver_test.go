package plugins_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/mtwatch/mtwatch/internal/daemontest"
	"github.com/mtwatch/mtwatch/lib/domid"
	"github.com/mtwatch/mtwatch/lib/xenstore"
	"github.com/mtwatch/mtwatch/lib/xenstore/xenstoredtest"
)

// TestHotplugDriverDomainCrashExactlyOnce is TestHotplugCrashExactlyOnce
// in a driver domain: bin/mtwatchd runs as a process of driver domain 5,
// on the domain's xenbus device (the bus socket: a file of its own on the
// domain's one store ring, as /dev/xen/xenbus), with the hotplug plugin in
// mode auto; the slowadd scripts write their hotplug-status as processes
// of the domain too, at the relative path. mtwatchd is killed with SIGKILL
// in the middle of 24 slow adds (8 at a time): its file is released (its
// watches unregistered) while the domain's connection in xenstored lives
// on. Three of the orphans are killed too. A new mtwatchd, on a new file,
// finds the journal in the domain's private data directory: the scripts'
// own log shows no two runs of a device overlapping and exactly one run of
// each ending, and every device ends with hotplug-status=connected.
func TestHotplugDriverDomainCrashExactlyOnce(t *testing.T) {
	t.Parallel()
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	const driver domid.ID = 5
	in := xenstoredtest.Start(t)
	bus := in.GuestBus(driver)
	sock, err := bus.Socket()
	if err != nil {
		t.Fatal(err)
	}
	out := t.TempDir()
	cfg := fmt.Sprintf("[plugins.hotplug]\nenabled = true\nscripts_dir = %q\nmax_scripts = 8\ntimeout = \"60s\"\n"+
		"[plugins.log]\nenabled = false\n[agent]\nshutdown_timeout = \"2s\"\n", scriptsDir)
	start := func() *daemontest.Daemon {
		d := daemontest.New(t, daemontest.Options{
			Binary: binary, Config: cfg, Xenstore: sock,
			Args: []string{"--log-format", "text", "--log-level", "debug"},
			// The scripts' xenstore-write finds the domain's bus as a
			// script in a driver domain finds /dev/xen/xenbus.
			Env: []string{"XENSTORED_PATH=" + sock, "OUT=" + out},
		})
		d.Start()
		d.WaitReady()
		return d
	}
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	c, err := xenstore.Dial(ctx, xenstore.WithPath(in.Socket()))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	home := driver.Home() + "/"
	hotplugStatus := func(base string) string {
		v, _ := c.Read(ctx, home+base+"/hotplug-status")
		return string(v)
	}
	wait := func(within time.Duration, what string, cond func() bool) {
		t.Helper()
		deadline := time.Now().Add(within)
		for !cond() {
			if time.Now().After(deadline) {
				t.Fatalf("%s: not within %v", what, within)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}

	a := start()
	var devs []string
	for fe := domid.ID(11); fe <= 16; fe++ {
		in.CreateDomain(fe)
		for i := range 4 {
			base := fmt.Sprintf("backend/vbd/%d/%d", fe, 768+16*i)
			err := c.Transaction(ctx, func(tx *xenstore.Tx) error {
				for _, kv := range [][2]string{{"frontend-id", fe.String()}, {"online", "1"}, {"state", "1"}, {"script", "slowadd"}} {
					if err := tx.Write(ctx, home+base+"/"+kv[0], []byte(kv[1])); err != nil {
						return err
					}
				}
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
			devs = append(devs, base)
		}
	}
	for _, dev := range devs {
		if err := c.Write(ctx, home+dev+"/state", []byte("2")); err != nil {
			t.Fatal(err)
		}
	}
	logFile := filepath.Join(out, "runs")
	count := func(word string) int {
		b, _ := os.ReadFile(logFile)
		return strings.Count(string(b), word+" ")
	}
	wait(60*time.Second, "8 adds done and the next 8 running", func() bool { return count("end") >= 8 && count("start") >= 16 })
	a.Kill()
	crashed := time.Now().UnixNano()
	// The dead process's file is released: its watches are gone from
	// xenstored, only the scripts' own files may be open.
	wait(10*time.Second, "the dead agent's watches released", func() bool { return bus.Stats().Watches == 0 })

	killed := killRunning(t, logFile, 3)
	b := start()
	for _, dev := range devs {
		wait(60*time.Second, dev+"/hotplug-status", func() bool { return hotplugStatus(dev) != "" })
		if s := hotplugStatus(dev); s != "connected" {
			t.Errorf("%s: hotplug-status %q", dev, s)
		}
	}
	wait(30*time.Second, "every script ended", func() bool {
		st, err := b.Control.Status(ctx)
		if err != nil {
			return false
		}
		for _, p := range st.Plugins {
			if p.Name == "hotplug" {
				return len(p.Status.(map[string]any)["running"].([]any)) == 0
			}
		}
		return false
	})
	// The scripts log XENBUS_PATH, the relative backend path.
	checkExactlyOnce(t, logFile, devs, crashed, killed)
	if st := bus.Stats(); st.Files == 0 || st.Watches == 0 {
		t.Errorf("bus %+v: the new agent holds no file or watch", st)
	}
	b.Stop()
}
