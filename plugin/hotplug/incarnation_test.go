package hotplug

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/mtwatch/mtwatch/lib/xenstore"
	"github.com/mtwatch/mtwatch/plugin/plugintest"
)

// reattach replaces a device's backend directory as libxl's
// libxl__device_generic_add does when the same vdev is attached again: in
// one transaction the old directory is removed and the new one written.
func (f *fixture) reattach(base string, kv ...string) {
	f.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	kv = append([]string{"frontend-id", "17", "online", "1", "state", "1", "script", "disk"}, kv...)
	err := f.h.Client.Transaction(ctx, func(tx *xenstore.Tx) error {
		if err := tx.Rm(ctx, base); err != nil {
			return err
		}
		for i := 0; i < len(kv); i += 2 {
			if err := tx.Write(ctx, base+"/"+kv[i], []byte(kv[i+1])); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		f.t.Fatal(err)
	}
}

// TestReattachDuringAdd: the same vdev is detached and attached again
// while the first device's add still runs (slow) or hangs until its
// timeout. The first device gets its remove, after its add and before the
// second device's add; the second device gets its own add, and ends with
// its own physical-device and hotplug-status=connected: neither the first
// script's writes nor its failure count for it.
func TestReattachDuringAdd(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name, delay string
	}{{"slow", "1"}, {"hung", "600"}} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			f := start(t, plugintest.Options{}, "timeout = \"1500ms\"\ngrace = \"100ms\"")
			f.h.AddDomain(17)
			dev := f.device("vbd", 17, 51712, "disk", "params", "/dev/vg/old", "delay", tc.delay)
			f.h.Write(dev+"/state", "2")
			f.record(dev, "add", 0) // the first add runs
			f.reattach(dev, "params", "/dev/vg/new", "state", "2")
			f.record(dev, "add", 1)
			f.h.Wait(20*time.Second, "second add ends", func() bool {
				l := f.log()
				return strings.Count(l, dev+" add start") == 2 && strings.HasSuffix(l, dev+" add end\n")
			})
			want := dev + " add start\n" + dev + " add end\n" + dev + " remove start\n" + dev + " remove end\n" + dev + " add start\n" + dev + " add end\n"
			if tc.name == "hung" {
				want = dev + " add start\n" + dev + " remove start\n" + dev + " remove end\n" + dev + " add start\n" + dev + " add end\n"
			}
			if got := f.log(); got != want {
				t.Errorf("log:\n%s\nwant:\n%s", got, want)
			}
			if s := f.status(dev, 10*time.Second); s != "connected" {
				e, _ := f.h.Read(dev + "/hotplug-error")
				t.Errorf("hotplug-status %q (hotplug-error %q), want connected", s, e)
			}
			if pd, _ := f.h.Read(dev + "/physical-device"); pd != "/dev/vg/new" {
				t.Errorf("physical-device %q: the new device was given the old one's disk", pd)
			}
		})
	}
}

// TestRecordWithoutMarker: the add's journal record is written beside the
// transaction that writes the incarnation marker, and the script starts
// only once both are written. A crash between the two leaves a record
// whose marker is not in the directory: an add that never ran. The next
// start drops that record and runs the add once, under a new incarnation.
func TestRecordWithoutMarker(t *testing.T) {
	t.Parallel()
	f := build(t, plugintest.Options{}, "")
	f.h.AddDomain(11)
	base := f.device("vif", 11, 0, "connect")
	f.h.Write(base+"/state", "2")
	k := devKey{typ: "vif", dom: 11, devid: "0"}
	const old = "0123456789abcdef"
	f.h.Write(journalPath(k), string(record{Action: "add", Phase: phaseRunning, Inc: old}.encode()))
	if _, ok := f.h.Read("/local/domain/0/" + journalPath(k)); !ok {
		t.Fatal("the record is not where dom0's agent keeps its journal")
	}
	f.start()
	if got := f.status(base, 20*time.Second); got != "connected" {
		t.Fatalf("hotplug-status %q", got)
	}
	f.record(base, "online", 0)
	time.Sleep(200 * time.Millisecond)
	if n := f.records(base, "online"); n != 1 {
		t.Fatalf("%d online runs, want 1", n)
	}
	marker, _ := f.h.Read(base + "/" + markerNode)
	if !validInc(marker) || marker == old {
		t.Fatalf("marker %q: want a new incarnation, not the record's %s", marker, old)
	}
	var rec record
	f.h.Wait(10*time.Second, "the add journalled done", func() bool {
		v, ok := f.h.Read(journalPath(k))
		if !ok {
			return false
		}
		r, err := parseRecord([]byte(v))
		rec = r
		return err == nil && r.Phase == phaseDone
	})
	if rec.Inc != marker {
		t.Fatalf("journal record %+v, want the marker's incarnation %s", rec, marker)
	}
}
