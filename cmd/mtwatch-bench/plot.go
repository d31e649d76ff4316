package main

import (
	"fmt"
	"image/color"
	"time"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
)

// plotCDF draws the latency CDF of scenario 2, one curve per variant, on a
// logarithmic time axis (the single worker's latencies are four orders of
// magnitude above the others').
func plotCDF(r *isolationResult, file, conditions string) error {
	p := plot.New()
	p.Title.Text = fmt.Sprintf("Healthy domains' event latency, %d of %d domains stalled %s per event", r.Stalled, r.Domains, r.Stall)
	p.X.Label.Text = "latency, write to handler start (ms, log scale)\n" + conditions
	p.Y.Label.Text = "fraction of events"
	p.X.Scale = plot.LogScale{}
	p.X.Tick.Marker = plot.LogTicks{Prec: -1}
	p.Y.Min, p.Y.Max = 0, 1
	p.Add(plotter.NewGrid())
	// Between the healthy curves, which rise within the first decades,
	// and the single worker's, a few decades to the right.
	p.Legend.Top = false
	p.Legend.Left = true
	p.Legend.XOffs = vg.Points(150)
	p.Legend.YOffs = vg.Points(40)
	colors := []color.Color{
		color.RGBA{R: 0x1f, G: 0x77, B: 0xb4, A: 0xff},
		color.RGBA{R: 0xd6, G: 0x27, B: 0x28, A: 0xff},
		color.RGBA{R: 0x2c, G: 0xa0, B: 0x2c, A: 0xff},
	}
	for i, v := range []string{isoMtwatch, isoSingle, isoNone} {
		s := r.samples[v]
		if len(s) == 0 {
			continue
		}
		pts := make(plotter.XYs, 0, len(s))
		for j, d := range s {
			ms := float64(d) / float64(time.Millisecond)
			pts = append(pts, plotter.XY{X: max(ms, 1e-3), Y: float64(j+1) / float64(len(s))})
		}
		l, err := plotter.NewLine(pts)
		if err != nil {
			return err
		}
		l.Color = colors[i]
		l.Width = vg.Points(1.5)
		if v == isoNone {
			l.Dashes = []vg.Length{vg.Points(4), vg.Points(3)}
		}
		p.Add(l)
		p.Legend.Add(fmt.Sprintf("%s (p99 %s)", v, fmtDur(r.P99[v].Median)), l)
	}
	p.Legend.Padding = vg.Points(4)
	p.Legend.TextStyle.XAlign = draw.XLeft
	return p.Save(9*vg.Inch, 5*vg.Inch, file)
}
