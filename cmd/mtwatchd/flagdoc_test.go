package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/urfave/cli/v2"

	"github.com/mtwatch/mtwatch/internal/goldenfile"
	"github.com/mtwatch/mtwatch/lib/config"
)

// The markers around the generated block of docs/mtwatchd.md.
const (
	flagsBegin = "<!-- flags:begin -->"
	flagsEnd   = "<!-- flags:end -->"
)

// flagDoc is one row of the generated flag table.
type flagDoc struct {
	name, placeholder, env, key, def string
	usage, rawUsage                  string // without and with urfave/cli's `quotes`
	bool, boolDefault                bool
}

// flagDocs describes the flags fs, mtwatchd's flags() with the keys of
// their rows in ovs (overrides): defaults of keyed flags from lib/config,
// the meaning from the flag's usage (what --help says).
func flagDocs(fs []cli.Flag, ovs []override) ([]flagDoc, error) {
	keys := map[string]string{}
	for _, o := range ovs {
		keys[o.flag.Names()[0]] = o.key
	}
	var docs []flagDoc
	for _, f := range fs {
		df, ok := f.(cli.DocGenerationFlag)
		if !ok {
			return nil, fmt.Errorf("--%s: %T has no usage to document", f.Names()[0], f)
		}
		d := flagDoc{name: f.Names()[0], key: keys[f.Names()[0]]}
		d.rawUsage = df.GetUsage()
		d.placeholder, d.usage = unquoteUsage(d.rawUsage)
		if envs := df.GetEnvVars(); len(envs) == 1 {
			d.env = envs[0]
		} else {
			return nil, fmt.Errorf("--%s: %d environment variables, want 1", d.name, len(envs))
		}
		if b, ok := f.(*cli.BoolFlag); ok {
			d.bool, d.boolDefault = true, b.Value
		}
		switch {
		case d.key != "":
			v, err := config.DefaultOf(d.key)
			if err != nil {
				return nil, fmt.Errorf("--%s: %w", d.name, err)
			}
			if s, err := strconv.Unquote(v); err == nil && s != "" {
				v = s
			}
			d.def = v
			// --help shows the flag's own default: it must be the file's.
			if shown := df.GetValue(); d.bool && strconv.FormatBool(d.boolDefault) != d.def || !d.bool && shown != "" && shown != d.def {
				return nil, fmt.Errorf("--%s: the flag defaults to %q, %s to %s: take its Value from config.Default()", d.name, df.GetDefaultText(), d.key, d.def)
			}
		case d.bool:
			d.def = strconv.FormatBool(d.boolDefault)
		default:
			d.def = df.GetValue()
		}
		if df.TakesValue() && d.placeholder == "" {
			return nil, fmt.Errorf("--%s: its usage names no `PLACEHOLDER` for the value", d.name)
		}
		docs = append(docs, d)
	}
	return docs, nil
}

// unquoteUsage returns the first `quoted` word of usage, urfave/cli's
// placeholder for the flag's value, and usage without its quotes.
func unquoteUsage(usage string) (placeholder, text string) {
	before, rest, ok := strings.Cut(usage, "`")
	if !ok {
		return "", usage
	}
	name, after, ok := strings.Cut(rest, "`")
	if !ok {
		return "", usage
	}
	return name, before + name + after
}

// flagTable renders the block between the markers of docs/mtwatchd.md: the
// synopsis, then one row per flag.
func flagTable(docs []flagDoc) string {
	var b strings.Builder
	b.WriteString("<!-- Generated from cmd/mtwatchd/flags.go by make config-example; a test fails when it is stale. -->\n\n")
	const indent, width = "    ", 100
	line := indent + "mtwatchd"
	for _, d := range docs {
		item := "[--" + d.name
		switch {
		case d.bool && d.boolDefault:
			item += "=false"
		case d.placeholder != "":
			item += " " + d.placeholder
		}
		item += "]"
		if len(line)+1+len(item) > width {
			b.WriteString(line + "\n")
			line = indent + strings.Repeat(" ", len("mtwatchd"))
		}
		line += " " + item
	}
	b.WriteString(line + "\n\n")
	b.WriteString("| flag | environment | file key | default | meaning |\n|---|---|---|---|---|\n")
	cell := func(s string) string {
		if s == "" {
			return "-"
		}
		return "`" + s + "`"
	}
	for _, d := range docs {
		fmt.Fprintf(&b, "| `--%s` | %s | %s | %s | %s |\n", d.name, cell(d.env), cell(d.key), cell(d.def),
			strings.ReplaceAll(d.usage, "|", `\|`))
	}
	return b.String()
}

// The markers around the generated blocks of docs/man/mtwatchd.8.
const (
	manSynopsisBegin = `.\" synopsis:begin`
	manSynopsisEnd   = `.\" synopsis:end`
	manFlagsBegin    = `.\" flags:begin`
	manFlagsEnd      = `.\" flags:end`
)

// manSynopsis renders the SYNOPSIS block of mtwatchd(8).
func manSynopsis(docs []flagDoc) string {
	var b strings.Builder
	b.WriteString(`.\" Generated from cmd/mtwatchd/flags.go by make config-example.` + "\n")
	line := `\fBmtwatchd\fR`
	for _, d := range docs {
		item := `[\fB\-\-` + roffEsc(d.name) + `\fR`
		switch {
		case d.bool && d.boolDefault:
			item += `=\fBfalse\fR`
		case d.placeholder != "":
			item += ` \fI` + roffEsc(d.placeholder) + `\fR`
		}
		item += "]"
		if len(line)+1+len(item) > 100 {
			b.WriteString(line + "\n")
			line = item
			continue
		}
		line += " " + item
	}
	b.WriteString(line + "\n")
	return b.String()
}

// manOptions renders the OPTIONS entries of mtwatchd(8), one per flag.
func manOptions(docs []flagDoc) string {
	var b strings.Builder
	b.WriteString(`.\" Generated from cmd/mtwatchd/flags.go by make config-example.` + "\n")
	for _, d := range docs {
		b.WriteString(".TP\n" + `\fB\-\-` + roffEsc(d.name) + `\fR`)
		if d.placeholder != "" {
			b.WriteString(` \fI` + roffEsc(d.placeholder) + `\fR`)
		}
		// The placeholder in italics, as the synopsis has it.
		usage := roffEsc(d.rawUsage)
		if before, rest, ok := strings.Cut(usage, "`"); ok {
			if name, after, ok := strings.Cut(rest, "`"); ok {
				usage = before + `\fI` + name + `\fR` + after
			}
		}
		fmt.Fprintf(&b, "\n%s.\n", usage)
		fmt.Fprintf(&b, `Environment \fB%s\fR`, roffEsc(d.env))
		if d.key != "" {
			fmt.Fprintf(&b, `, key \fB%s\fR`, roffEsc(d.key))
		}
		fmt.Fprintf(&b, `, default \fB%s\fR.`+"\n", roffEsc(d.def))
	}
	return b.String()
}

// roffEsc escapes text for roff, as internal/confman does: backslashes,
// hyphens (minus signs in option names) and a leading dot or quote.
func roffEsc(s string) string {
	s = strings.ReplaceAll(s, `\`, `\e`)
	s = strings.ReplaceAll(s, "-", `\-`)
	if strings.HasPrefix(s, ".") || strings.HasPrefix(s, "'") {
		s = `\&` + s
	}
	return s
}

// TestFlagDocCurrent: the flag table of docs/mtwatchd.md and the synopsis
// and flag entries of docs/man/mtwatchd.8 are what flags.go generates (make
// config-example rewrites them with go test -update), the table has
// a row for every flag mtwatchd --help shows, and docs/operations.md points
// to it rather than keeping a copy.
func TestFlagDocCurrent(t *testing.T) {
	docs, err := flagDocs(flags(), overrides)
	if err != nil {
		t.Fatal(err)
	}
	table := flagTable(docs)
	path := filepath.Join("..", "..", "docs", "mtwatchd.md")
	goldenfile.CheckBlock(t, path, flagsBegin, flagsEnd, table)
	man := filepath.Join("..", "..", "docs", "man", "mtwatchd.8")
	goldenfile.CheckBlock(t, man, manSynopsisBegin, manSynopsisEnd, manSynopsis(docs))
	goldenfile.CheckBlock(t, man, manFlagsBegin, manFlagsEnd, manOptions(docs))

	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(self, "--help")
	cmd.Env = append(os.Environ(), "MTWATCHD_AS_MAIN=1")
	help, err := cmd.Output()
	if err != nil {
		t.Fatalf("mtwatchd --help: %v", err)
	}
	md, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	rows := regexp.MustCompile("(?m)^\\| `--([a-z][a-z-]*)` \\|").FindAllStringSubmatch(string(md), -1)
	inTable := map[string]int{}
	for _, r := range rows {
		inTable[r[1]]++
	}
	shown := 0
	for _, f := range regexp.MustCompile(`(?m)^\s+--([a-z][a-z-]*)`).FindAllStringSubmatch(string(help), -1) {
		if f[1] == "help" || f[1] == "version" {
			continue // urfave/cli's own, no configuration behind them
		}
		shown++
		if inTable[f[1]] != 1 {
			t.Errorf("docs/mtwatchd.md has %d rows for --%s, want 1", inTable[f[1]], f[1])
		}
	}
	if shown != len(docs) || len(rows) != len(docs) {
		t.Errorf("--help shows %d flags, docs/mtwatchd.md has %d rows, flags.go %d", shown, len(rows), len(docs))
	}
	if !regexp.MustCompile(`(?m)^#+ Flags$`).Match(md) {
		t.Errorf("docs/mtwatchd.md has no Flags heading for docs/operations.md to link to")
	}
	ops, err := os.ReadFile(filepath.Join("..", "..", "docs", "operations.md"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(ops), "(mtwatchd.md#flags)") {
		t.Errorf("docs/operations.md does not link to mtwatchd.md#flags")
	}
	if strings.Contains(string(ops), "| `--") {
		t.Errorf("docs/operations.md keeps a flag table of its own: link to mtwatchd.md#flags instead")
	}
}

// TestFlagDocRejects: a flag the table cannot document truthfully is an
// error, not a row that says less than --help or other than the file.
func TestFlagDocRejects(t *testing.T) {
	row := func(f cli.Flag, key string) []override { return []override{{flag: f, key: key}} }
	for _, tc := range []struct {
		name string
		ovs  []override
		want string
	}{
		{"unknown key", row(&cli.StringFlag{Name: "x", EnvVars: []string{"X"}, Usage: "`V`"}, "agent.no_such_key"), "agent.no_such_key"},
		{"bool default differs", row(&cli.BoolFlag{Name: "auto-detect", EnvVars: []string{"X"}}, "agent.auto_detect"), "agent.auto_detect to true"},
		{"value default differs", row(&cli.IntFlag{Name: "gomaxprocs", EnvVars: []string{"X"}, Value: 4, Usage: "`N`"}, "agent.gomaxprocs"), "agent.gomaxprocs to 1"},
		{"no placeholder", row(&cli.StringFlag{Name: "log-level", EnvVars: []string{"X"}, Usage: "level"}, "log.level"), "PLACEHOLDER"},
		{"no environment variable", row(&cli.StringFlag{Name: "log-level", Usage: "`L`"}, "log.level"), "environment"},
	} {
		_, err := flagDocs([]cli.Flag{tc.ovs[0].flag}, tc.ovs)
		if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), "--"+tc.ovs[0].flag.Names()[0]) {
			t.Errorf("%s: %v; want an error naming the flag and %q", tc.name, err, tc.want)
		}
	}
	if p, u := unquoteUsage("log `LEVEL`: trace or `x`"); p != "LEVEL" || u != "log LEVEL: trace or `x`" {
		t.Errorf("unquoteUsage = %q, %q", p, u)
	}
	if p, u := unquoteUsage("no `placeholder"); p != "" || u != "no `placeholder" {
		t.Errorf("unquoteUsage = %q, %q", p, u)
	}
}
