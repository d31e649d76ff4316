package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/mtwatch/mtwatch/lib/xenstore/xenstoredtest"
)

// BenchmarkHookProcess measures what a toolstack pays per domain: the
// create and the destroy of a node, each as a whole process, against the
// same xenstored as the baseline, Debian's xenstore-write and xenstore-rm
// doing the same writes. The hook is built as make build ships it: static,
// no cgo, no -race.
//
//	go test -run '^$' -bench HookProcess -benchtime 2000x ./cmd/mtwatch-hook/
func BenchmarkHookProcess(b *testing.B) {
	xs := xenstoredtest.Start(b)
	bin := filepath.Join(b.TempDir(), "mtwatch-hook")
	build := exec.Command("go", "build", "-trimpath", "-o", bin, ".")
	build.Env = append(os.Environ(), "CGO_ENABLED=0") // as make build does
	if out, err := build.CombinedOutput(); err != nil {
		b.Fatalf("go build: %v\n%s", err, out)
	}
	env := append(os.Environ(), xs.Env()...)
	run := func(b *testing.B, name string, args ...string) {
		cmd := exec.Command(name, args...)
		cmd.Env = env
		if out, err := cmd.CombinedOutput(); err != nil {
			b.Fatalf("%s %v: %v\n%s", name, args, err, out)
		}
	}
	// The directory exists on a host that runs mtwatch: both sides start
	// from there.
	run(b, "xenstore-write", "/local/domain/0/mtwatch/1", "")
	b.Run("tool=mtwatch-hook", func(b *testing.B) {
		for i := 0; i < b.N; i++ {
			run(b, bin, "create", "--uuid", vmUUID, "5")
			run(b, bin, "destroy", "5")
		}
	})
	b.Run("tool=xenstore-write+rm", func(b *testing.B) {
		for i := 0; i < b.N; i++ {
			run(b, "xenstore-write", "/local/domain/0/mtwatch/5", vmUUID)
			run(b, "xenstore-rm", "/local/domain/0/mtwatch/5")
		}
	})
}
