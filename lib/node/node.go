// Package node creates, removes and reads the mtwatch node of a domain,
// /local/domain/0/mtwatch/<domid>, whose existence tells mtwatchd to run a
// domain worker for it. The toolstack hooks use it today, and the agent and
// the CLI are to use it too, so the node has one set of semantics: private
// to dom0 (perms n0), valued with the domain's VM uuid, and idempotent.
//
// # Trust
//
// A node counts only if it is owned by dom0 with no access for anyone else
// (perms exactly n0): Get fails with ErrUntrusted otherwise, and List and
// Scan leave such a node out. A guest can create nodes only under a directory
// whose perms were loosened; Repair, which Create runs whenever it finds the
// directory not n0 and the agent runs at start-up, puts the directory back to
// n0 and then, for every entry:
//
//   - the node of a canonical guest domid with perms n0 stays; anything below
//     it (mtwatch/7/child) is removed;
//   - one with other perms stays too, with perms n0, if its domain exists
//     (/local/domain/<domid>): it is the node a hook makes for that domain,
//     perhaps written by a Create under the loosened directory a moment
//     ago, and removing it would race with that Create. Its value stays.
//     Without the domain it is a forgery and is removed;
//   - every other entry (junk names, "007", "0", reserved domids) is
//     removed with everything below it.
//
// # Concurrency
//
// Nothing here takes a transaction on the directory: every node is a child
// of it, so sibling transactions conflict, and a burst of hooks (hundreds of
// domains started at boot) would exhaust their retries. Create writes its
// node, which inherits the directory's perms in xenstored, and then checks
// and repairs what it wrote. It also keeps an index of the nodes by VM uuid (indexDir),
// so that DestroyByUUID need not read every node.
package node

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"strings"
	"syscall"
	"time"

	"github.com/mtwatch/mtwatch/internal/fanout"
	"github.com/mtwatch/mtwatch/lib/domid"
	"github.com/mtwatch/mtwatch/lib/xenstore"
)

// dom0Only is the permission of the directory and every node: owned by dom0,
// no access for anyone else. A guest able to create or delete a node could
// spawn or kill workers at will.
var dom0Only = xenstore.Perms{{Domid: domid.Dom0, Access: xenstore.AccessNone}}

func trusted(p xenstore.Perms) bool { return len(p) == 1 && p[0] == dom0Only[0] }

var (
	// ErrBadUUID is returned when a VM uuid is malformed.
	ErrBadUUID = errors.New("malformed vm uuid")
	// ErrUntrusted is returned when a node's perms are not exactly n0: a
	// guest may have made or changed it.
	ErrUntrusted = errors.New("mtwatch node not private to dom0")
)

// Node is one domain's node.
type Node struct {
	Domid domid.ID
	UUID  string
}

// Create makes sure the node of guest id exists with perms n0. Its value is
// uuid if given, else the uuid the toolstack wrote at /local/domain/<id>/vm,
// else the value the node already has (empty for a new node). Creating an
// existing node succeeds; a different known uuid (a previous domain with the
// same domid) replaces the recorded one.
func Create(ctx context.Context, c *xenstore.Client, id domid.ID, uuid string) error {
	if !id.IsGuest() {
		return fmt.Errorf("create mtwatch node for domain %d: %w", id, domid.ErrNotGuest)
	}
	var err error
	if uuid != "" {
		uuid, err = CanonicalUUID(uuid)
	} else {
		uuid, err = VMUUID(ctx, c, id)
	}
	if err != nil {
		return fmt.Errorf("create mtwatch node for domain %d: %w", id, err)
	}
	err = retry(ctx, func() error { return create(ctx, c, id, uuid) })
	if err != nil {
		return fmt.Errorf("create mtwatch node for domain %d: %w", id, err)
	}
	return nil
}

// create is one attempt: write, then check the directory and the node in
// one round trip and repair what is not as it should be.
func create(ctx context.Context, c *xenstore.Client, id domid.ID, uuid string) error {
	path := Path(id)
	var err error
	if uuid != "" {
		err = parallel(
			func() error { return c.Write(ctx, path, []byte(uuid)) },
			func() error { return c.Write(ctx, indexPath(uuid, id), nil) },
		)
	} else {
		err = c.Mkdir(ctx, path) // keeps a recorded value
	}
	if err != nil {
		return err
	}
	var (
		dirPerms, perms xenstore.Perms
		children        []string
	)
	err = parallel(
		func() (err error) { dirPerms, err = c.GetPerms(ctx, Dir); return err },
		func() (err error) { perms, err = c.GetPerms(ctx, path); return err },
		func() (err error) { children, err = c.Directory(ctx, path); return err },
	)
	switch {
	case err != nil:
		return err
	case !trusted(dirPerms):
		// Guests may have written here: the whole directory needs repair,
		// this node included. Repair removes a loosened node of a domain
		// that does not exist, ours too: then it is written again (retry
		// on ENOENT), under the directory now private.
		if _, err := Repair(ctx, c); err != nil {
			return err
		}
		_, err := c.GetPerms(ctx, path)
		return err
	case !trusted(perms) || len(children) > 0:
		return repairNode(ctx, c, path, perms, children, nil)
	}
	return nil
}

// retry runs fn until it succeeds, fails for good, or ctx ends. Without a
// transaction the failures worth another try are few: EAGAIN (xenstored
// busy) and ENOENT (the node went away between the write and the check,
// removed by a racing destroy or repair).
func retry(ctx context.Context, fn func() error) error {
	delay := time.Millisecond
	for attempt := 1; ; attempt++ {
		err := fn()
		if err == nil || attempt == 8 || !(errors.Is(err, syscall.EAGAIN) || errors.Is(err, fs.ErrNotExist)) {
			return err
		}
		// Jittered, so that a burst of hooks that collided spreads out.
		t := time.NewTimer(delay/2 + rand.N(delay))
		select {
		case <-ctx.Done():
			t.Stop()
			return errors.Join(err, ctx.Err())
		case <-t.C:
		}
		delay = min(2*delay, 50*time.Millisecond)
	}
}

// VMUUID reads the uuid of guest id from /local/domain/<id>/vm, which
// toolstacks set to /vm/<uuid>, in its canonical form. A missing or odd
// value yields "" and no error: the node is then made without a uuid.
func VMUUID(ctx context.Context, c *xenstore.Client, id domid.ID) (string, error) {
	v, err := c.Read(ctx, id.Home()+"/vm")
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
	if u, err := CanonicalUUID(uuid); err == nil {
		return u, nil
	}
	return "", nil
}

// Destroy removes the node of guest id; a missing node is success.
func Destroy(ctx context.Context, c *xenstore.Client, id domid.ID) error {
	if !id.IsGuest() {
		return fmt.Errorf("destroy mtwatch node for domain %d: %w", id, domid.ErrNotGuest)
	}
	// The value names the index entry to remove with the node.
	v, err := c.Read(ctx, Path(id))
	if err == nil {
		err = remove(ctx, c, id, string(v))
	}
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("destroy mtwatch node for domain %d: %w", id, err)
	}
	return nil
}

// remove removes the node of id and its index entry under uuid, if uuid is
// one.
func remove(ctx context.Context, c *xenstore.Client, id domid.ID, uuid string) error {
	if !ValidUUID(uuid) {
		return ignoreNotExist(c.Rm(ctx, Path(id)))
	}
	return parallel(
		func() error { return ignoreNotExist(c.Rm(ctx, Path(id))) },
		func() error { return ignoreNotExist(c.Rm(ctx, indexPath(uuid, id))) },
	)
}

// DestroyIf removes the node of guest id if it belongs to VM uuid: its
// value is uuid, or empty (a node created when the uuid was unknown). A node
// of another VM, the domid's next domain, is left alone and removed reports
// false, as does a missing node.
func DestroyIf(ctx context.Context, c *xenstore.Client, id domid.ID, uuid string) (removed bool, err error) {
	if !id.IsGuest() {
		return false, fmt.Errorf("destroy mtwatch node for domain %d: %w", id, domid.ErrNotGuest)
	}
	uuid, err = CanonicalUUID(uuid)
	if err != nil {
		return false, fmt.Errorf("destroy mtwatch node for domain %d: %w", id, err)
	}
	v, err := c.Read(ctx, Path(id))
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return false, nil
	case err != nil:
		return false, fmt.Errorf("destroy mtwatch node for domain %d of vm %s: %w", id, uuid, err)
	case len(v) != 0 && !strings.EqualFold(string(v), uuid):
		return false, nil
	}
	if err := remove(ctx, c, id, uuid); err != nil {
		return false, fmt.Errorf("destroy mtwatch node for domain %d of vm %s: %w", id, uuid, err)
	}
	return true, nil
}

// DestroyByUUID removes every node whose value is uuid, for hooks that know
// only the VM (XAPI's vm-post-destroy), and returns the domids removed. It
// looks the domids up in the index that Create keeps (see indexDir), and
// reads every node only when the index names none of the VM's nodes (a node
// written before the index existed, by hand, or an index entry a guest
// removed). Values are read outside any transaction (see the package doc):
// a node that a new domain reusing the domid rewrites between the read and
// the removal would be removed with the old one, but Xen hands out domids in
// turn, so a domid comes back only after thousands of others.
func DestroyByUUID(ctx context.Context, c *xenstore.Client, uuid string) ([]domid.ID, error) {
	uuid, err := CanonicalUUID(uuid)
	if err != nil {
		return nil, fmt.Errorf("destroy mtwatch node of vm: %w", err)
	}
	removed, err := destroyListed(ctx, c, indexDir+"/"+uuid, uuid)
	if err == nil && len(removed) == 0 {
		removed, err = destroyListed(ctx, c, Dir, uuid)
	}
	if err == nil {
		err = ignoreNotExist(c.Rm(ctx, indexDir+"/"+uuid))
	}
	if err != nil {
		return nil, fmt.Errorf("destroy mtwatch node of vm %s: %w", uuid, err)
	}
	return removed, nil
}

// destroyListed removes the nodes whose value is uuid among those of the
// domids that dir lists, reading them concurrently.
func destroyListed(ctx context.Context, c *xenstore.Client, dir, uuid string) ([]domid.ID, error) {
	names, err := c.Directory(ctx, dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	ids := guestIDs(names)
	match := make([]bool, len(ids))
	err = fanout.Each(ctx, len(ids), scanWorkers, func(i int) error {
		v, err := c.Read(ctx, Path(ids[i]))
		if err != nil {
			return ignoreNotExist(err)
		}
		if match[i] = strings.EqualFold(string(v), uuid); match[i] {
			return remove(ctx, c, ids[i], uuid)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	var removed []domid.ID
	for i, id := range ids {
		if match[i] {
			removed = append(removed, id)
		}
	}
	return removed, nil
}

func ignoreNotExist(err error) error {
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	return err
}

// CanonicalUUID returns the VM uuid s in the one form mtwatch stores and
// compares, lower case; toolstacks write either case. The error, when s is
// not a uuid in its 8-4-4-4-12 hex form, wraps ErrBadUUID and quotes s.
func CanonicalUUID(s string) (string, error) {
	if !ValidUUID(s) {
		return "", fmt.Errorf("%w: %q", ErrBadUUID, s)
	}
	return strings.ToLower(s), nil
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
