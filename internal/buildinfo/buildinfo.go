// Package buildinfo is the version every mtwatch binary reports. make sets
// it from git describe with -ldflags "-X"; a binary built otherwise (go
// build, go test) reports what the Go toolchain stamped, else "dev".
package buildinfo

import (
	"runtime"
	"runtime/debug"
)

// version is set by the Makefile:
//
//	-ldflags "-X github.com/mtwatch/mtwatch/internal/buildinfo.version=$(VERSION)"
var version string

// Version is the release version, e.g. "v0.2.0-14-g3f2a1c9".
func Version() string {
	if version != "" {
		return version
	}
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
		return bi.Main.Version
	}
	return "dev"
}

// Revision is the git commit the binary was built from, when the Go
// toolchain recorded it ("" otherwise), with "-dirty" for a modified tree.
func Revision() string {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return ""
	}
	var rev string
	dirty := false
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			rev = s.Value
		case "vcs.modified":
			dirty = s.Value == "true"
		}
	}
	if rev != "" && dirty {
		rev += "-dirty"
	}
	return rev
}

// GoVersion is the Go release the binary was built with.
func GoVersion() string { return runtime.Version() }
