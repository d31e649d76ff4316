package agent_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mtwatch/mtwatch/lib/agent"
	"github.com/mtwatch/mtwatch/lib/config"
	"github.com/mtwatch/mtwatch/lib/control"
	"github.com/mtwatch/mtwatch/lib/domid"
	"github.com/mtwatch/mtwatch/lib/xenstore"
	"github.com/mtwatch/mtwatch/lib/xenstore/xenstoredtest"
	"github.com/mtwatch/mtwatch/plugin"
	"github.com/mtwatch/mtwatch/plugin/hotplug"
)

// driverBus makes the agent a process of driver domain id: every dial
// opens a new file of the domain's xenbus device (the store ring behind
// the guest kernel's /dev/xen/xenbus), as mtwatchd opens /dev/xen/xenbus
// again after it lost its connection. files are the files opened, the
// agent's current one last.
type driverBus struct {
	bus *xenstoredtest.GuestBus

	mu    sync.Mutex
	files []*xenstoredtest.BusFile
}

func newDriverBus(in *xenstoredtest.Instance, id domid.ID) *driverBus {
	return &driverBus{bus: in.GuestBus(id)}
}

func (d *driverBus) dial(context.Context) (*xenstore.Client, error) {
	f, err := d.bus.Open()
	if err != nil {
		return nil, err
	}
	d.mu.Lock()
	d.files = append(d.files, f)
	d.mu.Unlock()
	return xenstore.NewClient(f), nil
}

// dials returns how many files were opened, and the last one.
func (d *driverBus) dials() (int, *xenstoredtest.BusFile) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if len(d.files) == 0 {
		return 0, nil
	}
	return len(d.files), d.files[len(d.files)-1]
}

// driverDial is newDriverBus's dial function.
func driverDial(in *xenstoredtest.Instance, id domid.ID) func(context.Context) (*xenstore.Client, error) {
	return newDriverBus(in, id).dial
}

// guestWrite is the shell command with which a script of a driver-domain
// test writes hotplug-status: as a process of driver domain id, through
// the bus socket, at the relative path, as the scripts of
// /etc/xen/scripts write it in a driver domain.
func guestWrite(t *testing.T, b *xenstoredtest.GuestBus) string {
	sock, err := b.Socket()
	if err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("XENSTORED_PATH=%q xenstore-write \"$XENBUS_PATH/hotplug-status\" connected", sock)
}

// driverScripts writes the device scripts of a driver-domain test; they
// write hotplug-status as processes of the driver domain (guestWrite).
func driverScripts(t *testing.T, b *xenstoredtest.GuestBus) string {
	dir := t.TempDir()
	scripts := map[string]string{
		"connect": "case \"$1\" in add|online) " + guestWrite(t, b) + " ;; esac\n",
		"hang":    "case \"$1\" in add|online) sleep 600 & wait ;; esac\n",
	}
	for name, body := range scripts {
		if err := os.WriteFile(filepath.Join(dir, name), []byte("#!/bin/sh\n"+body), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// TestDriverDomain: the agent in driver domain 5, on a guest connection,
// learns its domid, keeps a worker per frontend domain with a backend
// directory in its home, and the hotplug plugin runs each frontend's
// scripts on that frontend's worker: A's hung script does not delay B's
// vif and vbd. Removing B's backend directories retires B's worker.
func TestDriverDomain(t *testing.T) {
	t.Parallel()
	const (
		driver domid.ID = 5
		fa     domid.ID = 11
		fb     domid.ID = 12
	)
	in := xenstoredtest.Start(t)
	db := newDriverBus(in, driver)
	in.CreateDomain(fa)
	in.CreateDomain(fb)
	cfg := fmt.Sprintf("[plugins.hotplug]\nenabled = true\nscripts_dir = %q\ntimeout = \"5s\"\ngrace = \"100ms\"\n",
		driverScripts(t, db.bus))
	h := start(t, in, cfg, func(o *agent.Options) { o.Dial = db.dial },
		plugin.Registration{Name: hotplug.Name, New: hotplug.New})

	home := "/local/domain/5/"
	// The toolstack in dom0 writes the backends in the driver domain's
	// home, which the driver domain owns, as libxl does.
	device := func(typ string, dom domid.ID, devid int, script string) string {
		base := fmt.Sprintf("backend/%s/%d/%d", typ, dom, devid)
		kv := []string{"frontend-id", dom.String(), "online", "1", "state", "1", "script", script}
		if typ == "vif" {
			kv = append(kv, "type", "vif")
		}
		err := h.c.Transaction(h.ctx, func(tx *xenstore.Tx) error {
			for i := 0; i+1 < len(kv); i += 2 {
				if err := tx.Write(h.ctx, home+base+"/"+kv[i], []byte(kv[i+1])); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		return base
	}
	status := func(base string) (string, bool) {
		v, err := h.c.Read(h.ctx, home+base+"/hotplug-status")
		if err != nil {
			return "", false
		}
		return string(v), true
	}

	a := device("vbd", fa, 768, "hang")
	h.write(home+a+"/state", "2")
	h.waitWorker(fa, control.WorkerLive)
	// A's add script hangs, started by A's worker (mode auto runs scripts
	// in a driver domain).
	h.waitDomain(fa, "A's worker", func(d control.Domain, _ bool) bool {
		return d.Processed > 0 && d.Backend && d.Worker == control.WorkerLive
	})
	h.waitHotplug("A's script running", func(st hotplug.Status) bool { return len(st.Running) == 1 })

	bVif := device("vif", fb, 0, "connect")
	bVbd := device("vbd", fb, 768, "connect")
	h.write(home+bVif+"/state", "2")
	h.write(home+bVbd+"/state", "2")
	deadline := time.Now().Add(20 * time.Second)
	for _, base := range []string{bVif, bVbd} {
		for {
			if v, ok := status(base); ok {
				if v != "connected" {
					t.Fatalf("%s: hotplug-status %q", base, v)
				}
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: not connected while A's script hangs", base)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	// A's script is killed at its 5 s timeout, well after this (and
	// before the shutdown's drain ends, so the shutdown is clean).
	if v, ok := status(a); ok {
		t.Fatalf("A's device has hotplug-status %q: its script was not hanging", v)
	}
	d := h.waitWorker(fb, control.WorkerLive)
	if d.Processed == 0 || !d.Backend {
		t.Errorf("B's worker: %+v, want its device events processed there", d)
	}
	if _, found := h.a.Domain(uint16(driver)); found {
		t.Error("the driver domain has an entry of its own")
	}
	if st := h.a.Status(); st.Nodes != 0 {
		t.Errorf("status: %d nodes in a driver domain", st.Nodes)
	}

	// The toolstack removes B's devices: B's worker goes, A's stays.
	for _, base := range []string{bVif, bVbd} {
		if err := h.c.Rm(h.ctx, home+base); err != nil {
			t.Fatal(err)
		}
	}
	for _, typ := range []string{"vif", "vbd"} {
		if err := h.c.Rm(h.ctx, fmt.Sprintf("%sbackend/%s/%d", home, typ, fb)); err != nil {
			t.Fatal(err)
		}
	}
	h.waitWorker(fb, control.WorkerNone)
	if d := h.waitWorker(fa, control.WorkerLive); !d.Backend {
		t.Errorf("A: %+v, want a backend", d)
	}
}

// TestDriverDomainDomid: a guest connection whose home has no domid node
// cannot tell which domain it is: the agent does not start and says to set
// [agent] domid; with it set, it starts.
func TestDriverDomainDomid(t *testing.T) {
	t.Parallel()
	in := xenstoredtest.Start(t)
	for _, tt := range []struct {
		id            domid.ID
		text, wantErr string
	}{
		{6, "", "set [agent] domid"},
		{7, "[agent]\ndomid = \"7\"\n", ""},
	} {
		dial := driverDial(in, tt.id)
		in.Run("xenstore-rm", "/local/domain/"+tt.id.String()+"/domid")
		cfg, err := config.Parse("test.toml", []byte(tt.text))
		if err != nil {
			t.Fatal(err)
		}
		a, err := agent.New(agent.Options{
			Config: cfg, Plugins: []plugin.Registration{}, Dial: dial,
			Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
		})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		err = a.Start(ctx)
		cancel()
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("%q: Start = %v, want an error saying %q", tt.text, err, tt.wantErr)
			}
			continue
		}
		if err != nil {
			t.Fatalf("%q: Start: %v", tt.text, err)
		}
		if _, found := a.Domain(7); found {
			t.Error("the driver domain has an entry of its own")
		}
		sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		if err := a.Shutdown(sctx); err != nil {
			t.Error(err)
		}
		cancel()
	}
}
