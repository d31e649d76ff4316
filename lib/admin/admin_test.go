package admin

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/mtwatch/mtwatch/internal/goldenfile"
	"github.com/mtwatch/mtwatch/lib/control"
	"github.com/mtwatch/mtwatch/lib/xenstore/xenstoredtest"
)

type result struct {
	code           int
	stdout, stderr string
}

// run runs mtwatch in-process with args (without the program name).
func run(t *testing.T, args ...string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var out, errb bytes.Buffer
	code := Run(ctx, append([]string{"mtwatch"}, args...), strings.NewReader(""), &out, &errb)
	return result{code, out.String(), errb.String()}
}

func (r result) expect(t *testing.T, code int) {
	t.Helper()
	if r.code != code {
		t.Fatalf("exit %d, want %d\nstdout:\n%s\nstderr:\n%s", r.code, code, r.stdout, r.stderr)
	}
}

// golden compares got with testdata/<name>, or rewrites it with -update.
func golden(t *testing.T, name, got string) {
	t.Helper()
	goldenfile.Check(t, filepath.Join("testdata", name), got)
}

// fakeAgent is a fixed agent state: dom0, an idle guest, a busy one, a
// stalled one (its handler, and a hotplug script of its other device), one
// whose worker is idle while a device of it is stuck in set-up (a plugin's
// stall) and a stale node.
type fakeAgent struct{}

var t0 = time.Date(2026, 11, 29, 9, 0, 0, 0, time.UTC)

func (fakeAgent) Status() control.Status {
	return control.Status{
		Version: "1.0.0", PID: 4242, StartedAt: t0, UptimeSeconds: 3725,
		Mode: control.ModeMultiWorker, AutoDetect: true, StallThresholdMS: 5000, GOMAXPROCS: 1,
		Xenstore: control.XenstoreStatus{Path: "/run/xenstored/socket", State: "connected", ConnectedSince: t0, Reconnects: 1},
		Domains:  5, Workers: 4, Nodes: 5, Stale: 1, Stalled: 3,
		DefaultWorker: control.DefaultWorker{Processed: 120, LastLatencyUS: 35, MaxLatencyUS: 812},
		Totals:        control.Totals{Dispatched: 1370, Processed: 1361, Coalesced: 4, Dropped: 2, Stalls: 1},
		Plugins:       []control.PluginStatus{{Name: "log", Enabled: true, Watches: 2}, {Name: "exec", Enabled: false}},
	}
}

var fakeDomains = []control.Domain{
	{Domid: 0, Name: "Domain-0", Worker: control.WorkerDefault, Dispatched: 120, Processed: 120, LastLatencyUS: 35, MaxLatencyUS: 812},
	{Domid: 3, Name: "idle", UUID: "33333333-3333-4333-8333-333333333333", Node: true, Introduced: true,
		Worker: control.WorkerLive, Dispatched: 10, Processed: 10, LastLatencyUS: 40, MaxLatencyUS: 90},
	{Domid: 5, Name: "web", UUID: "55555555-5555-4555-8555-555555555555", Node: true, Introduced: true,
		Worker: control.WorkerLive, Queued: 2, Dispatched: 1200, Processed: 1196, Coalesced: 4, Dropped: 2,
		LastLatencyUS: 1500, MaxLatencyUS: 25000,
		Current: &control.Current{Path: "backend/vif/5/0/state", Watch: "log", Token: "log/1", AgeMS: 12}},
	{Domid: 7, Name: "stuck", UUID: "77777777-7777-4777-8777-777777777777", Node: true, Introduced: true,
		Worker: control.WorkerLive, Queued: 5, Dispatched: 40, Processed: 35,
		Current:      &control.Current{Path: "backend/vbd/7/51712/state", Watch: "hotplug", Token: "hotplug/2", AgeMS: 93000, Stalled: true},
		PluginStalls: 1, PluginStallAgeMS: 20000},
	{Domid: 8, Name: "db", UUID: "88888888-8888-4888-8888-888888888888", Node: true, Introduced: true,
		Worker: control.WorkerLive, Dispatched: 6, Processed: 6, LastLatencyUS: 50, MaxLatencyUS: 70,
		PluginStalls: 1, PluginStallAgeMS: 92000},
	{Domid: 9, Node: true, Stale: true, Worker: control.WorkerNone},
}

func (fakeAgent) Domains() []control.Domain { return fakeDomains }
func (fakeAgent) Domain(id uint16) (control.Domain, bool) {
	for _, d := range fakeDomains {
		if d.Domid == id {
			return d, true
		}
	}
	return control.Domain{}, false
}
func (fakeAgent) Stalls() []control.Stall {
	return []control.Stall{{Domid: 7, Name: "stuck", Worker: "domain", Watch: "hotplug", Token: "hotplug/2",
		Path: "backend/vbd/7/51712/state", Started: t0, AgeMS: 93000},
		{Domid: 8, Name: "db", Worker: "plugin", Watch: "hotplug", Path: "backend/vbd/8/51712", Started: t0.Add(time.Second),
			AgeMS: 92000, Detail: "device stuck in set-up: backend state 2 (at InitWait without hotplug-status), frontend state 1"},
		{Domid: 7, Name: "stuck", Worker: "plugin", Watch: "hotplug", Path: "backend/vif/7/0", Started: t0.Add(73 * time.Second),
			AgeMS: 20000, Detail: "hotplug online script /etc/xen/scripts/vif-bridge running"}}
}

// serveAgent serves src on a fresh control socket, as mtwatchd does.
func serveAgent(t *testing.T, src control.Source) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "control.sock")
	ln, err := control.Listen(path)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	metrics := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {})
	go func() { done <- Serve(ctx, ln, control.NewHandler(src, metrics)) }()
	t.Cleanup(func() { cancel(); <-done })
	return path
}

// Serve is control.Serve; a variable so tests read as the agent's setup.
var Serve = control.Serve

func TestGoldenWithFakeAgent(t *testing.T) {
	sock := serveAgent(t, fakeAgent{})
	for _, tt := range []struct {
		golden string
		args   []string
	}{
		{"list.golden", []string{"list"}},
		{"list-long.golden", []string{"list", "--long"}},
		{"list-json.golden", []string{"list", "--json"}},
		{"list-json.golden", []string{"--json", "list"}},
		{"list-select.golden", []string{"list", "stuck", "3"}},
		{"status.golden", []string{"status"}},
		{"status-json.golden", []string{"status", "--json"}},
		{"stalls.golden", []string{"stalls"}},
		{"stalls-json.golden", []string{"stalls", "--json"}},
		{"top-batch.golden", []string{"top", "--batch", "--iterations", "2", "--delay", "10ms"}},
		{"top-batch.golden", []string{"top", "-b", "-i", "2", "-d", "10ms"}}, // xentop's options
		{"top-batch.golden", []string{"top", "-b", "-n2", "-d", "0.01"}},     // as xentop writes them: seconds, -n1
		{"top-batch.golden", []string{"top", "-b", "-d0.01", "-i", "2"}},
	} {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			r := run(t, append([]string{"--control", sock}, tt.args...)...)
			r.expect(t, ExitOK)
			if r.stderr != "" {
				t.Errorf("stderr: %q", r.stderr)
			}
			golden(t, tt.golden, r.stdout)
		})
	}
}

// TestListJSONIsTheAPI: list --json is the control API's answer, unchanged.
func TestListJSONIsTheAPI(t *testing.T) {
	sock := serveAgent(t, fakeAgent{})
	r := run(t, "--control", sock, "list", "--json")
	r.expect(t, ExitOK)
	var got []control.Domain
	if err := json.Unmarshal([]byte(r.stdout), &got); err != nil {
		t.Fatal(err)
	}
	if len(got) != len(fakeDomains) || got[3].Current == nil || !got[3].Current.Stalled {
		t.Errorf("list --json: %+v", got)
	}
}

func TestAgentNotRunning(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "control.sock")
	for _, args := range [][]string{{"status"}, {"stalls"}, {"top", "--batch", "-n", "1"}, {"status", "--json"}} {
		r := run(t, append([]string{"--control", sock}, args...)...)
		r.expect(t, ExitAgentNotRunning)
		if want := "mtwatch: agent not running (control socket " + sock + ")"; !strings.HasPrefix(r.stderr, want) ||
			strings.Count(r.stderr, "\n") != 1 {
			t.Errorf("%v: stderr %q, want one line starting %q", args, r.stderr, want)
		}
	}
}

// TestListWithoutAgent: list falls back to XenStore and still exits 0.
func TestListWithoutAgent(t *testing.T) {
	in := xenstoredtest.Start(t)
	in.CreateDomain(3)
	in.CreateDomain(5)
	sock := filepath.Join(t.TempDir(), "control.sock")
	xs := []string{"--xenstore", in.Socket(), "--control", sock}
	run(t, append(xs, "create", "--uuid", "55555555-5555-4555-8555-555555555555", "5")...).expect(t, ExitOK)
	run(t, append(xs, "create", "12")...).expect(t, ExitOK) // a node without a domain
	for _, tt := range []struct {
		golden string
		args   []string
	}{
		{"list-noagent.golden", []string{"list"}},
		{"list-noagent-long.golden", []string{"list", "-l"}},
		{"list-noagent-json.golden", []string{"list", "--json"}},
	} {
		r := run(t, append(xs, tt.args...)...)
		r.expect(t, ExitOK)
		want := "mtwatch: agent not running (control socket " + sock + "); listing the nodes and domains in XenStore\n"
		if r.stderr != want {
			t.Errorf("stderr %q, want %q", r.stderr, want)
		}
		golden(t, tt.golden, r.stdout)
	}
	// Without the agent and without XenStore, list fails.
	r := run(t, "--xenstore", filepath.Join(t.TempDir(), "none"), "--control", sock, "list")
	r.expect(t, ExitFailure)
}

func TestListSelection(t *testing.T) {
	sock := serveAgent(t, fakeAgent{})
	for _, tt := range []struct {
		arg, msg string
	}{
		{"abc", `mtwatch: domain "abc": no such domain`},
		{"11", "mtwatch: domain 11: no such domain"},
		{"32752", "mtwatch: domain 32752: reserved domid"},
		{"70000", "mtwatch: domain 70000: domid out of range"},
		{"007", "mtwatch: domain 007: invalid domid syntax"},
		{"-1", "mtwatch: domain -1: invalid domid syntax"},
	} {
		r := run(t, "--control", sock, "list", tt.arg)
		r.expect(t, ExitUsage)
		if strings.TrimSpace(r.stderr) != tt.msg || r.stdout != "" {
			t.Errorf("list %s: stderr %q stdout %q, want %q", tt.arg, r.stderr, r.stdout, tt.msg)
		}
	}
	r := run(t, "--control", sock, "list", "0")
	r.expect(t, ExitOK)
	if !strings.Contains(r.stdout, "Domain-0") || strings.Contains(r.stdout, "web") {
		t.Errorf("list 0:\n%s", r.stdout)
	}
}

func TestUsageErrors(t *testing.T) {
	for _, tt := range []struct {
		args []string
		msg  string
	}{
		{[]string{"frob"}, `unknown command "frob"`},
		{[]string{"help", "frob"}, `help: unknown command "frob"`},
		{[]string{"xl", "frob"}, `xl: unknown subcommand "frob"`},
		{[]string{"xl", "help", "frob"}, `xl: unknown subcommand "help"`},
		{[]string{"xl", "create"}, "xl create: no config file given"},
		{[]string{"xl", "destroy"}, "xl destroy: no <domain> given"},
		{[]string{"list", "--bogus"}, "flag provided but not defined: -bogus"},
		{[]string{"list", "5", "--json"}, "flag --json must come before the arguments"},
		{[]string{"status", "x"}, "status takes no arguments"},
		{[]string{"top", "--delay", "0s"}, "--delay must be positive"},
		{[]string{"top", "-d", "0"}, "--delay must be positive"},
		{[]string{"top", "-d", "soon"}, "neither seconds"},
		{[]string{"completion", "tcsh"}, `unknown shell "tcsh"`},
		{[]string{"completion"}, "completion takes one of"},
		{[]string{"watch"}, "watch takes at least one <path>"},
		{[]string{"watch", "a//b"}, `watch "a//b"`},
		{[]string{"create"}, "create takes exactly one <domid>"},
		{[]string{"create", "--uuid", "nope", "5"}, "malformed vm uuid"},
		{[]string{"destroy", "5", "6"}, "destroy takes exactly one"},
	} {
		r := run(t, append([]string{"--control", "/nonexistent/sock", "--xenstore", "/nonexistent/xs"}, tt.args...)...)
		r.expect(t, ExitUsage)
		if !strings.HasPrefix(r.stderr, "mtwatch: ") || !strings.Contains(r.stderr, tt.msg) || strings.Count(r.stderr, "\n") != 1 {
			t.Errorf("%v: stderr %q, want one line with %q", tt.args, r.stderr, tt.msg)
		}
	}
}

func TestHelpAndVersion(t *testing.T) {
	r := run(t, "--help")
	r.expect(t, ExitOK)
	for _, cmd := range []string{"list", "status", "top", "stalls", "create", "destroy", "xl", "watch", "completion"} {
		if !strings.Contains(r.stdout, "   "+cmd) {
			t.Errorf("help lacks %s", cmd)
		}
	}
	run(t).expect(t, ExitOK)
	run(t, "--version").expect(t, ExitOK)
	run(t, "xl", "create", "--help").expect(t, ExitOK)
	run(t, "xl", "--help").expect(t, ExitOK)
	r = run(t, "help", "list")
	r.expect(t, ExitOK)
	if !strings.Contains(r.stdout, "mtwatch list") {
		t.Errorf("help list: %q", r.stdout)
	}
}

// busyDefaultAgent is fakeAgent with a handler stalled on the default
// worker: the agent reports it as dom0's current handler, whatever domain
// the path belongs to (here domain 9, which has no worker of its own).
type busyDefaultAgent struct{ fakeAgent }

func (busyDefaultAgent) Domains() []control.Domain {
	doms := slices.Clone(fakeDomains)
	doms[0].Queued = 3
	doms[0].Current = &control.Current{Path: "/local/domain/9/device/vif/0/state", Watch: "exec",
		Token: "exec/1", AgeMS: 61000, Stalled: true}
	return doms
}

// TestListShowsDefaultWorkerCurrent: the handler running on the default
// worker is in dom0's row of list and top, with its stall age.
func TestListShowsDefaultWorkerCurrent(t *testing.T) {
	sock := serveAgent(t, busyDefaultAgent{})
	for _, tt := range []struct {
		golden string
		args   []string
	}{
		{"list-default-current.golden", []string{"list"}},
		{"list-default-current-long.golden", []string{"list", "-l", "0"}},
		{"top-default-current.golden", []string{"top", "-b", "-n", "1"}},
	} {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			r := run(t, append([]string{"--control", sock}, tt.args...)...)
			r.expect(t, ExitOK)
			golden(t, tt.golden, r.stdout)
			dom0 := ""
			for _, l := range strings.Split(r.stdout, "\n") {
				if strings.HasPrefix(l, "Domain-0 ") {
					dom0 = l
				}
			}
			if !strings.Contains(dom0, " 1m1s ") || !strings.HasSuffix(dom0, " /local/domain/9/device/vif/0/state") {
				t.Errorf("dom0's row lacks the default worker's stalled handler: %q", dom0)
			}
		})
	}
}

// TestExitCodes: the table of docs/cli.md is the constants', and each
// documented code is what the situation it documents exits with.
func TestExitCodes(t *testing.T) {
	doc, err := os.ReadFile(filepath.Join("..", "..", "docs", "cli.md"))
	if err != nil {
		t.Fatal(err)
	}
	_, table, _ := strings.Cut(string(doc), "## Exit codes\n")
	table, _, _ = strings.Cut(table, "\n\n\n")
	documented := map[string]bool{}
	for _, l := range strings.Split(table, "\n") {
		if f := strings.Split(l, "|"); len(f) > 2 && strings.TrimSpace(f[1]) != "code" && !strings.HasPrefix(strings.TrimSpace(f[1]), "-") {
			documented[strings.TrimSpace(f[1])] = true
		}
	}
	nowhere := filepath.Join(t.TempDir(), "none")
	in := xenstoredtest.Start(t)
	cases := []struct {
		code int
		why  string
		args []string
	}{
		{ExitOK, "done", []string{"--xenstore", in.Socket(), "create", "5"}},
		{ExitOK, "list without the agent", []string{"--xenstore", in.Socket(), "--control", nowhere, "list"}},
		{ExitFailure, "xenstore unreachable", []string{"--xenstore", nowhere, "create", "5"}},
		{ExitFailure, "xl fails", []string{"--xenstore", in.Socket(), "xl", "--xl", "/bin/false", "create", "-n", "/dev/null"}},
		{ExitUsage, "bad domid", []string{"--xenstore", in.Socket(), "create", "70000"}},
		{ExitUsage, "unknown flag", []string{"list", "--frob"}},
		{ExitUsage, "unknown help topic", []string{"help", "frob"}},
		{ExitAgentNotRunning, "agent not running", []string{"--control", nowhere, "status"}},
		{ExitAgentNotRunning, "agent not running", []string{"--control", nowhere, "stalls"}},
		{ExitAgentNotRunning, "agent not running", []string{"--control", nowhere, "top", "-b", "-i", "1"}},
	}
	tested := map[string]bool{}
	for _, c := range cases {
		r := run(t, c.args...)
		if r.code != c.code {
			t.Errorf("%s (%v): exit %d, want %d; stderr %q", c.why, c.args, r.code, c.code, r.stderr)
		}
		tested[strconv.Itoa(c.code)] = true
	}
	if len(documented) != 4 {
		t.Errorf("docs/cli.md documents exit codes %v, want 0 1 2 3", documented)
	}
	for code := range documented {
		if !tested[code] {
			t.Errorf("documented exit code %s not tested", code)
		}
	}
}

// TestXLWithoutSubcommand: mtwatch xl alone is a usage error (exit 2) with
// the help on stderr, as xl alone is, not a success.
func TestXLWithoutSubcommand(t *testing.T) {
	r := run(t, "xl")
	r.expect(t, ExitUsage)
	if r.stdout != "" || !strings.Contains(r.stderr, "create|shutdown|destroy|reboot") {
		t.Errorf("stdout %q, stderr %q", r.stdout, r.stderr)
	}
}

func TestSplitShortOptions(t *testing.T) {
	for _, tt := range []struct{ in, want []string }{
		{[]string{"mtwatch", "top", "-n1", "-d2"}, []string{"mtwatch", "top", "-n", "1", "-d", "2"}},
		{[]string{"mtwatch", "top", "-d", "1", "-i0.5"}, []string{"mtwatch", "top", "-d", "1", "-i", "0.5"}},
		{[]string{"mtwatch", "list", "-n1"}, []string{"mtwatch", "list", "-n1"}},
		{[]string{"mtwatch", "top", "-b", "-name"}, []string{"mtwatch", "top", "-b", "-name"}},
	} {
		if got := splitShortOptions(tt.in); !slices.Equal(got, tt.want) {
			t.Errorf("%q: %q, want %q", tt.in, got, tt.want)
		}
	}
}
