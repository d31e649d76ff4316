// Command mtwatchd is the mtwatch dom0 agent: per-domain XenStore watch
// workers for handler plugins. This file is only flags, signals, systemd and
// exit codes; the agent is lib/agent.
//
// Exit codes: 0 stopped on request (SIGTERM, SIGINT); 1 runtime failure; 78
// (EX_CONFIG) usage or configuration error. Not 2: the Go runtime exits 2 on
// an unrecovered panic and on SIGABRT, systemd's watchdog signal, and the
// unit must restart those while RestartPreventExitStatus keeps a
// configuration error from being retried in a loop.
package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"runtime"
	"syscall"
	"time"

	"github.com/coreos/go-systemd/v22/daemon"
	"github.com/sirupsen/logrus"
	"github.com/urfave/cli/v2"

	"github.com/mtwatch/mtwatch/internal/buildinfo"
	"github.com/mtwatch/mtwatch/lib/agent"
	"github.com/mtwatch/mtwatch/lib/control"
	"github.com/mtwatch/mtwatch/lib/logging"
	_ "github.com/mtwatch/mtwatch/plugin/builtins"
)

// version is set by the build: see internal/buildinfo.
var version = buildinfo.Version()

const (
	exitFailure = 1
	exitConfig  = 78 // EX_CONFIG of sysexits.h
)

func main() {
	closeInheritedOnExec()
	// A write to stderr whose reader is gone (a logger or svlogd that died)
	// must fail with EPIPE, not kill the agent with SIGPIPE as Go does for
	// fds 1 and 2. Notify rather than Ignore: an ignored signal stays
	// ignored in every command and script the plugins start, while a
	// notified one is reset to the default there. Nobody reads the channel:
	// the runtime drops signals a full channel cannot take.
	signal.Notify(make(chan os.Signal, 1), syscall.SIGPIPE)
	app := &cli.App{
		Name:    "mtwatchd",
		Usage:   "per-domain XenStore watch workers for Xen dom0",
		Version: version,
		Description: "Exit status: 0 stopped on request, 1 runtime failure, 78 usage or configuration error.\n" +
			"Flags and their environment variables override the configuration file.",
		Flags:  flags(),
		Action: run,
		// mtwatchd has no commands: no "COMMANDS: help" in --help.
		HideHelpCommand: true,
		OnUsageError: func(c *cli.Context, err error, _ bool) error {
			return cli.Exit("mtwatchd: "+err.Error(), exitConfig)
		},
	}
	if err := app.Run(os.Args); err != nil {
		var ec cli.ExitCoder
		if errors.As(err, &ec) {
			cli.HandleExitCoder(err)
			os.Exit(ec.ExitCode())
		}
		fmt.Fprintln(os.Stderr, "mtwatchd:", err)
		os.Exit(exitConfig)
	}
}

func run(c *cli.Context) error {
	if c.NArg() > 0 {
		return cli.Exit(fmt.Sprintf("mtwatchd: unexpected argument %q", c.Args().First()), exitConfig)
	}
	cfg, err := load(c)
	if err != nil {
		return cli.Exit("mtwatchd: "+err.Error(), exitConfig)
	}
	log, _, err := logging.New(os.Stderr, cfg.Log.Level, cfg.Log.Format)
	if err != nil {
		return cli.Exit("mtwatchd: "+err.Error(), exitConfig)
	}
	slog.SetDefault(slog.New(logging.Slog(log)))
	if procs, env := setGOMAXPROCS(cfg.Agent.GOMAXPROCS); env {
		log.WithField("gomaxprocs", procs).Info("GOMAXPROCS is set in the environment: agent.gomaxprocs is ignored")
	}
	notify := func(state string) { daemon.SdNotify(false, state) }
	var watchdog time.Duration
	if d, err := daemon.SdWatchdogEnabled(false); err == nil && d > 0 {
		watchdog = d / 2
	}

	a, err := agent.New(agent.Options{
		Config: cfg, Logger: slog.Default(), Notify: notify,
		WatchdogInterval: watchdog, Version: version, Registry: registry(),
	})
	if err != nil {
		code := exitFailure
		if errors.Is(err, agent.ErrConfig) {
			code = exitConfig
		}
		return cli.Exit("mtwatchd: "+err.Error(), code)
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	ln, activated, err := control.Activated()
	if err == nil && !activated {
		ln, err = control.Listen(cfg.Control.Socket)
	}
	if err != nil {
		a.Shutdown(context.Background())
		return cli.Exit("mtwatchd: "+err.Error(), exitFailure)
	}
	srvCtx, srvStop := context.WithCancel(context.Background())
	defer srvStop()
	served := make(chan error, 2)
	servers := 1
	go func() { served <- control.Serve(srvCtx, ln, control.NewHandler(a, a.MetricsHandler())) }()
	if addr := cfg.Control.MetricsListen; addr != "" {
		mln, err := net.Listen("tcp", addr)
		if err != nil {
			srvStop()
			a.Shutdown(context.Background())
			return cli.Exit(fmt.Sprintf("mtwatchd: metrics: %v", err), exitFailure)
		}
		servers++
		go func() { served <- control.ServeMetrics(srvCtx, mln, a.MetricsHandler()) }()
	}

	// SIGHUP is caught from here on: systemd may send it as soon as READY=1.
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	if err := a.Start(ctx); err != nil {
		srvStop()
		a.Shutdown(context.Background())
		if ctx.Err() != nil {
			return nil // stopped while connecting
		}
		return cli.Exit("mtwatchd: "+err.Error(), exitFailure)
	}
	// A reload runs beside this loop, one at a time: a plugin's Reload may
	// wait (exec, for the running command of a rule it removes), and
	// neither SIGTERM nor the next SIGHUP may wait with it. SIGHUPs that
	// come meanwhile make one more reload after it. Stopping cancels it;
	// everything a reload waits for honours that, so the wait is short.
	rctx, rcancel := context.WithCancel(context.Background())
	defer rcancel()
	var reloading chan struct{} // closed when the running reload ends; nil when none runs
	again := false
	startReload := func() {
		done := make(chan struct{})
		reloading = done
		go func() {
			defer close(done)
			reload(rctx, c, a, log)
		}()
	}
	stopReload := func() {
		rcancel()
		if reloading != nil {
			<-reloading
		}
	}
	for {
		select {
		case <-hup:
			if reloading != nil {
				again = true
			} else {
				startReload()
			}
			continue
		case <-reloading:
			reloading = nil
			if again {
				again = false
				startReload()
			}
			continue
		case err := <-served:
			log.WithError(err).Error("server failed")
			stopReload()
			a.Shutdown(context.Background())
			return cli.Exit("mtwatchd: "+err.Error(), exitFailure)
		case <-ctx.Done():
		}
		break
	}
	stopReload()
	sctx, cancel := context.WithTimeout(context.Background(), a.Config().Agent.ShutdownTimeout.Duration)
	defer cancel()
	if err := a.Shutdown(sctx); err != nil {
		log.WithError(err).Warn("shutdown did not drain in time; running handlers were cancelled")
	}
	srvStop()
	for range servers {
		<-served
	}
	log.Info("mtwatchd stopped")
	return nil
}

// reload re-reads the configuration on SIGHUP; an invalid file keeps the
// running configuration. ctx ends when the agent stops.
func reload(ctx context.Context, c *cli.Context, a *agent.Agent, log *logrus.Logger) {
	cfg, err := load(c)
	if err != nil {
		log.WithError(err).Error("reload: keeping the running configuration")
		return
	}
	if err := a.Reload(ctx, cfg); err != nil {
		switch {
		case errors.Is(err, agent.ErrConfig):
			log.WithError(err).Error("reload: keeping the running configuration")
			return
		case ctx.Err() != nil:
			log.WithError(err).Warn("reload cut short: mtwatchd is stopping")
			return
		}
		log.WithError(err).Error("reload")
	}
	before := runtime.GOMAXPROCS(0)
	if procs, _ := setGOMAXPROCS(cfg.Agent.GOMAXPROCS); procs != before {
		log.WithField("gomaxprocs", procs).WithField("was", before).Info("reload: gomaxprocs changed")
	}
	logging.SetLevel(log, cfg.Log.Level)
}
