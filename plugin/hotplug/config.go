package hotplug

import (
	"fmt"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/mtwatch/mtwatch/plugin"
)

// Defaults for keys left out; the timeout is libxl's LIBXL_HOTPLUG_TIMEOUT.
// DefaultMaxScripts is sized for a boot storm: enough scripts at once to
// keep a host's disks and NICs busy, few enough that a thousand domains
// starting together do not fork a thousand shells.
const (
	DefaultTimeout    = 40 * time.Second
	DefaultGrace      = 2 * time.Second
	DefaultScriptsDir = "/etc/xen/scripts"
	DefaultMaxScripts = 64
	DefaultStuckAfter = 30 * time.Second
)

// Modes: run the scripts, or only watch the devices that others set up.
const (
	ModeAuto  = "auto"
	ModeRun   = "run"
	ModeWatch = "watch"
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
	Mode        string        `toml:"mode" doc:"auto (run in a driver domain, watch in dom0), run (run the scripts) or watch (run nothing, report stuck devices)."`
	MaxScripts  int           `toml:"max_scripts" doc:"Scripts running at once, host-wide; teardown first, domains in turn."`
	StuckAfter  time.Duration `toml:"stuck_after" doc:"Watch mode: a device in set-up or teardown longer than this is a stall."`
	// XLConf is accepted and ignored: earlier versions read xl.conf's
	// run_hotplug_scripts, which libxl does not act on.
	XLConf string `toml:"xl_conf" doc:"Ignored (libxl runs dom0's scripts whatever run_hotplug_scripts says)."`
}

// defaults is the section at its defaults.
func defaults() Config {
	return Config{
		Types:      slices.Clone(DefaultTypes),
		ScriptsDir: DefaultScriptsDir,
		Timeout:    DefaultTimeout,
		Grace:      DefaultGrace,
		Mode:       ModeAuto,
		MaxScripts: DefaultMaxScripts,
		StuckAfter: DefaultStuckAfter,
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
	switch cfg.Mode {
	case ModeAuto, ModeRun, ModeWatch:
	default:
		return cfg, sec.Errorf("mode", "mode must be %q, %q or %q, not %q", ModeAuto, ModeRun, ModeWatch, cfg.Mode)
	}
	if cfg.MaxScripts < 1 || cfg.MaxScripts > 4096 {
		return cfg, sec.Errorf("max_scripts", "max_scripts must be between 1 and 4096, not %d", cfg.MaxScripts)
	}
	if cfg.StuckAfter <= 0 {
		return cfg, sec.Errorf("stuck_after", "stuck_after must be positive, not %v", cfg.StuckAfter)
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
