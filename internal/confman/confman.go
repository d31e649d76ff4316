// Package confman writes mtwatchd.toml(5) from docs/mtwatchd.toml, the
// commented reference configuration, so the man page says what the
// reference file says: its header becomes the description, each section a
// subsection, and each key, with its default and the comment above it, an
// entry.
package confman

import (
	"bufio"
	"bytes"
	"fmt"
	"regexp"
	"strings"
)

// An example line in a comment: a key assignment or a table header, as in
// the commented [[plugins.exec.rule]] block.
var exampleLine = regexp.MustCompile(`^\s*(\[\[?[a-z_.]+\]\]?|[a-z_]+\s+=\s)`)

var keyLine = regexp.MustCompile(`^([a-z_]+) ?= ?(.*)$`)

// Page returns the man page for the reference configuration src.
func Page(src []byte) (string, error) {
	var b strings.Builder
	b.WriteString(".TH mtwatchd.toml 5 \"\" \"mtwatch\" \"File Formats\"\n")
	b.WriteString(".SH NAME\nmtwatchd.toml \\- configuration file of mtwatchd\n")
	b.WriteString(".SH SYNOPSIS\n.I /etc/mtwatch/mtwatchd.toml\n")
	b.WriteString(".SH DESCRIPTION\n")
	b.WriteString("The configuration of \\fBmtwatchd\\fR(8), in TOML. The file installed has every key commented out at its default, so the agent runs on defaults, including those of a later release, until a key is uncommented. Below, each key is shown with its default.\n.PP\n")
	var (
		comments []string
		section  string
		inOpts   bool
	)
	flush := func() {
		if len(comments) == 0 {
			return
		}
		writeComments(&b, comments, !inOpts)
		comments = nil
	}
	sc := bufio.NewScanner(bytes.NewReader(src))
	line := 0
	for sc.Scan() {
		line++
		text := strings.TrimSpace(sc.Text())
		switch {
		case text == "":
			if !inOpts && section == "" {
				flush()
			} else if len(comments) > 0 {
				// A comment block not followed by a key describes the section.
				flush()
			}
		case strings.HasPrefix(text, "#"):
			c := strings.TrimPrefix(strings.TrimPrefix(text, "#"), " ")
			if m := keyLine.FindStringSubmatch(c); m != nil && section != "" && !strings.HasPrefix(c, " ") {
				// A key commented out at its default, as the reference
				// has most of them.
				fmt.Fprintf(&b, ".TP\n\\fB%s\\fR = %s\n", esc(m[1]), esc(m[2]))
				flush()
				continue
			}
			comments = append(comments, c)
		case strings.HasPrefix(text, "["):
			if !inOpts {
				flush()
				b.WriteString(".SH OPTIONS\n")
				inOpts = true
			}
			section = strings.Trim(text, "[]")
			fmt.Fprintf(&b, ".SS [%s]\n", esc(section))
			flush()
		default:
			m := keyLine.FindStringSubmatch(text)
			if m == nil || section == "" {
				return "", fmt.Errorf("line %d: %q is neither a comment, a section nor a key", line, text)
			}
			fmt.Fprintf(&b, ".TP\n\\fB%s\\fR = %s\n", esc(m[1]), esc(m[2]))
			flush()
		}
	}
	if err := sc.Err(); err != nil {
		return "", err
	}
	flush()
	b.WriteString(".SH FILES\n.TP\n.I /etc/mtwatch/mtwatchd.toml\nThe configuration file (\\fB\\-\\-config\\fR, \\fBMTWATCH_CONFIG\\fR).\n")
	b.WriteString(".TP\n.I /usr/share/doc/mtwatch/mtwatchd.toml\nThe reference this page is made from, every key set to its default.\n")
	b.WriteString(".SH SEE ALSO\n\\fBmtwatchd\\fR(8), \\fBmtwatch\\fR(1)\n")
	return b.String(), nil
}

// writeComments writes a comment block as text, its example lines as a
// literal block; with paragraphs, an empty line starts a new paragraph.
func writeComments(b *strings.Builder, lines []string, paragraphs bool) {
	var prose []string
	inExample := false
	for _, l := range lines {
		if l == "" && paragraphs && !inExample {
			// An empty comment line parts paragraphs of the description.
			if len(prose) > 0 {
				b.WriteString(esc(strings.Join(prose, " ")) + "\n")
				prose = nil
			}
			b.WriteString(".PP\n")
			continue
		}
		ex := exampleLine.MatchString(l)
		switch {
		case ex && !inExample:
			if len(prose) > 0 {
				b.WriteString(esc(strings.Join(prose, " ")) + "\n")
				prose = nil
			}
			b.WriteString(".IP\n.nf\n")
			inExample = true
		case !ex && inExample:
			b.WriteString(".fi\n")
			inExample = false
		}
		if inExample {
			b.WriteString(esc(l) + "\n")
		} else {
			prose = append(prose, l)
		}
	}
	if inExample {
		b.WriteString(".fi\n")
	}
	if len(prose) > 0 {
		b.WriteString(esc(strings.Join(prose, " ")) + "\n")
	}
}

// esc escapes text for roff: backslashes, hyphens (minus signs in option
// names and values), and a leading dot or quote.
func esc(s string) string {
	s = strings.ReplaceAll(s, `\`, `\e`)
	s = strings.ReplaceAll(s, "-", `\-`)
	if strings.HasPrefix(s, ".") || strings.HasPrefix(s, "'") {
		s = `\&` + s
	}
	return s
}
