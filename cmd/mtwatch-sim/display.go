package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"sync"
	"time"

	"github.com/schollz/progressbar/v3"
	"golang.org/x/term"

	"github.com/mtwatch/mtwatch/lib/sim"
)

// display shows progress: a bar on a terminal, with the --live command's
// output redrawn above it every interval; otherwise a line per domain, and
// the --live command's output once at the end of each phase (a log, not a
// screen: one snapshot per phase says what a snapshot a second would
// bury).
type display struct {
	w        io.Writer
	mode     string // bar, lines, none
	bar      *progressbar.ProgressBar
	liveCmd  string
	interval time.Duration

	mu        sync.Mutex
	liveLines int // lines of live output currently on screen
	cancel    context.CancelFunc
	done      chan struct{}
}

func newDisplay(w io.Writer, mode string, total int, liveCmd string, interval time.Duration) *display {
	if mode == "auto" {
		mode = "lines"
		if f, ok := w.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
			mode = "bar"
		}
	}
	d := &display{w: w, mode: mode, liveCmd: liveCmd, interval: interval}
	if mode == "bar" {
		d.bar = progressbar.NewOptions(total,
			progressbar.OptionSetWriter(w),
			progressbar.OptionSetDescription("domains created+destroyed"),
			progressbar.OptionShowCount(),
			progressbar.OptionSetWidth(30),
			progressbar.OptionSetElapsedTime(true),
			progressbar.OptionSetPredictTime(false),
			progressbar.OptionThrottle(50*time.Millisecond),
			progressbar.OptionSetRenderBlankState(true),
		)
	}
	return d
}

func (d *display) progress(p sim.Progress) {
	d.mu.Lock()
	defer d.mu.Unlock()
	switch d.mode {
	case "bar":
		if p.Err != nil {
			d.bar.Describe(fmt.Sprintf("domain %d: %s failed", p.Domid, p.Phase))
		}
		d.bar.Add(1)
	case "lines":
		status := "ok"
		if p.Err != nil {
			status = p.Err.Error()
		}
		fmt.Fprintf(d.w, "[%d/%d] %s domain %d: %s\n", p.Done, p.Total, p.Phase, p.Domid, status)
	}
}

// start runs the live command every interval until stop.
func (d *display) start(ctx context.Context) {
	if d.liveCmd == "" || d.mode != "bar" {
		return
	}
	ctx, d.cancel = context.WithCancel(ctx)
	d.done = make(chan struct{})
	go func() {
		defer close(d.done)
		t := time.NewTicker(d.interval)
		defer t.Stop()
		for {
			d.showLive(ctx)
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
		}
	}()
}

// phaseDone shows the live command's output once in lines mode, when
// every domain has been through phase.
func (d *display) phaseDone(phase string) {
	if d.liveCmd == "" || d.mode != "lines" {
		return
	}
	d.mu.Lock()
	fmt.Fprintf(d.w, "-- every domain through %s\n", phase)
	d.mu.Unlock()
	d.showLive(context.Background())
}

func (d *display) stop() {
	if d.cancel != nil {
		d.cancel()
		<-d.done
		d.showLive(context.Background()) // the final state
	}
	if d.bar != nil {
		d.mu.Lock()
		d.bar.Finish()
		fmt.Fprintln(d.w)
		d.mu.Unlock()
	}
}

func (d *display) showLive(ctx context.Context) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "sh", "-c", d.liveCmd).CombinedOutput()
	if ctx.Err() != nil && err != nil {
		return
	}
	text := strings.TrimRight(string(bytes.ToValidUTF8(out, nil)), "\n")
	lines := strings.Split(text, "\n")
	const maxLines = 30
	if len(lines) > maxLines {
		lines = append(lines[:maxLines-1], fmt.Sprintf("... (%d more lines)", len(lines)-maxLines+1))
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.mode != "bar" {
		fmt.Fprintf(d.w, "$ %s\n%s\n", d.liveCmd, strings.Join(lines, "\n"))
		return
	}
	// Redraw in place: clear the bar's line, go up over the previous
	// output, clear to the end of the screen, print, redraw the bar.
	d.bar.Clear()
	var b strings.Builder
	if d.liveLines > 0 {
		fmt.Fprintf(&b, "\x1b[%dA\r\x1b[J", d.liveLines)
	}
	fmt.Fprintf(&b, "$ %s\n", d.liveCmd)
	for _, l := range lines {
		b.WriteString(l)
		b.WriteString("\x1b[K\n")
	}
	io.WriteString(d.w, b.String())
	d.liveLines = len(lines) + 1
	d.bar.RenderBlank()
}
