// Package node creates and removes the mtwatch node of a domain,
// /local/domain/0/mtwatch/<domid>, whose existence tells mtwatchd to run a
// domain worker for it. The toolstack hooks, the mtwatch CLI and the agent
// all go through this package so the node has one set of semantics: private
// to dom0 (perms n0), valued with the domain's VM uuid, and idempotent.
package node

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"slices"
	"strings"
	"sync"

	"github.com/mtwatch/mtwatch/lib/domid"
	"github.com/mtwatch/mtwatch/lib/xenstore"
)

// Dir is the absolute path of the directory holding the nodes.
const Dir = domid.MtwatchDirAbs

// dom0Only is the permission of the directory and every node: owned by dom0,
// no access for anyone else. A guest able to create or delete a node could
// spawn or kill workers at will.
var dom0Only = xenstore.Perms{{Domid: domid.Dom0, Access: xenstore.AccessNone}}

// ErrBadUUID is returned for a malformed VM uuid.
var ErrBadUUID = errors.New("malformed vm uuid")

// Path returns the node path of domain id.
func Path(id domid.ID) string { return domid.NodePath(id) }

// Create makes sure the node of guest id exists with perms n0, in one
// transaction. Its value is uuid if given, else the uuid the toolstack wrote
// at /local/domain/<id>/vm, else empty. Creating an existing node succeeds;
// a stale value (a previous domain with the same domid) is replaced.
func Create(ctx context.Context, c *xenstore.Client, id domid.ID, uuid string) error {
	if !id.IsGuest() {
		return fmt.Errorf("create mtwatch node for domain %d: %w", id, domid.ErrNotGuest)
	}
	if uuid != "" && !ValidUUID(uuid) {
		return fmt.Errorf("create mtwatch node for domain %d: %w: %q", id, ErrBadUUID, uuid)
	}
	path := Path(id)
	err := c.Transaction(ctx, func(tx *xenstore.Tx) error {
		// Requests on one connection are pipelined: issue the independent
		// reads together, then the two independent fixes, so a create costs
		// four round trips whatever the starting state.
		var (
			value              = uuid
			dirPerms, nodePerm xenstore.Perms
			old                []byte
			dirErr, nodeErr    error
		)
		err := parallel(
			func() (err error) {
				if value == "" {
					value, err = vmUUID(ctx, tx, id)
				}
				return err
			},
			func() error { dirPerms, dirErr = tx.GetPerms(ctx, Dir); return ignoreNotExist(dirErr) },
			func() error { old, nodeErr = tx.Read(ctx, path); return ignoreNotExist(nodeErr) },
			func() error { nodePerm, _ = tx.GetPerms(ctx, path); return nil },
		)
		if err != nil {
			return err
		}
		return parallel(
			func() error {
				if dirErr == nil && dirPerms.String() == dom0Only.String() {
					return nil
				}
				if dirErr != nil {
					if err := tx.Mkdir(ctx, Dir); err != nil {
						return err
					}
				}
				return tx.SetPerms(ctx, Dir, dom0Only)
			},
			func() error {
				if nodeErr != nil || string(old) != value {
					// A stale value is an earlier domain with this domid.
					if err := tx.Write(ctx, path, []byte(value)); err != nil {
						return err
					}
				} else if nodePerm.String() == dom0Only.String() {
					return nil
				}
				return tx.SetPerms(ctx, path, dom0Only)
			},
		)
	})
	if err != nil {
		return fmt.Errorf("create mtwatch node for domain %d: %w", id, err)
	}
	return nil
}

// parallel runs fns concurrently and returns their errors, joined.
func parallel(fns ...func() error) error {
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

func ignoreNotExist(err error) error {
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	return err
}

// vmUUID reads the uuid of guest id from /local/domain/<id>/vm, which
// toolstacks set to /vm/<uuid>. A missing or odd value yields "".
func vmUUID(ctx context.Context, tx *xenstore.Tx, id domid.ID) (string, error) {
	v, err := tx.Read(ctx, "/local/domain/"+id.String()+"/vm")
	if errors.Is(err, fs.ErrNotExist) {
		return "", nil
	}
	if err != nil {
		return "", err
	}
	uuid := string(v)
	if i := strings.LastIndexByte(uuid, '/'); i >= 0 {
		uuid = uuid[i+1:]
	}
	if !ValidUUID(uuid) {
		return "", nil
	}
	return uuid, nil
}

// Destroy removes the node of guest id; a missing node is success.
func Destroy(ctx context.Context, c *xenstore.Client, id domid.ID) error {
	if !id.IsGuest() {
		return fmt.Errorf("destroy mtwatch node for domain %d: %w", id, domid.ErrNotGuest)
	}
	if err := c.Rm(ctx, Path(id)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("destroy mtwatch node for domain %d: %w", id, err)
	}
	return nil
}

// DestroyByUUID removes every node whose value is uuid, for hooks that know
// only the VM (XAPI's vm-post-destroy), and returns the domids removed.
func DestroyByUUID(ctx context.Context, c *xenstore.Client, uuid string) ([]domid.ID, error) {
	if !ValidUUID(uuid) {
		return nil, fmt.Errorf("destroy mtwatch node of vm %q: %w", uuid, ErrBadUUID)
	}
	uuid = strings.ToLower(uuid)
	var removed []domid.ID
	err := c.Transaction(ctx, func(tx *xenstore.Tx) error {
		removed = removed[:0]
		nodes, err := list(ctx, tx.Directory, tx.Read)
		if err != nil {
			return err
		}
		for _, n := range nodes {
			if strings.ToLower(n.UUID) != uuid {
				continue
			}
			if err := tx.Rm(ctx, Path(n.Domid)); err != nil && !errors.Is(err, fs.ErrNotExist) {
				return err
			}
			removed = append(removed, n.Domid)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("destroy mtwatch node of vm %s: %w", uuid, err)
	}
	return removed, nil
}

// Node is one entry of the mtwatch directory.
type Node struct {
	Domid domid.ID
	UUID  string
}

// List returns the nodes in domid order. Entries that are not a guest domid
// are skipped: nothing but this package should write there.
func List(ctx context.Context, c *xenstore.Client) ([]Node, error) {
	nodes, err := list(ctx, c.Directory, c.Read)
	if err != nil {
		return nil, fmt.Errorf("list %s: %w", Dir, err)
	}
	return nodes, nil
}

func list(ctx context.Context,
	dir func(context.Context, string) ([]string, error),
	read func(context.Context, string) ([]byte, error)) ([]Node, error) {
	names, err := dir(ctx, Dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var nodes []Node
	for _, name := range names {
		id, err := domid.ParseGuest(name)
		if err != nil {
			continue
		}
		v, err := read(ctx, Path(id))
		if errors.Is(err, fs.ErrNotExist) {
			continue // removed meanwhile
		}
		if err != nil {
			return nil, err
		}
		nodes = append(nodes, Node{Domid: id, UUID: string(v)})
	}
	slices.SortFunc(nodes, func(a, b Node) int { return cmp.Compare(a.Domid, b.Domid) })
	return nodes, nil
}

// ValidUUID reports whether s is a VM uuid in its canonical 8-4-4-4-12 hex
// form, as toolstacks write it.
func ValidUUID(s string) bool {
	if len(s) != 36 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch i {
		case 8, 13, 18, 23:
			if c != '-' {
				return false
			}
		default:
			if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F') {
				return false
			}
		}
	}
	return true
}
