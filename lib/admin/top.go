package admin

import (
	"cmp"
	"context"
	"fmt"
	"io"
	"math"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/gdamore/tcell/v2"
	"github.com/rivo/uniseg"
	"github.com/urfave/cli/v2"
	"golang.org/x/term"

	"github.com/mtwatch/mtwatch/lib/control"
)

func topCommand() *cli.Command {
	return &cli.Command{
		Name:  "top",
		Usage: "live per-domain view of the watch workers, like xentop",
		Description: `Shows every domain with its worker, events per second, queued events and the
handler running now, sorted by activity; stalled domains (a handler past the stall threshold, or
a plugin's stalled work such as a hung hotplug script) are highlighted. Keys: e events/s,
u queued, p processed, d dropped, s stalled, n name, i id, r reverse the order, q quit.

--batch prints plain frames separated by a blank line, as xentop -b does, for pipes and scripts;
it is also used when standard output is not a terminal. The short options are xentop's
(-b, -d, -i; -n as in top), written as xentop takes them too: -d 2 is two seconds, -n1 one
update. Exits 3 when the agent is not running.`,
		Flags: []cli.Flag{
			&cli.GenericFlag{Name: "delay", Aliases: []string{"d"}, Value: &seconds{time.Second}, Usage: "`DELAY` between updates: seconds, as xentop's -d 1, or a duration (500ms)"},
			&cli.IntFlag{Name: "iterations", Aliases: []string{"i", "n"}, Usage: "exit after `N` updates (0: until interrupted or q)"},
			&cli.BoolFlag{Name: "batch", Aliases: []string{"b"}, Usage: "print plain frames instead of the interactive view"},
		},
		OnUsageError: onUsageError,
		Action:       runTop,
	}
}

func runTop(c *cli.Context) error {
	if c.NArg() > 0 {
		return usagef("top takes no arguments")
	}
	delay, n := c.Generic("delay").(*seconds).d, c.Int("iterations")
	if delay <= 0 {
		return usagef("top: --delay must be positive, got %v", delay)
	}
	if n < 0 {
		return usagef("top: --iterations must not be negative, got %d", n)
	}
	g := globalsOf(c)
	cl := g.client()
	defer cl.Close()
	src := func(ctx context.Context) (control.Status, []control.Domain, error) {
		ctx, cancel := context.WithTimeout(ctx, g.timeout)
		defer cancel()
		st, err := cl.Status(ctx)
		if err != nil {
			return st, nil, agentErr(err)
		}
		doms, err := cl.Domains(ctx)
		if err != nil {
			return st, nil, agentErr(err)
		}
		return st, doms, nil
	}
	batch := c.Bool("batch")
	if f, ok := c.App.Writer.(*os.File); !batch && (!ok || !term.IsTerminal(int(f.Fd()))) {
		batch = true
	}
	if batch {
		return topBatch(c.Context, c.App.Writer, src, delay, n)
	}
	screen, err := tcell.NewScreen()
	if err != nil {
		return failf("top: terminal: %v", err)
	}
	return topInteractive(c.Context, screen, src, delay, n)
}

type topSource func(ctx context.Context) (control.Status, []control.Domain, error)

// topRow is a domain with its event rate since the previous frame.
type topRow struct {
	control.Domain
	rate float64
}

// topModel keeps the previous sample, to compute rates, and the sort order.
type topModel struct {
	prev    map[uint16]uint64
	prevAt  time.Time
	sortKey rune
	reverse bool
}

func newTopModel() *topModel { return &topModel{sortKey: 'e'} }

// rows computes rates against the previous sample (0 on the first frame, as
// xentop does) and sorts.
func (m *topModel) rows(doms []control.Domain, now time.Time) []topRow {
	elapsed := now.Sub(m.prevAt).Seconds()
	cur := make(map[uint16]uint64, len(doms))
	rows := make([]topRow, 0, len(doms))
	for _, d := range doms {
		r := topRow{Domain: d}
		cur[d.Domid] = d.Dispatched
		if old, ok := m.prev[d.Domid]; ok && elapsed > 0 && d.Dispatched >= old {
			r.rate = float64(d.Dispatched-old) / elapsed
		}
		rows = append(rows, r)
	}
	m.prev, m.prevAt = cur, now
	slices.SortStableFunc(rows, m.compare)
	return rows
}

// stalledAge is the age of the domain's oldest stall, -1 when none.
func stalledAge(d control.Domain) int64 { return d.StallAgeMS() }

// compare orders rows by the sort key, most active first, then by domid.
func (m *topModel) compare(a, b topRow) int {
	var c int
	switch m.sortKey {
	case 'n':
		c = strings.Compare(a.Name, b.Name)
	case 'i':
		c = 0
	case 'u':
		c = -cmp.Compare(a.Queued, b.Queued)
	case 'p':
		c = -cmp.Compare(a.Processed, b.Processed)
	case 'd':
		c = -cmp.Compare(a.Dropped, b.Dropped)
	case 's':
		c = -cmp.Compare(stalledAge(a.Domain), stalledAge(b.Domain))
	default: // 'e': activity
		c = -cmp.Compare(a.rate, b.rate)
		if c == 0 {
			c = -cmp.Compare(a.Queued, b.Queued)
		}
		if c == 0 {
			c = -cmp.Compare(stalledAge(a.Domain), stalledAge(b.Domain))
		}
	}
	if c == 0 {
		c = cmp.Compare(a.Domid, b.Domid)
	}
	if m.reverse {
		c = -c
	}
	return c
}

func topHeader(st control.Status, rows []topRow) string {
	var total float64
	for _, r := range rows {
		total += r.rate
	}
	return fmt.Sprintf("mtwatch top - %s, xenstored %s, %d domains, %d workers, %d stalled, %.1f events/s",
		st.Mode, st.Xenstore.State, st.Domains, st.Workers, st.Stalled, total)
}

func topTable(rows []topRow) *table {
	t := newTable("Name", ">ID", "Worker", ">Events/s", ">Queued", ">Processed", ">Dropped", ">Stalled", "Current")
	for _, r := range rows {
		stalled, current := stalledCell(r.Domain), "-"
		if r.Current != nil {
			current = r.Current.Path
		}
		t.add(orDash(r.Name), strconv.Itoa(int(r.Domid)), r.Worker, strconv.FormatFloat(r.rate, 'f', 1, 64),
			strconv.Itoa(r.Queued), strconv.FormatUint(r.Processed, 10), strconv.FormatUint(r.Dropped, 10), stalled, current)
	}
	return t
}

// topBatch prints n frames (0: until ctx ends) delay apart.
func topBatch(ctx context.Context, w io.Writer, src topSource, delay time.Duration, n int) error {
	m := newTopModel()
	tick := time.NewTicker(delay)
	defer tick.Stop()
	for i := 0; n == 0 || i < n; i++ {
		if i > 0 {
			select {
			case <-ctx.Done():
				return nil
			case <-tick.C:
			}
		}
		st, doms, err := src(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		rows := m.rows(doms, time.Now())
		if i > 0 {
			io.WriteString(w, "\n")
		}
		io.WriteString(w, topHeader(st, rows)+"\n")
		if err := topTable(rows).write(w); err != nil {
			return err
		}
	}
	return nil
}

// topInteractive runs the full-screen view on screen until q, ctx's end or
// n updates.
func topInteractive(ctx context.Context, screen tcell.Screen, src topSource, delay time.Duration, n int) error {
	// An agent that is not there is an error before the screen is taken
	// over; once running, a failed update is shown and retried.
	st, doms, err := src(ctx)
	if err != nil {
		return err
	}
	if err := screen.Init(); err != nil {
		return failf("top: terminal: %v", err)
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	// tcell delivers input on its own channel; this goroutine only forwards
	// until the screen is finalised, which closes the channel.
	events := make(chan tcell.Event, 16)
	go func() {
		defer close(events)
		for {
			ev := screen.PollEvent()
			if ev == nil {
				return
			}
			select {
			case events <- ev:
			case <-ctx.Done():
				return
			}
		}
	}()
	defer func() {
		screen.Fini()
		cancel()
		for range events { // wait for the forwarder to stop
		}
	}()

	m := newTopModel()
	var msg string
	refresh := func() {
		var err error
		st, doms, err = src(ctx)
		msg = ""
		if err != nil {
			msg = err.Error()
		}
	}
	rows := m.rows(doms, time.Now())
	draw := func() { drawTop(screen, st, rows, m, msg) }
	draw()
	tick := time.NewTicker(delay)
	defer tick.Stop()
	updates := 1
	for {
		if n > 0 && updates >= n {
			return nil
		}
		select {
		case <-ctx.Done():
			return nil
		case ev, ok := <-events:
			if !ok {
				return nil
			}
			switch ev := ev.(type) {
			case *tcell.EventKey:
				if ev.Key() == tcell.KeyEscape || ev.Key() == tcell.KeyCtrlC || ev.Rune() == 'q' || ev.Rune() == 'Q' {
					return nil
				}
				switch r := ev.Rune(); r {
				case 'e', 'u', 'p', 'd', 's', 'n', 'i':
					m.sortKey = r
				case 'r':
					m.reverse = !m.reverse
				}
				slices.SortStableFunc(rows, m.compare)
				draw()
			case *tcell.EventResize:
				screen.Sync()
				draw()
			}
		case <-tick.C:
			refresh()
			rows = m.rows(doms, time.Now())
			updates++
			draw()
		}
	}
}

func drawTop(s tcell.Screen, st control.Status, rows []topRow, m *topModel, msg string) {
	s.Clear()
	width, height := s.Size()
	put := func(y int, text string, style tcell.Style) {
		// One grapheme cluster per cell, or two for a wide one: names in
		// any script keep the columns aligned.
		x := 0
		g := uniseg.NewGraphemes(text)
		for g.Next() {
			rs, w := g.Runes(), g.Width()
			if x+w > width {
				break
			}
			s.SetContent(x, y, rs[0], rs[1:], style)
			x += max(w, 1)
		}
		for ; x < width; x++ {
			s.SetContent(x, y, ' ', nil, style)
		}
	}
	plain := tcell.StyleDefault
	put(0, topHeader(st, rows), plain.Bold(true))
	help := fmt.Sprintf("sort: %c%s  (e events/s, u queued, p processed, d dropped, s stalled, n name, i id, r reverse, q quit)",
		m.sortKey, map[bool]string{true: " reversed", false: ""}[m.reverse])
	put(1, help, plain.Dim(true))
	if msg != "" {
		put(1, msg, plain.Foreground(tcell.ColorRed))
	}
	var b strings.Builder
	topTable(rows).write(&b)
	lines := strings.Split(strings.TrimRight(b.String(), "\n"), "\n")
	for i, l := range lines {
		y := 3 + i
		if y >= height {
			break
		}
		style := plain
		switch {
		case i == 0:
			style = plain.Reverse(true)
		case stalledAge(rows[i-1].Domain) >= 0:
			style = plain.Foreground(tcell.ColorRed).Bold(true)
		}
		put(y, l, style)
	}
	s.Show()
}

// seconds is top's --delay: a number of seconds, as xentop's -d takes it
// ("-d 1", "-d 0.5"), or a Go duration ("500ms").
type seconds struct{ d time.Duration }

func (s *seconds) Set(v string) error {
	if f, err := strconv.ParseFloat(v, 64); err == nil {
		if math.IsNaN(f) || math.IsInf(f, 0) || f > math.MaxInt64/float64(time.Second) {
			return fmt.Errorf("%q: not a number of seconds", v)
		}
		s.d = time.Duration(f * float64(time.Second))
		return nil
	}
	d, err := time.ParseDuration(v)
	if err != nil {
		return fmt.Errorf("%q: neither seconds (1, 0.5) nor a duration (500ms)", v)
	}
	s.d = d
	return nil
}

func (s *seconds) String() string { return s.d.String() }

// splitShortOptions rewrites top's xentop-style glued short options, -n1,
// -d2, -i5, as -n 1, -d 2, -i 5: Go's flag parsing would read -n1 as a flag
// named "n1". Only the arguments after the first "top" are touched.
func splitShortOptions(args []string) []string {
	i := slices.Index(args, "top")
	if i < 0 {
		return args
	}
	out := append([]string(nil), args[:i+1]...)
	for _, a := range args[i+1:] {
		if len(a) > 2 && a[0] == '-' && strings.ContainsRune("dni", rune(a[1])) && (a[2] >= '0' && a[2] <= '9' || a[2] == '.') {
			out = append(out, a[:2], a[2:])
			continue
		}
		out = append(out, a)
	}
	return out
}
