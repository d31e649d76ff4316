package admin

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gdamore/tcell/v2"

	"github.com/mtwatch/mtwatch/lib/control"
)

// simScreen is tcell's simulation screen that tells when topInteractive
// has initialised it and keeps a copy of what each Show displayed: the
// simulation's own cells are rewritten by Show without a lock the test could
// take.
type simScreen struct {
	tcell.SimulationScreen
	ready chan struct{}

	mu    sync.Mutex
	lines []string
	fg    []tcell.Color // of each line's first cell
}

func (s *simScreen) Init() error {
	err := s.SimulationScreen.Init()
	close(s.ready)
	return err
}

func (s *simScreen) Show() {
	s.SimulationScreen.Show()
	cells, w, h := s.SimulationScreen.GetContents()
	lines := make([]string, h)
	fg := make([]tcell.Color, h)
	for y := 0; y < h; y++ {
		var b strings.Builder
		for x := 0; x < w; x++ {
			b.Write(cells[y*w+x].Bytes)
		}
		lines[y] = strings.TrimRight(b.String(), " ")
		fg[y], _, _ = cells[y*w].Style.Decompose()
	}
	s.mu.Lock()
	s.lines, s.fg = lines, fg
	s.mu.Unlock()
}

func (s *simScreen) shown() ([]string, []tcell.Color) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.lines, s.fg
}

// TestTopInteractive drives the full-screen view on tcell's simulation
// screen: it shows the domains, the stalled ones highlighted, re-sorts on
// a key and quits on q.
func TestTopInteractive(t *testing.T) {
	screen := &simScreen{SimulationScreen: tcell.NewSimulationScreen("UTF-8"), ready: make(chan struct{})}
	src := func(context.Context) (control.Status, []control.Domain, error) {
		return fakeAgent{}.Status(), fakeAgent{}.Domains(), nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- topInteractive(ctx, screen, src, 20*time.Millisecond, 0) }()
	<-screen.ready // keys may be injected once Init is done

	waitFor := func(what string, ok func([]string) bool) []string {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for time.Now().Before(deadline) {
			if l, _ := screen.shown(); ok(l) {
				return l
			}
			time.Sleep(10 * time.Millisecond)
		}
		l, _ := screen.shown()
		t.Fatalf("screen never showed %s:\n%s", what, strings.Join(l, "\n"))
		return nil
	}
	row := func(lines []string, prefix string) int {
		for i, l := range lines {
			if strings.HasPrefix(l, prefix) {
				return i
			}
		}
		return -1
	}
	lines := waitFor("the domains", func(l []string) bool { return row(l, "stuck") > 0 && row(l, "idle") > 0 })
	if !strings.HasPrefix(lines[0], "mtwatch top - multi-worker") {
		t.Errorf("header %q", lines[0])
	}
	// Most active first: the stalled domain with its queue leads.
	if row(lines, "stuck") > row(lines, "idle") {
		t.Errorf("stuck below idle under the activity sort:\n%s", strings.Join(lines, "\n"))
	}
	lines, fg := screen.shown()
	// Stalled: stuck's handler, and db's hotplug script while its worker
	// is idle.
	if fg[row(lines, "stuck")] != tcell.ColorRed || fg[row(lines, "db")] != tcell.ColorRed || fg[row(lines, "idle")] == tcell.ColorRed {
		t.Errorf("stalled rows not highlighted alone: %v", fg)
	}

	screen.InjectKey(tcell.KeyRune, 'n', tcell.ModNone) // sort by name
	waitFor("the name order", func(l []string) bool { return row(l, "idle") >= 0 && row(l, "idle") < row(l, "stuck") })

	screen.InjectKey(tcell.KeyRune, 'q', tcell.ModNone)
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("q did not quit")
	}
}

func TestTopRates(t *testing.T) {
	m := newTopModel()
	now := time.Now()
	m.rows([]control.Domain{{Domid: 3, Dispatched: 100}, {Domid: 5, Dispatched: 10}}, now)
	rows := m.rows([]control.Domain{{Domid: 3, Dispatched: 150}, {Domid: 5, Dispatched: 210}}, now.Add(2*time.Second))
	if rows[0].Domid != 5 || rows[0].rate != 100 || rows[1].rate != 25 {
		t.Errorf("rows %+v", rows)
	}
	// A counter that went back (agent restarted) is not a negative rate.
	rows = m.rows([]control.Domain{{Domid: 3, Dispatched: 1}}, now.Add(3*time.Second))
	if rows[0].rate != 0 {
		t.Errorf("rate after a reset: %v", rows[0].rate)
	}
}
