package node_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/mtwatch/mtwatch/lib/domid"
	"github.com/mtwatch/mtwatch/lib/node"
	"github.com/mtwatch/mtwatch/lib/xenstore"
	"github.com/mtwatch/mtwatch/lib/xenstore/xenstoredtest"
)

// BenchmarkScan lists a directory of 10,000 nodes, the agent's start-up on
// a host at its largest, with perms checked, against the baseline of the
// same reads one after the other on the same connection.
//
//	go test -run '^$' -bench Scan -benchtime 10x ./lib/node/
func BenchmarkScan(b *testing.B) {
	const n = 10000
	in := xenstoredtest.Start(b)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	c, err := xenstore.Dial(ctx, xenstore.WithPath(in.Socket()))
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	ids := make(chan domid.ID)
	var wg sync.WaitGroup
	for range 32 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for id := range ids {
				if err := node.Create(ctx, c, id, uuidOf(int(id))); err != nil {
					b.Error(err)
				}
			}
		}()
	}
	for i := 1; i <= n; i++ {
		ids <- domid.ID(i)
	}
	close(ids)
	wg.Wait()

	b.Run("how=Scan", func(b *testing.B) {
		for i := 0; i < b.N; i++ {
			l, err := node.Scan(ctx, c)
			if err != nil || len(l.Nodes) != n {
				b.Fatalf("%d nodes, %v", len(l.Nodes), err)
			}
		}
	})
	b.Run("how=sequential", func(b *testing.B) {
		for i := 0; i < b.N; i++ {
			names, err := c.Directory(ctx, node.Dir)
			if err != nil {
				b.Fatal(err)
			}
			for _, name := range names {
				if _, err := c.Read(ctx, node.Dir+"/"+name); err != nil {
					b.Fatal(err)
				}
				if _, err := c.GetPerms(ctx, node.Dir+"/"+name); err != nil {
					b.Fatal(err)
				}
			}
		}
	})
}
