package config

import (
	"bufio"
	"bytes"
	"strconv"
	"strings"
)

// lineIndex maps keys to the line they are set on. BurntSushi/toml reports
// the keys nothing decoded but not their lines, so a small scan of the file
// tracks [table] and [[array]] headers and `key =` lines. It does not parse
// TOML: the decoder already accepted the file; the scan only locates keys.
type lineIndex struct {
	exact map[string]int // "plugins.exec.rule[2].path"
	plain map[string]int // "plugins.exec.rule.path": first occurrence
}

func indexLines(data []byte) *lineIndex {
	ix := &lineIndex{exact: map[string]int{}, plain: map[string]int{}}
	arrays := map[string]int{} // array-of-tables path (indexed parents) -> count
	cur := ""
	inMulti := "" // the delimiter of a multi-line string being skipped
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if inMulti != "" {
			if strings.Count(line, inMulti)%2 == 1 {
				inMulti = ""
			}
			continue
		}
		switch {
		case line == "" || line[0] == '#':
			continue
		case strings.HasPrefix(line, "[["):
			end := strings.Index(line, "]]")
			if end < 0 {
				continue
			}
			p := ix.resolve(splitKey(line[2:end]), arrays)
			arrays[p]++
			cur = p + "[" + strconv.Itoa(arrays[p]-1) + "]"
			ix.add(cur, n)
		case line[0] == '[':
			end := strings.IndexByte(line, ']')
			if end < 0 {
				continue
			}
			cur = ix.resolve(splitKey(line[1:end]), arrays)
			ix.add(cur, n)
		default:
			eq := strings.IndexByte(line, '=')
			if eq < 0 {
				continue
			}
			parts := splitKey(line[:eq])
			if len(parts) == 0 {
				continue
			}
			k := strings.Join(parts, ".")
			if cur != "" {
				k = cur + "." + k
			}
			ix.add(k, n)
			// Nested tables: every prefix of a dotted key is a table too.
			for i := 1; i < len(parts); i++ {
				p := strings.Join(parts[:i], ".")
				if cur != "" {
					p = cur + "." + p
				}
				ix.add(p, n)
			}
			rest := line[eq+1:]
			for _, d := range []string{`"""`, `'''`} {
				if strings.Count(rest, d)%2 == 1 {
					inMulti = d
				}
			}
		}
	}
	return ix
}

// resolve turns a header's parts into an indexed path: a prefix that is an
// array of tables refers to its last element.
func (ix *lineIndex) resolve(parts []string, arrays map[string]int) string {
	p := ""
	for i, part := range parts {
		if i > 0 {
			p += "."
		}
		p += part
		if n, ok := arrays[p]; ok && i < len(parts)-1 {
			p += "[" + strconv.Itoa(n-1) + "]"
		}
	}
	return p
}

func (ix *lineIndex) add(key string, line int) {
	if _, ok := ix.exact[key]; !ok {
		ix.exact[key] = line
	}
	pk := stripIndices(key)
	if _, ok := ix.plain[pk]; !ok {
		ix.plain[pk] = line
	}
}

// find returns the line of key, or 0. A key without indices matches the
// first element of an array of tables that sets it.
func (ix *lineIndex) find(key string) int {
	if ix == nil || ix.exact == nil {
		return 0
	}
	if n, ok := ix.exact[key]; ok {
		return n
	}
	return ix.plain[stripIndices(key)]
}

func stripIndices(k string) string {
	if !strings.Contains(k, "[") {
		return k
	}
	var b strings.Builder
	depth := 0
	for _, r := range k {
		switch {
		case r == '[':
			depth++
		case r == ']':
			depth--
		case depth == 0:
			b.WriteRune(r)
		}
	}
	return b.String()
}

// splitKey splits a dotted TOML key, unquoting quoted parts.
func splitKey(s string) []string {
	var parts []string
	s = strings.TrimSpace(s)
	for s != "" {
		var part string
		switch s[0] {
		case '"', '\'':
			end := strings.IndexByte(s[1:], s[0])
			if end < 0 {
				return parts
			}
			part = s[1 : end+1]
			if s[0] == '"' {
				if u, err := strconv.Unquote(s[:end+2]); err == nil {
					part = u
				}
			}
			s = strings.TrimSpace(s[end+2:])
		default:
			i := strings.IndexByte(s, '.')
			if i < 0 {
				i = len(s)
			}
			part = strings.TrimSpace(s[:i])
			s = s[i:]
		}
		parts = append(parts, part)
		s = strings.TrimPrefix(strings.TrimSpace(s), ".")
		s = strings.TrimSpace(s)
	}
	return parts
}
