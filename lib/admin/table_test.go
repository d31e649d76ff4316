package admin

import (
	"strings"
	"testing"

	"github.com/rivo/uniseg"
)

// TestTableWideNames: names in other scripts take the cells a terminal
// gives them (two for 日, one for é written as e and a combining accent),
// so the columns after them stay aligned.
func TestTableWideNames(t *testing.T) {
	tb := newTable("Name", ">ID", "Worker")
	tb.add("web", "1", "live")
	tb.add("日本語", "22", "live")
	tb.add("cafe\u0301", "333", "none")
	tb.add("Ωmega", "4", "default")
	var b strings.Builder
	if err := tb.write(&b); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimRight(b.String(), "\n"), "\n")
	want := -1
	for _, l := range lines {
		// The Worker column starts at the same cell on every line.
		i := strings.LastIndex(l, " ")
		col := uniseg.StringWidth(l[:i+1])
		if want < 0 {
			want = col
		}
		if col != want {
			t.Errorf("column at cell %d, want %d:\n%s", col, want, b.String())
		}
	}
}
