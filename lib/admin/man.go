package admin

import (
	"slices"
	"strings"

	"github.com/urfave/cli/v2"

	"github.com/mtwatch/mtwatch/lib/control"
)

// urfave/cli's own man page (ToMan) leaves out every command's
// description and argument synopsis, which is where mtwatch's detail is,
// so mtwatch(1) is written here, from the same definitions --help shows.

// exitStatus and environment are the man page's EXIT STATUS and
// ENVIRONMENT sections; --help carries them in the app's description.
var exitStatus = [][2]string{
	{"0", "done"},
	{"1", "the operation failed: XenStore, the agent or xl answered with an error or not in time"},
	{"2", "usage or bad input; nothing was changed"},
	{"3", "the command needs mtwatchd and it is not running (status, stalls, top)"},
}

var environment = [][2]string{
	{"MTWATCH_XENSTORE", "the XenStore socket or device (--xenstore); else XENSTORED_PATH"},
	{"XENSTORED_PATH", "the XenStore socket, as for the xenstore-* commands"},
	{"MTWATCH_CONTROL", "mtwatchd's control socket (--control)"},
	{"MTWATCH_XL", "the xl binary of the xl wrappers (xl --xl)"},
}

// ManPage returns mtwatch(1), generated from the command definitions.
func ManPage() (string, error) {
	app := NewApp()
	var m manWriter
	m.raw(`.TH mtwatch 1 "" "mtwatch" "User Commands"`)
	m.sh("NAME")
	m.text("mtwatch - " + app.Usage)
	m.sh("SYNOPSIS")
	m.raw(`\fBmtwatch\fR [\fIglobal options\fR] \fIcommand\fR [\fIcommand options\fR] [\fIarguments\fR ...]`)
	m.sh("DESCRIPTION")
	m.description(appDescription)
	m.sh("GLOBAL OPTIONS")
	m.flags(app.Flags)
	m.sh("COMMANDS")
	var walk func(prefix string, cmds []*cli.Command)
	walk = func(prefix string, cmds []*cli.Command) {
		for _, c := range cmds {
			if c.Hidden {
				continue
			}
			name := prefix + c.Name
			m.req(".SS", strings.TrimSpace(name+" "+synopsis(c)))
			m.text(c.Usage + ".")
			if len(c.Aliases) > 0 {
				m.text("Alias: " + strings.Join(c.Aliases, ", ") + ".")
			}
			if c.Description != "" {
				m.description(c.Description)
			}
			if len(c.Flags) > 0 {
				m.raw(".PP")
				m.raw("Options:")
				m.flags(c.Flags)
			}
			walk(name+" ", c.Subcommands)
		}
	}
	walk("", app.Commands)
	m.sh("EXIT STATUS")
	m.text("Exit codes are stable, for scripts:")
	for _, e := range exitStatus {
		m.raw(".TP")
		m.raw(`\fB` + esc(e[0]) + `\fR`)
		m.text(e[1])
	}
	m.raw(".PP")
	m.text("Errors are one line on standard error naming what failed: mtwatch: domain 70000: domid out of range.")
	m.sh("ENVIRONMENT")
	for _, e := range environment {
		m.raw(".TP")
		m.raw(`\fB` + esc(e[0]) + `\fR`)
		m.text(e[1])
	}
	m.sh("FILES")
	m.raw(".TP")
	m.raw(`\fI` + esc(control.DefaultSocket) + `\fR`)
	m.text("mtwatchd's control socket, the default of --control.")
	m.raw(".TP")
	m.raw(`\fI/local/domain/0/mtwatch/\fR<domid> (XenStore)`)
	m.text("the node that gives a guest domain its own watch worker, valued with the VM uuid.")
	m.sh("SEE ALSO")
	m.raw(`\fBxl\fR(1), \fBxentop\fR(1), \fBxenstore\-ls\fR(1), \fBxenstore\-watch\fR(1)`)
	return m.String(), nil
}

// synopsis is a command's options and arguments, as --help shows them.
func synopsis(c *cli.Command) string {
	s := c.ArgsUsage
	if len(c.Flags) > 0 {
		s = strings.TrimSpace("[options] " + s)
	}
	if len(c.Subcommands) > 0 && s == "" {
		s = "<subcommand> ..."
	}
	return s
}

type manWriter struct{ strings.Builder }

func (m *manWriter) raw(line string) { m.WriteString(line + "\n") }

// req writes a request with quoted arguments.
func (m *manWriter) req(name string, args ...string) {
	m.WriteString(name)
	for _, a := range args {
		m.WriteString(` "` + strings.ReplaceAll(esc(a), `"`, `\(dq`) + `"`)
	}
	m.WriteString("\n")
}

func (m *manWriter) sh(title string) { m.req(".SH", title) }

// text writes filled text, one source line per line of s.
func (m *manWriter) text(s string) {
	for _, l := range strings.Split(s, "\n") {
		l = esc(strings.TrimSpace(l))
		if l == "" {
			continue
		}
		m.raw(l)
	}
}

// description writes a --help description: paragraphs separated by blank
// lines; indented lines (tables, examples) are kept as they are.
func (m *manWriter) description(s string) {
	pre := false
	first := true
	for _, l := range strings.Split(strings.TrimSpace(s), "\n") {
		indented := strings.HasPrefix(l, " ") || strings.HasPrefix(l, "\t")
		switch {
		case strings.TrimSpace(l) == "":
			if pre {
				m.raw(".fi")
				m.raw(".RE")
				pre = false
			}
			first = true
			continue
		case indented && !pre:
			m.raw(".RS 2")
			m.raw(".nf")
			pre, first = true, false
		case !indented && pre:
			m.raw(".fi")
			m.raw(".RE")
			pre, first = false, true
		}
		if first {
			m.raw(".PP")
			first = false
		}
		if pre {
			m.raw(esc(strings.TrimPrefix(strings.TrimPrefix(l, "  "), "\t")))
		} else {
			m.text(l)
		}
	}
	if pre {
		m.raw(".fi")
		m.raw(".RE")
	}
}

// flags writes one tagged paragraph per flag: its names, its value
// placeholder, usage, default and environment variables.
func (m *manWriter) flags(flags []cli.Flag) {
	for _, f := range flags {
		df, ok := f.(cli.DocGenerationFlag)
		if !ok {
			continue
		}
		placeholder, usage := unquote(df.GetUsage())
		if df.TakesValue() && placeholder == "" {
			placeholder = "value"
		}
		names := slices.Clone(f.Names())
		slices.SortStableFunc(names, func(a, b string) int { return len(a) - len(b) })
		var tag []string
		for _, n := range names {
			d := "--"
			if len(n) == 1 {
				d = "-"
			}
			tag = append(tag, `\fB`+esc(d+n)+`\fR`)
		}
		t := strings.Join(tag, ", ")
		if df.TakesValue() {
			t += ` \fI` + esc(placeholder) + `\fR`
		}
		m.raw(".TP")
		m.raw(t)
		extra := []string{}
		if !df.TakesValue() {
			// A switch: its default is off.
		} else if d := df.GetDefaultText(); d != "" {
			extra = append(extra, "default "+d)
		} else if v := df.GetValue(); df.TakesValue() && v != "" && v != `""` && v != "0" {
			extra = append(extra, "default "+strings.Trim(v, `"`))
		}
		if ev := df.GetEnvVars(); len(ev) > 0 {
			extra = append(extra, "environment "+strings.Join(ev, ", then "))
		}
		if len(extra) > 0 {
			usage += " (" + strings.Join(extra, "; ") + ")"
		}
		m.text(usage)
	}
}

// unquote finds the placeholder urfave/cli takes from `backquotes` in a
// flag's usage.
func unquote(usage string) (placeholder, text string) {
	i := strings.IndexByte(usage, '`')
	if i < 0 {
		return "", usage
	}
	j := strings.IndexByte(usage[i+1:], '`')
	if j < 0 {
		return "", usage
	}
	name := usage[i+1 : i+1+j]
	return name, usage[:i] + name + usage[i+2+j:]
}

// esc escapes text for roff: backslashes, hyphens (minus signs, so that
// options can be copied), and a leading control character.
func esc(s string) string {
	s = strings.ReplaceAll(s, `\`, `\e`)
	s = strings.ReplaceAll(s, "-", `\-`)
	if strings.HasPrefix(s, ".") || strings.HasPrefix(s, "'") {
		s = `\&` + s
	}
	return s
}
