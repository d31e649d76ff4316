package node

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"slices"
	"sync"

	"github.com/mtwatch/mtwatch/internal/fanout"
	"github.com/mtwatch/mtwatch/lib/domid"
	"github.com/mtwatch/mtwatch/lib/xenstore"
)

// Get reads the node of guest id. It fails with an error wrapping
// fs.ErrNotExist if there is none, and ErrUntrusted if its perms are not n0.
func Get(ctx context.Context, c *xenstore.Client, id domid.ID) (Node, error) {
	if !id.IsGuest() {
		return Node{}, fmt.Errorf("read mtwatch node for domain %d: %w", id, domid.ErrNotGuest)
	}
	n, err := get(ctx, c, id)
	if err != nil {
		return Node{}, fmt.Errorf("read mtwatch node for domain %d: %w", id, err)
	}
	return n, nil
}

// get reads the node of id, its perms first: a node that changes hands
// between the two reads is refused or read after its perms were fixed.
func get(ctx context.Context, c *xenstore.Client, id domid.ID) (Node, error) {
	perms, err := c.GetPerms(ctx, Path(id))
	if err != nil {
		return Node{}, err
	}
	value, err := c.Read(ctx, Path(id))
	if err != nil {
		return Node{}, err
	}
	if !trusted(perms) {
		return Node{}, fmt.Errorf("%s has perms %s, want n0: %w", Path(id), perms, ErrUntrusted)
	}
	return Node{Domid: id, UUID: string(value)}, nil
}

// Listing is the content of the directory as Scan found it.
type Listing struct {
	Nodes   []Node    // trusted nodes of guest domids, in domid order
	Ignored []Ignored // every other entry, in name order
}

// Ignored is a directory entry that is not a trusted node, and why.
type Ignored struct {
	Name   string // the entry's name in the directory
	Reason string
}

// scanWorkers bounds the reads in flight: enough to pipeline a directory of
// 10,000 nodes, well below the client's in-flight bound.
const scanWorkers = 64

// Scan reads every entry of the directory, the values and perms of many
// nodes at once. A missing directory is an empty listing.
func Scan(ctx context.Context, c *xenstore.Client) (Listing, error) {
	names, err := c.Directory(ctx, Dir)
	if errors.Is(err, fs.ErrNotExist) {
		return Listing{}, nil
	}
	if err != nil {
		return Listing{}, fmt.Errorf("list %s: %w", Dir, err)
	}
	slices.Sort(names)
	nodes := make([]Node, len(names))
	reasons := make([]string, len(names))
	gone := make([]bool, len(names))
	err = fanout.Each(ctx, len(names), scanWorkers, func(i int) error {
		id, err := domid.ParseGuest(names[i])
		if err != nil {
			reasons[i] = "not a guest domid: " + err.Error()
			return nil
		}
		nodes[i], err = get(ctx, c, id)
		switch {
		case errors.Is(err, fs.ErrNotExist):
			gone[i] = true // removed meanwhile
		case errors.Is(err, ErrUntrusted):
			reasons[i] = err.Error()
		default:
			return err
		}
		return nil
	})
	if err != nil {
		return Listing{}, fmt.Errorf("list %s: %w", Dir, err)
	}
	var l Listing
	for i, name := range names {
		switch {
		case gone[i]:
		case reasons[i] != "":
			l.Ignored = append(l.Ignored, Ignored{Name: name, Reason: reasons[i]})
		default:
			l.Nodes = append(l.Nodes, nodes[i])
		}
	}
	slices.SortFunc(l.Nodes, func(a, b Node) int { return cmp.Compare(a.Domid, b.Domid) })
	return l, nil
}

// List returns the trusted nodes of guest domids in domid order (Scan
// without the ignored entries).
func List(ctx context.Context, c *xenstore.Client) ([]Node, error) {
	l, err := Scan(ctx, c)
	return l.Nodes, err
}

// Repair leaves the directory private to dom0 holding only trusted nodes of
// guest domids, as the package doc describes, and returns the paths it
// removed. It creates the directory if it is missing.
func Repair(ctx context.Context, c *xenstore.Client) (removed []string, err error) {
	removed, err = repair(ctx, c)
	if err != nil {
		return removed, fmt.Errorf("repair %s: %w", Dir, err)
	}
	return removed, nil
}

func repair(ctx context.Context, c *xenstore.Client) ([]string, error) {
	// The directory first: once it is n0, no guest adds an entry while the
	// entries are checked.
	perms, err := c.GetPerms(ctx, Dir)
	if errors.Is(err, fs.ErrNotExist) {
		if err := c.Mkdir(ctx, Dir); err != nil {
			return nil, err
		}
	} else if err != nil {
		return nil, err
	}
	if !trusted(perms) {
		if err := c.SetPerms(ctx, Dir, dom0Only); err != nil {
			return nil, err
		}
	}
	names, err := c.Directory(ctx, Dir)
	if err != nil {
		return nil, err
	}
	var (
		mu      sync.Mutex
		removed []string
	)
	note := func(p string) {
		mu.Lock()
		removed = append(removed, p)
		mu.Unlock()
	}
	err = fanout.Each(ctx, len(names), scanWorkers, func(i int) error {
		path := Dir + "/" + names[i]
		if _, err := domid.ParseGuest(names[i]); err != nil {
			if err := ignoreNotExist(c.Rm(ctx, path)); err != nil {
				return err
			}
			note(path)
			return nil
		}
		var (
			perms    xenstore.Perms
			children []string
		)
		err := parallel(
			func() (err error) { perms, err = c.GetPerms(ctx, path); return err },
			func() (err error) { children, err = c.Directory(ctx, path); return err },
		)
		if err != nil {
			return ignoreNotExist(err)
		}
		if !trusted(perms) {
			// Kept only if its domain exists: then it is the node a
			// hook makes anyway (perhaps one that a create has just
			// written under the loosened directory), else a forgery.
			_, err := c.GetPerms(ctx, "/local/domain/"+names[i])
			if errors.Is(err, fs.ErrNotExist) {
				if err := ignoreNotExist(c.Rm(ctx, path)); err != nil {
					return err
				}
				note(path)
				return nil
			}
			if err != nil {
				return err
			}
		}
		return repairNode(ctx, c, path, perms, children, note)
	})
	slices.Sort(removed)
	return removed, err
}

// repairNode sets the perms of the node at path to n0 and removes its
// children, reporting each removed path to note (if not nil).
func repairNode(ctx context.Context, c *xenstore.Client, path string, perms xenstore.Perms,
	children []string, note func(string)) error {
	// Children first: while the node is not n0 a guest could add more, but
	// not once the perms are fixed, so fixing them first leaves none behind.
	if !trusted(perms) {
		if err := c.SetPerms(ctx, path, dom0Only); err != nil {
			return err
		}
	}
	fns := make([]func() error, len(children))
	for i, child := range children {
		fns[i] = func() error {
			if err := ignoreNotExist(c.Rm(ctx, path+"/"+child)); err != nil {
				return err
			}
			if note != nil {
				note(path + "/" + child)
			}
			return nil
		}
	}
	return parallel(fns...)
}

// guestIDs returns the canonical guest domids among names.
func guestIDs(names []string) []domid.ID {
	var ids []domid.ID
	for _, name := range names {
		if id, err := domid.ParseGuest(name); err == nil {
			ids = append(ids, id)
		}
	}
	return ids
}

// parallel runs fns concurrently, so that their requests are pipelined, and
// returns their errors joined.
func parallel(fns ...func() error) error {
	if len(fns) == 1 {
		return fns[0]()
	}
	errs := make([]error, len(fns))
	var wg sync.WaitGroup
	for i, fn := range fns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = fn()
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}
