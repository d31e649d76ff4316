package hotplug

import (
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/mtwatch/mtwatch/lib/domid"
)

// TestPool: never more than the cap run; a domain with fewer jobs running
// gets the next slot before one that queued 40 disks first (and, among
// domains with as many, the one waiting longest); teardown is
// admitted before set-up; a job cancelled while waiting never starts; a
// larger cap admits at once; after stop nothing is admitted.
func TestPool(t *testing.T) {
	t.Parallel()
	var mu sync.Mutex
	var started, live []*job
	p := newPool(2, func(j *job) {
		mu.Lock()
		started = append(started, j)
		live = append(live, j)
		mu.Unlock()
	})
	mk := func(dom domid.ID, dev string, add bool) *job {
		return &job{k: devKey{"vbd", dom, dev}, add: add}
	}
	// finish ends the oldest running job and returns what got its slot.
	finish := func() string {
		mu.Lock()
		j := live[0]
		live = live[1:]
		n := len(started)
		mu.Unlock()
		p.done(j)
		mu.Lock()
		defer mu.Unlock()
		if r, _, _ := p.counts(); r > p.cap {
			t.Fatalf("%d running, cap %d", r, p.cap)
		}
		if len(started) == n {
			return "-"
		}
		j = started[len(started)-1]
		a := "add"
		if !j.add {
			a = "rm"
		}
		return fmt.Sprintf("%s%d.%s", a, j.k.dom, j.k.devid)
	}
	for i := range 40 {
		p.submit(mk(1, fmt.Sprint(i), true)) // 0 and 1 run at once
	}
	p.submit(mk(2, "0", true))
	gone := mk(1, "x", true)
	p.submit(gone)
	if !p.cancel(gone) || p.cancel(gone) {
		t.Fatal("cancel of a waiting job")
	}
	var order []string
	order = append(order, finish()) // domain 2 has none running: its turn
	p.submit(mk(4, "0", true))
	p.submit(mk(3, "0", false))
	order = append(order, finish(), finish(), finish())
	want := []string{"add2.0", "rm3.0", "add1.2", "add4.0"}
	if !slices.Equal(order, want) {
		t.Errorf("admitted %s, want %s", strings.Join(order, " "), strings.Join(want, " "))
	}
	if r, w, peak := p.counts(); r != 2 || w != 37 || peak != 2 {
		t.Errorf("running %d waiting %d peak %d", r, w, peak)
	}
	mu.Lock()
	if slices.Contains(started, gone) {
		t.Error("a cancelled job started")
	}
	mu.Unlock()
	p.setCap(5)
	if r, w, _ := p.counts(); r != 5 || w != 34 {
		t.Errorf("after raising the cap: running %d waiting %d", r, w)
	}
	p.stop()
	if finish() != "-" {
		t.Error("a job admitted after stop")
	}
	if r, w, _ := p.counts(); r != 4 || w != 0 {
		t.Errorf("after stop: running %d waiting %d", r, w)
	}
}
