package hotplug

import (
	"strings"
	"testing"
	"time"

	"github.com/mtwatch/mtwatch/lib/domid"
	"github.com/mtwatch/mtwatch/plugin/plugintest"
)

// TestVifIOEmu: an HVM guest's vif (type vif_ioemu) gets libxl's two
// executions in order, `online type_if=vif` then `add type_if=tap`, both
// with INTERFACE and vif set (golden files), and the same on removal; a
// guest with a stub domain gets the first only; a failed first add skips
// the tap execution, a failed first remove does not; a vif without a
// readable nic type fails as libxl does.
func TestVifIOEmu(t *testing.T) {
	t.Parallel()
	f := start(t, plugintest.Options{}, "")
	for _, id := range []domid.ID{5, 6, 7, 8} {
		f.h.AddDomain(id)
	}
	hvm := f.device("vif", 5, 0, "connect", "type", "vif_ioemu", "gatewaydev", "eth0")
	f.h.Write(hvm+"/state", "2")
	f.record(hvm, "add", 0)
	if s := f.status(hvm, 20*time.Second); s != "connected" {
		t.Fatalf("hotplug-status %q", s)
	}
	golden(t, "vif-ioemu-online.txt", f.record(hvm, "online", 0))
	golden(t, "vif-ioemu-tap-add.txt", f.record(hvm, "add", 0))
	f.h.Write(hvm+"/online", "0", hvm+"/state", "6")
	golden(t, "vif-ioemu-offline.txt", f.record(hvm, "offline", 0))
	golden(t, "vif-ioemu-tap-remove.txt", f.record(hvm, "remove", 0))
	f.h.Wait(10*time.Second, "remove ends", func() bool { return strings.Count(f.log(), hvm+" ") == 8 })
	want := ""
	for _, a := range []string{"online", "add", "offline", "remove"} {
		want += hvm + " " + a + " start\n" + hvm + " " + a + " end\n"
	}
	if got := f.log(); got != want {
		t.Errorf("log:\n%s\nwant:\n%s", got, want)
	}

	// A stub domain runs the device model: no tap execution. The type is
	// parsed case-insensitively, as libxl_nic_type_from_string does.
	f.h.Write("/local/domain/6/image/device-model-domid", "106")
	stub := f.device("vif", 6, 0, "connect", "type", "VIF_IOEMU")
	plain := f.device("vif", 6, 1, "connect", "type", "Vif")
	f.h.Write(stub+"/state", "2", plain+"/state", "2")
	f.status(stub, 20*time.Second)
	f.status(plain, 20*time.Second)
	f.h.Write(stub+"/online", "0", stub+"/state", "6", plain+"/online", "0", plain+"/state", "6")
	f.record(stub, "offline", 0)
	f.record(plain, "offline", 0)
	time.Sleep(300 * time.Millisecond)
	if n := f.records(stub, "add") + f.records(stub, "remove") + f.records(plain, "add") + f.records(plain, "remove"); n != 0 {
		t.Errorf("%d tap executions with a stub domain or a plain vif:\n%s", n, f.log())
	}

	// The first add fails: no tap execution, hotplug-status=error.
	vfail := f.device("vif", 7, 0, "picky", "type", "vif_ioemu", "fail-on", "online type_if=vif")
	// The tap add fails: the device fails.
	tfail := f.device("vif", 7, 1, "picky", "type", "vif_ioemu", "fail-on", "add type_if=tap")
	f.h.Write(vfail+"/state", "2", tfail+"/state", "2")
	f.h.Wait(20*time.Second, "tap add failure reported", func() bool {
		v, _ := f.h.Read(tfail + "/hotplug-error")
		return strings.Contains(v, "picky add failed: exit status 1")
	})
	if s, _ := f.h.Read(tfail + "/hotplug-status"); s != "error" {
		t.Errorf("failed tap add: hotplug-status %q", s)
	}
	f.status(vfail, 20*time.Second)
	if e, _ := f.h.Read(vfail + "/hotplug-error"); !strings.Contains(e, "picky online failed") {
		t.Errorf("failed online: hotplug-error %q", e)
	}
	if f.records(vfail, "add") != 0 {
		t.Error("tap add ran after the vif online failed")
	}
	// A failed offline still lets the tap remove run.
	rfail := f.device("vif", 7, 2, "picky", "type", "vif_ioemu", "fail-on", "offline type_if=vif")
	f.h.Write(rfail+"/state", "2")
	f.status(rfail, 20*time.Second)
	f.record(rfail, "add", 0)
	f.h.Write(rfail+"/online", "0", rfail+"/state", "6")
	f.record(rfail, "remove", 0)

	// No type node, or type unknown: libxl fails the device before running
	// anything.
	notype := f.device("vif", 8, 0, "connect")
	f.h.Rm(notype + "/type")
	unknown := f.device("vif", 8, 1, "connect", "type", "unknown")
	bogus := f.device("vif", 8, 2, "connect", "type", "vif2")
	f.h.Write(notype+"/state", "2", unknown+"/state", "2", bogus+"/state", "2")
	for _, tc := range []struct{ base, err string }{
		{notype, "unable to read nictype from " + notype},
		{unknown, "nic type unknown"},
		{bogus, `unable to parse nictype "vif2" from ` + bogus},
	} {
		if s := f.status(tc.base, 20*time.Second); s != "error" {
			t.Errorf("%s: hotplug-status %q", tc.base, s)
		}
		if e, _ := f.h.Read(tc.base + "/hotplug-error"); !strings.Contains(e, tc.err) {
			t.Errorf("%s: hotplug-error %q, want %q", tc.base, e, tc.err)
		}
		if f.records(tc.base, "online") != 0 {
			t.Errorf("%s: the script ran", tc.base)
		}
	}
}

func TestAtoi(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]int{"": 0, "0": 0, "7": 7, " 12x": 12, "-3": -3, "+4": 4, "x1": 0} {
		if got := atoi(in); got != want {
			t.Errorf("atoi(%q) = %d, want %d", in, got, want)
		}
	}
}
