// Package admin is the mtwatch administration CLI: the urfave/cli command
// tree behind cmd/mtwatch, which reads the agent's state through its control
// API (lib/control) and XenStore directly (lib/xenstore, lib/node), and wraps
// xl so that a domain's mtwatch node exists before the guest runs.
//
// Exit codes are part of the interface: ExitOK, ExitFailure, ExitUsage
// (nothing was changed) and ExitAgentNotRunning.
package admin

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/mtwatch/mtwatch/internal/buildinfo"
	"github.com/mtwatch/mtwatch/lib/control"
	"github.com/mtwatch/mtwatch/lib/domid"
	"github.com/mtwatch/mtwatch/lib/xenstore"
)

// Exit codes of mtwatch.
const (
	ExitOK              = 0 // done
	ExitFailure         = 1 // the operation failed (XenStore, xl, the agent)
	ExitUsage           = 2 // usage or bad input: nothing was changed
	ExitAgentNotRunning = 3 // the command needs mtwatchd and it is not running
)

// Version is set by the build: see internal/buildinfo.
var Version = buildinfo.Version()

// Run runs the mtwatch command line args (args[0] is the program name) and
// returns its exit code. ctx ends long-running commands (top, watch, xl
// waits) as a signal would.
func Run(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	app := NewApp()
	app.Reader, app.Writer, app.ErrWriter = stdin, stdout, stderr
	err := app.RunContext(ctx, splitShortOptions(args))
	if err == nil {
		return ExitOK
	}
	code := ExitUsage // errors urfave/cli returns itself are flag parse errors
	var ec cli.ExitCoder
	if errors.As(err, &ec) {
		code = ec.ExitCode()
	}
	// urfave/cli answers some usage errors ("No help topic") with 3 of its
	// own; 3 means the agent is not running, and only agentDown says so.
	if code == ExitAgentNotRunning && !errors.As(err, new(agentDown)) {
		code = ExitUsage
	}
	if msg := strings.TrimSpace(err.Error()); msg != "" {
		// One line: the first line says what failed.
		msg, _, _ = strings.Cut(msg, "\n")
		fmt.Fprintf(stderr, "mtwatch: %s\n", escapeControls(msg))
	}
	return code
}

const appDescription = `mtwatch shows what mtwatchd, the dom0 agent that gives every guest domain its own
XenStore watch worker, is doing (list, status, top, stalls), manages the nodes
/local/domain/0/mtwatch/<domid> that give a domain its worker (create, destroy), and wraps xl so
that the node exists before a guest runs (xl create, shutdown, destroy, reboot).`

// NewApp returns the command tree. It is also what the man page and the fish
// completion are generated from.
func NewApp() *cli.App {
	return &cli.App{
		Name:  "mtwatch",
		Usage: "inspect mtwatchd and manage the per-domain watch worker nodes of a Xen host",
		Description: appDescription + `

Exit codes: 0 ok; 1 the operation failed; 2 usage or bad input (nothing was changed); 3 the agent
is not running (commands that need it). Errors are one line on stderr, e.g.
"mtwatch: domain 70000: domid out of range".

Environment: MTWATCH_XENSTORE, else XENSTORED_PATH (--xenstore); MTWATCH_CONTROL (--control);
MTWATCH_XL (xl --xl).`,
		Version:              Version,
		EnableBashCompletion: true,
		HideHelpCommand:      true,
		Flags: []cli.Flag{
			&cli.StringFlag{
				Name:    "xenstore",
				Usage:   "the XenStore socket or device `PATH` (default: $XENSTORED_PATH, the xenstored socket, /dev/xen/xenbus)",
				EnvVars: []string{"MTWATCH_XENSTORE", "XENSTORED_PATH"},
			},
			&cli.StringFlag{
				Name:    "control",
				Usage:   "mtwatchd's control socket `PATH`",
				Value:   control.DefaultSocket,
				EnvVars: []string{"MTWATCH_CONTROL"},
			},
			&cli.DurationFlag{
				Name:  "timeout",
				Usage: "give up on XenStore or the agent after `DURATION`, per operation",
				Value: 5 * time.Second,
			},
			&cli.BoolFlag{Name: "json", Usage: "print JSON (list, status, stalls, watch)"},
		},
		Commands: []*cli.Command{
			listCommand(),
			statusCommand(),
			topCommand(),
			stallsCommand(),
			createCommand(),
			destroyCommand(),
			xlCommand(),
			watchCommand(),
			completionCommand(),
		},
		// Unknown commands and stray arguments are usage errors, not help.
		Action: func(c *cli.Context) error {
			args := c.Args().Slice()
			switch {
			case len(args) == 0:
				return cli.ShowAppHelp(c)
			case args[0] == "help" && len(args) == 1:
				return cli.ShowAppHelp(c)
			case args[0] == "help":
				if c.App.Command(args[1]) == nil {
					return usagef("help: unknown command %q", args[1])
				}
				return cli.ShowCommandHelp(c, args[1])
			}
			return usagef("unknown command %q (see mtwatch --help)", args[0])
		},
		OnUsageError: onUsageError,
		// Run reports errors and picks the exit code; urfave/cli must not
		// print or exit itself.
		ExitErrHandler: func(*cli.Context, error) {},
	}
}

func onUsageError(_ *cli.Context, err error, _ bool) error {
	// The flag package reads a negative domid as an unknown flag; name it
	// for what the user meant.
	if f, ok := strings.CutPrefix(err.Error(), "flag provided but not defined: "); ok && looksNumeric(f) {
		return domainErr(f, domid.ErrSyntax)
	}
	return cli.Exit(err.Error(), ExitUsage)
}

// Error constructors: every command error carries its exit code.
func usagef(format string, args ...any) error {
	return cli.Exit(fmt.Sprintf(format, args...), ExitUsage)
}

func failf(format string, args ...any) error {
	return cli.Exit(fmt.Sprintf(format, args...), ExitFailure)
}

// fail wraps err as an operation failure, unless it already has a code.
func fail(err error) error {
	var ec cli.ExitCoder
	if errors.As(err, &ec) {
		return err
	}
	if errors.Is(err, control.ErrAgentNotRunning) {
		return agentDown{err.Error()}
	}
	return cli.Exit(err.Error(), ExitFailure)
}

// agentDown is the error of a command that needs the agent when it is not
// running: exit code ExitAgentNotRunning.
type agentDown struct{ msg string }

func (e agentDown) Error() string { return e.msg }
func (e agentDown) ExitCode() int { return ExitAgentNotRunning }

// globals are the global flags.
type globals struct {
	xenstore string
	control  string
	timeout  time.Duration
	json     bool
}

func globalsOf(c *cli.Context) globals {
	g := globals{
		xenstore: c.String("xenstore"),
		control:  c.String("control"),
		timeout:  c.Duration("timeout"),
	}
	// --json may be given globally or to the command.
	for _, cc := range c.Lineage() {
		if cc.Bool("json") {
			g.json = true
		}
	}
	if g.timeout <= 0 {
		g.timeout = 5 * time.Second
	}
	return g
}

func (g globals) dial(ctx context.Context) (*xenstore.Client, error) {
	var opts []xenstore.Option
	if g.xenstore != "" {
		opts = append(opts, xenstore.WithPath(g.xenstore))
	}
	ctx, cancel := context.WithTimeout(ctx, g.timeout)
	defer cancel()
	xs, err := xenstore.Dial(ctx, opts...)
	if err != nil {
		return nil, failf("connect to xenstore: %v", err)
	}
	return xs, nil
}

func (g globals) client() *control.Client { return control.NewClient(g.control) }

// agentErr turns a control client error into the command's error.
func agentErr(err error) error {
	if errors.Is(err, control.ErrAgentNotRunning) {
		return agentDown{fmt.Sprintf("%v: start mtwatchd (systemctl start mtwatchd)", err)}
	}
	return failf("agent: %v", err)
}

// domainErr formats a rejected domain argument: "domain 70000: domid out of
// range".
func domainErr(arg string, err error) error {
	var de *domid.Error
	if errors.As(err, &de) {
		err = de.Err
	}
	return usagef("domain %s: %v", arg, err)
}

// parseGuest parses a guest domid argument strictly.
func parseGuest(arg string) (domid.ID, error) {
	id, err := domid.ParseGuest(arg)
	if err != nil {
		return 0, domainErr(arg, err)
	}
	return id, nil
}

// looksNumeric: an argument that is meant as a domid (and must then be a
// valid one) rather than a domain name.
func looksNumeric(s string) bool {
	s = strings.TrimLeft(s, "+-")
	return s != "" && s[0] >= '0' && s[0] <= '9'
}

func writeJSON(w io.Writer, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return failf("encode json: %v", err)
	}
	_, err = w.Write(append(b, '\n'))
	return err
}

// rejectFlagsAfterArgs: urfave/cli stops parsing flags at the first
// argument, so a flag placed after one would silently become an argument.
func rejectFlagsAfterArgs(c *cli.Context) error {
	for _, a := range c.Args().Slice() {
		if strings.HasPrefix(a, "--") && len(a) > 2 {
			return usagef("%s: flag %s must come before the arguments", c.Command.Name, a)
		}
	}
	return nil
}

// escapeControls escapes control characters: names and paths come from
// XenStore, where a guest may have written them, and must not move the
// cursor or start a line of their own on the administrator's terminal.
func escapeControls(s string) string {
	var b strings.Builder
	for _, r := range s {
		if r < 0x20 || r == 0x7f || (r >= 0x80 && r < 0xa0) {
			fmt.Fprintf(&b, "\\x%02x", r)
			continue
		}
		b.WriteRune(r)
	}
	return b.String()
}

// stderrOf returns the command's error writer.
func stderrOf(c *cli.Context) io.Writer {
	if c.App.ErrWriter != nil {
		return c.App.ErrWriter
	}
	return os.Stderr
}
