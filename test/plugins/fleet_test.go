package plugins_test

import (
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/mtwatch/mtwatch/lib/xenstore/xenstoredtest"
)

// exported is what a running agent's /metrics has: every series name and,
// for each, the label names its samples carry.
type exported map[string]map[string]bool

func parseExposition(text string) exported {
	ex := exported{}
	sample := regexp.MustCompile(`^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? `)
	label := regexp.MustCompile(`([a-zA-Z_][a-zA-Z0-9_]*)="`)
	for _, l := range strings.Split(text, "\n") {
		m := sample.FindStringSubmatch(l)
		if m == nil {
			continue
		}
		if ex[m[1]] == nil {
			ex[m[1]] = map[string]bool{}
		}
		for _, lm := range label.FindAllStringSubmatch(m[2], -1) {
			ex[m[1]][lm[1]] = true
		}
	}
	return ex
}

var (
	// A series name: the agent's, the process and Go collectors', or
	// Prometheus's own up.
	seriesName = regexp.MustCompile(`\b((?:mtwatch|process|go)_[a-zA-Z0-9_]+|up)\b(\{[^}]*\})?`)
	matcher    = regexp.MustCompile(`([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)`)
	byClause   = regexp.MustCompile(`\b(?:by|without)\s*\(([^)]*)\)`)
)

// checkExpr reports what expr names that the agent does not export: a
// series, a label of a series, or a grouping label none of its series has.
// job and instance are the labels Prometheus adds to every scraped series,
// and up is the series it makes of every scrape.
func checkExpr(t errorer, where, expr string, ex exported) {
	t.Helper()
	labels := map[string]bool{"job": true, "instance": true}
	found := false
	for _, m := range seriesName.FindAllStringSubmatch(expr, -1) {
		name := m[1]
		found = true
		if name == "up" {
			continue
		}
		got, ok := ex[name]
		if !ok {
			t.Errorf("%s: %s is not a series the agent exports", where, name)
			continue
		}
		for l := range got {
			labels[l] = true
		}
		for _, lm := range matcher.FindAllStringSubmatch(m[2], -1) {
			if l := lm[1]; l != "job" && l != "instance" && !got[l] {
				t.Errorf("%s: %s has no label %q", where, name, l)
			}
		}
	}
	if !found {
		t.Errorf("%s: %q names no series", where, expr)
	}
	for _, m := range byClause.FindAllStringSubmatch(expr, -1) {
		for _, l := range strings.Split(m[1], ",") {
			if l = strings.TrimSpace(l); l != "" && !labels[l] {
				t.Errorf("%s: groups by %q, which none of its series has", where, l)
			}
		}
	}
}

// scrapeAll runs an agent with every plugin on and makes each series
// appear: a hotplug script, an exec command, a stalled exec command (the
// stall age exists only while a handler is stalled) and a hung hotplug
// script (a plugin's stall). It returns
// /metrics taken while the stall lasts.
func scrapeAll(t *testing.T) exported {
	t.Helper()
	in := xenstoredtest.Start(t)
	a, _ := hotplugAgent(t, in, "[agent]\nstall_threshold = \"100ms\"\n"+
		"[plugins.exec]\nenabled = true\n"+
		"[[plugins.exec.rule]]\nname = \"fleet\"\npath = \"/local/domain/{domid}/fleet\"\ncommand = [\"/bin/true\"]\n"+
		"[[plugins.exec.rule]]\nname = \"slow\"\npath = \"/local/domain/{domid}/slow\"\ncommand = [\"/bin/sleep\", \"30\"]\n")
	a.run()
	a.domain(5)
	vif := a.device("vif", 5, 0, scriptsDir+"/connect", "mac", "00:16:3e:00:00:01")
	a.write(vif+"/state", "2", "/local/domain/5/fleet", "1")
	a.hotplugStatus(vif)
	a.wait(20*time.Second, "the exec run", func() bool {
		m, err := a.ctl.Metrics(t.Context())
		return err == nil && strings.Contains(m, "mtwatch_exec_runs_total{")
	})
	a.write("/local/domain/5/slow", "1") // holds 5's worker
	a.domain(6)
	hang := a.device("vbd", 6, 768, "hang")
	a.write(hang+"/state", "2")
	var text string
	a.wait(20*time.Second, "the plugins' series and the stalls", func() bool {
		m, err := a.ctl.Metrics(t.Context())
		text = m
		return err == nil && strings.Contains(m, "mtwatch_hotplug_scripts_total{") && strings.Contains(m, "mtwatch_domain_stall_age_seconds{") &&
			strings.Contains(m, "mtwatch_domain_plugin_stall_age_seconds{")
	})
	return parseExposition(text)
}

// TestFleetRulesAndDashboard: docs/alerts.yml and docs/grafana-dashboard.json
// refer only to series, and labels of series, that a running agent exports,
// and each alert has what an on-call needs: an expression, a severity and a
// summary.
func TestFleetRulesAndDashboard(t *testing.T) {
	t.Parallel()
	ex := scrapeAll(t)

	// Prometheus rule files are YAML; these keep to one key per line and
	// one-line expressions, which this reads without a YAML library.
	data, err := os.ReadFile(filepath.Join(root, "docs/alerts.yml"))
	if err != nil {
		t.Fatal(err)
	}
	type rule struct{ alert, expr, severity, summary, forDur string }
	var rules []rule
	field := regexp.MustCompile(`^\s*(?:- )?(alert|expr|for|severity|summary):\s*(.*)$`)
	for _, l := range strings.Split(string(data), "\n") {
		m := field.FindStringSubmatch(l)
		if m == nil {
			continue
		}
		if m[1] == "alert" {
			rules = append(rules, rule{alert: m[2]})
			continue
		}
		if len(rules) == 0 {
			t.Fatalf("alerts.yml: %q before the first alert", l)
		}
		r := &rules[len(rules)-1]
		switch m[1] {
		case "expr":
			r.expr = m[2]
		case "for":
			r.forDur = m[2]
		case "severity":
			r.severity = m[2]
		case "summary":
			r.summary = m[2]
		}
	}
	if len(rules) < 8 {
		t.Fatalf("alerts.yml: %d alerts", len(rules))
	}
	seen := map[string]bool{}
	for _, r := range rules {
		if seen[r.alert] {
			t.Errorf("alert %s twice", r.alert)
		}
		seen[r.alert] = true
		if r.expr == "" || r.summary == "" || !slices.Contains([]string{"critical", "warning", "info"}, r.severity) {
			t.Errorf("alert %s: expr %q, severity %q, summary %q", r.alert, r.expr, r.severity, r.summary)
		}
		if r.forDur != "" {
			if _, err := time.ParseDuration(r.forDur); err != nil {
				t.Errorf("alert %s: for %q: %v", r.alert, r.forDur, err)
			}
		}
		checkExpr(t, "alert "+r.alert, r.expr, ex)
	}
	// What the issue asks the rules to cover.
	for _, s := range []string{"mtwatch_domain_stall_age_seconds", "mtwatch_events_discarded_total", "mtwatch_xenstore_reconnects_total", "mtwatch_hotplug_scripts_total"} {
		if !strings.Contains(string(data), s) {
			t.Errorf("no alert on %s", s)
		}
	}

	data, err = os.ReadFile(filepath.Join(root, "docs/grafana-dashboard.json"))
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		Title  string `json:"title"`
		Panels []struct {
			Title   string `json:"title"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
		Templating struct {
			List []struct {
				Name       string `json:"name"`
				Definition string `json:"definition"`
			} `json:"list"`
		} `json:"templating"`
	}
	if err := json.Unmarshal(data, &dash); err != nil {
		t.Fatalf("grafana-dashboard.json: %v", err)
	}
	if len(dash.Panels) < 8 {
		t.Fatalf("dashboard: %d panels", len(dash.Panels))
	}
	for _, p := range dash.Panels {
		if len(p.Targets) == 0 {
			t.Errorf("panel %q has no query", p.Title)
		}
		for _, q := range p.Targets {
			// Grafana's own variables are not PromQL.
			expr := strings.NewReplacer("$__rate_interval", "5m", "$instance", ".*").Replace(q.Expr)
			checkExpr(t, "panel "+p.Title, expr, ex)
		}
	}
	for _, v := range dash.Templating.List {
		if v.Definition != "" {
			checkExpr(t, "variable "+v.Name, v.Definition, ex)
		}
	}
}

// TestCheckExprCatches: the check fails a name the agent does not export,
// a label its series lack and a grouping by such a label.
func TestCheckExprCatches(t *testing.T) {
	ex := parseExposition("mtwatch_workers 1\nmtwatch_domain_queued_events{domid=\"5\"} 0\n")
	for _, expr := range []string{
		"mtwatch_events_total > 0",
		`mtwatch_workers{domid="5"} > 0`,
		"max by (rule) (mtwatch_domain_queued_events) > 1",
	} {
		var ft fakeT
		checkExpr(&ft, "x", expr, ex)
		if !ft.failed {
			t.Errorf("%q passed", expr)
		}
	}
	var ft fakeT
	checkExpr(&ft, "x", `max by (instance, domid) (mtwatch_domain_queued_events{job="mtwatch"}) > 1`, ex)
	if ft.failed {
		t.Error("a good expression failed")
	}
}

// errorer is what checkExpr needs of a *testing.T.
type errorer interface {
	Helper()
	Errorf(format string, args ...any)
}

// fakeT records that checkExpr failed, for the test of the check itself.
type fakeT struct{ failed bool }

func (*fakeT) Helper()                 {}
func (f *fakeT) Errorf(string, ...any) { f.failed = true }
