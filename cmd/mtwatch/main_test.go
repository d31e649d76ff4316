package main

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/mtwatch/mtwatch/internal/daemontest"
	"github.com/mtwatch/mtwatch/internal/goldenfile"
	"github.com/mtwatch/mtwatch/lib/control"
	"github.com/mtwatch/mtwatch/lib/domid"
	"github.com/mtwatch/mtwatch/lib/node"
	"github.com/mtwatch/mtwatch/lib/xenstore/xenstoredtest"

	"github.com/mtwatch/mtwatch/internal/testenv"
)

// bin holds the binaries under test, built once: the real mtwatch and the
// real mtwatchd, run as separate processes.
var bin string

func TestMain(m *testing.M) {
	flag.Parse()
	testenv.Scrub()
	dir, err := os.MkdirTemp("", "mtwatch-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	bin = dir
	out, err := exec.Command("go", "build", "-o", dir+"/", ".", "../mtwatchd").CombinedOutput()
	if err != nil {
		fmt.Fprintf(os.Stderr, "build mtwatch and mtwatchd: %v\n%s", err, out)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

type result struct {
	code           int
	stdout, stderr string
}

// host is a private xenstored with a control socket path; mtwatch finds
// both through the environment, as an administrator's shell would set them.
type host struct {
	t    *testing.T
	in   *xenstoredtest.Instance
	sock string
	env  []string
}

// agentConfig: no stale reporting and no canary (their timing would leak
// into the golden files), a short stall threshold, and an exec rule whose command hangs
// while a domain's "stall" node reads "hang": a handler stuck on a guest.
// (The rule also fires when the domain's tree is removed; the command must
// not hang then.)
const agentConfig = `[agent]
stale_grace = "0s"
canary_interval = "0s"
stall_threshold = "100ms"
shutdown_timeout = "2s"

[plugins.exec]
enabled = true
grace = "100ms"

[[plugins.exec.rule]]
name = "hang"
path = "/local/domain/{domid}/stall"
command = ["/bin/sh", "-c", "test \"$(xenstore-read /local/domain/$DOMID/stall 2>/dev/null)\" = hang && exec sleep 60; exit 0"]
timeout = "2m"
`

func newHost(t *testing.T) *host {
	in := xenstoredtest.Start(t)
	sock := filepath.Join(t.TempDir(), "run", "control.sock")
	env := append(os.Environ(), in.Env()...)
	env = append(env, "MTWATCH_XENSTORE="+in.Socket(), "MTWATCH_CONTROL="+sock)
	return &host{t: t, in: in, sock: sock, env: env}
}

func (h *host) mtwatch(args ...string) result {
	h.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(bin, "mtwatch"), args...)
	cmd.Env = h.env
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		h.t.Fatal(err)
	}
	return result{code, out.String(), errb.String()}
}

func (r result) expect(t *testing.T, code int) {
	t.Helper()
	if r.code != code {
		t.Fatalf("exit %d, want %d\nstdout:\n%s\nstderr:\n%s", r.code, code, r.stdout, r.stderr)
	}
}

// startAgent runs the real mtwatchd until the test ends, and waits for its
// READY=1 and for its plugins' watches.
func (h *host) startAgent() *daemontest.Daemon {
	h.t.Helper()
	return h.startAgentWith(agentConfig)
}

// startAgentWith is startAgent with the configuration text config and
// env added to the agent's environment.
func (h *host) startAgentWith(config string, env ...string) *daemontest.Daemon {
	h.t.Helper()
	d := daemontest.Run(h.t, daemontest.Options{
		Binary:   filepath.Join(bin, "mtwatchd"),
		Config:   config,
		Xenstore: h.in.Socket(),
		Control:  h.sock,
		// GOMAXPROCS from the test's environment would override the
		// agent's default, which status output shows.
		Env: append(append(h.in.Env(), "GOMAXPROCS="), env...),
	})
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		st, err := d.Control.Status(ctx)
		cancel()
		// READY=1 comes once the plugins have started; whether their
		// watches are registered is the status's to say.
		if err == nil && pluginsWatching(st) {
			return d
		}
		select {
		case <-d.Exited():
			h.t.Fatalf("mtwatchd exited\n%s", d.Stderr.String())
		case <-time.After(20 * time.Millisecond):
		}
	}
	h.t.Fatal("mtwatchd's plugins did not watch within 30s")
	return nil
}

func pluginsWatching(st control.Status) bool {
	for _, p := range st.Plugins {
		if p.Enabled && p.Watches == 0 {
			return false
		}
	}
	return true
}

// waitDomains waits until the agent lists exactly the guests want with
// their worker states (and, for the harness's guests, below 10, their
// names).
func (h *host) waitDomains(want map[uint16]string) {
	h.t.Helper()
	var got map[uint16]string
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		doms, err := control.NewClient(h.sock).Domains(context.Background())
		if err != nil {
			h.t.Fatal(err)
		}
		got = map[uint16]string{}
		for _, d := range doms {
			if d.Domid == 0 {
				continue
			}
			got[d.Domid] = d.Worker
			// The agent reads names in the background: a guest the
			// harness named is complete once its name shows.
			if d.Name == "" && d.Domid < 10 {
				got[d.Domid] += " (no name yet)"
			}
		}
		if fmt.Sprint(got) == fmt.Sprint(want) {
			return
		}
	}
	h.t.Fatalf("agent's domains %v, want %v", got, want)
}

func golden(t *testing.T, name, got string) {
	t.Helper()
	goldenfile.Check(t, filepath.Join("testdata", name), got)
}

// The values that differ from run to run: counters of the agent's own
// watch events, latencies, pids, times and temporary paths.
var volatile = []struct {
	re   *regexp.Regexp
	repl string
}{
	{regexp.MustCompile(`(?m)^(pid|uptime|version|events|default worker):( +).*$`), "$1:${2}X"},
	{regexp.MustCompile(`(connected|disconnected) /\S+,`), "$1 SOCKET,"},
}

// maskAge replaces a stalled handler's age (a column of its own).
func maskAge(s string) string {
	return regexp.MustCompile(` +(\d+ms|\d+\.\ds|\d+m\d+s) /local/domain/5/stall`).ReplaceAllString(s, "   AGE /local/domain/5/stall")
}

func normalize(s string) string {
	for _, v := range volatile {
		s = v.re.ReplaceAllString(s, v.repl)
	}
	return s
}

// normalizeDomains zeroes the counters that depend on how many watch events
// the agent saw while starting.
func normalizeDomains(t *testing.T, s string) string {
	var doms []control.Domain
	if err := json.Unmarshal([]byte(s), &doms); err != nil {
		t.Fatalf("%v: %s", err, s)
	}
	for i := range doms {
		d := &doms[i]
		d.Dispatched, d.Processed, d.LastLatencyUS, d.MaxLatencyUS = 0, 0, 0, 0
		if d.Current != nil {
			d.Current.AgeMS = 0
		}
	}
	b, _ := json.MarshalIndent(doms, "", "  ")
	return string(b) + "\n"
}

func TestWithRealAgent(t *testing.T) {
	h := newHost(t)
	for _, id := range []uint16{3, 5, 7} {
		h.in.CreateDomain(domidOf(id))
	}
	h.mtwatch("create", "--uuid", "55555555-5555-4555-8555-555555555555", "5").expect(t, 0)
	h.mtwatch("create", "12").expect(t, 0) // a node whose domain is not there
	h.startAgent()
	h.waitDomains(map[uint16]string{3: "live", 5: "live", 7: "live", 12: "live"})
	// Domain 5's handler hangs.
	h.in.Run("xenstore-write", "/local/domain/5/stall", "hang")
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		st, err := control.NewClient(h.sock).Stalls(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if len(st) == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no stall of domain 5 within 30s: %+v", st)
		}
	}

	r := h.mtwatch("list")
	r.expect(t, 0)
	// The agent's own watch events land on dom0 and on the default worker:
	// mask the processed column; a stall's age grows.
	golden(t, "list.golden", maskAge(regexp.MustCompile(`(?m)^(Domain-0 +0 default +\d+) +\d+`).ReplaceAllString(r.stdout, "$1 N")))
	r = h.mtwatch("list", "--json")
	r.expect(t, 0)
	golden(t, "list-json.golden", normalizeDomains(t, r.stdout))
	r = h.mtwatch("list", "--long", "guest5", "7")
	r.expect(t, 0)
	golden(t, "list-select.golden", regexp.MustCompile(`(guest5 +5 live +0 +0 +0) +\S+`).ReplaceAllString(r.stdout, "$1   AGE"))
	r = h.mtwatch("status")
	r.expect(t, 0)
	golden(t, "status.golden", normalize(r.stdout))
	r = h.mtwatch("stalls")
	r.expect(t, 0)
	golden(t, "stalls.golden", maskAge(r.stdout))
	r = h.mtwatch("stalls", "--json")
	r.expect(t, 0)
	golden(t, "stalls-json.golden", regexp.MustCompile(`"(started|age_ms)": [^,\n]+`).ReplaceAllString(r.stdout, `"$1": X`))
	r = h.mtwatch("top", "--batch", "--iterations", "2", "--delay", "200ms")
	r.expect(t, 0)
	frames := strings.Split(r.stdout, "\n\n")
	if len(frames) != 2 {
		t.Fatalf("top: %d frames:\n%s", len(frames), r.stdout)
	}
	for _, f := range frames {
		f = regexp.MustCompile(`\d+\.\d events/s`).ReplaceAllString(f, "X events/s")
		f = regexp.MustCompile(`(?m)^(Domain-0 +0 default +)\d+\.\d( +\d+) +\d+`).ReplaceAllString(f, "${1}X$2 N")
		golden(t, "top-frame.golden", maskAge(strings.TrimSuffix(f, "\n")+"\n"))
	}

	// The domain goes: its worker follows once its node is removed too.
	h.in.KillDomain(7)
	h.mtwatch("destroy", "12").expect(t, 0)
	h.waitDomains(map[uint16]string{3: "live", 5: "live"})
	h.mtwatch("list", "7").expect(t, 2)
}

// TestHotplugStallInList: a domain whose hotplug script hangs, with its
// worker idle (the hotplug plugin runs scripts off the workers), is stalled
// in mtwatch list, list --long, list --json and top, through the real
// mtwatchd running a real hanging script; a domain without one is not.
func TestHotplugStallInList(t *testing.T) {
	h := newHost(t)
	scripts, err := filepath.Abs("../../plugin/hotplug/testdata/scripts")
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range []uint16{3, 4} {
		h.in.CreateDomain(domidOf(id))
		h.mtwatch("create", strconv.Itoa(int(id))).expect(t, 0)
	}
	h.startAgentWith(fmt.Sprintf(`[agent]
stale_grace = "0s"
canary_interval = "0s"
stall_threshold = "100ms"
shutdown_timeout = "2s"

[plugins.hotplug]
enabled = true
mode = "run"
scripts_dir = %q
timeout = "5m"
grace = "100ms"
`, scripts), "OUT="+t.TempDir())
	h.waitDomains(map[uint16]string{3: "live", 4: "live"})
	// As libxl writes a disk's backend; the plugin runs its script at
	// InitWait.
	h.in.Run("xenstore-write", "backend/vbd/4/768/frontend-id", "4", "backend/vbd/4/768/online", "1",
		"backend/vbd/4/768/script", "hang", "backend/vbd/4/768/state", "2")
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		st, err := control.NewClient(h.sock).Stalls(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if len(st) == 1 && st[0].Worker == "plugin" && st[0].Domid == 4 && st[0].AgeMS >= 1000 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no stall of domain 4's script within 30s: %+v", st)
		}
	}
	rows := func(r result) map[string]map[string]string {
		t.Helper()
		r.expect(t, 0)
		lines := strings.Split(strings.TrimSpace(r.stdout), "\n")
		if strings.HasPrefix(lines[0], "mtwatch top") {
			lines = lines[1:]
		}
		head := strings.Fields(lines[0])
		out := map[string]map[string]string{}
		for _, l := range lines[1:] {
			f := strings.Fields(l)
			if len(f) != len(head) {
				t.Fatalf("row %q does not match the header %q", l, lines[0])
			}
			row := map[string]string{}
			for i, h := range head {
				row[h] = f[i]
			}
			out[row["ID"]] = row
		}
		return out
	}
	ageRe := regexp.MustCompile(`^(\d+\.\ds|\d+m\d+s)$`) // past a second
	for _, args := range [][]string{{"list"}, {"list", "--long"}, {"top", "-b", "-n", "1"}} {
		got := rows(h.mtwatch(args...))
		if r := got["4"]; r == nil || !ageRe.MatchString(r["Stalled"]) || r["Worker"] != "live" || r["Current"] != "-" {
			t.Errorf("%v: domain 4's row %v, want its script's stall age with an idle worker", args, r)
		}
		if r := got["3"]; r == nil || r["Stalled"] != "-" {
			t.Errorf("%v: domain 3's row %v, want no stall", args, r)
		}
		if args[0] == "list" && len(args) == 2 && (got["4"]["Stalls"] != "1" || got["3"]["Stalls"] != "0") {
			t.Errorf("list --long: Stalls %q and %q, want 1 and 0", got["4"]["Stalls"], got["3"]["Stalls"])
		}
	}
	r := h.mtwatch("list", "--json", "4")
	r.expect(t, 0)
	var doms []control.Domain
	if err := json.Unmarshal([]byte(r.stdout), &doms); err != nil {
		t.Fatal(err)
	}
	if len(doms) != 1 || doms[0].PluginStalls != 1 || doms[0].PluginStallAgeMS < 1000 || doms[0].Current != nil {
		t.Errorf("list --json 4: %s", r.stdout)
	}
}

func TestWithoutAgent(t *testing.T) {
	h := newHost(t)
	h.in.CreateDomain(3)
	h.mtwatch("create", "3").expect(t, 0)
	r := h.mtwatch("list")
	r.expect(t, 0)
	if r.stderr != "mtwatch: agent not running (control socket "+h.sock+"); listing the nodes and domains in XenStore\n" {
		t.Errorf("stderr %q", r.stderr)
	}
	golden(t, "list-noagent.golden", r.stdout)
	for _, args := range [][]string{{"status"}, {"stalls"}, {"top", "-b", "-n", "1"}} {
		r := h.mtwatch(args...)
		r.expect(t, 3)
		if !strings.HasPrefix(r.stderr, "mtwatch: agent not running") || strings.Count(r.stderr, "\n") != 1 {
			t.Errorf("%v: stderr %q", args, r.stderr)
		}
	}
}

// TestBadInput runs the binary: every rejected argument exits 2 with one
// line and the store is unchanged.
func TestBadInput(t *testing.T) {
	h := newHost(t)
	h.in.CreateDomain(5)
	h.mtwatch("create", "5").expect(t, 0)
	before := h.in.Run("xenstore-ls", "-f", "-p", "/")
	for _, arg := range []string{"abc", "0", "32752", "70000", "-1", "007", "nosuchvm"} {
		for _, cmd := range []string{"create", "destroy"} {
			r := h.mtwatch(cmd, arg)
			r.expect(t, 2)
			if !strings.HasPrefix(r.stderr, "mtwatch: domain "+arg+": ") || strings.Count(r.stderr, "\n") != 1 {
				t.Errorf("%s %s: stderr %q", cmd, arg, r.stderr)
			}
		}
		r := h.mtwatch("xl", "--xl", "/bin/false", "destroy", arg)
		r.expect(t, 2)
	}
	if after := h.in.Run("xenstore-ls", "-f", "-p", "/"); after != before {
		t.Errorf("store changed:\n%s\nwant:\n%s", after, before)
	}
	if _, err := h.in.Command("xenstore-read", node.Path(5)).Output(); err != nil {
		t.Errorf("node of 5 gone: %v", err)
	}
}

// TestXLWithEnv: MTWATCH_XL picks the xl binary (here the fake one that
// writes XenStore the way xl does).
func TestXLWithEnv(t *testing.T) {
	h := newHost(t)
	xl, err := filepath.Abs("../../lib/admin/testdata/xl")
	if err != nil {
		t.Fatal(err)
	}
	state := t.TempDir()
	logf := filepath.Join(state, "log")
	h.env = append(h.env, "MTWATCH_XL="+xl, "FAKE_XL_LOG="+logf, "FAKE_XL_STATE="+state)
	cfg := filepath.Join(t.TempDir(), "web.cfg")
	os.WriteFile(cfg, []byte(`name = "web"`+"\n"), 0o644)
	h.mtwatch("xl", "create", cfg).expect(t, 0)
	if v := h.in.Run("xenstore-read", node.Path(1)); v != "00000000-0000-4000-8000-000000000001" {
		t.Errorf("node of 1: %q", v)
	}
	h.mtwatch("xl", "destroy", "web").expect(t, 0)
	if _, err := h.in.Command("xenstore-read", node.Path(1)).Output(); err == nil {
		t.Error("node of 1 still there")
	}
	b, _ := os.ReadFile(logf)
	if got, want := string(b), "create -p "+cfg+"\ndomid web\nunpause 1\ndestroy web\n"; got != want {
		t.Errorf("xl calls %q, want %q", got, want)
	}
}

// TestXLCreateConcurrent: creates running at the same time (separate
// processes, as from several shells) each write the node of their own
// domain and unpause that one: the domid comes from xl domid <name>, not
// from whichever domain appeared meanwhile.
func TestXLCreateConcurrent(t *testing.T) {
	h := newHost(t)
	xl, err := filepath.Abs("../../lib/admin/testdata/xl")
	if err != nil {
		t.Fatal(err)
	}
	state := t.TempDir()
	logf := filepath.Join(state, "log")
	h.env = append(h.env, "MTWATCH_XL="+xl, "FAKE_XL_LOG="+logf, "FAKE_XL_STATE="+state)
	names := []string{"a", "b", "c", "d"}
	errs := make(chan error, len(names))
	for _, n := range names {
		cfg := filepath.Join(t.TempDir(), n+".cfg")
		os.WriteFile(cfg, []byte(`name = "`+n+`"`+"\n"), 0o644)
		cmd := exec.Command(filepath.Join(bin, "mtwatch"), "xl", "create", cfg)
		cmd.Env = h.env
		go func() {
			out, err := cmd.CombinedOutput()
			if err != nil {
				err = fmt.Errorf("xl create %s: %v\n%s", n, err, out)
			}
			errs <- err
		}()
	}
	for range names {
		if err := <-errs; err != nil {
			t.Error(err)
		}
	}
	b, _ := os.ReadFile(logf)
	for _, n := range names {
		var id domid.ID
		for d := domid.ID(1); d <= 4; d++ {
			if v, err := h.in.Command("xenstore-read", "/local/domain/"+d.String()+"/name").Output(); err == nil && strings.TrimSpace(string(v)) == n {
				id = d
			}
		}
		if id == 0 {
			t.Fatalf("no domain %s", n)
		}
		if _, err := h.in.Command("xenstore-read", node.Path(id)).Output(); err != nil {
			t.Errorf("no node for %s (domain %d)", n, id)
		}
		if strings.Count(string(b), "unpause "+id.String()+"\n") != 1 {
			t.Errorf("domain %d (%s) not unpaused once:\n%s", id, n, b)
		}
	}
}

// TestCompletionCandidates: the completion scripts ask the binary.
func TestCompletionCandidates(t *testing.T) {
	h := &host{t: t, env: os.Environ()}
	r := h.mtwatch("--generate-bash-completion")
	r.expect(t, 0)
	for _, c := range []string{"list", "status", "top", "stalls", "create", "destroy", "xl", "watch", "completion"} {
		if !strings.Contains(r.stdout, c+"\n") {
			t.Errorf("candidates lack %s: %q", c, r.stdout)
		}
	}
	r = h.mtwatch("xl", "--generate-bash-completion")
	if !strings.Contains(r.stdout, "reboot\n") {
		t.Errorf("xl candidates: %q", r.stdout)
	}
	// bash loads the script and completes through the binary.
	script := h.mtwatch("completion", "bash")
	script.expect(t, 0)
	f := filepath.Join(t.TempDir(), "c.bash")
	os.WriteFile(f, []byte(script.stdout), 0o644)
	cmd := exec.Command("bash", "-c", `source "$1"; PATH="$2:$PATH"; COMP_WORDS=(mtwatch st); COMP_CWORD=1; _mtwatch_complete; echo "${COMPREPLY[@]}"`, "bash", f, bin)
	out, err := cmd.CombinedOutput()
	if err != nil || strings.TrimSpace(string(out)) != "status stalls" {
		t.Errorf("bash completion of 'mtwatch st': %q %v", out, err)
	}
}

func domidOf(id uint16) domid.ID { return domid.ID(id) }
