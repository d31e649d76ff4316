package proc

import (
	"context"
	"testing"
)

// BenchmarkRun is the cost of one command's life, start to reaped, with
// the confinement runs get on this host and with a process group only.
func BenchmarkRun(b *testing.B) {
	for _, bc := range []struct {
		name     string
		noCgroup bool
	}{{"confined", false}, {"pgroup", true}} {
		b.Run(bc.name, func(b *testing.B) {
			if dir, err := Confinement(); !bc.noCgroup && dir == "" {
				b.Fatalf("no cgroup confinement here: %v", err)
			}
			for b.Loop() {
				r := Run(context.Background(), Spec{Path: "/bin/true", Args: []string{"true"}, noCgroup: bc.noCgroup})
				if !r.OK() {
					b.Fatal(r.Err)
				}
			}
		})
	}
}
