package xenstore

import (
	"context"
	"errors"
	"strings"
	"syscall"
	"testing"

	"github.com/mtwatch/mtwatch/lib/domid"
)

func TestParsePerm(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want Perm
		ok   bool
	}{
		{"n0", Perm{0, AccessNone}, true},
		{"r5", Perm{5, AccessRead}, true},
		{"w5", Perm{5, AccessWrite}, true},
		{"b32751", Perm{32751, AccessBoth}, true},
		{"r32752", Perm{}, false}, // reserved (DOMID_SELF)
		{"x5", Perm{}, false},
		{"R5", Perm{}, false},
		{"r", Perm{}, false},
		{"", Perm{}, false},
		{"r05", Perm{}, false},
		{"r-5", Perm{}, false},
		{"r5 ", Perm{}, false},
		{"r99999999999999", Perm{}, false},
	} {
		got, err := ParsePerm(tc.in)
		if tc.ok != (err == nil) || got != tc.want {
			t.Errorf("ParsePerm(%q) = %v, %v", tc.in, got, err)
		}
		if err != nil && !errors.Is(err, syscall.EINVAL) {
			t.Errorf("ParsePerm(%q) error %v does not wrap EINVAL", tc.in, err)
		}
	}
	ps, err := ParsePerms("n0", "r5", "b7")
	if err != nil || ps.String() != "n0,r5,b7" || ps.Owner() != domid.Dom0 {
		t.Errorf("ParsePerms = %v, %v", ps, err)
	}
	if _, err := ParsePerms(); err == nil {
		t.Error("empty list accepted")
	}
	ps, err = ParsePermsString("b5, r0")
	if err != nil || ps.String() != "b5,r0" || ps.Owner() != 5 {
		t.Errorf("ParsePermsString = %v, %v", ps, err)
	}
	if err := (Perms{{Domid: 1, Access: 'z'}}).validate(); err == nil {
		t.Error("invalid access accepted")
	}
	if err := (Perms{{Domid: domid.Invalid, Access: AccessRead}}).validate(); err == nil {
		t.Error("reserved domid accepted")
	}
	if got := string(appendPerms(nil, Perms{{0, AccessNone}, {5, AccessRead}})); got != "n0\x00r5\x00" {
		t.Errorf("wire encoding %q", got)
	}
}

func TestValidatePath(t *testing.T) {
	for _, tc := range []struct {
		p  string
		ok bool
	}{
		{"/", true},
		{"/local/domain/0", true},
		{"backend/vif/1/0", true},
		{"a-b_c@d", true},
		{"/" + strings.Repeat("a", AbsPathMax-1), true},
		{"/" + strings.Repeat("a", AbsPathMax), false},
		{strings.Repeat("a", RelPathMax), true},
		{strings.Repeat("a", RelPathMax+1), false},
		{"", false},
		{"//", false},
		{"/a//b", false},
		{"/a/", false},
		{"a/", false},
		{"/a.b", false},
		{"/a b", false},
		{"/a\x00", false},
		{"/é", false},
	} {
		err := ValidatePath(tc.p)
		if tc.ok != (err == nil) {
			t.Errorf("ValidatePath(%.40q) = %v, want ok=%v", tc.p, err, tc.ok)
		}
		if err != nil && !errors.Is(err, syscall.EINVAL) {
			t.Errorf("ValidatePath(%.40q) error %v does not wrap EINVAL", tc.p, err)
		}
	}
	for _, p := range []string{"@introduceDomain", "@releaseDomain"} {
		if err := validateWatchPath(p); err != nil {
			t.Errorf("watch path %s: %v", p, err)
		}
	}
	if err := validateWatchPath("@bad path"); err == nil {
		t.Error("special path with a space accepted")
	}
}

// TestDevicePath: a character device is opened as a file with the xenbus
// framing (here /dev/null, which ends the connection at once).
func TestDevicePath(t *testing.T) {
	c, err := Dial(context.Background(), WithPath("/dev/null"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if !c.framePerWrite {
		t.Error("device opened without one-message-per-write framing")
	}
	// Nothing reads an idle connection: the loss shows at the first call.
	if _, err := c.Read(context.Background(), "/x"); !errors.Is(err, ErrConnectionLost) {
		t.Errorf("read: %v", err)
	}
	<-c.Done()
}

func TestServerErrors(t *testing.T) {
	for name, errno := range errnoByName {
		err := serverError([]byte(name + "\x00"))
		if !errors.Is(err, errno) {
			t.Errorf("%s -> %v", name, err)
		}
	}
	if err := serverError([]byte("ENOSYS\x00")); !errors.Is(err, ErrNotSupported) {
		t.Errorf("ENOSYS -> %v", err)
	}
	long := serverError([]byte(strings.Repeat("E", 5000)))
	var ue *UnknownError
	if !errors.As(long, &ue) || len(ue.Name) > 32 {
		t.Errorf("long error name kept: %v", long)
	}
}
