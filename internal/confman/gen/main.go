// Command gen writes mtwatchd.toml(5) from the reference configuration
// (make man): gen docs/mtwatchd.toml docs/man/mtwatchd.toml.5.
package main

import (
	"fmt"
	"os"

	"github.com/mtwatch/mtwatch/internal/confman"
)

func main() {
	if len(os.Args) != 3 {
		fmt.Fprintln(os.Stderr, "usage: gen <mtwatchd.toml> <mtwatchd.toml.5>")
		os.Exit(2)
	}
	src, err := os.ReadFile(os.Args[1])
	if err == nil {
		var page string
		page, err = confman.Page(src)
		if err == nil {
			err = os.WriteFile(os.Args[2], []byte(page), 0o644)
		}
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "gen: %v\n", err)
		os.Exit(1)
	}
}
