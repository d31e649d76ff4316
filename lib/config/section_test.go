package config

import (
	"strings"
	"testing"
)

// TestParseSection: a plugin's section in a file of its own (what
// plugin/plugintest gives its tests) names the lines and keys of that file,
// relative to the section.
func TestParseSection(t *testing.T) {
	s, err := ParseSection("f.toml", "p", []byte(`grace = "1s"
types = ["a", "b"]

[[rule]]
name = "a"
path = "/x"

[[rule]]
name = "b"
path = "/y"
bogus = 1
`))
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ key, want string }{
		{"grace", "f.toml:1: grace: m"},
		{"types[1]", "f.toml:2: types[1]: m"},
		{"rule[0]", "f.toml:4: rule[0]: m"},
		{"rule[1].path", "f.toml:10: rule[1].path: m"},
		{"rule[0].path", "f.toml:6: rule[0].path: m"},
		{"timeout", "f.toml: [plugins.p] timeout: m"},
	} {
		if got := s.Errorf(tc.key, "m").Error(); got != tc.want {
			t.Errorf("Errorf(%q) = %q, want %q", tc.key, got, tc.want)
		}
	}
	var v struct {
		Grace string
		Types []string
		Rule  []struct{ Name, Path string }
	}
	if err := s.Decode(&v); err == nil || !strings.HasPrefix(err.Error(), "f.toml:11: rule.bogus: unknown key") {
		t.Errorf("Decode: %v", err)
	}
	if _, err := ParseSection("f.toml", "p", []byte("a = 1\nb = = 2\n")); err == nil || !strings.HasPrefix(err.Error(), "f.toml:2: ") {
		t.Errorf("a syntax error: %v", err)
	}
	var w struct {
		Grace Duration `toml:"grace"`
	}
	bad, err := ParseSection("f.toml", "p", []byte("\ngrace = \"soon\"\n"))
	if err != nil {
		t.Fatal(err)
	}
	if err := bad.Decode(&w); err == nil || !strings.HasPrefix(err.Error(), "f.toml:2: grace: ") {
		t.Errorf("a bad duration: %v", err)
	}
}
