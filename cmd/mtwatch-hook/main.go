// Command mtwatch-hook creates and removes /local/domain/0/mtwatch/<domid>
// for toolstacks: it is what the scripts in libvirt's and XAPI's hook
// directories run, and it can be run by hand (or by scripts wrapping xl).
//
// Exit codes: 0 done (or nothing to do, or a failure tolerated by policy),
// 1 XenStore failure (unreachable, timeout, refused), 2 usage or bad input,
// nothing written. Under libvirt a failure exits 0 unless --strict; under
// XAPI it exits 1 ("log and continue") unless --strict, which exits 2.
package main

import (
	"context"
	"errors"
	"fmt"
	"log/syslog"
	"os"
	"strings"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/mtwatch/mtwatch/lib/domid"
	"github.com/mtwatch/mtwatch/lib/hook"
	"github.com/mtwatch/mtwatch/lib/node"
	"github.com/mtwatch/mtwatch/lib/xenstore"
)

func main() {
	os.Exit(run(os.Args))
}

func run(args []string) int {
	code := hook.ExitOK
	exit := func(m hook.Mode, c *cli.Context, err error) error {
		code = hook.ExitCode(m, c.Bool("strict"), err)
		if err != nil {
			report(m, code, err)
		}
		return nil
	}
	app := &cli.App{
		Name:  "mtwatch-hook",
		Usage: "create and remove mtwatch nodes from toolstack hooks",
		Description: "Exit codes: 0 done or nothing to do, 1 XenStore failure, 2 usage or bad input.\n" +
			"Under libvirt failures exit 0 unless --strict; under XAPI they exit 1 unless --strict (2).",
		Flags: []cli.Flag{
			&cli.DurationFlag{Name: "timeout", Value: 3 * time.Second,
				Usage: "give up on XenStore after this long"},
			&cli.BoolFlag{Name: "strict", EnvVars: []string{"MTWATCH_HOOK_STRICT"},
				Usage: "make a failure abort the toolstack's operation"},
			&cli.StringFlag{Name: "xenstore", EnvVars: []string{"MTWATCH_XENSTORE"},
				Usage: "XenStore socket or device (default: $XENSTORED_PATH, the xenstored socket, /dev/xen/xenbus)"},
		},
		HideHelpCommand: true,
		ExitErrHandler:  func(*cli.Context, error) {},
		Commands: []*cli.Command{
			{
				Name:      "create",
				Usage:     "create the node of a guest domain (idempotent)",
				ArgsUsage: "<domid>",
				Flags:     []cli.Flag{&cli.StringFlag{Name: "uuid", Usage: "VM uuid (default: read from /local/domain/<domid>/vm)"}},
				Action: func(c *cli.Context) error {
					a, err := directAction(c, hook.Create)
					if err == nil {
						err = apply(c, a)
					}
					return exit(hook.ModeDirect, c, err)
				},
			},
			{
				Name:      "destroy",
				Usage:     "remove the node of a guest domain, or of a VM with --uuid (idempotent)",
				ArgsUsage: "<domid> | --uuid <uuid>",
				Flags:     []cli.Flag{&cli.StringFlag{Name: "uuid", Usage: "remove the node(s) of this VM"}},
				Action: func(c *cli.Context) error {
					a, err := directAction(c, hook.Destroy)
					if err == nil {
						err = apply(c, a)
					}
					return exit(hook.ModeDirect, c, err)
				},
			},
			{
				Name:            "libvirt",
				Usage:           "libvirt libxl hook: <domain-name> <op> <subop> <extra>, domain XML on stdin",
				SkipFlagParsing: true,
				Action: func(c *cli.Context) error {
					a, err := hook.Libvirt(c.Args().Slice(), os.Stdin)
					if err == nil {
						err = apply(c, a)
					}
					return exit(hook.ModeLibvirt, c, err)
				},
			},
			{
				Name:            "xapi",
				Usage:           "XAPI hook: <hook-name> -vmuuid <uuid> -reason <reason> [-vmdomid <domid>]",
				SkipFlagParsing: true,
				Action: func(c *cli.Context) error {
					args := c.Args().Slice()
					if len(args) == 0 {
						return exit(hook.ModeXAPI, c, fmt.Errorf("%w: xapi: hook name missing", hook.ErrUsage))
					}
					a, err := hook.XAPI(args[0], args[1:])
					if err == nil {
						err = apply(c, a)
					}
					return exit(hook.ModeXAPI, c, err)
				},
			},
		},
	}
	if err := app.Run(args); err != nil {
		fmt.Fprintf(os.Stderr, "mtwatch-hook: %v\n", err)
		return hook.ExitUsage
	}
	return code
}

// directAction parses "create|destroy [--uuid U] [<domid>]".
func directAction(c *cli.Context, kind hook.Kind) (hook.Action, error) {
	a := hook.Action{Kind: kind, UUID: strings.ToLower(c.String("uuid")), Why: c.Command.Name}
	if a.UUID != "" && !node.ValidUUID(a.UUID) {
		return a, fmt.Errorf("%w: %w: %q", hook.ErrInput, node.ErrBadUUID, c.String("uuid"))
	}
	switch {
	case c.NArg() == 0 && kind == hook.Destroy && a.UUID != "":
		a.Kind = hook.DestroyUUID
		return a, nil
	case c.NArg() != 1:
		return a, fmt.Errorf("%w: %s takes exactly one <domid>, got %d argument(s)", hook.ErrUsage, c.Command.Name, c.NArg())
	}
	id, err := domid.ParseGuest(c.Args().First())
	if err != nil {
		return a, fmt.Errorf("%w: %w", hook.ErrInput, err)
	}
	a.Domid = id
	return a, nil
}

// apply connects to XenStore and runs a, all within --timeout.
func apply(c *cli.Context, a hook.Action) error {
	if a.Kind == hook.None {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), c.Duration("timeout"))
	defer cancel()
	var opts []xenstore.Option
	if p := c.String("xenstore"); p != "" {
		opts = append(opts, xenstore.WithPath(p))
	}
	xs, err := xenstore.Dial(ctx, opts...)
	if err != nil {
		return fmt.Errorf("%s: connect to xenstore: %w", a.Why, err)
	}
	defer xs.Close()
	if err := hook.Run(ctx, xs, a); err != nil {
		if errors.Is(err, context.DeadlineExceeded) {
			return fmt.Errorf("%s: xenstore did not answer within %v: %w", a.Why, c.Duration("timeout"), err)
		}
		return fmt.Errorf("%s: %w", a.Why, err)
	}
	return nil
}

// report prints err on stderr and, for toolstack invocations whose stderr
// may go nowhere, to syslog as well.
func report(m hook.Mode, code int, err error) {
	msg := err.Error()
	if code == hook.ExitOK {
		msg += " (ignored: not strict)"
	}
	fmt.Fprintf(os.Stderr, "mtwatch-hook: %s\n", msg)
	if m == hook.ModeDirect {
		return
	}
	if w, serr := syslog.New(syslog.LOG_DAEMON|syslog.LOG_WARNING, "mtwatch-hook"); serr == nil {
		w.Warning(msg)
		w.Close()
	}
}
