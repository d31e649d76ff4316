package admin

import (
	"context"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/mtwatch/mtwatch/lib/control"
)

func statusCommand() *cli.Command {
	return &cli.Command{
		Name:  "status",
		Usage: "show the agent's status",
		Description: `Shows mtwatchd's version, mode, xenstored connection, domain and worker counts,
stalled handlers and the dispatcher's totals. Exits 3 when the agent is not running.`,
		Flags:        []cli.Flag{&cli.BoolFlag{Name: "json", Usage: "print the control API's JSON"}},
		OnUsageError: onUsageError,
		Action: func(c *cli.Context) error {
			if c.NArg() > 0 {
				return usagef("status takes no arguments")
			}
			g := globalsOf(c)
			ctx, cancel := context.WithTimeout(c.Context, g.timeout)
			defer cancel()
			cl := g.client()
			defer cl.Close()
			st, err := cl.Status(ctx)
			if err != nil {
				return agentErr(err)
			}
			if g.json {
				return writeJSON(c.App.Writer, st)
			}
			return writeStatus(c.App.Writer, st)
		},
	}
}

func writeStatus(w io.Writer, st control.Status) error {
	var b strings.Builder
	kv := func(k, format string, args ...any) {
		fmt.Fprintf(&b, "%-15s %s\n", k+":", fmt.Sprintf(format, args...))
	}
	kv("version", "%s", st.Version)
	kv("pid", "%d", st.PID)
	kv("uptime", "%s", (time.Duration(st.UptimeSeconds) * time.Second).String())
	auto := "off"
	if st.AutoDetect {
		auto = "on"
	}
	kv("mode", "%s, auto-detect %s, gomaxprocs %d", st.Mode, auto, st.GOMAXPROCS)
	xs := fmt.Sprintf("%s %s, %d reconnects", st.Xenstore.State, st.Xenstore.Path, st.Xenstore.Reconnects)
	if st.Xenstore.LastError != "" {
		xs += ", last error: " + st.Xenstore.LastError
	}
	kv("xenstored", "%s", xs)
	kv("domains", "%d (%d workers, %d nodes, %d stale)", st.Domains, st.Workers, st.Nodes, st.Stale)
	kv("stalled", "%d (threshold %s)", st.Stalled, fmtAge(st.StallThresholdMS))
	dw := st.DefaultWorker
	cur := "idle"
	if dw.Current != nil {
		cur = fmt.Sprintf("running %s (%s)", dw.Current.Path, fmtAge(dw.Current.AgeMS))
		if dw.Current.Stalled {
			cur += " STALLED"
		}
	}
	kv("default worker", "%d queued, %d processed, latency last %s max %s, %s",
		dw.Queued, dw.Processed, fmtUS(dw.LastLatencyUS), fmtUS(dw.MaxLatencyUS), cur)
	t := st.Totals
	kv("events", "%d dispatched, %d processed, %d coalesced, %d filtered, %d dropped, %d unmatched",
		t.Dispatched, t.Processed, t.Coalesced, t.Filtered, t.Dropped, t.Unmatched)
	kv("anomalies", "%d overflows, %d purged, %d panics, %d errors, %d stalls",
		t.Overflows, t.Purged, t.Panics, t.Errors, t.Stalls)
	var ps []string
	for _, p := range st.Plugins {
		s := fmt.Sprintf("%s (%d %s)", p.Name, p.Watches, plural(p.Watches, "watch", "watches"))
		if !p.Enabled {
			s = p.Name + " (disabled)"
		}
		ps = append(ps, s)
	}
	kv("plugins", "%s", orDash(strings.Join(ps, ", ")))
	_, err := io.WriteString(w, b.String())
	return err
}

func stallsCommand() *cli.Command {
	return &cli.Command{
		Name:  "stalls",
		Usage: "list running handlers past the stall threshold, oldest first",
		Description: `Lists the handler calls running longer than the agent's stall threshold: domain,
worker, watch, path and age; and plugins' work stalled off the workers (worker "plugin",
the plugin's name as watch, what is stalled after the path): a hotplug script, a device
stuck in set-up or teardown. Exits 3 when the agent is not running.`,
		Flags:        []cli.Flag{&cli.BoolFlag{Name: "json", Usage: "print the control API's JSON"}},
		OnUsageError: onUsageError,
		Action: func(c *cli.Context) error {
			if c.NArg() > 0 {
				return usagef("stalls takes no arguments")
			}
			g := globalsOf(c)
			ctx, cancel := context.WithTimeout(c.Context, g.timeout)
			defer cancel()
			cl := g.client()
			defer cl.Close()
			stalls, err := cl.Stalls(ctx)
			if err != nil {
				return agentErr(err)
			}
			if g.json {
				if stalls == nil {
					stalls = []control.Stall{}
				}
				return writeJSON(c.App.Writer, stalls)
			}
			t := newTable("Name", ">ID", "Worker", "Watch", ">Age", "Path")
			for _, s := range stalls {
				path := s.Path
				if s.Detail != "" {
					path += "  " + s.Detail
				}
				t.add(orDash(s.Name), strconv.Itoa(int(s.Domid)), s.Worker, s.Watch, fmtAge(s.AgeMS), path)
			}
			return t.write(c.App.Writer)
		},
	}
}

func plural(n int, one, many string) string {
	if n == 1 {
		return one
	}
	return many
}
