package hotplug

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/mtwatch/mtwatch/plugin"
)

// Defaults for keys left out; the timeout is libxl's LIBXL_HOTPLUG_TIMEOUT.
const (
	DefaultTimeout    = 40 * time.Second
	DefaultGrace      = 2 * time.Second
	DefaultScriptsDir = "/etc/xen/scripts"
	DefaultXLConf     = "/etc/xen/xl.conf"
)

// DefaultTypes are the backend types whose scripts run unless configured
// otherwise. qdisk is left out: its backend is QEMU, which needs no script.
var DefaultTypes = []string{"vbd", "vif"}

// Config is the [plugins.hotplug] section.
type Config struct {
	Types       []string      `toml:"types" doc:"Backend types whose scripts run."`
	ScriptsDir  string        `toml:"scripts_dir" doc:"Directory of the scripts."`
	AllowedDirs []string      `toml:"allowed_dirs" doc:"Directories an absolute script path may be in, besides scripts_dir."`
	Timeout     time.Duration `toml:"timeout" doc:"A script running longer is killed; the default is libxl's LIBXL_HOTPLUG_TIMEOUT."`
	Grace       time.Duration `toml:"grace" doc:"SIGTERM -> SIGKILL delay for a script past its timeout."`
	XLConf      string        `toml:"xl_conf" doc:"Checked at start for run_hotplug_scripts; \"\" skips the check."`
}

// defaults is the section at its defaults.
func defaults() Config {
	return Config{
		Types:      slices.Clone(DefaultTypes),
		ScriptsDir: DefaultScriptsDir,
		Timeout:    DefaultTimeout,
		Grace:      DefaultGrace,
		XLConf:     DefaultXLConf,
	}
}

var typeRe = regexp.MustCompile(`^[a-z][a-z0-9_]*$`)

func parse(sec plugin.Section) (Config, error) {
	cfg := defaults()
	if err := sec.Decode(&cfg); err != nil {
		return cfg, err
	}
	seen := map[string]bool{}
	for i, t := range cfg.Types {
		if !typeRe.MatchString(t) {
			return cfg, sec.Errorf(fmt.Sprintf("types[%d]", i), "malformed backend type %q", t)
		}
		if seen[t] {
			return cfg, sec.Errorf(fmt.Sprintf("types[%d]", i), "backend type %q listed twice", t)
		}
		seen[t] = true
	}
	if err := checkDir(cfg.ScriptsDir); err != nil {
		return cfg, sec.Errorf("scripts_dir", "%v", err)
	}
	for i, d := range cfg.AllowedDirs {
		if err := checkDir(d); err != nil {
			return cfg, sec.Errorf(fmt.Sprintf("allowed_dirs[%d]", i), "%v", err)
		}
	}
	if cfg.Timeout <= 0 {
		return cfg, sec.Errorf("timeout", "timeout must be positive, not %v", cfg.Timeout)
	}
	if cfg.Grace <= 0 {
		return cfg, sec.Errorf("grace", "grace must be positive, not %v", cfg.Grace)
	}
	if cfg.XLConf != "" && !filepath.IsAbs(cfg.XLConf) {
		return cfg, sec.Errorf("xl_conf", "%q is not an absolute path", cfg.XLConf)
	}
	return cfg, nil
}

func checkDir(d string) error {
	switch {
	case !filepath.IsAbs(d):
		return fmt.Errorf("%q is not an absolute path", d)
	case filepath.Clean(d) != d || d == "/":
		return fmt.Errorf("%q is not a clean directory path", d)
	}
	return nil
}

// resolve maps a backend's script node to the program to run: a bare name
// under scripts_dir, an absolute path only under scripts_dir or an allowed
// directory. libxl itself writes absolute paths under its script directory.
func (c *Config) resolve(script string) (string, error) {
	switch {
	case script == "":
		return "", fmt.Errorf("empty script")
	case !strings.HasPrefix(script, "/"):
		if strings.Contains(script, "/") || script == "." || script == ".." {
			return "", fmt.Errorf("script %q: a relative name must not name a directory", script)
		}
		return filepath.Join(c.ScriptsDir, script), nil
	case filepath.Clean(script) != script:
		return "", fmt.Errorf("script %q is not a clean path", script)
	}
	for _, d := range append([]string{c.ScriptsDir}, c.AllowedDirs...) {
		if strings.HasPrefix(script, d+"/") {
			return script, nil
		}
	}
	return "", fmt.Errorf("script %q is outside %s and the allowed directories", script, c.ScriptsDir)
}

// libxlRunsScripts reads xl.conf's run_hotplug_scripts: libxl runs the
// scripts itself unless it is 0, and the default is 1. It returns the reason
// for its answer.
func libxlRunsScripts(file string) (bool, string) {
	f, err := os.Open(file)
	if err != nil {
		return true, fmt.Sprintf("cannot read %s (%v): run_hotplug_scripts defaults to 1", file, err)
	}
	defer f.Close()
	runs, why := true, fmt.Sprintf("%s does not set run_hotplug_scripts, which defaults to 1", file)
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		line, _, _ := strings.Cut(sc.Text(), "#")
		k, v, ok := strings.Cut(line, "=")
		if !ok || strings.TrimSpace(k) != "run_hotplug_scripts" {
			continue
		}
		v = strings.Trim(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), ";")), `"'`)
		runs = v != "0"
		why = fmt.Sprintf("%s:%d: run_hotplug_scripts=%s", file, n, v)
	}
	return runs, why
}
