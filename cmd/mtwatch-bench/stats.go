package main

import (
	"fmt"
	"math"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"
)

// percentile returns the p-th percentile (nearest rank) of sorted ds.
func percentile(ds []time.Duration, p float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	i := int(math.Ceil(p/100*float64(len(ds)))) - 1
	return ds[max(0, min(i, len(ds)-1))]
}

// spread is a figure over several runs: its median and every run's value,
// in run order, so the noise of a shared host stays visible.
type spread struct {
	Median float64   `json:"median"`
	Min    float64   `json:"min"`
	Max    float64   `json:"max"`
	Runs   []float64 `json:"runs"`
}

func newSpread(vs []float64) spread {
	if len(vs) == 0 {
		return spread{}
	}
	s := slices.Clone(vs)
	slices.Sort(s)
	m := s[len(s)/2]
	if len(s)%2 == 0 {
		m = (s[len(s)/2-1] + s[len(s)/2]) / 2
	}
	return spread{Median: m, Min: s[0], Max: s[len(s)-1], Runs: vs}
}

// format prints the median and the runs with f.
func (s spread) format(f func(float64) string) string {
	runs := make([]string, len(s.Runs))
	for i, v := range s.Runs {
		runs[i] = f(v)
	}
	return f(s.Median) + " [" + strings.Join(runs, " ") + "]"
}

func fmtDur(us float64) string {
	switch {
	case us >= 1e6:
		return strconv.FormatFloat(us/1e6, 'f', 2, 64) + " s"
	case us >= 1e3:
		return strconv.FormatFloat(us/1e3, 'f', 2, 64) + " ms"
	default:
		return strconv.FormatFloat(us, 'f', 0, 64) + " µs"
	}
}

func fmtRate(v float64) string {
	if v >= 1e3 {
		return strconv.FormatFloat(v/1e3, 'f', 1, 64) + "k"
	}
	return strconv.FormatFloat(v, 'f', 0, 64)
}

// fmtCPU formats nanoseconds of CPU time per event.
func fmtCPU(ns float64) string { return strconv.FormatFloat(ns/1e3, 'f', 2, 64) + " µs" }

func fmtMiB(v float64) string { return strconv.FormatFloat(v, 'f', 1, 64) }

func fmtRatio(v float64) string { return strconv.FormatFloat(v, 'f', 2, 64) }

// rssMiB reads this process's resident set size.
func rssMiB() float64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == "VmRSS:" {
			kb, _ := strconv.ParseFloat(f[1], 64)
			return kb / 1024
		}
	}
	return 0
}

// rssPeak samples the resident set size every 20 ms until stop is called,
// which returns the highest sample. The kernel's VmHWM cannot be used: it
// covers the whole process life, earlier scenarios included.
func rssPeak() (stop func() float64) {
	done := make(chan struct{})
	res := make(chan float64, 1)
	go func() {
		peak := rssMiB()
		t := time.NewTicker(20 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-done:
				res <- max(peak, rssMiB())
				return
			case <-t.C:
				peak = max(peak, rssMiB())
			}
		}
	}()
	return func() float64 { close(done); return <-res }
}

// heapMiB is the live Go heap after a collection.
func heapMiB() float64 {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return float64(ms.HeapAlloc) / (1 << 20)
}

func us(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) }

func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "mtwatch-bench: "+format+"\n", args...)
}
