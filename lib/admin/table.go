package admin

import (
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/rivo/uniseg"
)

// table prints aligned columns the way xl list does: text columns to the
// left, numbers to the right, one space apart, the last column unpadded.
// Widths are terminal cells, not bytes: a domain named "café" or "日本"
// keeps the columns after it aligned.
type table struct {
	head  []string
	right []bool
	rows  [][]string
}

func newTable(cols ...string) *table {
	t := &table{}
	for _, c := range cols {
		// A leading '>' marks a right-aligned (numeric) column.
		r := strings.HasPrefix(c, ">")
		t.head = append(t.head, strings.TrimPrefix(c, ">"))
		t.right = append(t.right, r)
	}
	return t
}

func (t *table) add(cells ...string) {
	for i, c := range cells {
		cells[i] = escapeControls(c)
	}
	t.rows = append(t.rows, cells)
}

func (t *table) write(w io.Writer) error {
	width := make([]int, len(t.head))
	for _, r := range append([][]string{t.head}, t.rows...) {
		for i, c := range r {
			width[i] = max(width[i], uniseg.StringWidth(c))
		}
	}
	var b strings.Builder
	for _, r := range append([][]string{t.head}, t.rows...) {
		for i, c := range r {
			last := i == len(r)-1
			pad := strings.Repeat(" ", width[i]-uniseg.StringWidth(c))
			switch {
			case t.right[i]:
				b.WriteString(pad + c)
			case last:
				b.WriteString(c)
			default:
				b.WriteString(c + pad)
			}
			if !last {
				b.WriteByte(' ')
			}
		}
		b.WriteByte('\n')
	}
	_, err := io.WriteString(w, b.String())
	return err
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

// fmtUS formats a latency in microseconds compactly: 35us, 1.2ms, 9.0s.
func fmtUS(us int64) string {
	switch {
	case us <= 0:
		return "-"
	case us < 1000:
		return fmt.Sprintf("%dus", us)
	case us < 1000_000:
		return fmt.Sprintf("%.1fms", float64(us)/1e3)
	}
	return fmt.Sprintf("%.1fs", float64(us)/1e6)
}

// fmtAge formats an age in milliseconds: 950ms, 9.0s, 3m12s.
func fmtAge(ms int64) string {
	switch {
	case ms < 1000:
		return fmt.Sprintf("%dms", ms)
	case ms < 60_000:
		return fmt.Sprintf("%.1fs", float64(ms)/1e3)
	}
	return (time.Duration(ms) * time.Millisecond).Truncate(time.Second).String()
}
