// Command sandbox keeps a private real xenstored running on a machine
// without Xen, for people to try mtwatch by hand (make sandbox, through
// test/sandbox.sh). It is the xenstoredtest harness outside of tests: the
// daemon is launched detached and later commands find it by its directory.
//
//	sandbox [-dir DIR] start        (re)start; prints XENSTORED_PATH,
//	                                XENSTORED_RUNDIR and XENSTORED_PID as
//	                                shell assignments
//	sandbox [-dir DIR] stop         stop it, if running
//	sandbox [-dir DIR] create DOMID a guest's home and INTRODUCE
//	sandbox [-dir DIR] kill DOMID   the guest dies: @releaseDomain
//
// Exit status: 0 success, 1 failure, 2 usage error.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/mtwatch/mtwatch/lib/domid"
	"github.com/mtwatch/mtwatch/lib/xenstore/xenstoredtest"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("sandbox", flag.ContinueOnError)
	fs.SetOutput(stderr)
	dir := fs.String("dir", "build/sandbox", "the sandbox's run directory")
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: sandbox [-dir DIR] start|stop|create DOMID|kill DOMID")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return 2
	}
	usage := func() int { fs.Usage(); return 2 }
	if fs.NArg() == 0 {
		return usage()
	}
	ctx := context.Background()
	// Absolute: the paths printed must work from any directory.
	abs, err := filepath.Abs(*dir)
	if err != nil {
		fmt.Fprintf(stderr, "sandbox: %v\n", err)
		return 1
	}
	*dir = abs
	switch cmd := fs.Arg(0); {
	case cmd == "start" && fs.NArg() == 1:
		err = start(ctx, *dir, stdout)
	case cmd == "stop" && fs.NArg() == 1:
		err = stop(ctx, *dir)
	case (cmd == "create" || cmd == "kill") && fs.NArg() == 2:
		id, perr := domid.ParseGuest(fs.Arg(1))
		if perr != nil {
			fmt.Fprintf(stderr, "sandbox: %v\n", perr)
			return 2
		}
		err = domain(ctx, *dir, cmd, id)
	default:
		return usage()
	}
	if err != nil {
		fmt.Fprintf(stderr, "sandbox: %v\n", err)
		return 1
	}
	return 0
}

func start(ctx context.Context, dir string, stdout io.Writer) error {
	if err := stop(ctx, dir); err != nil {
		return err
	}
	// A fresh dead list: domids killed in an earlier sandbox live again.
	if err := os.Remove(filepath.Join(dir, "dead")); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	s, err := xenstoredtest.Launch(ctx, xenstoredtest.Config{Dir: dir, Trace: true, Detach: true})
	if err != nil {
		return err
	}
	for _, kv := range append(s.Env(), fmt.Sprintf("XENSTORED_PID=%d", s.Pid())) {
		k, v, _ := strings.Cut(kv, "=")
		fmt.Fprintf(stdout, "%s=%s\n", k, shellQuote(v))
	}
	return nil
}

// stop stops the sandbox's xenstored; none running is not an error.
func stop(ctx context.Context, dir string) error {
	s, err := xenstoredtest.Attach(ctx, dir)
	if err != nil {
		return nil
	}
	return s.Stop()
}

func domain(ctx context.Context, dir, op string, id domid.ID) error {
	s, err := xenstoredtest.Attach(ctx, dir)
	if err != nil {
		return err
	}
	if op == "create" {
		return s.CreateDomain(id)
	}
	return s.KillDomain(id)
}

func shellQuote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}
