package sim_test

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"path"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mtwatch/mtwatch/lib/domid"
	"github.com/mtwatch/mtwatch/lib/node"
	"github.com/mtwatch/mtwatch/lib/sim"
	"github.com/mtwatch/mtwatch/lib/xenstore"
	"github.com/mtwatch/mtwatch/lib/xenstore/xenstoredtest"
)

type sandbox struct {
	in *xenstoredtest.Instance
	hv sim.Xenemu
	c  *xenstore.Client // the test's own connection
}

func newSandbox(t *testing.T) *sandbox {
	t.Helper()
	in := xenstoredtest.Start(t)
	c := dial(t, in)
	return &sandbox{in: in, hv: sim.Xenemu{Server: in.Server()}, c: c}
}

func dial(t *testing.T, in *xenstoredtest.Instance) *xenstore.Client {
	t.Helper()
	c, err := xenstore.Dial(context.Background(), xenstore.WithPath(in.Socket()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func (s *sandbox) config(domains int) sim.Config {
	return sim.Config{
		Domains:     domains,
		Concurrency: 3,
		Dial: func(ctx context.Context) (*xenstore.Client, error) {
			return xenstore.Dial(ctx, xenstore.WithPath(s.in.Socket()))
		},
		Hypervisor:    s.hv,
		Hook:          sim.NodeHook{Client: s.c},
		DeviceTimeout: 5 * time.Second,
		RemoveTimeout: 5 * time.Second,
	}
}

// fakeHotplug is a TEST STAND-IN for mtwatchd's hotplug plugin, which the
// simulator exists to measure: one goroutine that, like a script runner
// with trivial scripts, writes hotplug-status=connected when a backend
// reaches InitWait and removes it when the backend is Closed with online=0.
// Devices whose script is named "hang" get nothing, as if their script
// never returned. It exists only so the simulator's own protocol is tested
// without the agent; the demo and the benchmarks run the real plugin.
func fakeHotplug(t *testing.T, in *xenstoredtest.Instance) {
	t.Helper()
	c := dial(t, in)
	ctx, cancel := context.WithCancel(context.Background())
	w, err := c.Watch(ctx, "/local/domain/0/backend", "fake-hotplug")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	t.Cleanup(func() { cancel(); w.Unwatch(context.Background()); <-done })
	go func() {
		defer close(done)
		for ev := range w.Events() {
			if path.Base(ev.Path) != "state" {
				continue
			}
			be := path.Dir(ev.Path)
			state, err := c.Read(ctx, ev.Path)
			if err != nil {
				continue
			}
			script, _ := c.Read(ctx, be+"/script")
			switch string(state) {
			case "2":
				if path.Base(string(script)) != "hang" {
					c.Write(ctx, be+"/hotplug-status", []byte("connected"))
				}
			case "6":
				if online, _ := c.Read(ctx, be+"/online"); string(online) == "0" {
					c.Rm(ctx, be+"/hotplug-status")
				}
			}
		}
	}()
}

func exists(t *testing.T, c *xenstore.Client, p string) bool {
	t.Helper()
	_, err := c.Read(context.Background(), p)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("read %s: %v", p, err)
	}
	return err == nil
}

func perms(t *testing.T, c *xenstore.Client, p string) string {
	t.Helper()
	ps, err := c.GetPerms(context.Background(), p)
	if err != nil {
		t.Fatalf("get perms %s: %v", p, err)
	}
	return ps.String()
}

// assertClean checks that nothing of domains 1..n is left in the store and
// that xenstored no longer has them introduced.
func assertClean(t *testing.T, c *xenstore.Client, n int) {
	t.Helper()
	ctx := context.Background()
	for i := 1; i <= n; i++ {
		id := domid.ID(i)
		for _, p := range []string{"/local/domain/" + id.String(), "/libxl/" + id.String(),
			"/local/domain/0/backend/vbd/" + id.String(),
			"/local/domain/0/backend/vif/" + id.String(), node.Path(id)} {
			if exists(t, c, p) {
				t.Errorf("%s left behind", p)
			}
		}
		if in, err := c.IsDomainIntroduced(ctx, id); err != nil || in {
			t.Errorf("domain %d still introduced (%v)", id, err)
		}
	}
	if vms, err := c.Directory(ctx, "/vm"); err == nil && len(vms) > 0 {
		t.Errorf("/vm still has %v", vms)
	}
}

func TestRunCreatesAndDestroysInLibxlShape(t *testing.T) {
	s := newSandbox(t)
	fakeHotplug(t, s.in)
	cfg := s.config(6)
	checked := false
	cfg.Progress = func(p sim.Progress) {
		if p.Err != nil {
			t.Errorf("%s domain %d: %v", p.Phase, p.Domid, p.Err)
		}
		if p.Phase != sim.PhaseCreate || p.Done != cfg.Domains {
			return
		}
		// Every domain is up: check the store as libxl leaves it.
		checked = true
		for i := 1; i <= 6; i++ {
			id := domid.ID(i)
			home := "/local/domain/" + id.String()
			if got, want := perms(t, s.c, home), "n0,r"+id.String(); got != want {
				t.Errorf("perms of %s: %q, want %q", home, got, want)
			}
			if got, want := perms(t, s.c, home+"/control/shutdown"), "n"+id.String(); got != want {
				t.Errorf("perms of control/shutdown: %q, want %q", got, want)
			}
			be := "/local/domain/0/backend/vbd/" + id.String() + "/51712"
			if got, want := perms(t, s.c, be), "n0,r"+id.String(); got != want {
				t.Errorf("perms of %s: %q, want %q", be, got, want)
			}
			for _, kv := range [][2]string{
				{be + "/state", "4"}, {be + "/hotplug-status", "connected"},
				{be + "/script", "/etc/xen/scripts/block"},
				{"/local/domain/0/backend/vif/" + id.String() + "/0/script", "/etc/xen/scripts/vif-bridge"},
				{home + "/device/vif/0/state", "4"},
				{home + "/domid", id.String()},
			} {
				if v, err := s.c.Read(context.Background(), kv[0]); err != nil || string(v) != kv[1] {
					t.Errorf("%s = %q (%v), want %q", kv[0], v, err, kv[1])
				}
			}
			vm, err := s.c.Read(context.Background(), home+"/vm")
			if err != nil {
				t.Fatal(err)
			}
			uuid, err := s.c.Read(context.Background(), node.Path(id))
			if err != nil || "/vm/"+string(uuid) != string(vm) {
				t.Errorf("node of %d = %q (%v), want the uuid of %s", id, uuid, err, vm)
			}
			if in, err := s.c.IsDomainIntroduced(context.Background(), id); err != nil || !in {
				t.Errorf("domain %d not introduced (%v)", id, err)
			}
		}
	}
	rep, err := sim.Run(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	if !checked {
		t.Fatal("progress never reported all domains created")
	}
	if rep.Summary.Failed != 0 || rep.Summary.HealthySetup.N != 12 || rep.Summary.HealthyDestroy.N != 6 {
		t.Fatalf("summary %+v", rep.Summary)
	}
	for _, r := range rep.Results {
		for _, d := range r.Devices {
			if d.Status != sim.StatusConnected || d.SetupUS <= 0 {
				t.Errorf("domain %d %s: %+v", r.Domid, d.Type, d)
			}
		}
	}
	assertClean(t, s.c, 6)
}

// TestRunOrder checks libxl's order through a watcher's eyes: the domain's
// home, then INTRODUCE, then the disk, the NIC, and the node (libvirt's
// "started"); at teardown the devices, the home, the domain's death, then
// the node's removal last.
func TestRunOrder(t *testing.T) {
	s := newSandbox(t)
	fakeHotplug(t, s.in)
	ctx := context.Background()
	wc := dial(t, s.in)
	var (
		mu  sync.Mutex
		seq []string
	)
	classify := func(p string) string {
		switch {
		case strings.HasPrefix(p, "@"):
			return p
		case strings.HasPrefix(p, "/local/domain/0/backend/vbd/1"):
			return "vbd"
		case strings.HasPrefix(p, "/local/domain/0/backend/vif/1"):
			return "vif"
		case strings.HasPrefix(p, "/local/domain/0/mtwatch/1"):
			return "node"
		case p == "/local/domain/1" || strings.HasPrefix(p, "/local/domain/1/"):
			return "home"
		}
		return ""
	}
	// Callbacks on the connection's reading goroutine record the events in
	// the order the connection delivered them; a select over several
	// Events channels would not (it picks among ready channels at random).
	// Each watch's first event is the one xenstored sends on registration.
	initial := map[string]bool{}
	for i, p := range []string{"/", "@introduceDomain", "@releaseDomain"} {
		token := fmt.Sprintf("order%d", i)
		w, err := wc.WatchFunc(ctx, p, token, func(ev xenstore.Event) {
			mu.Lock()
			defer mu.Unlock()
			if !initial[ev.Token] {
				initial[ev.Token] = true
				return
			}
			if c := classify(ev.Path); c != "" {
				seq = append(seq, c)
			}
		})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { w.Unwatch(context.Background()) })
	}
	if _, err := sim.Run(ctx, s.config(1)); err != nil {
		t.Fatal(err)
	}
	// The node's removal is the last event; wait for it to be seen.
	deadline := time.Now().Add(5 * time.Second)
	for {
		mu.Lock()
		last := len(seq) > 0 && seq[len(seq)-1] == "node"
		n := len(seq)
		mu.Unlock()
		if last && n > 8 || time.Now().After(deadline) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	mu.Lock()
	got := slices.Clone(seq)
	mu.Unlock()
	first := map[string]int{}
	lastAt := map[string]int{}
	for i, c := range got {
		if _, ok := first[c]; !ok {
			first[c] = i
		}
		lastAt[c] = i
	}
	for _, pair := range [][2]string{
		{"home", "@introduceDomain"}, {"@introduceDomain", "vbd"}, {"vbd", "vif"}, {"vif", "node"},
	} {
		a, aok := first[pair[0]]
		b, bok := first[pair[1]]
		if !aok || !bok || a >= b {
			t.Errorf("creation: %s (at %d) must come before %s (at %d): %v", pair[0], a, pair[1], b, got)
		}
	}
	for _, pair := range [][2]string{
		{"vbd", "home"}, {"vif", "home"}, {"home", "@releaseDomain"}, {"@releaseDomain", "node"},
	} {
		a, b := lastAt[pair[0]], lastAt[pair[1]]
		if a >= b {
			t.Errorf("teardown: last %s (at %d) must come before last %s (at %d): %v", pair[0], a, pair[1], b, got)
		}
	}
	if got[len(got)-1] != "node" {
		t.Errorf("the node's removal is not last: %v", got)
	}
}

func TestRunHungDomain(t *testing.T) {
	s := newSandbox(t)
	fakeHotplug(t, s.in)
	cfg := s.config(4)
	cfg.HangDomain = 2
	cfg.DeviceTimeout = 300 * time.Millisecond
	rep, err := sim.Run(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range rep.Results {
		if r.Domid == 2 {
			// Creation fails at the first device, as libxl's does.
			if !r.Hung || len(r.Devices) != 1 || r.Devices[0].Status != sim.StatusTimeout || len(r.Errors) == 0 {
				t.Errorf("hung domain: %+v", r)
			}
			continue
		}
		if len(r.Errors) > 0 || len(r.Devices) != 2 {
			t.Errorf("healthy domain %d: %+v", r.Domid, r)
		}
	}
	if rep.Summary.HungSetup.N != 1 || rep.Summary.HungSetup.MaxUS < 300_000 {
		t.Errorf("hung setup %+v", rep.Summary.HungSetup)
	}
	if rep.Summary.HealthySetup.N != 6 || rep.Summary.Failed != 0 {
		t.Errorf("summary %+v", rep.Summary)
	}
	assertClean(t, s.c, 4)
}

// One hung device of four: its siblings of the same type are added beside
// it, as libxl's multidev adds them, so they connect and only the domain's
// creation fails.
func TestRunHungDeviceSiblings(t *testing.T) {
	s := newSandbox(t)
	fakeHotplug(t, s.in)
	cfg := s.config(3)
	cfg.Devices = []string{"vif", "vif", "vif", "vif"}
	cfg.HangDomain, cfg.HangDevices = 2, 1
	cfg.DeviceTimeout = 500 * time.Millisecond
	rep, err := sim.Run(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range rep.Results {
		if len(r.Devices) != 4 {
			t.Fatalf("domain %d: %d devices, want 4: %+v", r.Domid, len(r.Devices), r)
		}
		for i, v := range r.Devices {
			hung := r.Domid == 2 && i == 0
			want := sim.StatusConnected
			if hung {
				want = sim.StatusTimeout
			}
			if v.Type != "vif" || v.Devid != i || v.Hung != hung || v.Status != want {
				t.Errorf("domain %d device %d: %+v, want vif %d hung=%v %s", r.Domid, i, v, i, hung, want)
			}
			if !hung && v.SetupUS >= 500_000 {
				t.Errorf("domain %d device %d waited %dµs: behind its hung sibling?", r.Domid, i, v.SetupUS)
			}
		}
		if (r.Domid == 2) != (len(r.Errors) > 0) {
			t.Errorf("domain %d errors: %v", r.Domid, r.Errors)
		}
	}
	assertClean(t, s.c, 3)
}

func TestRunInterruptedStillTearsDown(t *testing.T) {
	s := newSandbox(t)
	fakeHotplug(t, s.in)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	cfg := s.config(10)
	cfg.Concurrency = 1
	cfg.Progress = func(p sim.Progress) {
		if p.Phase == sim.PhaseCreate && p.Done == 3 {
			cancel()
		}
	}
	rep, err := sim.Run(ctx, cfg)
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("Run: %v, want context.Canceled", err)
	}
	if rep == nil || rep.Summary.HealthyDestroy.N < 3 || rep.Summary.HealthyDestroy.N > 4 {
		t.Fatalf("report %+v", rep)
	}
	assertClean(t, s.c, 10)
}

func TestConfigErrors(t *testing.T) {
	s := newSandbox(t)
	for _, tc := range []struct {
		name string
		mod  func(*sim.Config)
		want string
	}{
		{"hang outside", func(c *sim.Config) { c.HangDomain = 9 }, "hang domain 9"},
		{"device type", func(c *sim.Config) { c.Devices = []string{"vif", "9pfs"} }, "device type \"9pfs\""},
		{"hang devices", func(c *sim.Config) { c.HangDomain, c.HangDevices = 1, 3 }, "3 hung devices of a domain with 2"},
		{"reserved", func(c *sim.Config) { c.FirstDomid = 32750 }, "not a guest"},
		{"no dial", func(c *sim.Config) { c.Dial = nil }, "required"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := s.config(4)
			tc.mod(&cfg)
			_, err := sim.Run(context.Background(), cfg)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Run: %v, want an error containing %q", err, tc.want)
			}
		})
	}
	// Nothing was written.
	if doms, err := s.c.Directory(context.Background(), "/local/domain"); (err != nil && !errors.Is(err, fs.ErrNotExist)) || slices.Contains(doms, "1") {
		t.Errorf("/local/domain: %v %v", doms, err)
	}
}

func TestPercentile(t *testing.T) {
	ds := []time.Duration{1, 2, 3, 4, 5, 6, 7, 8, 9, 10}
	for _, tc := range []struct {
		p    float64
		want time.Duration
	}{{50, 5}, {99, 10}, {100, 10}, {10, 1}, {1, 1}} {
		if got := sim.Percentile(ds, tc.p); got != tc.want {
			t.Errorf("p%v = %v, want %v", tc.p, got, tc.want)
		}
	}
	if sim.Percentile(nil, 50) != 0 {
		t.Error("empty")
	}
}
