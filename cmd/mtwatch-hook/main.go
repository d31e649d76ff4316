// Command mtwatch-hook creates and removes /local/domain/0/mtwatch/<domid>
// for toolstacks: it is what the scripts in libvirt's and XAPI's hook
// directories run, and it can be run by hand (or by scripts wrapping xl).
//
// Its arguments have fixed shapes dictated by the toolstacks, so it parses
// them with the standard flag package rather than a CLI framework: a hook is
// a process started for every domain operation, and the framework's start-up
// would cost it a tenth of its run time.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/mtwatch/mtwatch/internal/buildinfo"
	"github.com/mtwatch/mtwatch/lib/hook"
	"github.com/mtwatch/mtwatch/lib/xenstore"
)

const usage = `usage: mtwatch-hook [options] <command> [arguments]

Creates and removes /local/domain/0/mtwatch/<domid>, the node that gives a
domain its own watch worker in mtwatchd.

Commands:
  create [--uuid <uuid>] <domid>    create the node of a guest (idempotent)
  destroy [--uuid <uuid>] <domid>   remove the node of a guest (idempotent);
                                    with --uuid only if it is that VM's
  destroy --uuid <uuid>             remove the node(s) of a VM
  libvirt <name> <op> <subop> <extra>
                                    libvirt libxl hook, domain XML on stdin
  xapi <hook> -vmuuid <uuid> -reason <reason> [-vmdomid <domid>]
                                    XAPI hook (/etc/xapi.d/<hook>/)

Options:
  --timeout <duration>  give up after this long, reading libvirt's XML and
                        talking to XenStore included (default 3s)
  --strict              make a failure abort the toolstack's operation
                        (or MTWATCH_HOOK_STRICT=1)
  --xenstore <path>     XenStore socket or device (or MTWATCH_XENSTORE;
                        default: $XENSTORED_PATH, the xenstored socket,
                        /dev/xen/xenbus)
  --version             print the version and exit

Exit codes: 0 done or nothing to do, 1 XenStore failure, 2 usage or bad
input (nothing written). Under libvirt a failure exits 0 unless --strict;
under XAPI it exits 1 ("log and continue") unless --strict, which exits 2.
`

type options struct {
	timeout  time.Duration
	strict   bool
	xenstore string
}

func main() {
	os.Exit(run(os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
}

func run(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	o := options{
		timeout:  3 * time.Second,
		strict:   os.Getenv("MTWATCH_HOOK_STRICT") == "1",
		xenstore: os.Getenv("MTWATCH_XENSTORE"),
	}
	fs := flag.NewFlagSet("mtwatch-hook", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.DurationVar(&o.timeout, "timeout", o.timeout, "")
	fs.BoolVar(&o.strict, "strict", o.strict, "")
	fs.StringVar(&o.xenstore, "xenstore", o.xenstore, "")
	showVersion := fs.Bool("version", false, "")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fmt.Fprint(stdout, usage)
			return hook.ExitOK
		}
		return fail(stderr, hook.ModeDirect, o, fmt.Errorf("%w: %v", hook.ErrUsage, err))
	}
	if *showVersion {
		fmt.Fprintln(stdout, "mtwatch-hook version", buildinfo.Version())
		return hook.ExitOK
	}
	if o.timeout <= 0 {
		return fail(stderr, hook.ModeDirect, o, fmt.Errorf("%w: --timeout %v: must be positive", hook.ErrUsage, o.timeout))
	}
	// One deadline for the whole hook: reading libvirt's XML, connecting,
	// every request. A hook that hangs hangs the toolstack's operation.
	deadline := time.Now().Add(o.timeout)
	args = fs.Args()
	switch {
	case len(args) == 0:
		// Run by hand without a command: show what it does, as an error.
		fmt.Fprint(stderr, usage)
		return hook.ExitUsage
	case args[0] == "help":
		fmt.Fprint(stdout, usage)
		return hook.ExitOK
	}
	cmd, args := args[0], args[1:]
	var (
		mode = hook.ModeDirect
		a    hook.Action
		err  error
	)
	switch cmd {
	case "create":
		a, err = hook.ParseDirect(hook.KindCreate, args)
	case "destroy":
		a, err = hook.ParseDirect(hook.KindDestroy, args)
	case "libvirt":
		mode = hook.ModeLibvirt
		in, done := readableUntil(stdin, deadline, o.timeout)
		a, err = hook.ParseLibvirt(args, in)
		done()
	case "xapi":
		mode = hook.ModeXAPI
		if len(args) == 0 {
			err = fmt.Errorf("%w: xapi: hook name missing", hook.ErrUsage)
			break
		}
		a, err = hook.ParseXAPI(args[0], args[1:])
	default:
		err = fmt.Errorf("%w: unknown command %q (see mtwatch-hook --help)", hook.ErrUsage, cmd)
	}
	if err == nil {
		err = apply(o, a, deadline)
	}
	if err != nil {
		return fail(stderr, mode, o, err)
	}
	return hook.ExitOK
}

// apply connects to XenStore and runs a, all within the timeout.
func apply(o options, a hook.Action, deadline time.Time) error {
	if a.Kind == hook.KindNone {
		return nil
	}
	ctx, cancel := context.WithDeadline(context.Background(), deadline)
	defer cancel()
	var opts []xenstore.Option
	if o.xenstore != "" {
		opts = append(opts, xenstore.WithPath(o.xenstore))
	}
	xs, err := xenstore.Dial(ctx, opts...)
	if err != nil {
		return fmt.Errorf("%s: connect to xenstore: %w", a.Why, err)
	}
	defer xs.Close()
	if err := hook.Run(ctx, xs, a); err != nil {
		if errors.Is(err, context.DeadlineExceeded) {
			return fmt.Errorf("%s: xenstore did not answer within %v: %w", a.Why, o.timeout, err)
		}
		return fmt.Errorf("%s: %w", a.Why, err)
	}
	return nil
}

// fail reports err on stderr and, for toolstack invocations whose stderr
// may go nowhere (libvirt drops a successful hook's output), to syslog as
// well; it returns the exit code the mode and policy give err.
func fail(stderr io.Writer, m hook.Mode, o options, err error) int {
	code := hook.ExitCode(m, o.strict, err)
	msg := escapeControls(err.Error())
	if code == hook.ExitOK {
		msg += " (ignored: not strict)"
	}
	fmt.Fprintf(stderr, "mtwatch-hook: %s\n", msg)
	if m != hook.ModeDirect {
		syslogWarning("mtwatch-hook", msg)
	}
	return code
}

// escapeControls escapes control characters, so that nothing from argv or
// stdin that reached a message can start a line of its own in stderr or
// syslog (the hook quotes what it knows to come from there; this is the
// backstop).
func escapeControls(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < 0x20 || c == 0x7f {
			if b.Len() == 0 {
				b.WriteString(s[:i])
			}
			fmt.Fprintf(&b, "\\x%02x", c)
			continue
		}
		if b.Len() > 0 {
			b.WriteByte(c)
		}
	}
	if b.Len() == 0 {
		return s
	}
	return b.String()
}
