package plugintest

import (
	"errors"
	"fmt"
	"regexp"
	"strings"

	"github.com/BurntSushi/toml"
)

// Section is a plugin.Section over a TOML snippet whose keys are relative
// to the plugin's section. Its errors read "<file>:<line>: <key>: <message>";
// lines are found by a scan of the snippet that knows key = value lines and
// [table] / [[array]] headers, enough for tests.
type Section struct {
	file, name, text string
}

// Decode decodes the snippet into v; an unknown key is an error naming its
// line.
func (s *Section) Decode(v any) error {
	md, err := toml.Decode(s.text, v)
	if err != nil {
		var pe toml.ParseError
		if errors.As(err, &pe) {
			return fmt.Errorf("%s:%d: %s", s.file, pe.Position.Line, pe.Message)
		}
		return fmt.Errorf("%s: plugins.%s: %v", s.file, s.name, err)
	}
	if un := md.Undecoded(); len(un) > 0 {
		return s.Errorf(un[0].String(), "unknown key")
	}
	return nil
}

// Errorf names the line of key ("rule[2].path", or "rule.path" for the first
// rule having the key).
func (s *Section) Errorf(key, format string, args ...any) error {
	line := s.line(key)
	if line == 0 {
		return fmt.Errorf("%s: [plugins.%s] %s: %s", s.file, s.name, key, fmt.Sprintf(format, args...))
	}
	return fmt.Errorf("%s:%d: %s: %s", s.file, line, key, fmt.Sprintf(format, args...))
}

// File is the snippet's file.
func (s *Section) File() string { return s.file }

var (
	arrayRe = regexp.MustCompile(`^\[\[\s*([^\]]+?)\s*\]\]`)
	tableRe = regexp.MustCompile(`^\[\s*([^\]]+?)\s*\]`)
	keyRe   = regexp.MustCompile(`^([A-Za-z0-9_.-]+)\s*=`)
	indexRe = regexp.MustCompile(`\[\d+\]`)
)

func (s *Section) line(key string) int {
	if n := s.find(key, false); n > 0 {
		return n
	}
	return s.find(key, true)
}

// find scans for key; loose ignores array indices (for keys BurntSushi
// reports without them, and elements of inline arrays).
func (s *Section) find(key string, loose bool) int {
	if loose {
		key = indexRe.ReplaceAllString(key, "")
	}
	count := map[string]int{}
	table := ""
	for i, l := range strings.Split(s.text, "\n") {
		l = strings.TrimSpace(l)
		if m := arrayRe.FindStringSubmatch(l); m != nil {
			table = fmt.Sprintf("%s[%d]", m[1], count[m[1]])
			count[m[1]]++
			if table == key || (loose && indexRe.ReplaceAllString(table, "") == key) {
				return i + 1
			}
			continue
		}
		if m := tableRe.FindStringSubmatch(l); m != nil {
			table = m[1]
			if table == key {
				return i + 1
			}
			continue
		}
		m := keyRe.FindStringSubmatch(l)
		if m == nil {
			continue
		}
		full := m[1]
		if table != "" {
			full = table + "." + m[1]
		}
		if full == key || (loose && indexRe.ReplaceAllString(full, "") == key) {
			return i + 1
		}
	}
	return 0
}
