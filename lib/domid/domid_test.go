package domid

import (
	"errors"
	"strconv"
	"testing"
)

func TestParse(t *testing.T) {
	tests := []struct {
		in      string
		want    ID
		wantErr error
	}{
		{"0", 0, nil},
		{"1", 1, nil},
		{"7", 7, nil},
		{"32751", 32751, nil},
		{"32752", 0, ErrReserved}, // DOMID_FIRST_RESERVED, DOMID_SELF
		{"32753", 0, ErrReserved}, // DOMID_IO
		{"32756", 0, ErrReserved}, // DOMID_INVALID
		{"32767", 0, ErrReserved}, // DOMID_IDLE
		{"65535", 0, ErrReserved},
		{"65536", 0, ErrRange},
		{"99999", 0, ErrRange},
		{"100000", 0, ErrRange},
		{"18446744073709551617", 0, ErrRange}, // would wrap a naive uint64 parse
		{"", 0, ErrSyntax},
		{"007", 0, ErrSyntax},
		{"00", 0, ErrSyntax},
		{"-1", 0, ErrSyntax},
		{"+1", 0, ErrSyntax},
		{" 1", 0, ErrSyntax},
		{"1 ", 0, ErrSyntax},
		{"0x10", 0, ErrSyntax},
		{"12abc", 0, ErrSyntax},
		{"1e3", 0, ErrSyntax},
		{"１", 0, ErrSyntax}, // fullwidth digit
		{"123456x", 0, ErrSyntax},
	}
	for _, tt := range tests {
		got, err := Parse(tt.in)
		if tt.wantErr != nil {
			if !errors.Is(err, tt.wantErr) {
				t.Errorf("Parse(%q) error = %v, want %v", tt.in, err, tt.wantErr)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("Parse(%q) = %v, %v; want %v", tt.in, got, err, tt.want)
		}
	}
}

func TestParseGuest(t *testing.T) {
	tests := []struct {
		in      string
		want    ID
		wantErr error
	}{
		{"1", 1, nil},
		{"32751", 32751, nil},
		{"0", 0, ErrNotGuest},
		{"32752", 0, ErrReserved},
		{"07", 0, ErrSyntax},
	}
	for _, tt := range tests {
		got, err := ParseGuest(tt.in)
		if tt.wantErr != nil {
			if !errors.Is(err, tt.wantErr) {
				t.Errorf("ParseGuest(%q) error = %v, want %v", tt.in, err, tt.wantErr)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("ParseGuest(%q) = %v, %v; want %v", tt.in, got, err, tt.want)
		}
	}
}

func TestErrorMessageNamesInput(t *testing.T) {
	_, err := Parse("12abc")
	if err == nil || err.Error() != `domid "12abc": invalid domid syntax` {
		t.Fatalf("unexpected error text: %v", err)
	}
}

func TestHome(t *testing.T) {
	for id, want := range map[ID]string{0: "/local/domain/0", 7: "/local/domain/7", MaxGuest: "/local/domain/32751"} {
		if got := id.Home(); got != want {
			t.Errorf("ID(%d).Home() = %q, want %q", id, got, want)
		}
	}
}

func TestIDPredicates(t *testing.T) {
	if Dom0.IsGuest() || !ID(1).IsGuest() || !MaxGuest.IsGuest() || Self.IsGuest() || Invalid.IsGuest() {
		t.Error("IsGuest wrong")
	}
	if !Self.IsReserved() || !Idle.IsReserved() || MaxGuest.IsReserved() {
		t.Error("IsReserved wrong")
	}
	if MaxGuest != 32751 || FirstReserved != 32752 {
		t.Error("constants do not match xen.h")
	}
}

func TestFromPath(t *testing.T) {
	tests := []struct {
		path   string
		want   ID
		wantOK bool
	}{
		{"backend/vbd/5/51712/state", 5, true},
		{"backend/vif/12/0", 12, true},
		{"backend/vif/12", 12, true},
		{"backend/vif/0/1", 0, true},
		{"backend/vif/12abc/0", 0, false}, // seed accepted this as 12
		{"backend/vif/99999999999999999999/0", 0, false},
		{"backend/vif/012/0", 0, false},
		{"backend/vif/32752/0", 0, false},
		{"backend/vif", 0, false},
		{"backend/vif/", 0, false},
		{"backend//5", 0, false},
		{"backend", 0, false},
		{"/local/domain/0/backend/vbd/5/51712", 5, true},
		{"/local/domain/3/backend/vif/9/0/state", 9, true}, // driver domain 3 serving 9
		{"/local/domain/0/backend/vbd/x/1", 0, false},
		{"/local/domain/7", 7, true},
		{"/local/domain/7/device/vif/0/state", 7, true},
		{"/local/domain/0", 0, true},
		{"/local/domain/0/name", 0, true},
		{"/local/domain/07/name", 0, false},
		{"/local/domain/7x/name", 0, false},
		{"/local/domain/", 0, false},
		{"/local/domain", 0, false},
		{"/local/domain/32767", 0, false},
		// The mtwatch nodes are lib/node's: here they are dom0's paths.
		{"mtwatch/5", 0, false},
		{"/local/domain/0/mtwatch/5", 0, true},
		{"/local/domain/4/mtwatch/5", 4, true},
		{"@introduceDomain", 0, false},
		{"@releaseDomain", 0, false},
		{"/vm/1234-5678", 0, false},
		{"/vm/1234-5678/domains/5", 0, false},
		{"/libxl/5", 5, true},
		{"/libxl/5/device/vif/0", 5, true},
		{"/libxl/05", 0, false},
		{"/libxl/32752", 0, false},
		{"/libxl/", 0, false},
		{"/libxl", 0, false},
		{"libxl/5", 0, false},
		// dom0 as the frontend of driver domain 3: driver domain 3's event.
		{"/local/domain/3/backend/vif/0/1/state", 3, true},
		{"/local/domain/3/backend/vif/0", 3, true},
		// dom0's own backend of a dom0 frontend stays dom0's.
		{"/local/domain/0/backend/vbd/0/51712", 0, true},
		{"backend/vbd/0/51712", 0, true},
		// The device model of guest 9, in dom0 or in stub domain 4.
		{"/local/domain/0/device-model/9/state", 9, true},
		{"/local/domain/4/device-model/9", 9, true},
		{"device-model/9/backends/vfb", 9, true},
		{"/local/domain/0/device-model/9x/state", 0, false},
		{"/local/domain/0/device-model/32752", 0, false},
		{"/local/domain/0/device-model", 0, true},
		{"device-model", 0, false},
		{"device/vif/0", 0, false},
		{"", 0, false},
		{"/", 0, false},
	}
	for _, tt := range tests {
		got, ok := FromPath(tt.path)
		if ok != tt.wantOK || got != tt.want {
			t.Errorf("FromPath(%q) = %v, %v; want %v, %v", tt.path, got, ok, tt.want, tt.wantOK)
		}
	}
}

// FuzzParse checks that Parse accepts exactly the canonical decimal spelling
// of the non-reserved domids.
func FuzzParse(f *testing.F) {
	for _, s := range []string{"0", "1", "32751", "32752", "007", "-1", "12abc", "99999999999999999999"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		id, err := Parse(s)
		n, perr := strconv.ParseUint(s, 10, 64)
		canonical := perr == nil && strconv.FormatUint(n, 10) == s
		switch {
		case err == nil:
			if !canonical || n != uint64(id) || id >= FirstReserved {
				t.Fatalf("Parse(%q) = %d accepted a non-canonical or reserved id", s, id)
			}
			if id.String() != s {
				t.Fatalf("round trip %q -> %q", s, id.String())
			}
		case canonical && n < uint64(FirstReserved):
			t.Fatalf("Parse(%q) rejected a valid domid: %v", s, err)
		}
	})
}

// FuzzFromPath checks that any domid FromPath reports is spelled canonically
// in the path, so a guest cannot get an event routed to another domain.
func FuzzFromPath(f *testing.F) {
	for _, s := range []string{"backend/vbd/5/51712", "/local/domain/0/backend/vif/12/0",
		"/local/domain/7/x", "mtwatch/5", "/local/domain/0/mtwatch/9", "backend/vif/12abc/0",
		"/local/domain/3/backend/vif/0/1", "/local/domain/0/device-model/9/state", "/libxl/5/device"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, p string) {
		id, ok := FromPath(p)
		if !ok {
			return
		}
		if id.IsReserved() {
			t.Fatalf("FromPath(%q) returned reserved id %d", p, id)
		}
		want := "/" + id.String()
		if !containsElem(p, id.String()) {
			t.Fatalf("FromPath(%q) = %d, but %q is not a path element", p, id, want)
		}
	})
}

func containsElem(p, elem string) bool {
	for len(p) > 0 {
		var e string
		for i := 0; i <= len(p); i++ {
			if i == len(p) || p[i] == '/' {
				e, p = p[:i], p[min(i+1, len(p)):]
				break
			}
		}
		if e == elem {
			return true
		}
	}
	return false
}
