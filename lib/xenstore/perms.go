package xenstore

import (
	"fmt"
	"strings"

	"github.com/mtwatch/mtwatch/lib/domid"
)

// Access is the access a permission entry grants.
type Access byte

// Access values, as spelled on the wire.
const (
	AccessNone  Access = 'n'
	AccessRead  Access = 'r'
	AccessWrite Access = 'w'
	AccessBoth  Access = 'b'
)

func (a Access) valid() bool {
	switch a {
	case AccessNone, AccessRead, AccessWrite, AccessBoth:
		return true
	}
	return false
}

func (a Access) String() string {
	if a.valid() {
		return string(rune(a))
	}
	return fmt.Sprintf("Access(%#02x)", byte(a))
}

// Perm is one permission entry: a domain and its access.
type Perm struct {
	Domid  domid.ID
	Access Access
}

// ParsePerm parses one entry such as "n0", "r5", "w5" or "b5". The domid
// must be canonical decimal and not reserved (domid.Parse).
func ParsePerm(s string) (Perm, error) {
	if len(s) < 2 {
		return Perm{}, invalidf("permission %q: too short", s)
	}
	a := Access(s[0])
	if !a.valid() {
		return Perm{}, invalidf("permission %q: access %q is not one of n, r, w, b", s, s[0])
	}
	id, err := domid.Parse(s[1:])
	if err != nil {
		return Perm{}, invalidf("permission %q: %v", s, err)
	}
	return Perm{Domid: id, Access: a}, nil
}

// String formats p the way XenStore spells it ("r5").
func (p Perm) String() string { return string(rune(p.Access)) + p.Domid.String() }

// Perms is a node's permission list. Perms[0] names the owner (who always
// has full access) and, through its Access, the access of every domain not
// listed; later entries grant specific domains access.
type Perms []Perm

// maxPerms bounds parsing of hostile lists: a 4096-byte payload holds at
// most 2048 entries.
const maxPerms = PayloadMax / 2

// ParsePerms parses a permission list given as separate entries, as
// xenstore-chmod takes them: ParsePerms("n0", "r5").
func ParsePerms(entries ...string) (Perms, error) {
	if len(entries) == 0 {
		return nil, invalidf("empty permission list")
	}
	if len(entries) > maxPerms {
		return nil, invalidf("permission list of %d entries over %d", len(entries), maxPerms)
	}
	ps := make(Perms, 0, len(entries))
	for _, e := range entries {
		p, err := ParsePerm(e)
		if err != nil {
			return nil, err
		}
		ps = append(ps, p)
	}
	return ps, nil
}

// ParsePermsString parses a list written the way Perms.String formats it:
// entries separated by commas or white space ("n0,r5" or "n0 r5").
func ParsePermsString(s string) (Perms, error) {
	return ParsePerms(strings.FieldsFunc(s, func(r rune) bool {
		return r == ',' || r == ' ' || r == '\t' || r == '\n'
	})...)
}

// String formats ps as comma-separated entries ("n0,r5").
func (ps Perms) String() string {
	var b strings.Builder
	for i, p := range ps {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(p.String())
	}
	return b.String()
}

// Owner is the domain that owns the node (the first entry).
func (ps Perms) Owner() domid.ID {
	if len(ps) == 0 {
		return domid.Dom0
	}
	return ps[0].Domid
}

func (ps Perms) validate() error {
	if len(ps) == 0 {
		return invalidf("empty permission list")
	}
	for _, p := range ps {
		if !p.Access.valid() {
			return invalidf("permission for domain %d: invalid access %v", p.Domid, p.Access)
		}
		if p.Domid.IsReserved() {
			return invalidf("permission for reserved domain %d", p.Domid)
		}
	}
	return nil
}

// decodePerms parses a GET_PERMS reply: NUL-terminated entries.
func decodePerms(p []byte) (Perms, error) {
	entries := splitStrings(p)
	if len(entries) == 0 {
		return nil, fmt.Errorf("%w: empty permission list", errProtocol)
	}
	ps, err := ParsePerms(entries...)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", errProtocol, err)
	}
	return ps, nil
}

// appendPerms appends the SET_PERMS encoding of ps (each entry
// NUL-terminated).
func appendPerms(b []byte, ps Perms) []byte {
	for _, p := range ps {
		b = append(b, byte(p.Access))
		b = append(b, p.Domid.String()...)
		b = append(b, 0)
	}
	return b
}
