package agent_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/mtwatch/mtwatch/lib/agent"
	"github.com/mtwatch/mtwatch/lib/canary"
	"github.com/mtwatch/mtwatch/lib/xenstore"
	"github.com/mtwatch/mtwatch/lib/xenstore/xenstoredtest"
	"github.com/mtwatch/mtwatch/plugin"
	"github.com/mtwatch/mtwatch/plugin/hotplug"
)

// driverHotplug is the set-up of the driver-domain hotplug tests: driver
// domain 5 on its bus, frontend 11, and scripts that log each run to log.
type driverHotplug struct {
	t   *testing.T
	in  *xenstoredtest.Instance
	db  *driverBus
	dir string // scripts_dir
	log string
	c   *xenstore.Client // dom0's
	ctx context.Context
}

const driverHome = "/local/domain/5/"

func newDriverHotplug(t *testing.T, scripts map[string]string) *driverHotplug {
	in := xenstoredtest.Start(t)
	d := &driverHotplug{t: t, in: in, db: newDriverBus(in, 5), dir: t.TempDir()}
	in.CreateDomain(11)
	d.log = filepath.Join(d.dir, "runs.log")
	for name, body := range scripts {
		body = strings.ReplaceAll(body, "$LOG", fmt.Sprintf("%q", d.log))
		body = strings.ReplaceAll(body, "$CONNECT", guestWrite(t, d.db.bus))
		if err := os.WriteFile(filepath.Join(d.dir, name), []byte("#!/bin/sh\n"+body), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	t.Cleanup(cancel)
	c, err := xenstore.Dial(ctx, xenstore.WithPath(in.Socket()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	d.c, d.ctx = c, ctx
	return d
}

// agent starts an agent in driver domain 5 on a new file of its bus.
func (d *driverHotplug) agent(cfg string) *harness {
	return start(d.t, d.in, fmt.Sprintf("[agent]\ncanary_interval = \"50ms\"\n[plugins.hotplug]\nenabled = true\nscripts_dir = %q\n%s", d.dir, cfg),
		func(o *agent.Options) { o.Dial = d.db.dial }, plugin.Registration{Name: hotplug.Name, New: hotplug.New})
}

// device writes a vbd of frontend 11 in the driver domain's home, as
// dom0's libxl does, and moves it to InitWait as the driver domain's
// backend driver would.
func (d *driverHotplug) device(devid int, script string) string {
	base := fmt.Sprintf("backend/vbd/11/%d", devid)
	kv := []string{"frontend-id", "11", "online", "1", "state", "1", "script", script}
	err := d.c.Transaction(d.ctx, func(tx *xenstore.Tx) error {
		for i := 0; i < len(kv); i += 2 {
			if err := tx.Write(d.ctx, driverHome+base+"/"+kv[i], []byte(kv[i+1])); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		d.t.Fatal(err)
	}
	d.write(driverHome+base+"/state", "2")
	return base
}

func (d *driverHotplug) write(path, v string) {
	d.t.Helper()
	if err := d.c.Write(d.ctx, path, []byte(v)); err != nil {
		d.t.Fatal(err)
	}
}

// remove closes a device as the toolstack does.
func (d *driverHotplug) remove(base string) {
	d.write(driverHome+base+"/online", "0")
	d.write(driverHome+base+"/state", "6")
}

// wait polls cond until it holds, for 20 s at most.
func (d *driverHotplug) wait(what string, cond func() bool) {
	d.t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			d.t.Fatalf("%s: not within 20s (runs:\n%s)", what, d.runs())
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func (d *driverHotplug) runs() string {
	b, _ := os.ReadFile(d.log)
	return string(b)
}

func (d *driverHotplug) count(line string) int {
	n := 0
	for _, l := range strings.Split(d.runs(), "\n") {
		if l == line {
			n++
		}
	}
	return n
}

// agentBackendToken is the token of the agent's own watch of a driver
// domain's backend directory.
const agentBackendToken = "mtwatchd:backend"

// agentWatches lists the watches the bus holds, "path token" with the
// token the agent gave (lib/xenstore prefixes it on the wire with a
// sequence number and a colon).
func (d *driverHotplug) agentWatches() []string {
	var out []string
	for _, w := range d.db.bus.Watches() {
		path, wire, _ := strings.Cut(w, " ")
		_, token, _ := strings.Cut(wire, ":")
		out = append(out, path+" "+token)
	}
	slices.Sort(out)
	return out
}

func (d *driverHotplug) status(base string) string {
	v, err := d.c.Read(d.ctx, driverHome+base+"/hotplug-status")
	if err != nil {
		return ""
	}
	return string(v)
}

func (d *driverHotplug) gone(path string) bool {
	_, err := d.c.Read(d.ctx, path)
	return err != nil
}

// TestDriverDomainReconnect: the agent's xenbus file is closed under it
// (what a lost connection is to a process of a driver domain: the
// domain's connection in xenstored lives on, the file's watches go). The
// agent opens a new file by its one establish path and registers its
// watches there exactly once: the bus holds as many watches as before,
// every device's script runs once, and a device added after the
// reconnection gets its add, its remove and its directory removed.
func TestDriverDomainReconnect(t *testing.T) {
	t.Parallel()
	d := newDriverHotplug(t, map[string]string{
		"logged": "echo \"$1 $XENBUS_PATH\" >>$LOG\ncase \"$1\" in add) $CONNECT ;; esac\n",
	})
	h := d.agent("")
	// The agent's watches, each once: its own, the plugin's and the
	// canary's (the start-up scan takes none).
	wantWatches := []string{driverHome + "mtwatch-canary " + canary.Token, "backend hotplug/1", "backend " + agentBackendToken}
	watched := func() bool { return slices.Equal(d.agentWatches(), wantWatches) }
	d.wait("the agent's watches on its file", watched)
	before := d.device(768, "logged")
	d.wait("first add", func() bool { return d.status(before) == "connected" })
	h.waitHotplug("first add counted", func(st hotplug.Status) bool { return st.OK == 1 })

	n, f := d.db.dials()
	if n != 1 {
		t.Fatalf("%d dials before the loss", n)
	}
	f.Close()
	h.waitLog("reconnected to xenstored")
	if n, _ := d.db.dials(); n != 2 {
		t.Fatalf("%d dials after one loss", n)
	}
	st := h.a.Status()
	if st.Xenstore.State != "connected" || st.Xenstore.Reconnects != 1 {
		t.Fatalf("xenstore status %+v", st.Xenstore)
	}
	// The closed file's watches are gone from xenstored, the new file's
	// registered once each.
	d.wait("the agent's watches on its new file", func() bool { return watched() && d.db.bus.Stats().Files == 1 })

	// The canary runs on the new file, in the driver domain's own home
	// (the agent learnt its domid from its first connection).
	samples := h.a.Status().Canary.Samples
	d.wait("a canary sample on the new file", func() bool {
		c := h.a.Status().Canary
		return c.Samples > samples && c.LastError == ""
	})
	if perms, err := d.c.GetPerms(d.ctx, driverHome+"mtwatch-canary"); err != nil || perms.String() != "n5" {
		t.Errorf("canary node perms %v, %v: want n5", perms, err)
	}
	if strings.Contains(h.logs.String(), "canary stopped") {
		t.Errorf("the canary stopped:\n%s", h.logs.String())
	}

	after := d.device(832, "logged")
	d.wait("add after the reconnection", func() bool { return d.status(after) == "connected" })
	d.remove(after)
	d.wait("remove after the reconnection", func() bool { return d.gone(driverHome + after) })
	d.remove(before)
	d.wait("remove of the device from before", func() bool { return d.gone(driverHome + "backend/vbd") })
	h.waitHotplug("every script counted", func(st hotplug.Status) bool { return st.OK == 4 })
	want := "add " + before + "\nadd " + after + "\nremove " + after + "\nremove " + before + "\n"
	// Nothing ran twice: let a duplicated watch's events show.
	time.Sleep(300 * time.Millisecond)
	if got := d.runs(); got != want {
		t.Errorf("scripts ran:\n%s\nwant:\n%s", got, want)
	}
	if got := d.agentWatches(); !slices.Equal(got, wantWatches) {
		t.Errorf("watches on the bus %q, want %q", got, wantWatches)
	}
}

// TestDriverDomainRestartMidAdd: the agent is stopped while two adds run,
// and a new agent starts on a new file of the same bus. The journal, in
// the driver domain's private data directory, makes each add complete
// exactly once: the script that outlived the stop (it ignores SIGTERM, as
// a script may) reported, and is not run again; the one the stop killed
// runs once more; the one done before the stop does not run again. Every
// device ends with hotplug-status, and each remove runs once and removes
// the backend directory.
func TestDriverDomainRestartMidAdd(t *testing.T) {
	t.Parallel()
	d := newDriverHotplug(t, map[string]string{
		"fast": "echo \"$1 start $XENBUS_PATH\" >>$LOG\ncase \"$1\" in add) $CONNECT ;; esac\necho \"$1 done $XENBUS_PATH\" >>$LOG\n",
		// Outlives SIGTERM, and reports.
		"stubborn": "trap '' TERM\necho \"$1 start $XENBUS_PATH\" >>$LOG\ncase \"$1\" in add) sleep 1.5; $CONNECT ;; esac\necho \"$1 done $XENBUS_PATH\" >>$LOG\n",
		// The first add hangs until killed; the next one is quick.
		"once-slow": "echo \"$1 start $XENBUS_PATH\" >>$LOG\ncase \"$1\" in add)\n" +
			"  if [ ! -e \"$0.ran\" ]; then : >\"$0.ran\"; sleep 600 & wait; fi\n  $CONNECT ;;\nesac\necho \"$1 done $XENBUS_PATH\" >>$LOG\n",
	})
	cfg := "timeout = \"60s\"\ngrace = \"10s\"\n"
	h1 := d.agent(cfg)
	fast := d.device(768, "fast")
	d.wait("fast add", func() bool { return d.status(fast) == "connected" })
	stubborn := d.device(832, "stubborn")
	slow := d.device(51712, "once-slow")
	d.wait("both slow adds running", func() bool {
		return d.count("add start "+stubborn) == 1 && d.count("add start "+slow) == 1
	})

	h1.shutDown = true
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	err := h1.a.Shutdown(ctx)
	cancel()
	if err != nil {
		t.Fatalf("shutdown mid-add: %v", err)
	}
	// Its file released: what it had in flight answered, its watches and
	// transactions ended.
	d.wait("the stopped agent's file released", func() bool {
		s := d.db.bus.Stats()
		return s.Files == 0 && s.Watches == 0 && s.Transactions == 0
	})
	if d.count("add done "+stubborn) != 1 || d.status(stubborn) != "connected" {
		t.Fatalf("the script that ignores SIGTERM did not finish within the stop:\n%s", d.runs())
	}
	if d.count("add done "+slow) != 0 || d.status(slow) != "" {
		t.Fatalf("the killed script reported:\n%s", d.runs())
	}

	h2 := d.agent(cfg)
	d.wait("the killed add run again", func() bool { return d.status(slow) == "connected" })
	h2.waitHotplug("the new agent's runs", func(st hotplug.Status) bool { return st.OK >= 1 && len(st.Running) == 0 })
	for _, base := range []string{fast, stubborn, slow} {
		d.remove(base)
	}
	d.wait("every backend directory removed", func() bool { return d.gone(driverHome + "backend/vbd") })
	d.wait("every journal record removed", func() bool {
		ds, err := d.c.Directory(d.ctx, driverHome+"data/mtwatch-hotplug/vbd/11")
		return err != nil || len(ds) == 0
	})
	time.Sleep(300 * time.Millisecond) // a stray run shows
	for line, want := range map[string]int{
		"add start " + fast: 1, "add done " + fast: 1,
		"add start " + stubborn: 1, "add done " + stubborn: 1,
		"add start " + slow: 2, "add done " + slow: 1,
		"remove start " + fast: 1, "remove start " + stubborn: 1, "remove start " + slow: 1,
	} {
		if got := d.count(line); got != want {
			t.Errorf("%q ran %d times, want %d", line, got, want)
		}
	}
	if n, _ := d.db.dials(); n != 2 {
		t.Errorf("%d dials, want one per agent", n)
	}
	if t.Failed() {
		t.Logf("runs:\n%s\nfirst agent's log:\n%s", d.runs(), h1.logs.String())
	}
}
