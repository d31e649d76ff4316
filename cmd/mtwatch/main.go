// Command mtwatch is the administration CLI of mtwatch: it shows what the
// mtwatchd agent is doing, manages the per-domain nodes and wraps xl. The
// commands live in lib/admin; see mtwatch(1).
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/mtwatch/mtwatch/lib/admin"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := admin.Run(ctx, os.Args, os.Stdin, os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}
