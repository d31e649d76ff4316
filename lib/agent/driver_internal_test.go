package agent

import (
	"testing"

	"github.com/mtwatch/mtwatch/lib/domid"
)

// TestFrontendOf: which backend events name a device of a frontend (and
// may skip the re-read when the frontend is known).
func TestFrontendOf(t *testing.T) {
	for _, tt := range []struct {
		path string
		id   domid.ID
		deep bool
	}{
		{"backend", 0, false},
		{"backend/vif", 0, false},
		{"backend/vif/12", 0, false},
		{"backend/vif/12/", 0, false},
		{"backend/vif/12/0", 12, true},
		{"backend/vif/12/0/state", 12, true},
		{"backend/vif/0/0/state", 0, false},
		{"backend/vif/x/0", 0, false},
		{"backend/vif/32752/0", 0, false},
		{"backendx/vif/12/0", 0, false},
	} {
		id, deep := frontendOf(tt.path)
		if deep != tt.deep || (deep && id != tt.id) {
			t.Errorf("frontendOf(%q) = %d, %v; want %d, %v", tt.path, id, deep, tt.id, tt.deep)
		}
	}
}
