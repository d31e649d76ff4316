package exec

import (
	"fmt"
	"log/slog"
	"maps"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/mtwatch/mtwatch/lib/dispatch"
	"github.com/mtwatch/mtwatch/lib/domid"
	"github.com/mtwatch/mtwatch/plugin"
)

// Defaults for keys left out.
const (
	DefaultTimeout = time.Minute
	DefaultGrace   = 5 * time.Second
	// A rule's commands for one domain: a burst of 20, then one every
	// 10 ms (100 a second) at most.
	DefaultMinInterval = 10 * time.Millisecond
	DefaultBurst       = 20
	// DefaultLogLines bounds the lines of output logged per command.
	DefaultLogLines = 50
)

// Placeholder is the path segment that matches one guest domid.
const Placeholder = "{domid}"

// Config is the [plugins.exec] section.
type Config struct {
	// Grace is the time between SIGTERM and SIGKILL for a command that
	// timed out.
	Grace time.Duration `toml:"grace" doc:"SIGTERM -> SIGKILL delay for a command past its timeout."`
	// LogLines bounds the lines of a command's output that are logged;
	// the rest is counted.
	LogLines int          `toml:"log_lines" doc:"Lines of a command's output logged per run; the rest is counted."`
	Rule     []RuleConfig `toml:"rule" doc:"One rule per command (none by default):"`
}

// RuleConfig is one [[plugins.exec.rule]].
type RuleConfig struct {
	Name    string            `toml:"name" doc:"letters, digits, _ . -; unique"`
	Path    string            `toml:"path" doc:"absolute or relative; one {domid} segment matches a guest"`
	Command []string          `toml:"command" doc:"argv, an absolute program; {domid} and {path} replaced"`
	Timeout time.Duration     `toml:"timeout" doc:"0s: the default, 1m"`
	Env     map[string]string `toml:"env" doc:"extra environment"`
	// Coalesce is how the rule's events wait while the domain's worker
	// is busy. Pending is its old name, still read.
	Coalesce string `toml:"coalesce" doc:"per-path (\"\": the default) or per-watch, the choice for a path a guest can write"`
	Pending  string `toml:"pending" deprecated:"coalesce"`
	// MinInterval and Burst bound how often the rule's command starts for
	// one domain: a token bucket of Burst tokens, one back every
	// MinInterval.
	MinInterval time.Duration `toml:"min_interval" doc:"per domain, after a burst: 0s: the default, 10ms"`
	Burst       int           `toml:"burst" doc:"per domain: 0: the default, 20"`
}

// rule is a validated rule.
type rule struct {
	name     string
	path     string   // as configured
	segs     []string // path's segments; segs[0] is "" for an absolute path
	dom      int      // index of the {domid} segment, -1 without
	watch    string   // the XenStore path watched
	command  []string
	timeout  time.Duration
	grace    time.Duration
	env      map[string]string
	coalesce dispatch.Coalesce
	// The rate bound per domain, and the output logged per run.
	minInterval time.Duration
	burst       int
	logLines    int
	// deprecated says where the rule's section uses the old name of a
	// key: a warning to log, "" when none.
	deprecated string
}

func (r *rule) equal(o *rule) bool {
	return r.name == o.name && r.path == o.path && slices.Equal(r.command, o.command) &&
		r.timeout == o.timeout && r.grace == o.grace && maps.Equal(r.env, o.env) && r.coalesce == o.coalesce &&
		r.minInterval == o.minInterval && r.burst == o.burst && r.logLines == o.logLines
}

var (
	nameRe   = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]*$`)
	envKeyRe = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)
	reserved = []string{"DOMID", "XS_PATH", "XS_TOKEN", "MTWATCH_RULE", "MTWATCH_OVERFLOW"}
)

// parse decodes and validates the section; every error names its key.
func parse(sec plugin.Section) ([]*rule, error) {
	var cfg Config
	if err := sec.Decode(&cfg); err != nil {
		return nil, err
	}
	if cfg.Grace < 0 {
		return nil, sec.Errorf("grace", "negative duration %v", cfg.Grace)
	}
	if cfg.Grace == 0 {
		cfg.Grace = DefaultGrace
	}
	switch {
	case cfg.LogLines < 0:
		return nil, sec.Errorf("log_lines", "negative line count %d", cfg.LogLines)
	case cfg.LogLines == 0:
		cfg.LogLines = DefaultLogLines
	}
	names := map[string]int{}
	var rules []*rule
	for i, rc := range cfg.Rule {
		key := func(k string) string { return fmt.Sprintf("rule[%d].%s", i, k) }
		r := &rule{name: rc.Name, path: rc.Path, command: rc.Command, timeout: rc.Timeout, grace: cfg.Grace, env: rc.Env,
			minInterval: rc.MinInterval, burst: rc.Burst, logLines: cfg.LogLines}
		switch {
		case rc.Name == "":
			return nil, sec.Errorf(fmt.Sprintf("rule[%d]", i), "rule has no name")
		case !nameRe.MatchString(rc.Name):
			return nil, sec.Errorf(key("name"), "malformed rule name %q (letters, digits, '_', '.', '-')", rc.Name)
		}
		if j, dup := names[rc.Name]; dup {
			return nil, sec.Errorf(key("name"), "rule name %q already used by rule[%d]", rc.Name, j)
		}
		names[rc.Name] = i
		if err := r.parsePath(); err != nil {
			return nil, sec.Errorf(key("path"), "%v", err)
		}
		switch {
		case len(rc.Command) == 0 || rc.Command[0] == "":
			return nil, sec.Errorf(key("command"), "empty command")
		case !strings.HasPrefix(rc.Command[0], "/"):
			return nil, sec.Errorf(key("command"), "command %q is not an absolute path", rc.Command[0])
		}
		for _, a := range rc.Command {
			if err := checkPlaceholders(a, r.dom >= 0); err != nil {
				return nil, sec.Errorf(key("command"), "%v", err)
			}
		}
		switch {
		case rc.Timeout < 0:
			return nil, sec.Errorf(key("timeout"), "negative duration %v", rc.Timeout)
		case rc.Timeout == 0:
			r.timeout = DefaultTimeout
		}
		switch {
		case rc.MinInterval < 0:
			return nil, sec.Errorf(key("min_interval"), "negative duration %v", rc.MinInterval)
		case rc.MinInterval == 0:
			r.minInterval = DefaultMinInterval
		}
		switch {
		case rc.Burst < 0:
			return nil, sec.Errorf(key("burst"), "negative burst %d", rc.Burst)
		case rc.Burst == 0:
			r.burst = DefaultBurst
		}
		for k := range rc.Env {
			if !envKeyRe.MatchString(k) {
				return nil, sec.Errorf(key("env"), "malformed variable name %q", k)
			}
			if slices.Contains(reserved, k) {
				return nil, sec.Errorf(key("env"), "%s is set by mtwatchd", k)
			}
		}
		policy, k := rc.Coalesce, "coalesce"
		if rc.Pending != "" {
			if rc.Coalesce != "" {
				return nil, sec.Errorf(key("pending"), "pending is the old name of coalesce: set coalesce only")
			}
			policy, k = rc.Pending, "pending"
			r.deprecated = sec.Errorf(key("pending"), "pending is deprecated: it is now called coalesce").Error()
		}
		switch policy {
		case "", "per-path":
			r.coalesce = dispatch.CoalescePerPath
		case "per-watch":
			r.coalesce = dispatch.CoalescePerWatch
		default:
			return nil, sec.Errorf(key(k), "unknown %s policy %q (per-path or per-watch)", k, policy)
		}
		rules = append(rules, r)
	}
	return rules, nil
}

// warnDeprecated logs the rules' use of old key names.
func warnDeprecated(log *slog.Logger, rules []*rule) {
	for _, r := range rules {
		if r.deprecated != "" {
			log.Warn(r.deprecated)
		}
	}
}

// parsePath validates the path pattern and finds the watch path: the
// segments before {domid}, or the whole path without it.
func (r *rule) parsePath() error {
	p := r.path
	if p == "" {
		return fmt.Errorf("empty path")
	}
	if len(p) > 3072 {
		return fmt.Errorf("path longer than 3072 bytes")
	}
	r.segs = strings.Split(p, "/")
	r.dom = -1
	for i, s := range r.segs {
		if i == 0 && s == "" {
			continue // absolute
		}
		if s == "" {
			return fmt.Errorf("path %q has an empty segment", p)
		}
		if s == Placeholder {
			if r.dom >= 0 {
				return fmt.Errorf("path %q has more than one %s", p, Placeholder)
			}
			r.dom = i
			continue
		}
		if strings.Contains(s, Placeholder) {
			return fmt.Errorf("%s in %q is not a path segment of its own", Placeholder, p)
		}
		if strings.ContainsAny(s, "{}") {
			return fmt.Errorf("unknown placeholder in %q (only %s)", p, Placeholder)
		}
	}
	switch {
	case r.dom < 0:
		r.watch = p
	case r.dom == 0 || (r.dom == 1 && r.segs[0] == ""):
		return fmt.Errorf("path %q: %s needs a fixed path before it to watch", p, Placeholder)
	default:
		r.watch = strings.Join(r.segs[:r.dom], "/")
	}
	return nil
}

// checkPlaceholders accepts {domid} and {path} in a command argument.
func checkPlaceholders(a string, hasDomid bool) error {
	rest := strings.NewReplacer("{path}", "", Placeholder, "").Replace(a)
	if strings.Contains(a, Placeholder) && !hasDomid {
		return fmt.Errorf("argument %q uses %s but the path has none", a, Placeholder)
	}
	if strings.ContainsAny(rest, "{}") {
		return fmt.Errorf("unknown placeholder in argument %q (only %s and {path})", a, Placeholder)
	}
	return nil
}

// match tells whether the event path belongs to the rule. For a rule with
// {domid} it returns the domain and the path the command is told about: the
// event's own path for the rule's node or a descendant, the rule's node for
// an event on an ancestor below the domid (which xenstored reports for the
// removal of a subtree; ancestor is then true, and the caller checks that
// the node is really gone).
func (r *rule) match(path string) (id domid.ID, xsPath string, ancestor, ok bool) {
	if r.dom < 0 {
		return domid.Dom0, path, false, true
	}
	e := strings.Split(path, "/")
	if len(e) <= r.dom {
		return 0, "", false, false
	}
	for i := 0; i < len(e) && i < len(r.segs); i++ {
		if i == r.dom {
			g, err := domid.ParseGuest(e[i])
			if err != nil {
				return 0, "", false, false
			}
			id = g
			continue
		}
		if e[i] != r.segs[i] {
			return 0, "", false, false
		}
	}
	if len(e) >= len(r.segs) {
		return id, path, false, true
	}
	return id, r.pathOf(id), true, true
}

// pathOf is the rule's path for domain id.
func (r *rule) pathOf(id domid.ID) string {
	if r.dom < 0 {
		return r.path
	}
	s := slices.Clone(r.segs)
	s[r.dom] = id.String()
	return strings.Join(s, "/")
}

// domainOf routes an event for the dispatcher.
func (r *rule) domainOf(path string) (domid.ID, bool) {
	id, _, _, ok := r.match(path)
	if !ok || id == domid.Dom0 {
		return 0, false
	}
	return id, true
}

// argv substitutes the placeholders of the command.
func (r *rule) argv(id domid.ID, xsPath string) []string {
	d := ""
	if r.dom >= 0 {
		d = id.String()
	}
	rep := strings.NewReplacer(Placeholder, d, "{path}", xsPath)
	out := make([]string, len(r.command))
	for i, a := range r.command {
		out[i] = rep.Replace(a)
	}
	return out
}
