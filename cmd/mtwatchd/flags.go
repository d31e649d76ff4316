package main

import (
	"errors"
	"fmt"

	"github.com/urfave/cli/v2"

	"github.com/mtwatch/mtwatch/lib/config"
	"github.com/mtwatch/mtwatch/lib/control"
)

// override is a flag (and its environment variable) that sets one
// configuration key over the file's value.
type override struct {
	flag  cli.Flag
	key   string // the key it sets, as config errors name it
	apply func(cfg *config.Config, c *cli.Context, name string)
}

// overrides are every flag but --config, in --help's order. A new knob is
// one row here; its value is checked by config.Config.Validate with the
// file's.
var overrides = []override{
	{&cli.StringFlag{Name: "xenstore", EnvVars: []string{"MTWATCH_XENSTORE"}, Usage: "xenstored socket or device `PATH` (default: $XENSTORED_PATH, the xenstored socket, /dev/xen/xenbus)"},
		"agent.xenstore", func(cfg *config.Config, c *cli.Context, n string) { cfg.Agent.Xenstore = c.String(n) }},
	{&cli.StringFlag{Name: "control", EnvVars: []string{"MTWATCH_CONTROL"}, Usage: "control API unix socket `PATH` (default " + control.DefaultSocket + ")"},
		"control.socket", func(cfg *config.Config, c *cli.Context, n string) { cfg.Control.Socket = c.String(n) }},
	{&cli.StringFlag{Name: "metrics-listen", EnvVars: []string{"MTWATCH_METRICS_LISTEN"}, Usage: "also serve /metrics over TCP on `HOST:PORT`"},
		"control.metrics_listen", func(cfg *config.Config, c *cli.Context, n string) { cfg.Control.MetricsListen = c.String(n) }},
	{&cli.StringFlag{Name: "domid", EnvVars: []string{"MTWATCH_DOMID"}, Usage: "the `DOMID` mtwatchd runs in: auto (learnt from the connection), 0 (dom0) or a driver domain's"},
		"agent.domid", func(cfg *config.Config, c *cli.Context, n string) { cfg.Agent.Domid = c.String(n) }},
	{&cli.BoolFlag{Name: "auto-detect", EnvVars: []string{"MTWATCH_AUTO_DETECT"}, Value: true, Usage: "give introduced domains a worker even without a node; --auto-detect=false: the node alone decides"},
		"agent.auto_detect", func(cfg *config.Config, c *cli.Context, n string) { cfg.Agent.AutoDetect = c.Bool(n) }},
	{&cli.BoolFlag{Name: "single-worker", EnvVars: []string{"MTWATCH_SINGLE_WORKER"}, Usage: "run every event on the default worker, as Linux's kernel xenwatch thread runs every watch callback"},
		"agent.single_worker", func(cfg *config.Config, c *cli.Context, n string) { cfg.Agent.SingleWorker = c.Bool(n) }},
	{&cli.IntFlag{Name: "gomaxprocs", EnvVars: []string{"MTWATCH_GOMAXPROCS"}, Value: config.Default().Agent.GOMAXPROCS, Usage: "threads running Go code at once, `N`; 0: one per CPU (the GOMAXPROCS variable overrides it)"},
		"agent.gomaxprocs", func(cfg *config.Config, c *cli.Context, n string) { cfg.Agent.GOMAXPROCS = c.Int(n) }},
	{&cli.StringFlag{Name: "log-level", EnvVars: []string{"MTWATCH_LOG_LEVEL"}, Usage: "log `LEVEL`: trace, debug, info (the default), warning or error"},
		"log.level", func(cfg *config.Config, c *cli.Context, n string) { cfg.Log.Level = c.String(n) }},
	{&cli.StringFlag{Name: "log-format", EnvVars: []string{"MTWATCH_LOG_FORMAT"}, Usage: "log `FORMAT`: auto (the default: the journal when stderr is it, else text), text or json"},
		"log.format", func(cfg *config.Config, c *cli.Context, n string) { cfg.Log.Format = c.String(n) }},
}

// flags are mtwatchd's flags: --config, then the overrides.
func flags() []cli.Flag {
	fs := []cli.Flag{
		&cli.StringFlag{Name: "config", Value: config.DefaultFile, EnvVars: []string{"MTWATCH_CONFIG"}, Usage: "configuration `FILE` (a missing default file means defaults)"},
	}
	for _, o := range overrides {
		fs = append(fs, o.flag)
	}
	return fs
}

// load reads the configuration file, applies the flags over it and
// validates the result: a bad value from a flag is named by its flag.
func load(c *cli.Context) (*config.Config, error) {
	cfg, err := config.Load(c.String("config"), c.IsSet("config"))
	if err != nil {
		return nil, err
	}
	for _, o := range overrides {
		if n := o.flag.Names()[0]; c.IsSet(n) {
			o.apply(cfg, c, n)
		}
	}
	err = cfg.Validate()
	var ce *config.Error
	if !errors.As(err, &ce) {
		return cfg, err
	}
	for _, o := range overrides {
		if n := o.flag.Names()[0]; o.key == ce.Key && c.IsSet(n) {
			return nil, fmt.Errorf("--%s: %s (--%s %v)", n, ce.Msg, n, c.Value(n))
		}
	}
	return nil, err
}
