package hotplug

import (
	"slices"
	"sync"

	"github.com/mtwatch/mtwatch/lib/domid"
)

// pool admits jobs to run under a host-wide cap. Teardown is admitted before
// set-up (a remove frees what an add may be waiting for); within each class
// the next slot goes to the waiting domain with the fewest jobs running,
// the one waiting longest among equals: a domain with 40 disks queued does
// not starve one with a single disk. A job admitted runs on its own
// goroutine; done gives its slot to the next one.
type pool struct {
	mu      sync.Mutex
	cap     int
	running int
	peak    int
	byDom   map[domid.ID]int // jobs running per domain
	stopped bool
	classes [2]fairQueue // teardown, set-up
	start   func(*job)   // runs an admitted job on a new goroutine
}

const (
	classTeardown = 0
	classSetup    = 1
)

// fairQueue is a round-robin of per-domain FIFO queues.
type fairQueue struct {
	order []domid.ID
	byDom map[domid.ID][]*job
}

func newPool(limit int, start func(*job)) *pool {
	p := &pool{cap: limit, start: start, byDom: map[domid.ID]int{}}
	for i := range p.classes {
		p.classes[i].byDom = map[domid.ID][]*job{}
	}
	return p
}

// submit queues j and admits what the cap allows.
func (p *pool) submit(j *job) {
	p.mu.Lock()
	q := &p.classes[classSetup]
	if !j.add {
		q = &p.classes[classTeardown]
	}
	if len(q.byDom[j.k.dom]) == 0 {
		q.order = append(q.order, j.k.dom)
	}
	q.byDom[j.k.dom] = append(q.byDom[j.k.dom], j)
	j.queued = true
	run := p.admitLocked()
	p.mu.Unlock()
	p.launch(run)
}

// admitLocked takes the jobs the cap lets run now.
func (p *pool) admitLocked() []*job {
	var run []*job
	for !p.stopped && p.running < p.cap {
		j := p.nextLocked()
		if j == nil {
			break
		}
		p.running++
		p.peak = max(p.peak, p.running)
		run = append(run, j)
	}
	return run
}

func (p *pool) nextLocked() *job {
	for c := range p.classes {
		q := &p.classes[c]
		if len(q.order) == 0 {
			continue
		}
		best := 0
		for i, d := range q.order {
			if p.byDom[d] < p.byDom[q.order[best]] {
				best = i
			}
		}
		dom := q.order[best]
		q.order = slices.Delete(q.order, best, best+1)
		js := q.byDom[dom]
		j := js[0]
		if len(js) == 1 {
			delete(q.byDom, dom)
		} else {
			q.byDom[dom] = js[1:]
			q.order = append(q.order, dom) // its next job waits its turn
		}
		j.queued = false
		p.byDom[dom]++
		return j
	}
	return nil
}

func (p *pool) launch(run []*job) {
	for _, j := range run {
		p.start(j)
	}
}

// done releases the slot of a job that ended and admits the next ones.
func (p *pool) done(j *job) {
	p.mu.Lock()
	p.running--
	if p.byDom[j.k.dom]--; p.byDom[j.k.dom] <= 0 {
		delete(p.byDom, j.k.dom)
	}
	run := p.admitLocked()
	p.mu.Unlock()
	p.launch(run)
}

// cancel takes j out of its queue if it is still waiting; it reports
// whether it was.
func (p *pool) cancel(j *job) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !j.queued {
		return false
	}
	for c := range p.classes {
		q := &p.classes[c]
		js := q.byDom[j.k.dom]
		i := slices.Index(js, j)
		if i < 0 {
			continue
		}
		js = slices.Delete(js, i, i+1)
		if len(js) == 0 {
			delete(q.byDom, j.k.dom)
			q.order = slices.DeleteFunc(q.order, func(d domid.ID) bool { return d == j.k.dom })
		} else {
			q.byDom[j.k.dom] = js
		}
		j.queued = false
		return true
	}
	return false
}

// setCap changes the cap; a larger one admits waiting jobs at once, a
// smaller one lets the running ones finish.
func (p *pool) setCap(n int) {
	p.mu.Lock()
	p.cap = n
	run := p.admitLocked()
	p.mu.Unlock()
	p.launch(run)
}

// stop admits nothing more; the jobs still waiting are dropped (they
// never ran: the next start's scan finds their devices as they are).
func (p *pool) stop() {
	p.mu.Lock()
	p.stopped = true
	for c := range p.classes {
		p.classes[c] = fairQueue{byDom: map[domid.ID][]*job{}}
	}
	p.mu.Unlock()
}

// counts returns the jobs running and waiting, and the most that ever ran
// at once.
func (p *pool) counts() (running, waiting, peak int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for c := range p.classes {
		for _, js := range p.classes[c].byDom {
			waiting += len(js)
		}
	}
	return p.running, waiting, p.peak
}
