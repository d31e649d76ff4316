package xenstore_test

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log"

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
