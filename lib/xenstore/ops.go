package xenstore

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"syscall"
	"unsafe"

	"github.com/mtwatch/mtwatch/lib/domid"
)

// Node operations shared by Client (outside any transaction) and Tx.

func (c *Client) read(ctx context.Context, tx uint32, path string) ([]byte, error) {
	if err := ValidatePath(path); err != nil {
		return nil, opErr("read", path, err)
	}
	r := req{typ: typeRead, tx: tx, nargs: 1}
	r.args[0] = path
	v, err := c.do(ctx, &r)
	return v, opErr("read", path, err)
}

func (c *Client) write(ctx context.Context, tx uint32, path string, value []byte) error {
	if err := ValidatePath(path); err != nil {
		return opErr("write", path, err)
	}
	r := req{typ: typeWrite, tx: tx, nargs: 1, raw: value}
	r.args[0] = path
	_, err := c.do(ctx, &r)
	return opErr("write", path, err)
}

func (c *Client) pathOp(ctx context.Context, typ msgType, tx uint32, path string) error {
	if err := ValidatePath(path); err != nil {
		return opErr(typ.String(), path, err)
	}
	r := req{typ: typ, tx: tx, nargs: 1}
	r.args[0] = path
	_, err := c.do(ctx, &r)
	return opErr(typ.String(), path, err)
}

// maxDirectoryMemory bounds the memory a DIRECTORY_PART listing may take
// in the client, against a hostile server. Each name costs its bytes and
// its NUL (kept in the part it came in) plus a string header in the result:
// counting bytes alone, a listing of one-byte names would take eight times
// the bound.
const maxDirectoryMemory = 64 << 20

const nameOverhead = 1 + int(unsafe.Sizeof(""))

func (c *Client) directory(ctx context.Context, tx uint32, path string) ([]string, error) {
	if err := ValidatePath(path); err != nil {
		return nil, opErr("directory", path, err)
	}
	r := req{typ: typeDirectory, tx: tx, nargs: 1}
	r.args[0] = path
	reply, err := c.do(ctx, &r)
	if err == nil {
		return splitStrings(reply), nil
	}
	if !errors.Is(err, syscall.E2BIG) {
		return nil, opErr("directory", path, err)
	}
	names, perr := c.directoryPart(ctx, tx, path)
	if errors.Is(perr, ErrNotSupported) {
		return nil, opErr("directory", path, err)
	}
	return names, opErr("directory", path, perr)
}

// directoryPart lists a directory too big for one reply. Each part is
// "<generation>\0<name>\0...": an empty name ends the listing; the offset
// of the next part is the byte count of the names received. A generation
// change means the directory changed under us: start again.
func (c *Client) directoryPart(ctx context.Context, tx uint32, path string) ([]string, error) {
	const maxRestarts = 16
	for restart := 0; restart < maxRestarts; restart++ {
		var l listing
		var gen string
		for {
			r := req{typ: typeDirectoryPart, tx: tx, nargs: 2}
			r.args[0], r.args[1] = path, strconv.Itoa(l.off)
			reply, err := c.do(ctx, &r)
			if err != nil {
				return nil, err
			}
			i := indexNUL(reply)
			if i < 0 {
				return nil, fmt.Errorf("%w: directory-part reply without generation", errProtocol)
			}
			if g := string(reply[:i]); gen == "" {
				gen = g
			} else if g != gen {
				break
			}
			end, err := l.add(reply[i+1:])
			if err != nil {
				return nil, err
			}
			if end {
				return l.names(), nil
			}
		}
	}
	return nil, fmt.Errorf("directory kept changing while being listed: %w", syscall.EAGAIN)
}

// listing accumulates a DIRECTORY_PART listing. Names stay in the parts
// they came in until the end, when their number is known: the result is
// allocated once, at its size, instead of growing by copies.
type listing struct {
	parts []string // each part's names, NUL-terminated
	n     int      // names so far
	off   int      // name bytes so far, NULs included
	cost  int      // memory the names will take (see maxDirectoryMemory)
}

// add takes the names of one part (after its generation); end reports the
// end of the listing.
func (l *listing) add(names []byte) (end bool, err error) {
	i := 0
	for i < len(names) {
		j := indexNUL(names[i:])
		if j < 0 {
			return false, fmt.Errorf("%w: unterminated name in directory-part reply", errProtocol)
		}
		if j == 0 {
			end = true
			break
		}
		l.n++
		l.cost += j + nameOverhead
		i += j + 1
	}
	if i == 0 && !end {
		// xenstored ends a listing with an empty name; a part with
		// neither names nor the end would loop forever.
		if len(names) == 0 && l.off > 0 {
			return true, nil
		}
		return false, fmt.Errorf("%w: empty directory-part reply at offset %d", errProtocol, l.off)
	}
	if i > 0 {
		l.parts = append(l.parts, string(names[:i]))
		l.off += i
	}
	if l.cost > maxDirectoryMemory {
		return false, fmt.Errorf("%w: directory listing over %d bytes of memory", errProtocol, maxDirectoryMemory)
	}
	return end, nil
}

func (l *listing) names() []string {
	if l.n == 0 {
		return nil
	}
	names := make([]string, 0, l.n)
	for _, p := range l.parts {
		for len(p) > 0 {
			j := strings.IndexByte(p, 0)
			names = append(names, p[:j])
			p = p[j+1:]
		}
	}
	return names
}

func (c *Client) getPerms(ctx context.Context, tx uint32, path string) (Perms, error) {
	if err := ValidatePath(path); err != nil {
		return nil, opErr("get-perms", path, err)
	}
	r := req{typ: typeGetPerms, tx: tx, nargs: 1}
	r.args[0] = path
	reply, err := c.do(ctx, &r)
	if err != nil {
		return nil, opErr("get-perms", path, err)
	}
	ps, err := decodePerms(reply)
	return ps, opErr("get-perms", path, err)
}

func (c *Client) setPerms(ctx context.Context, tx uint32, path string, perms Perms) error {
	if err := ValidatePath(path); err != nil {
		return opErr("set-perms", path, err)
	}
	if err := perms.validate(); err != nil {
		return opErr("set-perms", path, err)
	}
	r := req{typ: typeSetPerms, tx: tx, nargs: 1, raw: appendPerms(nil, perms)}
	r.args[0] = path
	_, err := c.do(ctx, &r)
	return opErr("set-perms", path, err)
}

// Read returns the value of the node at path (relative paths are relative
// to the connection's home, /local/domain/0 for dom0).
func (c *Client) Read(ctx context.Context, path string) ([]byte, error) {
	return c.read(ctx, 0, path)
}

// Write sets the value of the node at path, creating it and any missing
// ancestors.
func (c *Client) Write(ctx context.Context, path string, value []byte) error {
	return c.write(ctx, 0, path, value)
}

// Mkdir creates the node at path (and missing ancestors) with an empty
// value; an existing node is left alone.
func (c *Client) Mkdir(ctx context.Context, path string) error {
	return c.pathOp(ctx, typeMkdir, 0, path)
}

// Rm removes the node at path and all its descendants.
func (c *Client) Rm(ctx context.Context, path string) error {
	return c.pathOp(ctx, typeRm, 0, path)
}

// Directory lists the children of path. Listings too large for one reply
// (xenstored answers E2BIG) are fetched with DIRECTORY_PART.
func (c *Client) Directory(ctx context.Context, path string) ([]string, error) {
	return c.directory(ctx, 0, path)
}

// GetPerms returns the permissions of the node at path.
func (c *Client) GetPerms(ctx context.Context, path string) (Perms, error) {
	return c.getPerms(ctx, 0, path)
}

// SetPerms replaces the permissions of the node at path.
func (c *Client) SetPerms(ctx context.Context, path string, perms Perms) error {
	return c.setPerms(ctx, 0, path, perms)
}

// Domain and daemon operations (privileged: dom0 or the toolstack domain).

func (c *Client) domOp(ctx context.Context, typ msgType, args ...string) ([]byte, error) {
	r := req{typ: typ, nargs: len(args)}
	copy(r.args[:], args)
	return c.do(ctx, &r)
}

func checkDomid(id domid.ID) error {
	if id.IsReserved() {
		return invalidf("reserved domid %d", id)
	}
	return nil
}

// Introduce tells xenstored about a new domain whose store ring is at guest
// frame mfn with event channel port; it fires @introduceDomain.
func (c *Client) Introduce(ctx context.Context, id domid.ID, mfn uint64, port uint32) error {
	if err := checkDomid(id); err != nil {
		return domErr("introduce", id, err)
	}
	_, err := c.domOp(ctx, typeIntroduce, id.String(), strconv.FormatUint(mfn, 10), strconv.FormatUint(uint64(port), 10))
	return domErr("introduce", id, err)
}

// Release tells xenstored to forget a domain; it fires @releaseDomain
// (the C xenstored's do_release frees the domain's connection, which owns
// the domain since introduce_domain's talloc_steal, and destroy_domain
// fires it; oxenstored's do_release fires it).
func (c *Client) Release(ctx context.Context, id domid.ID) error {
	if err := checkDomid(id); err != nil {
		return domErr("release", id, err)
	}
	_, err := c.domOp(ctx, typeRelease, id.String())
	return domErr("release", id, err)
}

// IsDomainIntroduced reports whether xenstored knows the domain.
func (c *Client) IsDomainIntroduced(ctx context.Context, id domid.ID) (bool, error) {
	if err := checkDomid(id); err != nil {
		return false, domErr("is-domain-introduced", id, err)
	}
	reply, err := c.domOp(ctx, typeIsDomainIntroduced, id.String())
	if err != nil {
		return false, domErr("is-domain-introduced", id, err)
	}
	switch string(trimNUL(reply)) {
	case "T":
		return true, nil
	case "F":
		return false, nil
	}
	return false, domErr("is-domain-introduced", id, fmt.Errorf("%w: reply %q", errProtocol, trimNUL(reply)))
}

// GetDomainPath returns the home path of a domain (/local/domain/<id>).
func (c *Client) GetDomainPath(ctx context.Context, id domid.ID) (string, error) {
	if err := checkDomid(id); err != nil {
		return "", domErr("get-domain-path", id, err)
	}
	reply, err := c.domOp(ctx, typeGetDomainPath, id.String())
	if err != nil {
		return "", domErr("get-domain-path", id, err)
	}
	return string(trimNUL(reply)), nil
}

// Resume clears the shutdown flag of a domain that resumed after a
// suspend.
func (c *Client) Resume(ctx context.Context, id domid.ID) error {
	if err := checkDomid(id); err != nil {
		return domErr("resume", id, err)
	}
	_, err := c.domOp(ctx, typeResume, id.String())
	return domErr("resume", id, err)
}

// SetTarget gives domain id (a device model stub domain) the privileges of
// domain target over its nodes.
func (c *Client) SetTarget(ctx context.Context, id, target domid.ID) error {
	if err := checkDomid(id); err != nil {
		return domErr("set-target", id, err)
	}
	if err := checkDomid(target); err != nil {
		return domErr("set-target", id, err)
	}
	_, err := c.domOp(ctx, typeSetTarget, id.String(), target.String())
	return domErr("set-target", id, err)
}

// ResetWatches removes all watches (and transactions) of this connection
// on the server; the client's watches end with ErrUnwatched.
func (c *Client) ResetWatches(ctx context.Context) error {
	_, err := c.domOp(ctx, typeResetWatches, "")
	if err != nil {
		return opErr("reset-watches", "", err)
	}
	c.wmu.Lock()
	watches := c.watches
	if watches != nil {
		c.watches = make(map[string]*Watch)
		c.byPath = make(map[watchKey]*Watch)
		c.nwatch.Store(0)
	}
	c.wmu.Unlock()
	for _, w := range watches {
		w.end(fmt.Errorf("%w: watches reset", ErrUnwatched), false)
	}
	return nil
}

// Control sends an XS_CONTROL command (formerly XS_DEBUG), such as
// Control(ctx, "log", "on") or Control(ctx, "help"), and returns the reply
// without its trailing NUL.
func (c *Client) Control(ctx context.Context, args ...string) ([]byte, error) {
	if len(args) == 0 {
		return nil, opErr("control", "", invalidf("no command"))
	}
	r := req{typ: typeControl}
	var raw []byte
	for _, a := range args {
		if err := validateArg(a); err != nil {
			return nil, opErr("control", args[0], err)
		}
		raw = append(append(raw, a...), 0)
	}
	r.raw = raw
	reply, err := c.do(ctx, &r)
	if err != nil {
		return nil, opErr("control", args[0], err)
	}
	return trimNUL(reply), nil
}

// GetFeature returns the feature bits xenstored offers a domain. Servers
// without the operation (such as 4.17) fail with ErrNotSupported.
func (c *Client) GetFeature(ctx context.Context, id domid.ID) (uint32, error) {
	if err := checkDomid(id); err != nil {
		return 0, domErr("get-feature", id, err)
	}
	reply, err := c.domOp(ctx, typeGetFeature, id.String())
	if err != nil {
		return 0, domErr("get-feature", id, err)
	}
	v, err := strconv.ParseUint(string(trimNUL(reply)), 10, 32)
	if err != nil {
		return 0, domErr("get-feature", id, fmt.Errorf("%w: feature value %q", errProtocol, trimNUL(reply)))
	}
	return uint32(v), nil
}

// SetFeature sets the feature bits of a domain (ErrNotSupported on servers
// without the operation).
func (c *Client) SetFeature(ctx context.Context, id domid.ID, features uint32) error {
	if err := checkDomid(id); err != nil {
		return domErr("set-feature", id, err)
	}
	_, err := c.domOp(ctx, typeSetFeature, id.String(), strconv.FormatUint(uint64(features), 10))
	return domErr("set-feature", id, err)
}
