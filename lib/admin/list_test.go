package admin

import (
	"strings"
	"testing"

	"github.com/mtwatch/mtwatch/lib/control"
)

// TestListStalled: list's Stalled column is the age of the domain's oldest
// stall, its worker's handler or a plugin's work off the workers (a hung
// hotplug script while the worker is idle); --long's Stalls counts them;
// top shows the same age and highlights the same rows.
func TestListStalled(t *testing.T) {
	running := &control.Current{Path: "backend/vif/4/0/state", AgeMS: 900}
	stalled := &control.Current{Path: "backend/vbd/4/768/state", AgeMS: 61000, Stalled: true}
	for _, tt := range []struct {
		name    string
		cur     *control.Current
		plugins int
		ageMS   int64
		stalled string // the Stalled column
		stalls  string // --long's Stalls column
		current string
	}{
		{"idle", nil, 0, 0, "-", "0", "-"},
		{"handler running, not stalled", running, 0, 0, "-", "0", "backend/vif/4/0/state"},
		{"handler stalled", stalled, 0, 0, "1m1s", "1", "backend/vbd/4/768/state"},
		{"hotplug script hung, worker idle", nil, 1, 93000, "1m33s", "1", "-"},
		{"two devices stuck, worker busy", running, 2, 45000, "45.0s", "2", "backend/vif/4/0/state"},
		{"handler stalled longer than a script", stalled, 1, 30000, "1m1s", "2", "backend/vbd/4/768/state"},
		{"script hung longer than a stalled handler", stalled, 3, 125000, "2m5s", "4", "backend/vbd/4/768/state"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			d := control.Domain{Domid: 4, Name: "g", Worker: control.WorkerLive, Current: tt.cur,
				PluginStalls: tt.plugins, PluginStallAgeMS: tt.ageMS}
			for _, long := range []bool{false, true} {
				var b strings.Builder
				if err := listTable([]control.Domain{d}, long, false).write(&b); err != nil {
					t.Fatal(err)
				}
				lines := strings.Split(strings.TrimSpace(b.String()), "\n")
				head, row := strings.Fields(lines[0]), strings.Fields(lines[1])
				col := func(name string) string {
					for i, h := range head {
						if h == name {
							return row[i]
						}
					}
					t.Fatalf("no column %s in %q", name, lines[0])
					return ""
				}
				if got := col("Stalled"); got != tt.stalled {
					t.Errorf("long=%v: Stalled %q, want %q", long, got, tt.stalled)
				}
				if got := col("Current"); got != tt.current {
					t.Errorf("long=%v: Current %q, want %q", long, got, tt.current)
				}
				if long {
					if got := col("Stalls"); got != tt.stalls {
						t.Errorf("Stalls %q, want %q", got, tt.stalls)
					}
				}
			}
			var b strings.Builder
			topTable([]topRow{{Domain: d}}).write(&b)
			if f := strings.Fields(strings.Split(b.String(), "\n")[1]); f[7] != tt.stalled {
				t.Errorf("top: Stalled %q, want %q", f[7], tt.stalled)
			}
			if (stalledAge(d) >= 0) != (tt.stalled != "-") {
				t.Errorf("top highlights it: %v, want %v", stalledAge(d) >= 0, tt.stalled != "-")
			}
		})
	}
}
