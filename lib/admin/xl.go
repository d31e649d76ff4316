package admin

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/mtwatch/mtwatch/lib/domid"
	"github.com/mtwatch/mtwatch/lib/node"
	"github.com/mtwatch/mtwatch/lib/xenstore"
)

func xlCommand() *cli.Command {
	xlFlags := []cli.Flag{
		&cli.StringFlag{Name: "xl", Value: "xl", EnvVars: []string{"MTWATCH_XL"}, Usage: "run `PATH` as xl"},
		&cli.DurationFlag{Name: "wait", Value: 5 * time.Minute, Usage: "wait at most `DURATION` for a domain to go (or, for reboot, to come back)"},
	}
	return &cli.Command{
		Name:      "xl",
		Usage:     "run xl with the domain's mtwatch node written first and removed last",
		ArgsUsage: "create|shutdown|destroy|reboot [xl args]",
		Description: `xl has no lifecycle hooks. These wrappers run xl and manage the node around it: create
writes it while the new guest is still paused, shutdown, destroy and reboot remove it once the
domain is gone. <domain> is a domid or a name.

Options of mtwatch go before the xl subcommand (mtwatch xl --strict create web.cfg); everything
after it is passed to xl unchanged, except as each subcommand says.`,
		Flags: append(xlFlags,
			&cli.BoolFlag{Name: "strict", Usage: "create: destroy the paused domain if its node cannot be written"}),
		OnUsageError: onUsageError,
		// No "help" subcommand (--help works): urfave/cli's shared help
		// command then never becomes a child of itself, which made the
		// fish completion recurse forever.
		HideHelpCommand: true,
		// Without a subcommand: the help on stderr and a usage error, as
		// xl itself answers; with an unknown one: a usage error (urfave/cli's
		// own answer would exit 3, "agent not running").
		Action: func(c *cli.Context) error {
			if c.NArg() == 0 {
				w := c.App.Writer
				c.App.Writer = c.App.ErrWriter
				defer func() { c.App.Writer = w }()
				if err := cli.ShowSubcommandHelp(c); err != nil {
					return err
				}
				return cli.Exit("", ExitUsage)
			}
			return usagef("xl: unknown subcommand %q (create, shutdown, destroy, reboot)", c.Args().First())
		},
		Subcommands: []*cli.Command{
			xlSub("create", "<cfg> [xl create args]", `Runs xl create -p (paused), asks xl domid <name> for the new domid, writes the node, then
runs xl unpause <domid>: the node exists before the guest runs its first instruction and before
its frontends connect. If the node cannot be written the guest is still unpaused, with a
warning, unless --strict, which destroys it and exits 1. A -p of your own leaves the guest
paused after the node is written; -n (dry run) runs xl alone. -c and -F are refused: they keep
xl running until the domain dies, so the node could never be written first.`, runXLCreate),
			xlSub("shutdown", "<domain> | -a [xl shutdown args]", `Runs xl shutdown, waits until the domain is gone (not introduced, its /local/domain tree
removed), then removes its node, last. If xl fails the node is kept. With -a every guest is
asked, one xl shutdown each (so that one guest without PV drivers does not stop the others, as
it stops xl -a), and each node goes as its domain goes; a guest xl failed for keeps its node
and the exit code is 1. -w is implied: mtwatch always waits, at most --wait.`, runXLStop),
			xlSub("destroy", "<domain> [xl destroy args]", `Runs xl destroy, waits until the domain is gone, then removes its node, last. If xl fails
the node is kept.`, runXLStop),
			xlSub("reboot", "<domain> [xl reboot args]", `Runs xl reboot, waits for the domain of the same name and VM uuid to come back under a new
domid, gives it a node with the old node's uuid, waits for the old domain to be gone and removes
its node. If none comes back within --wait (on_reboot="destroy", a failed build), the old node
is removed once its domain is gone and the exit code is 1. -a is refused: reboot the domains
one at a time.`, runXLReboot),
		},
	}
}

func xlSub(name, args, desc string, fn func(c *cli.Context, x *xlRun) error) *cli.Command {
	return &cli.Command{
		Name:        name,
		Usage:       "xl " + name + " with the mtwatch node managed around it",
		ArgsUsage:   args,
		Description: desc,
		// Everything after the subcommand is xl's: no "[command options]"
		// of mtwatch's own, no help subcommand.
		HideHelpCommand:    true,
		CustomHelpTemplate: xlSubHelp,
		SkipFlagParsing:    true, // xl's own options pass through
		OnUsageError:       onUsageError,
		Action: func(c *cli.Context) error {
			if a := c.Args().First(); a == "-h" || a == "--help" {
				return cli.ShowSubcommandHelp(c)
			}
			x := &xlRun{
				bin:    c.String("xl"),
				strict: c.Bool("strict"),
				wait:   c.Duration("wait"),
				g:      globalsOf(c),
				stdin:  c.App.Reader,
				stdout: c.App.Writer,
				stderr: stderrOf(c),
			}
			if x.wait <= 0 {
				return usagef("xl: --wait must be positive")
			}
			return fn(c, x)
		},
	}
}

const xlSubHelp = `NAME:
   {{template "helpNameTemplate" .}}

USAGE:
   {{.HelpName}} {{.ArgsUsage}}

DESCRIPTION:
   {{template "descriptionTemplate" .}}

The options of mtwatch xl (--xl, --wait, --strict) go before the subcommand: see mtwatch xl --help.
`

// xlRun is one xl wrapper invocation.
type xlRun struct {
	bin    string
	strict bool
	wait   time.Duration
	g      globals
	stdin  io.Reader
	stdout io.Writer
	stderr io.Writer
}

// run runs xl with args, its output passed through.
func (x *xlRun) run(ctx context.Context, args ...string) error {
	cmd := exec.CommandContext(ctx, x.bin, args...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = x.stdin, x.stdout, x.stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("xl %s: %w", strings.Join(args, " "), err)
	}
	return nil
}

func (x *xlRun) warnf(format string, args ...any) {
	fmt.Fprintf(x.stderr, "mtwatch: warning: "+format+"\n", args...)
}

// op bounds one XenStore operation by the global timeout.
func (x *xlRun) op(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, x.g.timeout)
}

// createArgs is what matters of "xl create [options] [<cfg>] [vars]".
type createArgs struct {
	cfg    string // the config file, "" if none
	name   string // the domain name from the config or a name= var
	paused bool   // -p given by the user
	dryRun bool   // -n: xl creates nothing
}

// xlCreateBlocking reports an xl create option that keeps xl running after
// the domain is built (-c attaches the console, -F stays in the foreground
// as the domain's monitor): the wrapper would never get to write the node.
func xlCreateBlocking(opt rune) error {
	what := map[rune]string{'c': "-c attaches the console", 'F': "-F keeps xl in the foreground"}[opt]
	return usagef("xl create: %s until the domain dies, so the node could not be written before the guest runs: "+
		"leave it out (attach with xl console afterwards)", what)
}

// xl create's options that take a value (getopt "Fnqf:pcdeV", long forms).
var xlCreateValueOpts = map[string]bool{"-f": true, "--defconfig": true}

// scanCreateArgs finds the config file, a name= variable and -p in xl
// create's argv, without touching the file system.
func scanCreateArgs(args []string) (a createArgs, nameVar string, err error) {
	for i := 0; i < len(args); i++ {
		s := args[i]
		switch {
		case s == "-p" || s == "--paused":
			a.paused = true
		case s == "-n" || s == "--dryrun":
			a.dryRun = true
		case xlCreateValueOpts[s]:
			if i+1 >= len(args) {
				return a, "", usagef("xl create: %s needs a value", s)
			}
			i++
			if s == "-f" {
				a.cfg = args[i]
			}
		case strings.HasPrefix(s, "--defconfig="):
			a.cfg = strings.TrimPrefix(s, "--defconfig=")
		case strings.HasPrefix(s, "-f") && !strings.HasPrefix(s, "--"):
			a.cfg = strings.TrimPrefix(strings.TrimPrefix(s, "-f"), "=")
		case strings.HasPrefix(s, "-") && !strings.HasPrefix(s, "--") && len(s) > 1:
			// Clustered short options: "-pq".
			for _, o := range s[1:] {
				switch o {
				case 'p':
					a.paused = true
				case 'n':
					a.dryRun = true
				case 'c', 'F':
					return a, "", xlCreateBlocking(o)
				}
			}
		case strings.HasPrefix(s, "-"):
		case strings.Contains(s, "="):
			if n, ok := strings.CutPrefix(s, "name="); ok {
				nameVar = strings.Trim(n, `"'`)
			}
		case a.cfg == "":
			a.cfg = s
		}
	}
	if a.cfg == "" {
		return a, "", usagef("xl create: no config file given")
	}
	return a, nameVar, nil
}

func parseCreateArgs(args []string) (createArgs, error) {
	a, nameVar, err := scanCreateArgs(args)
	if err != nil {
		return a, err
	}
	if b, err := os.ReadFile(a.cfg); err == nil {
		a.name = cfgName(string(b))
	} else if errors.Is(err, fs.ErrNotExist) {
		return a, usagef("xl create: config file %s: no such file", a.cfg)
	}
	if nameVar != "" {
		a.name = nameVar
	}
	return a, nil
}

var nameRe = regexp.MustCompile(`(?m)^\s*name\s*=\s*["']([^"'\n]+)["']\s*(?:#.*)?$`)

// cfgName finds the domain name in an xl config (or a name="x" variable).
func cfgName(s string) string {
	m := nameRe.FindAllStringSubmatch(s, -1)
	if len(m) == 0 {
		return ""
	}
	return m[len(m)-1][1]
}

func runXLCreate(c *cli.Context, x *xlRun) error {
	args := c.Args().Slice()
	a, err := parseCreateArgs(args)
	if err != nil {
		return err
	}
	ctx := c.Context
	if a.dryRun {
		// Nothing is created: nothing to give a node.
		if err := x.run(ctx, append([]string{"create"}, args...)...); err != nil {
			return failf("%v", err)
		}
		return nil
	}
	xs, err := x.g.dial(ctx)
	if err != nil {
		if x.strict {
			return failf("%v: nothing created", err)
		}
		x.warnf("%v: running xl create without the node", err)
		if err := x.run(ctx, append([]string{"create"}, args...)...); err != nil {
			return failf("%v", err)
		}
		return nil
	}
	defer xs.Close()
	var before map[domid.ID]string
	if a.name == "" {
		octx, cancel := x.op(ctx)
		before, err = domainNames(octx, xs)
		cancel()
		if err != nil {
			return failf("%v", err)
		}
	}
	xlArgs := append([]string{"create"}, args...)
	if !a.paused {
		xlArgs = append([]string{"create", "-p"}, args...)
	}
	if err := x.run(ctx, xlArgs...); err != nil {
		return failf("%v", err)
	}
	id, err := x.createdDomain(ctx, xs, before, a.name)
	target := a.name
	if err == nil {
		target = id.String()
		octx, cancel := x.op(ctx)
		err = node.Create(octx, xs, id, "")
		cancel()
	}
	if err != nil {
		if x.strict {
			if target != "" {
				if derr := x.run(ctx, "destroy", target); derr != nil {
					return failf("write the node: %v; and destroying the paused domain failed: %v", err, derr)
				}
			}
			return failf("write the node: %v (--strict: domain destroyed)", err)
		}
		x.warnf("write the node: %v; the domain runs without a worker of its own", err)
		if target == "" || a.paused {
			return nil
		}
	}
	if a.paused {
		return nil
	}
	if err := x.run(ctx, "unpause", target); err != nil {
		return failf("%v (the domain stays paused)", err)
	}
	return nil
}

// createdDomain finds the domid of the domain xl create just made. With
// the name known, xl domid <name> answers, as it does for any toolstack
// script: names are unique among running domains, so another xl create
// running at the same time cannot be mistaken for this one. Without a name
// (a config xl evaluates in a way mtwatch does not), the one domain that
// appeared under /local/domain since before is taken, and several are an
// error.
func (x *xlRun) createdDomain(ctx context.Context, xs *xenstore.Client, before map[domid.ID]string, name string) (domid.ID, error) {
	if name == "" {
		octx, cancel := x.op(ctx)
		defer cancel()
		return newDomain(octx, xs, before, name)
	}
	octx, cancel := x.op(ctx)
	defer cancel()
	var out strings.Builder
	cmd := exec.CommandContext(octx, x.bin, "domid", name)
	cmd.Stdout, cmd.Stderr = &out, x.stderr
	if err := cmd.Run(); err != nil {
		return 0, fmt.Errorf("xl domid %s: %w", name, err)
	}
	s := strings.TrimSpace(out.String())
	id, err := domid.ParseGuest(s)
	if err != nil {
		return 0, fmt.Errorf("xl domid %s: %q: %w", name, s, err)
	}
	return id, nil
}

// newDomain finds the domain xl create just made: a domain that was not
// there before, with the config's name if known.
func newDomain(ctx context.Context, xs *xenstore.Client, before map[domid.ID]string, name string) (domid.ID, error) {
	after, err := domainNames(ctx, xs)
	if err != nil {
		return 0, err
	}
	var found []domid.ID
	for id, n := range after {
		if _, old := before[id]; old || !id.IsGuest() {
			continue
		}
		if name == "" || n == name {
			found = append(found, id)
		}
	}
	switch len(found) {
	case 1:
		return found[0], nil
	case 0:
		return 0, fmt.Errorf("no new domain %q in /local/domain after xl create", name)
	}
	slices.Sort(found)
	return 0, fmt.Errorf("several new domains %v match %q: cannot tell which one xl created", found, name)
}

// stopArgs finds the domain argument of xl shutdown/destroy/reboot: the
// first argument that is not an option.
func stopArgs(args []string) (int, error) {
	for i, s := range args {
		if s == "--" {
			if i+1 < len(args) {
				return i + 1, nil
			}
			break
		}
		if strings.HasPrefix(s, "-") && !looksNumeric(s) {
			continue
		}
		return i, nil
	}
	return -1, usagef("no <domain> given")
}

// gone reports whether domain id has left xenstored: not introduced and
// its /local/domain tree removed.
func gone(ctx context.Context, xs *xenstore.Client, id domid.ID) (bool, error) {
	in, err := xs.IsDomainIntroduced(ctx, id)
	if err != nil {
		return false, err
	}
	if in {
		return false, nil
	}
	_, err = xs.Read(ctx, id.Home()+"/name")
	if errors.Is(err, fs.ErrNotExist) {
		return true, nil
	}
	return false, err
}

// waitFor waits, for at most x.wait, until check is true, re-checking on
// every @releaseDomain and @introduceDomain event (and every second, in case
// an event was merged away).
func (x *xlRun) waitFor(ctx context.Context, xs *xenstore.Client, what string, check func(context.Context) (bool, error)) error {
	ctx, cancel := context.WithTimeout(ctx, x.wait)
	defer cancel()
	var chans []<-chan xenstore.Event
	for i, p := range []string{"@releaseDomain", "@introduceDomain"} {
		w, err := xs.Watch(ctx, p, fmt.Sprintf("mtwatch-xl-%d", i))
		if err != nil {
			return fmt.Errorf("watch %s: %w", p, err)
		}
		defer w.Unwatch(context.WithoutCancel(ctx))
		chans = append(chans, w.Events())
	}
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		octx, ocancel := x.op(ctx)
		ok, err := check(octx)
		ocancel()
		if err != nil && ctx.Err() == nil {
			return err
		}
		if ok {
			return nil
		}
		select {
		case <-ctx.Done():
			if c := context.Cause(ctx); errors.Is(c, context.DeadlineExceeded) {
				return fmt.Errorf("%s: still waiting after %v", what, x.wait)
			}
			return ctx.Err()
		case <-chans[0]:
		case <-chans[1]:
		case <-tick.C:
		}
	}
}

// allFlag reports whether xl's -a (every domain) is among args, alone
// ("-a", "--all") or clustered ("-wa").
func allFlag(args []string) bool {
	for _, s := range args {
		if s == "--" {
			return false
		}
		if s == "--all" || (strings.HasPrefix(s, "-") && !strings.HasPrefix(s, "--") && strings.ContainsRune(s[1:], 'a')) {
			return true
		}
	}
	return false
}

func runXLStop(c *cli.Context, x *xlRun) (err error) {
	sub := c.Command.Name
	args := c.Args().Slice()
	all := sub == "shutdown" && allFlag(args)
	i, err := stopArgs(args)
	switch {
	case all && err == nil:
		return usagef("xl shutdown: -a shuts every guest down and takes no <domain> (%s given)", args[i])
	case !all && err != nil:
		return usagef("xl %s: %v", sub, err)
	}
	ctx := c.Context
	xs, err := x.g.dial(ctx)
	if err != nil {
		return err
	}
	defer xs.Close()
	var targets []domid.ID
	octx, cancel := x.op(ctx)
	if all {
		// The guests xl -a will ask: the domains there now (xl skips dom0).
		var names map[domid.ID]string
		names, err = domainNames(octx, xs)
		for id := range names {
			if id.IsGuest() {
				targets = append(targets, id)
			}
		}
		slices.Sort(targets)
		if err != nil {
			err = failf("%v", err)
		}
	} else {
		var id domid.ID
		id, err = resolveDomain(octx, xs, args[i])
		targets = []domid.ID{id}
	}
	cancel()
	if err != nil {
		return err
	}
	if all {
		// xl shutdown -a stops at the first guest it cannot shut down (no
		// PV drivers, without -F), leaving unknown which of the others were
		// asked. One xl shutdown per guest goes on past a failure and tells
		// which domains to wait for; -w is left to mtwatch's own wait, so
		// that the guests go down together.
		one := withoutOpts(args, "aw", "--all", "--wait")
		var asked, failed []domid.ID
		for _, id := range targets {
			if err := x.run(ctx, append(append([]string{sub}, one...), id.String())...); err != nil {
				x.warnf("%v (node of domain %d kept)", err, id)
				failed = append(failed, id)
				continue
			}
			asked = append(asked, id)
		}
		targets = asked
		defer func() {
			if len(failed) > 0 && err == nil {
				err = failf("xl shutdown failed for domains %s: their nodes kept", idList(failed))
			}
		}()
		if len(asked) == 0 {
			return nil
		}
	} else if err := x.run(ctx, append([]string{sub}, args...)...); err != nil {
		return failf("%v (node of domain %d kept)", err, targets[0])
	}
	// Each domain's node goes as soon as that domain is gone: the last
	// operation of its destruction, whatever the others do.
	left := targets
	werr := x.waitFor(ctx, xs, "domains "+idList(targets)+" to go", func(ctx context.Context) (bool, error) {
		var err error
		left, err = x.reap(ctx, xs, left)
		return len(left) == 0, err
	})
	switch {
	case werr == nil:
		return nil
	case len(targets) == 1 && !all:
		return failf("domain %d: %v (node kept)", targets[0], werr)
	}
	return failf("%v (nodes of domains %s kept)", werr, idList(left))
}

// reap removes the nodes of the domains in ids that are gone and returns
// those still there.
func (x *xlRun) reap(ctx context.Context, xs *xenstore.Client, ids []domid.ID) ([]domid.ID, error) {
	var left []domid.ID
	for n, id := range ids {
		g, err := gone(ctx, xs, id)
		if err == nil && g {
			err = node.Destroy(ctx, xs, id)
		}
		if err != nil {
			return append(left, ids[n:]...), err
		}
		if !g {
			left = append(left, id)
		}
	}
	return left, nil
}

// withoutOpts returns args without the short options in letters (alone or
// clustered: "-wF" without w is "-F") and the long ones given.
func withoutOpts(args []string, letters string, long ...string) []string {
	var out []string
	for i, s := range args {
		if s == "--" {
			return append(out, args[i:]...)
		}
		if slices.Contains(long, s) {
			continue
		}
		if strings.HasPrefix(s, "-") && !strings.HasPrefix(s, "--") && len(s) > 1 {
			s = "-" + strings.Map(func(r rune) rune {
				if strings.ContainsRune(letters, r) {
					return -1
				}
				return r
			}, s[1:])
			if s == "-" {
				continue
			}
		}
		out = append(out, s)
	}
	return out
}

func idList(ids []domid.ID) string {
	s := make([]string, len(ids))
	for i, id := range ids {
		s[i] = id.String()
	}
	return strings.Join(s, " ")
}

func runXLReboot(c *cli.Context, x *xlRun) error {
	args := c.Args().Slice()
	if allFlag(args) {
		// Every guest would come back under a new domid at its own pace;
		// matching them up is what mtwatch xl reboot <domain> does one by one.
		return usagef("xl reboot: -a is not supported: reboot the domains one at a time (mtwatch xl reboot <domain>)")
	}
	i, err := stopArgs(args)
	if err != nil {
		return usagef("xl reboot: %v", err)
	}
	ctx := c.Context
	xs, err := x.g.dial(ctx)
	if err != nil {
		return err
	}
	defer xs.Close()
	octx, cancel := x.op(ctx)
	id, err := resolveDomain(octx, xs, args[i])
	if err != nil {
		cancel()
		return err
	}
	old, err := identity(octx, xs, id)
	cancel()
	if err != nil {
		return failf("domain %d: %v", id, err)
	}
	if err := x.run(ctx, append([]string{"reboot"}, args...)...); err != nil {
		return failf("%v (node of domain %d kept)", err, id)
	}
	// xl's monitor destroys the domain and builds it again under a new
	// domid with the same name and uuid. A domain of that name with
	// another VM uuid is not it.
	var newID domid.ID
	err = x.waitFor(ctx, xs, fmt.Sprintf("domain %d (%s) to come back", id, old.name), func(ctx context.Context) (bool, error) {
		names, err := domainNames(ctx, xs)
		if err != nil {
			return false, err
		}
		for d, n := range names {
			if d == id || !d.IsGuest() || n != old.name {
				continue
			}
			if old.vm != "" {
				if u := vmUUID(ctx, xs, d); u != "" && u != old.vm {
					continue
				}
			}
			newID = d
			return true, nil
		}
		return false, nil
	})
	if err != nil {
		// on_reboot="destroy", or a build that failed: the old domain
		// may be gone for good, and its node with it.
		octx, cancel := x.op(ctx)
		defer cancel()
		if g, gerr := gone(octx, xs, id); gerr == nil && g {
			if derr := node.Destroy(octx, xs, id); derr != nil {
				return failf("%v; domain %d is gone: %v", err, id, derr)
			}
			return failf("%v; domain %d is gone: its node removed", err, id)
		}
		return failf("%v (node of domain %d kept)", err, id)
	}
	octx, cancel = x.op(ctx)
	err = node.Create(octx, xs, newID, old.uuid)
	cancel()
	if err != nil {
		x.warnf("domain %d: %v", newID, err)
	}
	if err := x.waitFor(ctx, xs, fmt.Sprintf("domain %d to go", id), func(ctx context.Context) (bool, error) {
		return gone(ctx, xs, id)
	}); err != nil {
		return failf("domain %d: %v (node kept)", id, err)
	}
	octx, cancel = x.op(ctx)
	defer cancel()
	if derr := node.Destroy(octx, xs, id); derr != nil {
		return failf("%v", derr)
	}
	if err != nil {
		return failf("domain %d rebooted as %d without a node", id, newID)
	}
	return nil
}

// domIdentity is what a reboot carries over to the new domid.
type domIdentity struct {
	name string
	uuid string // for the new node: the old node's, else the VM's
	vm   string // the VM uuid from /local/domain/<domid>/vm, "" if unknown
}

// identity reads the name of domain id, its VM uuid and the uuid of its
// node.
func identity(ctx context.Context, xs *xenstore.Client, id domid.ID) (domIdentity, error) {
	v, err := xs.Read(ctx, id.Home()+"/name")
	if err != nil {
		return domIdentity{}, fmt.Errorf("read name: %w", err)
	}
	d := domIdentity{name: string(v), vm: vmUUID(ctx, xs, id)}
	d.uuid = d.vm
	if v, err := xs.Read(ctx, node.Path(id)); err == nil {
		if u, err := node.CanonicalUUID(string(v)); err == nil {
			d.uuid = u
		}
	}
	return d, nil
}

// vmUUID is the VM uuid libxl writes at /local/domain/<domid>/vm
// ("/vm/<uuid>"), "" when absent, malformed or unreadable.
func vmUUID(ctx context.Context, xs *xenstore.Client, id domid.ID) string {
	u, _ := node.VMUUID(ctx, xs, id)
	return u
}
