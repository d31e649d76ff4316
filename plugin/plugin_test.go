package plugin

import (
	"slices"
	"testing"
)

// withRegistry gives a test an empty registry and restores the real one.
func withRegistry(t *testing.T) {
	t.Helper()
	mu.Lock()
	saved := registry
	registry = map[string]Registration{}
	mu.Unlock()
	t.Cleanup(func() {
		mu.Lock()
		registry = saved
		mu.Unlock()
	})
}

func newNop(*InitContext) (Plugin, error) { return nil, nil }

func TestRegisterLookupAll(t *testing.T) {
	withRegistry(t)
	for _, name := range []string{"hotplug", "exec", "log-2"} {
		Register(Registration{Name: name, New: newNop})
	}
	if _, ok := Lookup("exec"); !ok {
		t.Error("exec not found")
	}
	if _, ok := Lookup("nope"); ok {
		t.Error("an unregistered name was found")
	}
	var names []string
	for _, r := range All() {
		names = append(names, r.Name)
	}
	if want := []string{"exec", "hotplug", "log-2"}; !slices.Equal(names, want) {
		t.Errorf("All() = %v, want %v (by name)", names, want)
	}
}

// A malformed or duplicate registration is a programming error that must not
// reach a running agent: Register panics at init.
func TestRegisterRefuses(t *testing.T) {
	for _, tc := range []struct {
		name string
		reg  Registration
	}{
		{"empty name", Registration{Name: "", New: newNop}},
		{"upper case", Registration{Name: "Exec", New: newNop}},
		{"dot, as in a TOML key path", Registration{Name: "a.b", New: newNop}},
		{"leading digit", Registration{Name: "1x", New: newNop}},
		{"no New", Registration{Name: "x"}},
		{"duplicate", Registration{Name: "dup", New: newNop}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			withRegistry(t)
			Register(Registration{Name: "dup", New: newNop})
			defer func() {
				if recover() == nil {
					t.Errorf("Register(%+v) did not panic", tc.reg.Name)
				}
			}()
			Register(tc.reg)
		})
	}
}
