// Package domid is the domain-id type of mtwatch and the only place where
// strings become domain ids. Parsing is strict (decimal, no sign, no leading
// zeros, no overflow) because a lenient parser lets a guest-controlled
// XenStore path be routed to another domain's worker.
package domid

import (
	"errors"
	"fmt"
	"strconv"
)

// ID is a Xen domain id (domid_t).
type ID uint16

// Well-known domain ids from xen/include/public/xen.h.
const (
	Dom0 ID = 0
	// FirstReserved is DOMID_FIRST_RESERVED: ids from here on never name a
	// guest.
	FirstReserved ID = 0x7FF0
	Self          ID = 0x7FF0 // DOMID_SELF
	IO            ID = 0x7FF1 // DOMID_IO
	Xen           ID = 0x7FF2 // DOMID_XEN
	COW           ID = 0x7FF3 // DOMID_COW
	Invalid       ID = 0x7FF4 // DOMID_INVALID
	Idle          ID = 0x7FFF // DOMID_IDLE

	// MaxGuest is the largest domid a guest can have.
	MaxGuest ID = FirstReserved - 1
)

// Sentinel errors; returned errors wrap one of them together with the input.
var (
	// ErrSyntax is returned when the input is not a canonical unsigned
	// decimal number.
	ErrSyntax = errors.New("invalid domid syntax")
	// ErrRange is returned when the number does not fit in a domid at all.
	ErrRange = errors.New("domid out of range")
	// ErrReserved is returned when the number is one of Xen's reserved ids
	// (>= 32752).
	ErrReserved = errors.New("reserved domid")
	// ErrNotGuest is returned when the id is valid but names dom0, not a
	// guest.
	ErrNotGuest = errors.New("domid is not a guest")
)

// Error describes a rejected domid string.
type Error struct {
	Input string
	Err   error
}

func (e *Error) Error() string { return fmt.Sprintf("domid %q: %v", e.Input, e.Err) }
func (e *Error) Unwrap() error { return e.Err }

// maxDigits bounds the work done on hostile input: 32751 has five digits.
const maxDigits = 5

// parseDigits accepts exactly the canonical decimal form of a number that
// fits in a domid: "0", or a non-zero digit followed by digits.
func parseDigits(s string) (uint32, error) {
	if s == "" {
		return 0, ErrSyntax
	}
	if s[0] == '0' && len(s) > 1 {
		return 0, ErrSyntax
	}
	var n uint32
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < '0' || c > '9' {
			return 0, ErrSyntax
		}
		if i >= maxDigits {
			// Keep scanning so that "123456x" is a syntax error, not a
			// range error, but never accumulate past the bound.
			continue
		}
		n = n*10 + uint32(c-'0')
	}
	if len(s) > maxDigits || n > 0xFFFF {
		return 0, ErrRange
	}
	return n, nil
}

// Parse parses a domid that may name dom0 or a guest (0..32751). Reserved
// ids are rejected: they never own XenStore paths that mtwatch routes.
func Parse(s string) (ID, error) {
	n, err := parseDigits(s)
	if err != nil {
		return 0, &Error{Input: s, Err: err}
	}
	if n >= uint32(FirstReserved) {
		return 0, &Error{Input: s, Err: ErrReserved}
	}
	return ID(n), nil
}

// ParseGuest parses the domid of a guest domain (1..32751).
func ParseGuest(s string) (ID, error) {
	id, err := Parse(s)
	if err != nil {
		return 0, err
	}
	if id == Dom0 {
		return 0, &Error{Input: s, Err: ErrNotGuest}
	}
	return id, nil
}

// IsGuest reports whether id can name a guest domain.
func (id ID) IsGuest() bool { return id != Dom0 && id < FirstReserved }

// IsReserved reports whether id is one of Xen's reserved ids.
func (id ID) IsReserved() bool { return id >= FirstReserved }

// Home returns the domain's home path in XenStore, /local/domain/<id>: the
// directory relative paths of its own connections resolve against.
func (id ID) Home() string { return localDomain + id.String() }

// String formats id the way XenStore paths spell it.
func (id ID) String() string { return strconv.FormatUint(uint64(id), 10) }
