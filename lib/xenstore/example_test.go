package xenstore_test

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log"
	"sync"

	"github.com/mtwatch/mtwatch/lib/xenstore"
)

// A dom0 tool: read a node, update it in a transaction, and follow a watch
// until the connection ends.
func Example() {
	ctx := context.Background()
	c, err := xenstore.Dial(ctx) // $XENSTORED_PATH, the run-dir socket, or /dev/xen/xenbus
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	name, err := c.Read(ctx, "/local/domain/5/name")
	switch {
	case errors.Is(err, fs.ErrNotExist):
		fmt.Println("domain 5 has no name")
	case err != nil:
		log.Fatal(err)
	default:
		fmt.Printf("domain 5 is %s\n", name)
	}

	// Runs again on a conflict (EAGAIN), up to WithTxAttempts times.
	err = c.Transaction(ctx, func(tx *xenstore.Tx) error {
		if err := tx.Write(ctx, "mtwatch/5", nil); err != nil {
			return err
		}
		return tx.SetPerms(ctx, "mtwatch/5", xenstore.Perms{{Domid: 0, Access: xenstore.AccessNone}})
	})
	if err != nil {
		log.Fatal(err)
	}

	// A relative watch: events carry paths relative to /local/domain/0.
	w, err := c.Watch(ctx, "mtwatch", "mtwatch")
	if err != nil {
		log.Fatal(err)
	}
	for ev := range w.Events() {
		fmt.Println("changed:", ev.Path)
	}
	// ErrWatchOverflow: resynchronise and watch again; ErrConnectionLost:
	// dial again.
	log.Print(w.Err())
}

// A consumer that queues events itself without blocking (here a set of
// changed paths, as an event dispatcher keeps per-domain queues) takes them
// straight from the connection's reader.
func ExampleClient_WatchFunc() {
	ctx := context.Background()
	c, err := xenstore.Dial(ctx)
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	var mu sync.Mutex
	changed := make(map[string]bool) // bounded by the nodes watched
	w, err := c.WatchFunc(ctx, "backend", "be", func(ev xenstore.Event) {
		mu.Lock()
		changed[ev.Path] = true // must not block, nor call c
		mu.Unlock()
	})
	if err != nil {
		log.Fatal(err)
	}
	<-w.Events() // yields nothing; closed when the watch ends
	log.Print(w.Err())
}
