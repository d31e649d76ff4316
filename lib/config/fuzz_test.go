package config

import (
	"errors"
	"strings"
	"testing"
)

// FuzzParse: any input gives a config or an Error whose line is within the
// file; the line scan never panics on what the decoder accepts or refuses.
//
//	go test -run '^$' -fuzz FuzzParse -fuzztime 30s ./lib/config/
func FuzzParse(f *testing.F) {
	f.Add([]byte("[agent]\nauto_detect = false\n"))
	f.Add([]byte("[plugins.exec]\n[[plugins.exec.rule]]\npath = \"a\"\n[plugins.exec.rule.env]\nX = '''\nmulti = 1\n'''\n"))
	f.Add([]byte("agent.\"quoted.key\" = 1\n[\"log\"]\nlevel='x'\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := Parse("f.toml", data)
		if err != nil {
			var e *Error
			if !errors.As(err, &e) {
				t.Fatalf("error %T %v is not an *Error", err, err)
			}
			if lines := strings.Count(string(data), "\n") + 1; e.Line < 0 || e.Line > lines {
				t.Fatalf("line %d of a %d-line file: %v", e.Line, lines, err)
			}
			return
		}
		for _, name := range c.Plugins() {
			s := c.Plugin(name)
			var v map[string]any
			s.Decode(&v)
			s.Errorf("a[1].b", "x")
		}
	})
}
