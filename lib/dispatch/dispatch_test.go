package dispatch

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mtwatch/mtwatch/lib/domid"
)

func TestRegisterRejectsBadWatches(t *testing.T) {
	d := newDispatcher(t, Config{})
	nop := func(context.Context, Event) error { return nil }
	register(t, d, WatchConfig{Path: "backend", Token: "taken", Handler: nop})
	tests := []struct {
		name string
		cfg  WatchConfig
		want error
	}{
		{"empty path", WatchConfig{Token: "a", Handler: nop}, ErrInvalidWatch},
		{"nil handler", WatchConfig{Path: "backend", Token: "a"}, ErrInvalidWatch},
		{"bad policy", WatchConfig{Path: "backend", Token: "a", Handler: nop, Coalesce: 7}, ErrInvalidWatch},
		{"reserved owner", WatchConfig{Path: "backend", Token: "a", Handler: nop, Owner: domid.Invalid}, ErrInvalidWatch},
		{"negative timeout", WatchConfig{Path: "backend", Token: "a", Handler: nop, Timeout: -1}, ErrInvalidWatch},
		{"duplicate token", WatchConfig{Path: "other", Token: "taken", Handler: nop}, ErrDuplicateToken},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			w, err := d.Register(tc.cfg)
			if !errors.Is(err, tc.want) || w != nil {
				t.Fatalf("Register = %v, %v; want error %v", w, err, tc.want)
			}
		})
	}
	if err := d.Dispatch("backend/vif/1/0", "a"); !errors.Is(err, ErrUnknownWatch) {
		t.Fatalf("Dispatch with a rejected watch's token = %v, want ErrUnknownWatch", err)
	}
	if got := d.Stats().Totals.Unmatched; got != 1 {
		t.Fatalf("Unmatched = %d, want 1", got)
	}
}

func TestDomainLifecycleErrors(t *testing.T) {
	d := newDispatcher(t, Config{})
	if err := d.CreateDomain(7); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		op   func() error
		want error
	}{
		{"create dom0", func() error { return d.CreateDomain(domid.Dom0) }, ErrInvalidDomain},
		{"create reserved", func() error { return d.CreateDomain(domid.FirstReserved) }, ErrInvalidDomain},
		{"create twice", func() error { return d.CreateDomain(7) }, ErrDomainExists},
		{"destroy unknown", func() error { return d.DestroyDomain(8) }, ErrNoDomain},
		{"destroy dom0", func() error { return d.DestroyDomain(domid.Dom0) }, ErrInvalidDomain},
		{"destroy reserved", func() error { return d.DestroyDomain(domid.Idle) }, ErrInvalidDomain},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.op()
			if !errors.Is(err, tc.want) {
				t.Fatalf("got %v, want %v", err, tc.want)
			}
			if !strings.Contains(err.Error(), "domain") {
				t.Fatalf("error %q does not name the domain", err)
			}
		})
	}
	if err := d.DestroyDomain(7); err != nil {
		t.Fatal(err)
	}
	if err := d.DestroyDomain(7); !errors.Is(err, ErrNoDomain) {
		t.Fatalf("second destroy = %v, want ErrNoDomain", err)
	}
	if err := d.CreateDomain(7); err != nil {
		t.Fatalf("re-create after destroy: %v", err)
	}
	if s := d.Stats(); s.Workers != 1 {
		t.Fatalf("Workers = %d, want 1", s.Workers)
	}
}

// TestRouting: each event runs on its domain's live worker, or on the
// default worker (I3).
func TestRouting(t *testing.T) {
	d := newDispatcher(t, Config{})
	rec := newRecorder()
	register(t, d, WatchConfig{Path: "backend", Token: "be", Handler: rec.handle})
	register(t, d, WatchConfig{Path: "/local/domain/9/device/vif/0/state", Token: "owned", Owner: 9, Handler: rec.handle})
	register(t, d, WatchConfig{Path: "custom", Token: "custom", Handler: rec.handle,
		DomainOf: func(p string) (domid.ID, bool) {
			if strings.HasPrefix(p, "custom/") {
				return 5, true
			}
			return 0, false
		}})
	for _, id := range []domid.ID{5, 9} {
		if err := d.CreateDomain(id); err != nil {
			t.Fatal(err)
		}
	}
	tests := []struct {
		path, token string
		worker      domid.ID
	}{
		{"backend/vif/5/0/state", "be", 5},
		{"/local/domain/0/backend/vbd/9/51712", "be", 9},
		{"/local/domain/5/device/vif/0", "be", 5},
		{"backend/vif/6/0", "be", domid.Dom0},  // no worker for 6
		{"backend/vif", "be", domid.Dom0},      // no domain
		{"backend/vif/05/0", "be", domid.Dom0}, // not canonical: never domain 5
		{"backend/vif/40000/0", "be", domid.Dom0},
		{"/local/domain/0/x", "be", domid.Dom0},
		{"@releaseDomain", "be", domid.Dom0},
		{"/local/domain/9/device/vif/0/state", "owned", 9},
		{"custom/anything", "custom", 5},
		{"backend/vif/9/0", "custom", domid.Dom0}, // custom DomainOf says no
	}
	for i, tc := range tests {
		dispatch(t, d, tc.path, tc.token)
		rn := rec.waitRuns(t, i+1)[i]
		if rn.Worker != tc.worker || rn.Path != tc.path || rn.Event.Token != tc.token {
			t.Errorf("%s (%s): ran %+v, want worker %d", tc.path, tc.token, rn, tc.worker)
		}
	}
}

// TestOrderAcrossCreate: events of a domain waiting on the default worker
// run before its new worker starts (I1).
func TestOrderAcrossCreate(t *testing.T) {
	d := newDispatcher(t, Config{})
	rec := newRecorder()
	register(t, d, WatchConfig{Path: "backend", Token: "be", Handler: rec.handle})
	register(t, d, WatchConfig{Path: "/local/domain/0", Token: "d0", Handler: rec.handle})
	release := rec.blockOn("/local/domain/0/busy")
	dispatch(t, d, "/local/domain/0/busy", "d0")
	rec.waitRuns(t, 1)
	dispatch(t, d, "backend/vif/3/e1", "be") // queued on the default worker
	dispatch(t, d, "backend/vif/3/e2", "be")
	if err := d.CreateDomain(3); err != nil {
		t.Fatal(err)
	}
	dispatch(t, d, "backend/vif/3/e3", "be") // to the new worker, which must wait
	// Another domain's worker is not held up by the busy default worker.
	if err := d.CreateDomain(4); err != nil {
		t.Fatal(err)
	}
	dispatch(t, d, "backend/vif/4/x", "be")
	if rn := rec.waitRuns(t, 2)[1]; rn.Path != "backend/vif/4/x" {
		t.Fatalf("second call was %+v, want domain 4's event (domain 3's new worker must wait)", rn)
	}
	if st, _ := d.DomainStats(3); st.Queued != 3 || st.Current != nil {
		t.Fatalf("domain 3: %+v, want 3 queued and nothing running", st)
	}
	release()
	runs := rec.waitRuns(t, 5)
	want := []run{
		{Path: "backend/vif/3/e1", Worker: domid.Dom0},
		{Path: "backend/vif/3/e2", Worker: domid.Dom0},
		{Path: "backend/vif/3/e3", Worker: 3},
	}
	var got []run
	for _, rn := range runs {
		if strings.HasPrefix(rn.Path, "backend/vif/3/") {
			got = append(got, run{Path: rn.Path, Worker: rn.Worker})
		}
	}
	if !slices.Equal(got, want) {
		t.Fatalf("domain 3 ran %+v, want %+v", got, want)
	}
}

// TestOrderAcrossDestroy: events queued before DestroyDomain run first, on the
// domain's worker, with a cancelled context; later ones wait for the drain,
// then run on the default worker, which is not blocked meanwhile (I1, I3).
func TestOrderAcrossDestroy(t *testing.T) {
	d := newDispatcher(t, Config{})
	rec := newRecorder()
	cancelled := make(chan error, 1)
	release := make(chan struct{})
	handler := func(ctx context.Context, ev Event) error {
		if err := rec.handle(ctx, ev); err != nil {
			return err
		}
		if ev.Path == "backend/vif/3/e1" {
			<-ctx.Done()
			cancelled <- ctx.Err()
			<-release
		}
		return nil
	}
	register(t, d, WatchConfig{Path: "backend", Token: "be", Handler: handler})
	if err := d.CreateDomain(3); err != nil {
		t.Fatal(err)
	}
	dispatch(t, d, "backend/vif/3/e1", "be")
	rec.waitRuns(t, 1)
	dispatch(t, d, "backend/vif/3/e2", "be")
	if err := d.DestroyDomain(3); err != nil {
		t.Fatal(err)
	}
	if err := recv(t, cancelled, "context cancelled by DestroyDomain"); !errors.Is(err, context.Canceled) {
		t.Fatalf("handler context: %v", err)
	}
	dispatch(t, d, "backend/vif/3/e3", "be")
	dispatch(t, d, "backend/vif/3/e4", "be")
	// The default worker is free, and e3/e4 are held, not queued on it:
	// had they been, they would run before this event.
	dispatch(t, d, "backend/vif/0x", "be")
	if rn := rec.waitRuns(t, 2)[1]; rn.Path != "backend/vif/0x" || rn.Worker != domid.Dom0 {
		t.Fatalf("second call %+v, want backend/vif/0x on the default worker", rn)
	}
	if st, _ := d.DomainStats(3); st.Worker || st.Draining != 1 || st.Queued != 3 {
		t.Fatalf("domain 3 while draining: %+v", st)
	}
	close(release)
	runs := rec.waitRuns(t, 5)
	var got []run
	for _, rn := range runs {
		if strings.HasPrefix(rn.Path, "backend/vif/3/") {
			got = append(got, run{Path: rn.Path, Worker: rn.Worker})
		}
	}
	want := []run{
		{Path: "backend/vif/3/e1", Worker: 3},
		{Path: "backend/vif/3/e2", Worker: 3},
		{Path: "backend/vif/3/e3", Worker: domid.Dom0},
		{Path: "backend/vif/3/e4", Worker: domid.Dom0},
	}
	if !slices.Equal(got, want) {
		t.Fatalf("domain 3 ran %+v, want %+v", got, want)
	}
	waitAtMost(t, d, 0)
	if _, ok := d.DomainStats(3); ok {
		t.Fatal("domain 3 still known after its worker drained and its events ran")
	}
	if s := d.Stats(); s.Totals.GuestOnDefault != 2 {
		t.Fatalf("GuestOnDefault = %d, want e3 and e4", s.Totals.GuestOnDefault)
	}
	if s := d.Stats(); s.Workers != 0 {
		t.Fatalf("Workers = %d after destroy, want 0", s.Workers)
	}
}

// TestRecreateWhileDraining chains worker generations: each must wait for
// the previous one and for the events released in between (I1, I3).
func TestRecreateWhileDraining(t *testing.T) {
	d := newDispatcher(t, Config{})
	rec := newRecorder()
	register(t, d, WatchConfig{Path: "backend", Token: "be", Handler: rec.handle})
	release := rec.blockOn("backend/vif/3/e1")
	if err := d.CreateDomain(3); err != nil {
		t.Fatal(err)
	}
	dispatch(t, d, "backend/vif/3/e1", "be")
	rec.waitRuns(t, 1)
	steps := []func() error{
		func() error { return d.DestroyDomain(3) },
		func() error { return d.Dispatch("backend/vif/3/e2", "be") },
		func() error { return d.CreateDomain(3) },
		func() error { return d.Dispatch("backend/vif/3/e3", "be") },
		func() error { return d.DestroyDomain(3) },
		func() error { return d.Dispatch("backend/vif/3/e4", "be") },
		func() error { return d.CreateDomain(3) },
		func() error { return d.Dispatch("backend/vif/3/e5", "be") },
	}
	for i, step := range steps {
		if err := step(); err != nil {
			t.Fatalf("step %d: %v", i, err)
		}
	}
	if s := d.Stats(); s.Workers != 3 {
		t.Fatalf("Workers = %d, want 3 generations", s.Workers)
	}
	rec.noRunsBeyond(t, 1, "an event overtaking the blocked one")
	release()
	runs := rec.waitRuns(t, 5)
	want := []run{
		{Path: "backend/vif/3/e1", Worker: 3},
		{Path: "backend/vif/3/e2", Worker: domid.Dom0},
		{Path: "backend/vif/3/e3", Worker: 3},
		{Path: "backend/vif/3/e4", Worker: domid.Dom0},
		{Path: "backend/vif/3/e5", Worker: 3},
	}
	var got []run
	for _, rn := range runs {
		got = append(got, run{Path: rn.Path, Worker: rn.Worker})
	}
	if !slices.Equal(got, want) {
		t.Fatalf("ran %+v, want %+v", got, want)
	}
	waitAtMost(t, d, 0)
	if s := d.Stats(); s.Workers != 1 {
		t.Fatalf("Workers = %d after drain, want 1", s.Workers)
	}
}

// TestDomainsDoNotWaitForEachOther: a stuck domain holds up neither other
// domains nor the default worker (I2); in single-worker mode it holds
// up everything, which is what mtwatch fixes.
func TestDomainsDoNotWaitForEachOther(t *testing.T) {
	for _, single := range []bool{false, true} {
		t.Run(fmt.Sprintf("single=%v", single), func(t *testing.T) {
			d := newDispatcher(t, Config{SingleWorker: single})
			rec := newRecorder()
			register(t, d, WatchConfig{Path: "backend", Token: "be", Handler: rec.handle})
			for id := domid.ID(1); id <= 3; id++ {
				if err := d.CreateDomain(id); err != nil {
					t.Fatal(err)
				}
			}
			release := rec.blockOn("backend/vif/1/stuck")
			defer release()
			dispatch(t, d, "backend/vif/1/stuck", "be")
			rec.waitRuns(t, 1)
			dispatch(t, d, "backend/vif/1/later", "be")
			dispatch(t, d, "backend/vif/2/a", "be")
			dispatch(t, d, "backend/vif/3/a", "be")
			dispatch(t, d, "@introduceDomain", "be")
			if single {
				rec.noRunsBeyond(t, 1, "an event running beside the stuck one in single-worker mode")
				release()
				runs := rec.waitRuns(t, 5)
				for _, rn := range runs {
					if rn.Worker != domid.Dom0 {
						t.Fatalf("single-worker mode ran %+v on a domain worker", rn)
					}
				}
				return
			}
			runs := rec.waitRuns(t, 4)
			got := []string{runs[1].Path, runs[2].Path, runs[3].Path}
			slices.Sort(got)
			if want := []string{"@introduceDomain", "backend/vif/2/a", "backend/vif/3/a"}; !slices.Equal(got, want) {
				t.Fatalf("while domain 1 is stuck ran %v, want %v", got, want)
			}
		})
	}
}

// TestCoalescing: coalescing policies and filters (I5).
func TestCoalescing(t *testing.T) {
	tests := []struct {
		name      string
		pending   Coalesce
		filter    func(path string, pending int) bool
		dispatch  []string
		want      []string // calls after the blocking one
		coalesced uint64
		filtered  uint64
	}{
		{
			name:      "per path",
			dispatch:  []string{"backend/vif/1/a", "backend/vif/1/b", "backend/vif/1/a", "backend/vif/1/a", "backend/vif/1/b"},
			want:      []string{"backend/vif/1/a", "backend/vif/1/b"},
			coalesced: 3,
		},
		{
			name:      "per watch",
			pending:   CoalescePerWatch,
			dispatch:  []string{"backend/vif/1/a", "backend/vif/1/b", "backend/vif/1/a"},
			want:      []string{"backend/vif/1/a"},
			coalesced: 2,
		},
		{
			name:     "filter at most two pending",
			filter:   func(_ string, pending int) bool { return pending < 2 },
			dispatch: []string{"backend/vif/1/a", "backend/vif/1/b", "backend/vif/1/c", "backend/vif/1/a"},
			want:     []string{"backend/vif/1/a", "backend/vif/1/b"},
			filtered: 2,
		},
		{
			name:     "filter by path",
			filter:   func(p string, _ int) bool { return strings.HasSuffix(p, "/state") },
			dispatch: []string{"backend/vif/1/state", "backend/vif/1/other", "backend/vif/1/state"},
			want:     []string{"backend/vif/1/state"},
			// The filter runs first: the third event is filtered out only
			// if the filter says so; here it is accepted, then coalesced.
			filtered:  1,
			coalesced: 1,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			d := newDispatcher(t, Config{})
			rec := newRecorder()
			register(t, d, WatchConfig{Path: "/local/domain/0", Token: "block", Handler: rec.handle})
			w := register(t, d, WatchConfig{Path: "backend", Token: "be", Handler: rec.handle, Coalesce: tc.pending, Filter: tc.filter})
			if err := d.CreateDomain(1); err != nil {
				t.Fatal(err)
			}
			// Block domain 1's worker with another watch's event, so
			// everything below stays pending.
			release := rec.blockOn("/local/domain/1/block")
			dispatch(t, d, "/local/domain/1/block", "block")
			rec.waitRuns(t, 1)
			for _, p := range tc.dispatch {
				dispatch(t, d, p, "be")
			}
			release()
			waitAtMost(t, d, 0)
			got := rec.paths()[1:]
			if !slices.Equal(got, tc.want) {
				t.Fatalf("ran %v, want %v", got, tc.want)
			}
			ws := w.Stats()
			if ws.Coalesced != tc.coalesced || ws.Filtered != tc.filtered {
				t.Fatalf("watch stats %+v, want coalesced %d filtered %d", ws, tc.coalesced, tc.filtered)
			}
			tot := d.Stats().Totals
			if tot.Coalesced != tc.coalesced || tot.Filtered != tc.filtered {
				t.Fatalf("totals %+v", tot)
			}
		})
	}
}

// TestCoalesceOnlyPending: an event identical to one already running is
// queued, since the handler may have read XenStore before the change (I5).
func TestCoalesceOnlyPending(t *testing.T) {
	d := newDispatcher(t, Config{})
	rec := newRecorder()
	register(t, d, WatchConfig{Path: "backend", Token: "be", Handler: rec.handle})
	release := rec.blockOn("backend/vif/0/a")
	dispatch(t, d, "backend/vif/0/a", "be")
	rec.waitRuns(t, 1)
	dispatch(t, d, "backend/vif/0/a", "be")
	dispatch(t, d, "backend/vif/0/a", "be")
	rec.mu.Lock()
	delete(rec.block, "backend/vif/0/a")
	rec.mu.Unlock()
	release()
	waitAtMost(t, d, 0)
	if got := rec.paths(); len(got) != 2 {
		t.Fatalf("ran %v, want the running event and one coalesced follow-up", got)
	}
}

// TestOverflowNotice: a full domain queue drops events into one overflow
// notice per watch (I5, I6).
func TestOverflowNotice(t *testing.T) {
	const capacity = 4
	d := newDispatcher(t, Config{Capacity: capacity})
	rec := newRecorder()
	w1 := register(t, d, WatchConfig{Path: "backend", Token: "be", Handler: rec.handle})
	w2 := register(t, d, WatchConfig{Path: "/local/domain/2", Token: "fe", Handler: rec.handle})
	if err := d.CreateDomain(2); err != nil {
		t.Fatal(err)
	}
	release := rec.blockOn("backend/vif/2/block")
	dispatch(t, d, "backend/vif/2/block", "be")
	rec.waitRuns(t, 1)
	for i := range 10 { // 4 fit, 6 dropped
		dispatch(t, d, fmt.Sprintf("backend/vif/2/%d", i), "be")
	}
	for i := range 3 { // all dropped: the domain's queue is full
		dispatch(t, d, fmt.Sprintf("/local/domain/2/%d", i), "fe")
	}
	// The flood stays bounded whatever the guest writes.
	for i := range 10000 {
		dispatch(t, d, fmt.Sprintf("backend/vif/2/flood/%d", i), "be")
	}
	if st, _ := d.DomainStats(2); st.Queued != capacity || st.Dropped != 6+3+10000 {
		t.Fatalf("domain 2 during flood: %+v", st)
	}
	release()
	waitAtMost(t, d, 0)
	runs := rec.waitRuns(t, 7)
	if len(runs) != 7 {
		t.Fatalf("ran %d calls, want 1 + 4 events + 2 notices: %v", len(runs), rec.paths())
	}
	for i, rn := range runs[1:5] {
		if want := fmt.Sprintf("backend/vif/2/%d", i); rn.Path != want || rn.Event.Overflow {
			t.Fatalf("call %d: %+v, want event %s", i+1, rn, want)
		}
	}
	want := map[string]Event{
		"be": {Path: "backend", Token: "be", Domid: 2, Overflow: true, Dropped: 6 + 10000},
		"fe": {Path: "/local/domain/2", Token: "fe", Domid: 2, Overflow: true, Dropped: 3},
	}
	for _, rn := range runs[5:] {
		if rn.Event != want[rn.Event.Token] || rn.Worker != 2 {
			t.Fatalf("notice %+v on worker %d, want %+v on worker 2", rn.Event, rn.Worker, want[rn.Event.Token])
		}
	}
	tot := d.Stats().Totals
	if tot.Dropped != 10009 || tot.Overflows != 2 {
		t.Fatalf("totals %+v", tot)
	}
	if s1, s2 := w1.Stats(), w2.Stats(); s1.Dropped != 10006 || s2.Dropped != 3 {
		t.Fatalf("watch stats %+v %+v", s1, s2)
	}
	// Once the notice has run, a new overflow gets a new notice.
	release = rec.blockOn("backend/vif/2/block2")
	dispatch(t, d, "backend/vif/2/block2", "be")
	rec.waitRuns(t, 8)
	for i := range capacity + 1 {
		dispatch(t, d, fmt.Sprintf("backend/vif/2/again/%d", i), "be")
	}
	release()
	runs = rec.waitRuns(t, 8+capacity+1)
	if last := runs[len(runs)-1].Event; !last.Overflow || last.Dropped != 1 {
		t.Fatalf("last call %+v, want a new notice for 1 dropped event", last)
	}
}

// TestUnregisterDropsPendingAndWaits: Unregister purges the watch's pending
// events and waits for its running handlers (I4).
func TestUnregisterDropsPendingAndWaits(t *testing.T) {
	d := newDispatcher(t, Config{})
	rec := newRecorder()
	wa := register(t, d, WatchConfig{Path: "backend", Token: "a", Handler: rec.handle})
	wb := register(t, d, WatchConfig{Path: "/local/domain", Token: "b", Handler: rec.handle})
	register(t, d, WatchConfig{Path: "/local/domain/0", Token: "c", Handler: rec.handle})
	if err := d.CreateDomain(1); err != nil {
		t.Fatal(err)
	}
	releaseDefault := rec.blockOn("/local/domain/0/block")
	dispatch(t, d, "/local/domain/0/block", "c")
	rec.waitRuns(t, 1)
	release := rec.blockOn("backend/vif/1/running")
	dispatch(t, d, "backend/vif/1/running", "a")
	rec.waitRuns(t, 2)
	dispatch(t, d, "backend/vif/1/pending", "a")
	dispatch(t, d, "/local/domain/1/b1", "b")
	dispatch(t, d, "/local/domain/5/b2", "b") // on the default worker
	dispatch(t, d, "/local/domain/1/b3", "b")

	// b is not running: Unregister returns at once and drops b's events.
	if err := wb.Unregister(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := d.Dispatch("/local/domain/1/b4", "b"); !errors.Is(err, ErrUnknownWatch) {
		t.Fatalf("Dispatch after Unregister = %v, want ErrUnknownWatch", err)
	}
	// a is running: Unregister waits for the handler.
	done := make(chan error, 1)
	go func() { done <- wa.Unregister(context.Background()) }()
	notWithin(t, done, "Unregister returning while its handler runs")
	// A deadline ends the wait with the context's error.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Millisecond)
	defer cancel()
	if err := wa.Unregister(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Unregister with a deadline = %v", err)
	}
	release()
	if err := recv(t, done, "Unregister"); err != nil {
		t.Fatal(err)
	}
	releaseDefault()
	waitAtMost(t, d, 0)
	if got := rec.paths(); !slices.Equal(got, []string{"/local/domain/0/block", "backend/vif/1/running"}) {
		t.Fatalf("ran %v; unregistered watches' pending events must be dropped", got)
	}
	if tot := d.Stats().Totals; tot.Purged != 4 {
		t.Fatalf("Purged = %d, want 4", tot.Purged)
	}
	// The token can be registered again.
	register(t, d, WatchConfig{Path: "backend", Token: "a", Handler: rec.handle})
	dispatch(t, d, "backend/vif/1/new", "a")
	rec.waitRuns(t, 3)
}

// TestUnregisterFromHandler: a handler unregistering its own watch does not
// wait for itself, but does wait for the watch's handlers on other workers;
// two such handlers unregistering at once do not deadlock (I4).
func TestUnregisterFromHandler(t *testing.T) {
	d := newDispatcher(t, Config{})
	var w *Registration
	var arrived sync.WaitGroup
	arrived.Add(2)
	results := make(chan error, 2)
	w = register(t, d, WatchConfig{Path: "backend", Token: "be", Handler: func(ctx context.Context, ev Event) error {
		arrived.Done()
		arrived.Wait() // both handlers run at once
		results <- w.Unregister(ctx)
		return nil
	}})
	for _, id := range []domid.ID{1, 2} {
		if err := d.CreateDomain(id); err != nil {
			t.Fatal(err)
		}
	}
	dispatch(t, d, "backend/vif/1/0", "be")
	dispatch(t, d, "backend/vif/2/0", "be")
	for range 2 {
		if err := recv(t, results, "self-unregister"); err != nil {
			t.Fatal(err)
		}
	}
	waitAtMost(t, d, 0)
	if st := w.Stats(); st.Running != 0 || st.Processed != 2 {
		t.Fatalf("watch stats %+v", st)
	}
}

// TestUnregisterOwnerWatch: unregistering a watch with an owner purges its
// events from the owner's workers and the default worker (I4).
func TestUnregisterOwnerWatch(t *testing.T) {
	d := newDispatcher(t, Config{})
	rec := newRecorder()
	register(t, d, WatchConfig{Path: "/local/domain/0", Token: "block", Handler: rec.handle})
	w := register(t, d, WatchConfig{Path: "/local/domain/4/device/vif/0/state", Token: "fe", Owner: 4, Handler: rec.handle})
	release := rec.blockOn("/local/domain/0/block")
	dispatch(t, d, "/local/domain/0/block", "block")
	rec.waitRuns(t, 1)
	dispatch(t, d, "/local/domain/4/device/vif/0/state", "fe") // waits on the default worker
	if err := d.CreateDomain(4); err != nil {
		t.Fatal(err)
	}
	dispatch(t, d, "/local/domain/4/device/vif/0/state", "fe") // coalesced: still pending
	if err := w.Unregister(context.Background()); err != nil {
		t.Fatal(err)
	}
	release()
	waitAtMost(t, d, 0)
	if got := rec.paths(); len(got) != 1 {
		t.Fatalf("ran %v", got)
	}
	// The purge released domain 4's new worker.
	register(t, d, WatchConfig{Path: "backend", Token: "be", Handler: rec.handle})
	dispatch(t, d, "backend/vif/4/x", "be")
	if rn := rec.waitRuns(t, 2)[1]; rn.Worker != 4 {
		t.Fatalf("ran %+v, want on worker 4", rn)
	}
}

func TestHandlerPanicRecovered(t *testing.T) {
	logs := newLogCapture()
	d := newDispatcher(t, Config{Logger: slogNew(logs)})
	rec := newRecorder()
	w := register(t, d, WatchConfig{Path: "backend", Token: "be", Handler: func(ctx context.Context, ev Event) error {
		if strings.HasSuffix(ev.Path, "/boom") {
			panic("boom in handler")
		}
		return rec.handle(ctx, ev)
	}})
	if err := d.CreateDomain(6); err != nil {
		t.Fatal(err)
	}
	dispatch(t, d, "backend/vif/6/boom", "be")
	dispatch(t, d, "backend/vif/6/after", "be")
	if rn := rec.waitRuns(t, 1)[0]; rn.Path != "backend/vif/6/after" || rn.Worker != 6 {
		t.Fatalf("after the panic ran %+v", rn)
	}
	r := logs.waitMessage(t, "panicked")
	a := attrs(r)
	if a["panic"].String() != "boom in handler" || a["domid"].String() != "6" || a["path"].String() != "backend/vif/6/boom" {
		t.Fatalf("panic log attrs %v", a)
	}
	if st := a["stack"].String(); !strings.Contains(st, "TestHandlerPanicRecovered") {
		t.Fatalf("panic log has no stack of the handler:\n%s", st)
	}
	// The recorder saw the event inside the handler; the counters follow
	// when it returns.
	waitAtMost(t, d, 0)
	if tot := d.Stats().Totals; tot.Panics != 1 {
		t.Fatalf("Panics = %d", tot.Panics)
	}
	if ws := w.Stats(); ws.Panics != 1 || ws.Processed != 2 {
		t.Fatalf("watch stats %+v", ws)
	}
}

func TestHandlerErrorCounted(t *testing.T) {
	logs := newLogCapture()
	d := newDispatcher(t, Config{Logger: slogNew(logs)})
	w := register(t, d, WatchConfig{Path: "backend", Token: "be", Handler: func(context.Context, Event) error {
		return errors.New("cannot read state")
	}})
	dispatch(t, d, "backend/vif/3/state", "be")
	r := logs.waitMessage(t, "failed")
	if a := attrs(r); a["err"].String() != "cannot read state" {
		t.Fatalf("attrs %v", a)
	}
	waitAtMost(t, d, 0)
	if ws := w.Stats(); ws.Errors != 1 {
		t.Fatalf("watch stats %+v", ws)
	}
}

func TestStallDetection(t *testing.T) {
	logs := newLogCapture()
	d := newDispatcher(t, Config{Logger: slogNew(logs), StallThreshold: 20 * time.Millisecond})
	rec := newRecorder()
	w := register(t, d, WatchConfig{Path: "backend", Token: "be", Handler: rec.handle})
	if err := d.CreateDomain(8); err != nil {
		t.Fatal(err)
	}
	release := rec.blockOn("backend/vbd/8/51712/state")
	dispatch(t, d, "backend/vbd/8/51712/state", "be")
	rec.waitRuns(t, 1)
	r := logs.waitMessage(t, "stalled")
	a := attrs(r)
	if a["domid"].String() != "8" || a["watch"].String() != "backend" || a["path"].String() != "backend/vbd/8/51712/state" ||
		a["duration"].Duration() < 20*time.Millisecond {
		t.Fatalf("stall log attrs %v", a)
	}
	st, _ := d.DomainStats(8)
	if c := st.Current; c == nil || !c.Stalled || c.Age < 20*time.Millisecond || c.Path != "backend/vbd/8/51712/state" || c.Token != "be" {
		t.Fatalf("domain 8 current callback %+v", st.Current)
	}
	if tot := d.Stats().Totals; tot.Stalls != 1 {
		t.Fatalf("Stalls = %d", tot.Stalls)
	}
	release()
	logs.waitMessage(t, "stalled handler returned")
	if ws := w.Stats(); ws.Stalls != 1 {
		t.Fatalf("watch stats %+v", ws)
	}
	// Reported once per callback, not once per monitor tick.
	waitAtMost(t, d, 0)
	if tot := d.Stats().Totals; tot.Stalls != 1 {
		t.Fatalf("Stalls = %d after the callback returned", tot.Stalls)
	}
}

func TestWatchTimeout(t *testing.T) {
	d := newDispatcher(t, Config{})
	errs := make(chan error, 1)
	register(t, d, WatchConfig{Path: "backend", Token: "be", Timeout: 5 * time.Millisecond, Handler: func(ctx context.Context, ev Event) error {
		<-ctx.Done()
		errs <- ctx.Err()
		return nil
	}})
	dispatch(t, d, "backend/vif/1/0", "be")
	if err := recv(t, errs, "timeout"); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("handler context ended with %v", err)
	}
}

// TestStopDrainsAndCancels: Stop cancels and drains, then everything fails
// (I7, I8).
func TestStopDrainsAndCancels(t *testing.T) {
	d, err := New(Config{Logger: slogNew(newLogCapture())})
	if err != nil {
		t.Fatal(err)
	}
	rec := newRecorder()
	ctxErrs := make(chan error, 8)
	register(t, d, WatchConfig{Path: "backend", Token: "be", Handler: func(ctx context.Context, ev Event) error {
		if ev.Path == "backend/vif/1/first" {
			<-ctx.Done() // only Stop ends this one
		}
		ctxErrs <- ctx.Err()
		return rec.handle(ctx, ev)
	}})
	if err := d.CreateDomain(1); err != nil {
		t.Fatal(err)
	}
	dispatch(t, d, "backend/vif/1/first", "be")
	dispatch(t, d, "backend/vif/1/second", "be")
	dispatch(t, d, "backend/vif/2/other", "be")
	recv(t, ctxErrs, "other event") // the default worker's event ran
	stopped := make(chan error, 1)
	go func() { stopped <- d.Stop(context.Background()) }()
	if err := recv(t, stopped, "Stop"); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if err := recv(t, ctxErrs, "drained event"); !errors.Is(err, context.Canceled) {
			t.Fatalf("drained handler context: %v", err)
		}
	}
	got := rec.paths()
	slices.Sort(got)
	if want := []string{"backend/vif/1/first", "backend/vif/1/second", "backend/vif/2/other"}; !slices.Equal(got, want) {
		t.Fatalf("ran %v, want %v", got, want)
	}
	for name, err := range map[string]error{
		"Dispatch":      d.Dispatch("backend/vif/1/x", "be"),
		"CreateDomain":  d.CreateDomain(2),
		"DestroyDomain": d.DestroyDomain(1),
	} {
		if !errors.Is(err, ErrStopped) {
			t.Errorf("%s after Stop = %v, want ErrStopped", name, err)
		}
	}
	if _, err := d.Register(WatchConfig{Path: "x", Token: "x", Handler: rec.handle}); !errors.Is(err, ErrStopped) {
		t.Errorf("Register after Stop = %v", err)
	}
	if err := d.Stop(context.Background()); err != nil {
		t.Errorf("second Stop = %v", err)
	}
	noLeak(t)
}

// TestStopDeadlineDiscardsPending: a Stop whose context ends purges what has
// not started (I5).
func TestStopDeadlineDiscardsPending(t *testing.T) {
	d, err := New(Config{Logger: slogNew(newLogCapture())})
	if err != nil {
		t.Fatal(err)
	}
	rec := newRecorder()
	release := rec.blockOn("backend/vif/1/stuck")
	register(t, d, WatchConfig{Path: "backend", Token: "be", Handler: rec.handle}) // ignores ctx
	for _, id := range []domid.ID{1, 2} {
		if err := d.CreateDomain(id); err != nil {
			t.Fatal(err)
		}
	}
	dispatch(t, d, "backend/vif/1/stuck", "be")
	rec.waitRuns(t, 1)
	dispatch(t, d, "backend/vif/1/pending", "be")
	if err := d.DestroyDomain(1); err != nil {
		t.Fatal(err)
	}
	dispatch(t, d, "backend/vif/1/held", "be")
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if err := d.Stop(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Stop with a stuck handler = %v, want DeadlineExceeded", err)
	}
	if tot := d.Stats().Totals; tot.Purged != 2 {
		t.Fatalf("Purged = %d, want 2", tot.Purged)
	}
	release()
	noLeak(t)
	if got := rec.paths(); !slices.Equal(got, []string{"backend/vif/1/stuck"}) {
		t.Fatalf("ran %v", got)
	}
	if err := d.Stop(context.Background()); err != nil {
		t.Fatalf("Stop once everything ended = %v", err)
	}
}

// TestIdleWorkersOwnNoGoroutine: domain workers cost no goroutine while idle,
// and a worker's goroutine exits when its queue empties (I7).
func TestIdleWorkersOwnNoGoroutine(t *testing.T) {
	d := newDispatcher(t, Config{StallThreshold: -1}) // no monitor either
	rec := newRecorder()
	register(t, d, WatchConfig{Path: "backend", Token: "be", Handler: rec.handle})
	for id := domid.ID(1); id <= 1000; id++ {
		if err := d.CreateDomain(id); err != nil {
			t.Fatal(err)
		}
	}
	for id := domid.ID(1); id <= 1000; id += 100 {
		dispatch(t, d, fmt.Sprintf("backend/vif/%d/0", id), "be")
	}
	rec.waitRuns(t, 10)
	noLeak(t)
	if s := d.Stats(); s.Workers != 1000 || s.Totals.Processed != 10 {
		t.Fatalf("stats %+v", s.Totals)
	}
}

// TestSingleWorkerMode: the baseline runs every event on the default worker,
// still in order (I1).
func TestSingleWorkerMode(t *testing.T) {
	d := newDispatcher(t, Config{SingleWorker: true})
	rec := newRecorder()
	register(t, d, WatchConfig{Path: "backend", Token: "be", Handler: rec.handle})
	if err := d.CreateDomain(3); err != nil {
		t.Fatal(err)
	}
	var want []string
	for i := range 20 {
		p := fmt.Sprintf("backend/vif/%d/%d", 3+i%2, i)
		want = append(want, p)
		dispatch(t, d, p, "be")
	}
	if err := d.DestroyDomain(3); err != nil {
		t.Fatal(err)
	}
	runs := rec.waitRuns(t, 20)
	for i, rn := range runs {
		if rn.Path != want[i] || rn.Worker != domid.Dom0 || rn.Domid != domid.ID(3+i%2) {
			t.Fatalf("call %d: %+v", i, rn)
		}
	}
	if s := d.Stats(); s.Workers != 0 {
		t.Fatalf("Workers = %d in single-worker mode", s.Workers)
	}
}

func TestStatsLatency(t *testing.T) {
	d := newDispatcher(t, Config{})
	rec := newRecorder()
	register(t, d, WatchConfig{Path: "backend", Token: "be", Handler: rec.handle})
	if err := d.CreateDomain(2); err != nil {
		t.Fatal(err)
	}
	release := rec.blockOn("backend/vif/2/slow")
	dispatch(t, d, "backend/vif/2/slow", "be")
	rec.waitRuns(t, 1)
	dispatch(t, d, "backend/vif/2/next", "be")
	s := d.Stats()
	if len(s.Domains) != 2 || s.Domains[0].Domid != domid.Dom0 || s.Domains[1].Domid != 2 {
		t.Fatalf("domains %+v", s.Domains)
	}
	if st := s.Domains[1]; !st.Worker || st.Queued != 1 || st.Current == nil || st.Current.Path != "backend/vif/2/slow" {
		t.Fatalf("domain 2 %+v", st)
	}
	time.Sleep(5 * time.Millisecond) // latency only needs to be at least this
	release()
	waitAtMost(t, d, 0)
	st, _ := d.DomainStats(2)
	if st.Processed != 2 || st.MaxLatency < 5*time.Millisecond || st.LastLatency <= 0 || st.Current != nil {
		t.Fatalf("domain 2 after %+v", st)
	}
}

// TestChurnBehindBusyDefaultIsBounded: create/destroy cycles of a domain
// whose events wait behind a stuck default worker do not pile up worker
// generations (I6), and every event still runs once, in order, on the worker
// that was live when it was dispatched (I1, I3).
func TestChurnBehindBusyDefaultIsBounded(t *testing.T) {
	const cycles = 2000
	tests := []struct {
		name        string
		live, after bool // dispatch an event while the worker is live / after its destruction
		maxDraining int
	}{
		{"no events", false, false, 1},
		{"events while live", true, false, 1},
		{"events after destroy", false, true, 1},
		// Generations that hold events are bounded by those events: one
		// per live event at most, and each waits behind an event released
		// to the default worker.
		{"both", true, true, cycles},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			d := newDispatcher(t, Config{Capacity: 2*cycles + 2, StallThreshold: -1})
			rec := newRecorder()
			register(t, d, WatchConfig{Path: "backend", Token: "be", Handler: rec.handle})
			release := rec.blockOn("/local/domain/0/busy")
			defer release()
			dispatch(t, d, "/local/domain/0/busy", "be")
			rec.waitRuns(t, 1)
			// Domain 3 has an event behind the stuck one: each new worker
			// of 3 must wait for it.
			dispatch(t, d, "backend/vif/3/0", "be")
			want := []run{{Path: "backend/vif/3/0", Worker: domid.Dom0}}
			event := func(worker domid.ID) {
				p := fmt.Sprintf("backend/vif/3/%d", len(want))
				dispatch(t, d, p, "be")
				want = append(want, run{Path: p, Worker: worker})
			}
			for range cycles {
				if err := d.CreateDomain(3); err != nil {
					t.Fatal(err)
				}
				if tc.live {
					event(3)
				}
				if err := d.DestroyDomain(3); err != nil {
					t.Fatal(err)
				}
				if tc.after {
					event(domid.Dom0)
				}
			}
			st, _ := d.DomainStats(3)
			if st.Draining > tc.maxDraining || d.Stats().Workers > tc.maxDraining {
				t.Fatalf("after %d create/destroy cycles: %d generations draining, %d workers; want at most %d",
					cycles, st.Draining, d.Stats().Workers, tc.maxDraining)
			}
			release()
			rec.waitRuns(t, 1+len(want))
			waitAtMost(t, d, 0)
			var got []run
			for _, rn := range rec.waitRuns(t, 1+len(want))[1:] {
				got = append(got, run{Path: rn.Path, Worker: rn.Worker})
			}
			if !slices.Equal(got, want) {
				for i := range min(len(got), len(want)) {
					if got[i] != want[i] {
						t.Fatalf("run %d is %+v, want %+v", i, got[i], want[i])
					}
				}
				t.Fatalf("ran %d events, want %d", len(got), len(want))
			}
			if s := d.Stats(); s.Workers != 0 {
				t.Fatalf("Workers = %d after the drain, want 0", s.Workers)
			}
		})
	}
}

// TestRegisterFailsOnceStopBegan: Stop's promise that Register fails from
// then on holds for a Register already under way (I8). The test holds the
// token table so that Register stalls just before adding the watch, and lets
// Stop run meanwhile.
func TestRegisterFailsOnceStopBegan(t *testing.T) {
	d := newDispatcher(t, Config{StallThreshold: -1})
	nop := func(context.Context, Event) error { return nil }
	d.wmu.Lock()
	registered := make(chan error, 1)
	go func() {
		_, err := d.Register(WatchConfig{Path: "backend", Token: "late", Handler: nop})
		registered <- err
	}()
	time.Sleep(50 * time.Millisecond) // Register reaches the token table
	stopped := make(chan error, 1)
	go func() { stopped <- d.Stop(context.Background()) }()
	time.Sleep(50 * time.Millisecond) // Stop gets as far as it can
	stopReturned := false
	select {
	case err := <-stopped:
		stopReturned = true
		if err != nil {
			t.Fatalf("Stop: %v", err)
		}
	default:
	}
	d.wmu.Unlock()
	err := recv(t, registered, "Register")
	if stopReturned && !errors.Is(err, ErrStopped) {
		t.Fatalf("Register completing after Stop returned = %v, want ErrStopped", err)
	}
	if !stopReturned {
		if err := recv(t, stopped, "Stop"); err != nil {
			t.Fatalf("Stop: %v", err)
		}
	}
	if _, err := d.Register(WatchConfig{Path: "backend", Token: "later", Handler: nop}); !errors.Is(err, ErrStopped) {
		t.Fatalf("Register after Stop = %v, want ErrStopped", err)
	}
}

// TestDom0StatsShowDefaultWorker: dom0's worker is the default worker, so
// dom0's entry carries the default worker's running handler, whoever's
// event it is; a guest with its own worker is not affected.
func TestDom0StatsShowDefaultWorker(t *testing.T) {
	d := newDispatcher(t, Config{})
	rec := newRecorder()
	register(t, d, WatchConfig{Path: "backend", Token: "be", Handler: rec.handle})
	release := rec.blockOn("backend/vif/0/slow")
	defer release()
	dispatch(t, d, "backend/vif/0/slow", "be")
	rec.waitRuns(t, 1)
	st, ok := d.DomainStats(domid.Dom0)
	if c := st.Current; !ok || c == nil || c.Path != "backend/vif/0/slow" || c.Domid != domid.Dom0 || c.Token != "be" {
		t.Fatalf("dom0 %+v (current %+v)", st, st.Current)
	}
	if s := d.Stats(); s.Domains[0].Current == nil || *s.Domains[0].Current != *s.Default.Current {
		t.Fatalf("Stats: dom0 current %+v, default %+v", s.Domains[0].Current, s.Default.Current)
	}
	release()
	waitAtMost(t, d, 0)

	// A domain without a worker runs on the default worker: dom0's entry
	// shows it, with the domain's id.
	release4 := rec.blockOn("backend/vif/4/slow")
	defer release4()
	dispatch(t, d, "backend/vif/4/slow", "be")
	rec.waitRuns(t, 2)
	if st, _ := d.DomainStats(domid.Dom0); st.Current == nil || st.Current.Domid != 4 {
		t.Fatalf("dom0 while 4's event runs on the default worker: %+v", st.Current)
	}
	release4()
	waitAtMost(t, d, 0)
	if st, _ := d.DomainStats(domid.Dom0); st.Current != nil {
		t.Fatalf("dom0 idle: %+v", st.Current)
	}
}

// TestSetStallThreshold: a threshold changed while running applies to the
// monitor (and to stats), in either direction, and can turn detection on
// when it started off.
func TestSetStallThreshold(t *testing.T) {
	for _, start := range []time.Duration{time.Hour, -1} {
		t.Run(fmt.Sprint(start), func(t *testing.T) {
			logs := newLogCapture()
			d := newDispatcher(t, Config{Logger: slogNew(logs), StallThreshold: start})
			rec := newRecorder()
			register(t, d, WatchConfig{Path: "backend", Token: "be", Handler: rec.handle})
			if err := d.CreateDomain(8); err != nil {
				t.Fatal(err)
			}
			release := rec.blockOn("backend/vif/8/slow")
			defer release()
			dispatch(t, d, "backend/vif/8/slow", "be")
			rec.waitRuns(t, 1)
			time.Sleep(30 * time.Millisecond)
			if got := d.StallThreshold(); got != start {
				t.Fatalf("StallThreshold() = %v, want %v", got, start)
			}
			d.SetStallThreshold(20 * time.Millisecond)
			deadline := time.Now().Add(waitLimit)
			for d.Stats().Totals.Stalls == 0 {
				if time.Now().After(deadline) {
					t.Fatal("the new threshold was not applied")
				}
				time.Sleep(time.Millisecond)
			}
			logs.waitMessage(t, "handler stalled")
			if st, _ := d.DomainStats(8); st.Current == nil || !st.Current.Stalled {
				t.Fatalf("domain 8 %+v", st.Current)
			}
			release()
			waitAtMost(t, d, 0)
		})
	}
}

// TestWaitIdle: WaitIdle returns once every queued and running event of
// every worker has run, and with ctx's error while a handler still runs.
func TestWaitIdle(t *testing.T) {
	d := newDispatcher(t, Config{})
	rec := newRecorder()
	release := rec.blockOn("backend/vif/1/stuck")
	register(t, d, WatchConfig{Path: "backend", Token: "be", Handler: rec.handle})
	if err := d.WaitIdle(context.Background()); err != nil {
		t.Fatalf("WaitIdle with nothing queued: %v", err)
	}
	if err := d.CreateDomain(1); err != nil {
		t.Fatal(err)
	}
	dispatch(t, d, "backend/vif/1/stuck", "be")
	dispatch(t, d, "backend/vif/1/after", "be")
	dispatch(t, d, "backend/vif/2/other", "be")
	recv(t, rec.started, "first event")
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if err := d.WaitIdle(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("WaitIdle with a handler blocked = %v, want DeadlineExceeded", err)
	}
	idle := make(chan error, 1)
	go func() { idle <- d.WaitIdle(context.Background()) }()
	notWithin(t, idle, "WaitIdle")
	release()
	if err := recv(t, idle, "WaitIdle"); err != nil {
		t.Fatal(err)
	}
	got := rec.paths()
	slices.Sort(got)
	if want := []string{"backend/vif/1/after", "backend/vif/1/stuck", "backend/vif/2/other"}; !slices.Equal(got, want) {
		t.Fatalf("ran %v before WaitIdle returned, want %v", got, want)
	}
}

// TestSingleWorkerCountersKept: in single-worker mode no domain has a
// worker, yet its per-domain counters must not go back to zero each time
// its events have all run: they last from CreateDomain to DestroyDomain, as
// a worker's do in the default mode, so per-domain rates computed from two
// snapshots (mtwatch top) stay right.
func TestSingleWorkerCountersKept(t *testing.T) {
	d := newDispatcher(t, Config{SingleWorker: true})
	rec := newRecorder()
	register(t, d, WatchConfig{Path: "backend", Token: "be", Handler: rec.handle})
	if err := d.CreateDomain(3); err != nil {
		t.Fatal(err)
	}
	processed := func() (uint64, bool) {
		for _, ds := range d.Stats().Domains {
			if ds.Domid == 3 {
				return ds.Processed, true
			}
		}
		return 0, false
	}
	var last uint64
	for round := 1; round <= 3; round++ {
		for i := range 5 {
			dispatch(t, d, fmt.Sprintf("backend/vif/3/%d", i), "be")
		}
		rec.waitRuns(t, 5*round)
		waitAtMost(t, d, 0)
		got, ok := processed()
		if !ok || got != uint64(5*round) || got < last {
			t.Fatalf("round %d: domain 3 processed %d (listed %v), want %d", round, got, ok, 5*round)
		}
		if ds := d.Stats(); ds.Workers != 0 {
			t.Fatalf("Workers = %d in single-worker mode", ds.Workers)
		}
		last = got
	}
	if err := d.DestroyDomain(3); err != nil {
		t.Fatal(err)
	}
	// Gone with the domain, as a destroyed worker's counters are.
	if _, ok := processed(); ok {
		t.Fatal("domain 3 still listed after DestroyDomain")
	}
}

// TestDetach: Detach drops the watch's pending events and takes no new
// ones, like Unregister, but returns while the watch's handler runs; that
// handler runs to its end.
func TestDetach(t *testing.T) {
	d := newDispatcher(t, Config{})
	rec := newRecorder()
	w := register(t, d, WatchConfig{Path: "backend", Token: "a", Handler: rec.handle})
	if err := d.CreateDomain(1); err != nil {
		t.Fatal(err)
	}
	release := rec.blockOn("backend/vif/1/running")
	dispatch(t, d, "backend/vif/1/running", "a")
	rec.waitRuns(t, 1)
	dispatch(t, d, "backend/vif/1/pending", "a")
	done := make(chan struct{})
	go func() { w.Detach(); close(done) }()
	recv(t, done, "Detach while its handler runs")
	if err := d.Dispatch("backend/vif/1/later", "a"); !errors.Is(err, ErrUnknownWatch) {
		t.Fatalf("Dispatch after Detach = %v, want ErrUnknownWatch", err)
	}
	release()
	waitAtMost(t, d, 0)
	if got := rec.paths(); !slices.Equal(got, []string{"backend/vif/1/running"}) {
		t.Fatalf("ran %v; the detached watch's pending event must be dropped", got)
	}
	if err := w.Unregister(context.Background()); err != nil {
		t.Fatal(err)
	}
}

// TestPost: an event a plugin posts runs as one from xenstored would: on
// the worker of its path's domain, after what was queued before it,
// filtered and coalesced; it is refused once the watch is gone.
func TestPost(t *testing.T) {
	d := newDispatcher(t, Config{})
	rec := newRecorder()
	refuse := "backend/vbd/5/99"
	w := register(t, d, WatchConfig{Path: "backend", Token: "be", Handler: rec.handle,
		Filter: func(p string, _ int) bool { return p != refuse }})
	if err := d.CreateDomain(5); err != nil {
		t.Fatal(err)
	}
	dispatch(t, d, "backend/vbd/5/768/state", "be")
	for _, p := range []string{"backend/vbd/5/768", refuse, "backend/vbd/6/768"} {
		if err := w.Post(p); err != nil {
			t.Fatalf("Post(%q): %v", p, err)
		}
	}
	// Workers run side by side: the order holds within a worker.
	byWorker := map[domid.ID][]string{}
	for _, rn := range rec.waitRuns(t, 3)[:3] {
		if rn.Event.Token != "be" {
			t.Errorf("run %+v: token", rn)
		}
		byWorker[rn.Worker] = append(byWorker[rn.Worker], rn.Path)
	}
	if got := byWorker[5]; !slices.Equal(got, []string{"backend/vbd/5/768/state", "backend/vbd/5/768"}) {
		t.Errorf("domain 5's worker ran %v", got)
	}
	if got := byWorker[domid.Dom0]; !slices.Equal(got, []string{"backend/vbd/6/768"}) {
		t.Errorf("the default worker ran %v", got)
	}
	if st := w.Stats(); st.Filtered != 1 {
		t.Errorf("stats %+v: the filter did not see the post", st)
	}
	ctx, cancel := context.WithTimeout(context.Background(), waitLimit)
	defer cancel()
	if err := w.Unregister(ctx); err != nil {
		t.Fatal(err)
	}
	if err := w.Post("backend/vbd/5/768"); !errors.Is(err, ErrUnknownWatch) {
		t.Errorf("Post after Unregister: %v", err)
	}
}
