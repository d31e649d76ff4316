// Command genman writes mtwatch's man page, generated from its urfave/cli
// definitions, to docs/man/mtwatch.1 (make man). lib/admin's tests fail
// when the committed page differs from what this generates.
package main

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/mtwatch/mtwatch/lib/admin"
)

func main() {
	dir := "docs/man"
	if len(os.Args) > 1 {
		dir = os.Args[1]
	}
	page, err := admin.ManPage()
	if err == nil {
		err = os.MkdirAll(dir, 0o755)
	}
	if err == nil {
		err = os.WriteFile(filepath.Join(dir, "mtwatch.1"), []byte(page), 0o644)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "genman: %v\n", err)
		os.Exit(1)
	}
}
