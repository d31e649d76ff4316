package admin

import (
	"context"
	"errors"
	"fmt"

	"github.com/urfave/cli/v2"

	"github.com/mtwatch/mtwatch/lib/domid"
	"github.com/mtwatch/mtwatch/lib/hook"
	"github.com/mtwatch/mtwatch/lib/node"
)

func createCommand() *cli.Command {
	return &cli.Command{
		Name:      "create",
		Usage:     "create the mtwatch node of a guest domain",
		ArgsUsage: "<domid>",
		Description: `Creates /local/domain/0/mtwatch/<domid> (private to dom0), valued with the VM uuid:
--uuid, else the one the toolstack wrote at /local/domain/<domid>/vm. Idempotent. Same semantics
and exit codes as mtwatch-hook create; the agent is not needed.`,
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "uuid", Usage: "the VM `UUID` to store in the node"},
		},
		OnUsageError: onUsageError,
		Action: func(c *cli.Context) error {
			if err := rejectFlagsAfterArgs(c); err != nil {
				return err
			}
			return runDirect(c, hook.KindCreate)
		},
	}
}

func destroyCommand() *cli.Command {
	return &cli.Command{
		Name:      "destroy",
		Usage:     "remove the mtwatch node of a guest domain",
		ArgsUsage: "<domid> | --uuid <uuid>",
		Description: `Removes /local/domain/0/mtwatch/<domid>; with --uuid too, only if the node is that
VM's (or has no uuid), so the node of a later domain reusing the domid stays. With --uuid and no
domid, removes every node valued with that VM uuid. A missing node is success. Same semantics
and exit codes as mtwatch-hook destroy; the agent is not needed. The domain itself is not
touched: mtwatch xl destroy destroys it and then removes the node.`,
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "uuid", Usage: "remove only the node(s) of the VM with this `UUID`"},
		},
		OnUsageError: onUsageError,
		Action: func(c *cli.Context) error {
			if err := rejectFlagsAfterArgs(c); err != nil {
				return err
			}
			return runDirect(c, hook.KindDestroy)
		},
	}
}

// runDirect parses a create or destroy as mtwatch-hook does
// (hook.Direct) and runs it.
func runDirect(c *cli.Context, kind hook.Kind) error {
	a, err := hook.Direct(kind, c.String("uuid"), c.Args().Slice())
	if err != nil {
		var de *domid.Error
		if errors.As(err, &de) {
			return domainErr(de.Input, de.Err)
		}
		return usagef("%v", err)
	}
	return runAction(c, a)
}

// The node commands run hook.Run, as mtwatch-hook does, so that both have
// one set of semantics.

// withXenstore runs fn with the global timeout.
func withXenstore(c *cli.Context, fn func(ctx context.Context, g globals) error) error {
	g := globalsOf(c)
	ctx, cancel := context.WithTimeout(c.Context, g.timeout)
	defer cancel()
	return fn(ctx, g)
}

func nodeErr(g globals, err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, domid.ErrNotGuest), errors.Is(err, node.ErrBadUUID):
		return usagef("%v", err)
	case errors.Is(err, context.DeadlineExceeded):
		return failf("%v (xenstore did not answer within %v)", err, g.timeout)
	}
	return failf("%v", fmt.Errorf("%w", err))
}

// runAction carries out a node action on a fresh XenStore connection, with
// mtwatch-hook's semantics (hook.Run) and the CLI's exit codes.
func runAction(c *cli.Context, a hook.Action) error {
	return withXenstore(c, func(ctx context.Context, g globals) error {
		xs, err := g.dial(ctx)
		if err != nil {
			return err
		}
		defer xs.Close()
		return nodeErr(g, hook.Run(ctx, xs, a))
	})
}
