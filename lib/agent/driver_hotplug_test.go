package agent_test

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/mtwatch/mtwatch/lib/agent"
	"github.com/mtwatch/mtwatch/lib/domid"
	"github.com/mtwatch/mtwatch/lib/xenstore"
	"github.com/mtwatch/mtwatch/lib/xenstore/xenstoredtest"
	"github.com/mtwatch/mtwatch/plugin"
	"github.com/mtwatch/mtwatch/plugin/hotplug"
)

// waitHotplug waits until the hotplug plugin's status satisfies ok.
func (h *harness) waitHotplug(what string, ok func(hotplug.Status) bool) hotplug.Status {
	h.t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		for _, ps := range h.a.Status().Plugins {
			if st, is := ps.Status.(hotplug.Status); is && ok(st) {
				return st
			}
		}
		if time.Now().After(deadline) {
			h.t.Fatalf("hotplug: %s: not within 20s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestDriverDomainHotplug: the hotplug plugin as a drop-in for xl devd, in
// driver domain 5 on a guest connection. Mode auto runs the scripts; after
// a device's remove the plugin removes its backend directory and the
// parents left empty, as xl devd does (libxl__device_destroy), so that
// dom0's libxl does not wait for it; a qdisk backend, which needs the QEMU
// xl devd would start, is reported; the journal lives in the driver
// domain's own data directory, private to it. The agent is a process of
// the driver domain on its xenbus device (xenstoredtest.GuestBus), and so
// are the scripts; reconnection and restart are TestDriverDomainReconnect's
// and TestDriverDomainRestartMidAdd's.
func TestDriverDomainHotplug(t *testing.T) {
	t.Parallel()
	const (
		driver domid.ID = 5
		fe     domid.ID = 11
	)
	in := xenstoredtest.Start(t)
	db := newDriverBus(in, driver)
	in.CreateDomain(fe)
	dir := t.TempDir()
	log := filepath.Join(dir, "log")
	body := fmt.Sprintf("#!/bin/sh\necho \"$1 $XENBUS_PATH\" >>%q\ncase \"$1\" in add|online) %s ;; esac\n",
		log, guestWrite(t, db.bus))
	if err := os.WriteFile(filepath.Join(dir, "connect"), []byte(body), 0o755); err != nil {
		t.Fatal(err)
	}
	cfg := fmt.Sprintf("[plugins.hotplug]\nenabled = true\nscripts_dir = %q\n", dir)
	h := start(t, in, cfg, func(o *agent.Options) { o.Dial = db.dial }, plugin.Registration{Name: hotplug.Name, New: hotplug.New})
	home := "/local/domain/5/"
	device := func(typ string, devid int, kv ...string) string {
		base := fmt.Sprintf("backend/%s/%d/%d", typ, fe, devid)
		kv = append([]string{"frontend-id", fe.String(), "online", "1", "state", "1", "script", "connect"}, kv...)
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
	st := h.waitHotplug("mode", func(hotplug.Status) bool { return true })
	if st.Mode != hotplug.ModeRun {
		t.Fatalf("mode %q in a driver domain, want run", st.Mode)
	}
	vbd := device("vbd", 768)
	keep := device("vbd", 832, "state", "4", "hotplug-status", "connected") // connected before mtwatchd
	h.write(home+vbd+"/state", "2")
	h.waitHotplug("add", func(st hotplug.Status) bool { return st.OK == 1 })
	if v, err := h.c.Read(h.ctx, home+vbd+"/hotplug-status"); err != nil || string(v) != "connected" {
		t.Fatalf("hotplug-status %q, %v", v, err)
	}
	perms, err := h.c.GetPerms(h.ctx, home+"data/mtwatch-hotplug")
	if err != nil || len(perms) != 1 || perms[0].Domid != driver || perms[0].Access != xenstore.AccessNone {
		t.Errorf("journal directory perms %v, %v: want private to the driver domain", perms, err)
	}

	// The toolstack closes the device: remove, then its directory goes.
	h.write(home+vbd+"/online", "0")
	h.write(home+vbd+"/state", "6")
	h.waitHotplug("remove", func(st hotplug.Status) bool { return st.OK == 2 && st.Devices == 1 })
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := h.c.Read(h.ctx, home+vbd); err != nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s still there after its remove", vbd)
		}
		time.Sleep(5 * time.Millisecond)
	}
	if _, err := h.c.Read(h.ctx, home+keep+"/state"); err != nil {
		t.Errorf("another device of the frontend went too: %v", err)
	}
	if _, err := h.c.Read(h.ctx, home+"data/mtwatch-hotplug/vbd/11/768"); err == nil {
		t.Error("the journal record outlived the device")
	}
	b, _ := os.ReadFile(log)
	if got, want := string(b), "add "+vbd+"\nremove "+vbd+"\n"; got != want {
		t.Errorf("scripts ran:\n%s\nwant:\n%s", got, want)
	}

	// The last device of the frontend: the parents left empty go too.
	h.write(home+keep+"/online", "0")
	h.write(home+keep+"/state", "6")
	deadline = time.Now().Add(10 * time.Second)
	for {
		if _, err := h.c.Read(h.ctx, home+"backend/vbd"); err != nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("backend/vbd left after its last device's remove")
		}
		time.Sleep(5 * time.Millisecond)
	}

	device("qdisk", 51712, "state", "2")
	st = h.waitHotplug("qdisk noticed", func(st hotplug.Status) bool { return len(st.NeedQEMU) == 1 })
	if !slices.Equal(st.NeedQEMU, []string{"backend/qdisk/11/51712"}) {
		t.Errorf("need_qemu %v", st.NeedQEMU)
	}
	if b, _ := os.ReadFile(log); strings.Contains(string(b), "qdisk") {
		t.Errorf("a script ran for the qdisk backend:\n%s", b)
	}
}
