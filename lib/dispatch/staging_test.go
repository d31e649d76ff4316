package dispatch

import (
	"context"
	"errors"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/mtwatch/mtwatch/lib/domid"
)

// pathsOf returns the paths and workers of runs whose path has one of the
// prefixes.
func pathsOf(runs []run, prefix string) []run {
	var out []run
	for _, rn := range runs {
		if len(rn.Path) >= len(prefix) && rn.Path[:len(prefix)] == prefix {
			out = append(out, run{Path: rn.Path, Worker: rn.Worker})
		}
	}
	return out
}

// blockDefault occupies the default worker until the returned func is
// called, as a hung dom0 handler does.
func blockDefault(t *testing.T, d *Dispatcher, rec *recorder) (release func()) {
	t.Helper()
	register(t, d, WatchConfig{Path: "/local/domain/0", Token: "d0", Handler: rec.handle})
	release = rec.blockOn("/local/domain/0/busy")
	t.Cleanup(release)
	dispatch(t, d, "/local/domain/0/busy", "d0")
	rec.waitRuns(t, 1)
	return release
}

// TestStagingPromotesInOrder: a guest's events dispatched before its worker
// exists wait for it, not on the (hung) default worker, and run first on
// the new worker, in order.
func TestStagingPromotesInOrder(t *testing.T) {
	var staged []domid.ID
	d := newDispatcher(t, Config{Staging: true, OnStage: func(id domid.ID) { staged = append(staged, id) }})
	rec := newRecorder()
	register(t, d, WatchConfig{Path: "backend", Token: "be", Handler: rec.handle})
	blockDefault(t, d, rec)
	for _, p := range []string{"backend/vif/3/e1", "backend/vif/3/e2", "backend/vif/3/e3"} {
		dispatch(t, d, p, "be")
	}
	if st, _ := d.DomainStats(3); st.Staged != 3 || st.Queued != 3 {
		t.Fatalf("domain 3 before its worker: %+v, want 3 staged", st)
	}
	if s := d.Stats(); s.Default.Queued != 0 {
		t.Fatalf("default worker holds %d events, want none of domain 3's", s.Default.Queued)
	}
	rec.noRunsBeyond(t, 1, "a staged event running without a worker")
	if err := d.CreateDomain(3); err != nil {
		t.Fatal(err)
	}
	dispatch(t, d, "backend/vif/3/e4", "be")
	got := pathsOf(rec.waitRuns(t, 5), "backend/vif/3/")
	want := []run{
		{Path: "backend/vif/3/e1", Worker: 3}, {Path: "backend/vif/3/e2", Worker: 3},
		{Path: "backend/vif/3/e3", Worker: 3}, {Path: "backend/vif/3/e4", Worker: 3},
	}
	if !slices.Equal(got, want) {
		t.Fatalf("domain 3 ran %+v, want %+v", got, want)
	}
	s := d.Stats()
	if s.Totals.Staged != 3 || s.Totals.Promoted != 3 || s.Totals.Flushed != 0 || s.Totals.GuestOnDefault != 0 {
		t.Fatalf("totals %+v, want 3 staged and promoted", s.Totals)
	}
	if !slices.Equal(staged, []domid.ID{3}) {
		t.Fatalf("OnStage calls %v, want one for domain 3", staged)
	}
	// dom0's events and paths of no domain are not staged.
	dispatch(t, d, "backend/vif/0/x", "be")
	if s := d.Stats(); s.Default.Queued != 1 {
		t.Fatalf("default queue %d, want dom0's event", s.Default.Queued)
	}
}

// TestStagingBounds: a domid's staging queue holds at most Capacity events,
// all domids together StagingLimit; the rest become the usual overflow
// notice, staged and promoted after the events.
func TestStagingBounds(t *testing.T) {
	d := newDispatcher(t, Config{Staging: true, Capacity: 2, StagingLimit: 3})
	rec := newRecorder()
	register(t, d, WatchConfig{Path: "backend", Token: "be", Handler: rec.handle})
	for _, p := range []string{"backend/vif/3/a", "backend/vif/3/b", "backend/vif/3/c", "backend/vif/3/d",
		"backend/vif/4/a", "backend/vif/4/b", "backend/vif/5/a"} {
		dispatch(t, d, p, "be")
	}
	s := d.Stats()
	if s.Totals.Staged != 3 || s.Totals.Dropped != 4 || s.Totals.Overflows != 3 {
		t.Fatalf("totals %+v, want 3 staged, 4 dropped in 3 notices", s.Totals)
	}
	for _, id := range []domid.ID{3, 4, 5} {
		if err := d.CreateDomain(id); err != nil {
			t.Fatal(err)
		}
	}
	runs := rec.waitRuns(t, 6)
	var notices []run
	for _, rn := range runs {
		if rn.Event.Overflow {
			notices = append(notices, run{Path: rn.Path, Worker: rn.Worker, Event: rn.Event})
		}
	}
	if len(notices) != 3 {
		t.Fatalf("runs %+v: want 3 overflow notices", runs)
	}
	if got := pathsOf(runs, "backend/vif/3/"); !slices.Equal(got, []run{{Path: "backend/vif/3/a", Worker: 3}, {Path: "backend/vif/3/b", Worker: 3}}) {
		t.Fatalf("domain 3 ran %+v", got)
	}
	for _, rn := range runs {
		if rn.Worker == domid.Dom0 {
			t.Fatalf("%+v ran on the default worker", rn)
		}
	}
	waitAtMost(t, d, 0)
}

// TestStagingFlush: staged events of a domid that gets no worker run on a
// drain generation of their own, never on the default worker: on
// FlushStaged (a cancelled context for a domid that is no domain, a live one
// otherwise), and by themselves after the staging timeout.
func TestStagingFlush(t *testing.T) {
	logs := newLogCapture()
	d := newDispatcher(t, Config{Staging: true, StagingTimeout: 100 * time.Millisecond, Logger: slogNew(logs)})
	rec := newRecorder()
	var mu sync.Mutex
	ctxErr := map[string]error{}
	register(t, d, WatchConfig{Path: "backend", Token: "be", Handler: func(ctx context.Context, ev Event) error {
		mu.Lock()
		ctxErr[ev.Path] = ctx.Err()
		mu.Unlock()
		return rec.handle(ctx, ev)
	}})
	blockDefault(t, d, rec)
	dispatch(t, d, "backend/vif/3/a", "be")
	dispatch(t, d, "backend/vif/3/b", "be")
	if n, err := d.FlushStaged(3, true); n != 2 || err != nil {
		t.Fatalf("FlushStaged(3) = %d, %v; want 2", n, err)
	}
	got := pathsOf(rec.waitRuns(t, 3), "backend/vif/3/")
	if !slices.Equal(got, []run{{Path: "backend/vif/3/a", Worker: 3}, {Path: "backend/vif/3/b", Worker: 3}}) {
		t.Fatalf("domain 3 ran %+v", got)
	}
	start := time.Now()
	dispatch(t, d, "backend/vif/4/a", "be")
	rn := recv(t, rec.started, "the timed-out flush")
	for rn.Path != "backend/vif/4/a" {
		rn = recv(t, rec.started, "the timed-out flush")
	}
	if rn.Worker != 4 {
		t.Fatalf("flushed event ran on %v, want a drain generation of 4", rn.Worker)
	}
	if waited := time.Since(start); waited < 100*time.Millisecond {
		t.Fatalf("flushed after %v, before the staging timeout", waited)
	}
	logs.waitMessage(t, "staged events flushed")
	waitAtMost(t, d, 1) // the blocked dom0 event
	mu.Lock()
	for _, p := range []string{"backend/vif/3/a", "backend/vif/3/b"} {
		if !errors.Is(ctxErr[p], context.Canceled) {
			t.Errorf("%s ran with context error %v, want cancelled (no domain)", p, ctxErr[p])
		}
	}
	// Whether 4 is a domain is unknown after a timeout: a live context.
	if err := ctxErr["backend/vif/4/a"]; err != nil {
		t.Errorf("timed-out flush ran with context error %v, want a live context", err)
	}
	mu.Unlock()
	if s := d.Stats(); s.Totals.Flushed != 3 || s.Workers != 0 {
		t.Fatalf("totals %+v, workers %d: want 3 flushed and no worker left", s.Totals, s.Workers)
	}
	for _, tc := range []struct {
		id   domid.ID
		want error
	}{{0, ErrInvalidDomain}, {domid.FirstReserved, ErrInvalidDomain}} {
		if _, err := d.FlushStaged(tc.id, true); !errors.Is(err, tc.want) {
			t.Errorf("FlushStaged(%d) = %v, want %v", tc.id, err, tc.want)
		}
	}
	if n, err := d.FlushStaged(9, true); n != 0 || err != nil {
		t.Errorf("FlushStaged of an unknown domid = %d, %v", n, err)
	}
	dispatch(t, d, "backend/vif/7/a", "be")
	if n, err := d.FlushStaged(7, false); n != 1 || err != nil {
		t.Fatalf("FlushStaged(7, false) = %d, %v", n, err)
	}
	dispatch(t, d, "backend/vif/5/a", "be")
	dispatch(t, d, "backend/vif/6/a", "be")
	if n := d.FlushAllStaged(); n != 2 {
		t.Fatalf("FlushAllStaged = %d, want 2", n)
	}
	waitAtMost(t, d, 1)
	mu.Lock()
	for _, p := range []string{"backend/vif/7/a", "backend/vif/5/a", "backend/vif/6/a"} {
		if err, ran := ctxErr[p]; !ran || err != nil {
			t.Errorf("%s: ran %v, context error %v; want a live context", p, ran, err)
		}
	}
	mu.Unlock()
}

// TestStagingFlushFollowsDrain: staged events of a destroyed domain that is
// still draining, flushed, run after the drain (I1 within an incarnation).
func TestStagingFlushFollowsDrain(t *testing.T) {
	d := newDispatcher(t, Config{Staging: true})
	rec := newRecorder()
	register(t, d, WatchConfig{Path: "backend", Token: "be", Handler: rec.handle})
	release := rec.blockOn("backend/vif/3/e1")
	if err := d.CreateDomain(3); err != nil {
		t.Fatal(err)
	}
	dispatch(t, d, "backend/vif/3/e1", "be")
	rec.waitRuns(t, 1)
	dispatch(t, d, "backend/vif/3/e2", "be")
	if err := d.DestroyDomain(3); err != nil {
		t.Fatal(err)
	}
	dispatch(t, d, "backend/vif/3/e3", "be")
	if n, _ := d.FlushStaged(3, true); n != 1 {
		t.Fatalf("flushed %d, want 1", n)
	}
	rec.noRunsBeyond(t, 1, "an event overtaking the blocked one")
	release()
	got := pathsOf(rec.waitRuns(t, 3), "backend/vif/3/")
	want := []run{{Path: "backend/vif/3/e1", Worker: 3}, {Path: "backend/vif/3/e2", Worker: 3}, {Path: "backend/vif/3/e3", Worker: 3}}
	if !slices.Equal(got, want) {
		t.Fatalf("ran %+v, want %+v", got, want)
	}
	waitAtMost(t, d, 0)
	if s := d.Stats(); s.Workers != 0 {
		t.Fatalf("Workers = %d, want 0", s.Workers)
	}
}

// TestIncarnationDoesNotWait: a reused domid's new incarnation runs while
// the old one's handler hangs; the events staged in between are the new
// one's; the old incarnation keeps its own order.
func TestIncarnationDoesNotWait(t *testing.T) {
	d := newDispatcher(t, Config{Staging: true})
	rec := newRecorder()
	register(t, d, WatchConfig{Path: "backend", Token: "be", Handler: rec.handle})
	release := rec.blockOn("backend/vif/3/old1")
	if err := d.CreateIncarnation(3, "uuid-a"); err != nil {
		t.Fatal(err)
	}
	dispatch(t, d, "backend/vif/3/old1", "be")
	rec.waitRuns(t, 1)
	dispatch(t, d, "backend/vif/3/old2", "be")
	if err := d.DestroyDomain(3); err != nil {
		t.Fatal(err)
	}
	dispatch(t, d, "backend/vif/3/new1", "be") // before the new worker exists
	if err := d.CreateIncarnation(3, "uuid-b"); err != nil {
		t.Fatal(err)
	}
	dispatch(t, d, "backend/vif/3/new2", "be")
	runs := rec.waitRuns(t, 3)
	if got := pathsOf(runs[1:], "backend/vif/3/"); !slices.Equal(got, []run{{Path: "backend/vif/3/new1", Worker: 3}, {Path: "backend/vif/3/new2", Worker: 3}}) {
		t.Fatalf("new incarnation ran %+v while the old one hangs", got)
	}
	st, _ := d.DomainStats(3)
	if !st.Worker || st.Draining != 1 || st.Current == nil || st.Current.Path != "backend/vif/3/old1" {
		t.Fatalf("domain 3: %+v, want a live worker and the old generation draining", st)
	}
	release()
	runs = rec.waitRuns(t, 4)
	if runs[3].Path != "backend/vif/3/old2" {
		t.Fatalf("last run %+v, want old2 after old1", runs[3])
	}
	waitAtMost(t, d, 0)
	if s := d.Stats(); s.Workers != 1 {
		t.Fatalf("Workers = %d, want the new incarnation's only", s.Workers)
	}
	// The same incarnation again is an error; unknown incarnations order.
	if err := d.CreateIncarnation(3, "uuid-b"); !errors.Is(err, ErrDomainExists) {
		t.Fatalf("CreateIncarnation of the live incarnation: %v", err)
	}
	if err := d.CreateIncarnation(3, ""); !errors.Is(err, ErrDomainExists) {
		t.Fatalf("CreateIncarnation of an unknown incarnation over a live one: %v", err)
	}
}

// TestIncarnationSameOrders: the same incarnation created again while its
// destroyed generation drains still waits for it (I1).
func TestIncarnationSameOrders(t *testing.T) {
	d := newDispatcher(t, Config{Staging: true})
	rec := newRecorder()
	register(t, d, WatchConfig{Path: "backend", Token: "be", Handler: rec.handle})
	release := rec.blockOn("backend/vif/3/e1")
	if err := d.CreateIncarnation(3, "uuid-a"); err != nil {
		t.Fatal(err)
	}
	dispatch(t, d, "backend/vif/3/e1", "be")
	rec.waitRuns(t, 1)
	if err := d.DestroyDomain(3); err != nil {
		t.Fatal(err)
	}
	dispatch(t, d, "backend/vif/3/e2", "be")
	if err := d.CreateIncarnation(3, "uuid-a"); err != nil {
		t.Fatal(err)
	}
	rec.noRunsBeyond(t, 1, "the same incarnation overtaking its drain")
	release()
	got := pathsOf(rec.waitRuns(t, 2), "backend/vif/3/")
	if !slices.Equal(got, []run{{Path: "backend/vif/3/e1", Worker: 3}, {Path: "backend/vif/3/e2", Worker: 3}}) {
		t.Fatalf("ran %+v", got)
	}
}

// TestSupersedeCancelsAfterGrace: a new incarnation replacing a live worker
// whose destroy was missed does not wait for it, and the old handlers'
// context is cancelled once the grace has passed, not before.
func TestSupersedeCancelsAfterGrace(t *testing.T) {
	const grace = 150 * time.Millisecond
	d := newDispatcher(t, Config{Staging: true, SupersedeGrace: grace})
	rec := newRecorder()
	cancelled := make(chan time.Time, 1)
	register(t, d, WatchConfig{Path: "backend", Token: "be", Handler: func(ctx context.Context, ev Event) error {
		if err := rec.handle(ctx, ev); err != nil {
			return err
		}
		if ev.Path == "backend/vif/3/hung" {
			<-ctx.Done()
			cancelled <- time.Now()
		}
		return nil
	}})
	if err := d.CreateIncarnation(3, "uuid-a"); err != nil {
		t.Fatal(err)
	}
	dispatch(t, d, "backend/vif/3/hung", "be")
	rec.waitRuns(t, 1)
	start := time.Now()
	if err := d.CreateIncarnation(3, "uuid-b"); err != nil {
		t.Fatal(err)
	}
	dispatch(t, d, "backend/vif/3/new", "be")
	if rn := rec.waitRuns(t, 2)[1]; rn.Path != "backend/vif/3/new" || rn.Worker != 3 {
		t.Fatalf("second run %+v", rn)
	}
	at := recv(t, cancelled, "the superseded handler's cancellation")
	if d := at.Sub(start); d < grace {
		t.Fatalf("superseded handler cancelled after %v, before the %v grace", d, grace)
	}
	waitAtMost(t, d, 0)
}

// TestStopFlushesStaged: Stop runs staged events (cancelled, on drain
// generations) and leaves no goroutine.
func TestStopFlushesStaged(t *testing.T) {
	d, err := New(Config{Staging: true, Logger: slogNew(newLogCapture())})
	if err != nil {
		t.Fatal(err)
	}
	rec := newRecorder()
	register(t, d, WatchConfig{Path: "backend", Token: "be", Handler: rec.handle})
	dispatch(t, d, "backend/vif/3/a", "be")
	dispatch(t, d, "backend/vif/4/a", "be")
	ctx, cancel := context.WithTimeout(context.Background(), waitLimit)
	defer cancel()
	if err := d.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	runs := rec.waitRuns(t, 2)
	for _, rn := range runs {
		if rn.Worker == domid.Dom0 {
			t.Fatalf("%+v ran on the default worker", rn)
		}
	}
	if _, err := d.FlushStaged(3, true); !errors.Is(err, ErrStopped) {
		t.Fatalf("FlushStaged after Stop: %v", err)
	}
	noLeak(t)
}

// TestHoldRelease: while held, a live domain's events are staged; Release
// hands them to its worker in order, unless a later Hold came; a new
// incarnation created meanwhile gets them instead of the old worker.
func TestHoldRelease(t *testing.T) {
	d := newDispatcher(t, Config{Staging: true})
	rec := newRecorder()
	register(t, d, WatchConfig{Path: "backend", Token: "be", Handler: rec.handle})
	release := rec.blockOn("backend/vif/3/e0")
	if err := d.CreateIncarnation(3, "a"); err != nil {
		t.Fatal(err)
	}
	dispatch(t, d, "backend/vif/3/e0", "be") // runs, blocked
	rec.waitRuns(t, 1)
	dispatch(t, d, "backend/vif/3/e1", "be") // queued on a
	s1 := d.Hold(3)
	dispatch(t, d, "backend/vif/3/e2", "be") // staged
	s2 := d.Hold(3)
	d.Release(3, s1) // a later hold came: still held
	dispatch(t, d, "backend/vif/3/e3", "be")
	if st, _ := d.DomainStats(3); st.Staged != 2 || st.Queued != 3 {
		t.Fatalf("domain 3 while held: %+v", st)
	}
	d.Release(3, s2)
	release()
	got := pathsOf(rec.waitRuns(t, 4), "backend/vif/3/")
	want := []run{{Path: "backend/vif/3/e0", Worker: 3}, {Path: "backend/vif/3/e1", Worker: 3},
		{Path: "backend/vif/3/e2", Worker: 3}, {Path: "backend/vif/3/e3", Worker: 3}}
	if !slices.Equal(got, want) {
		t.Fatalf("ran %+v, want %+v", got, want)
	}

	// The domid is reused before the old incarnation's end was seen.
	release = rec.blockOn("backend/vif/3/old")
	dispatch(t, d, "backend/vif/3/old", "be")
	rec.waitRuns(t, 5)
	s := d.Hold(3)
	dispatch(t, d, "backend/vif/3/new", "be") // would queue behind "old" on a
	if err := d.CreateIncarnation(3, "b"); err != nil {
		t.Fatal(err)
	}
	if rn := rec.waitRuns(t, 6)[5]; rn.Path != "backend/vif/3/new" {
		t.Fatalf("sixth run %+v, want the new incarnation's event while the old one hangs", rn)
	}
	d.Release(3, s)
	dispatch(t, d, "backend/vif/3/new2", "be")
	if rn := rec.waitRuns(t, 7)[6]; rn.Path != "backend/vif/3/new2" {
		t.Fatalf("seventh run %+v", rn)
	}
	release()
	waitAtMost(t, d, 0)
	if s := d.Stats(); s.Workers != 1 || s.Totals.GuestOnDefault != 0 {
		t.Fatalf("stats %+v", s)
	}
}

// TestHeldThenDestroyed: events held while the domain had a worker, which is
// then destroyed, are not forgotten: the caller is told (OnStage) and the
// staging timeout flushes them.
func TestHeldThenDestroyed(t *testing.T) {
	var mu sync.Mutex
	var staged []domid.ID
	d := newDispatcher(t, Config{Staging: true, StagingTimeout: 50 * time.Millisecond, OnStage: func(id domid.ID) {
		mu.Lock()
		staged = append(staged, id)
		mu.Unlock()
	}})
	rec := newRecorder()
	register(t, d, WatchConfig{Path: "backend", Token: "be", Handler: rec.handle})
	if err := d.CreateDomain(3); err != nil {
		t.Fatal(err)
	}
	seq := d.Hold(3)
	dispatch(t, d, "backend/vif/3/e", "be")
	if err := d.DestroyDomain(3); err != nil {
		t.Fatal(err)
	}
	d.Release(3, seq)
	if rn := rec.waitRuns(t, 1)[0]; rn.Path != "backend/vif/3/e" || rn.Worker != 3 {
		t.Fatalf("ran %+v", rn)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(staged) < 2 {
		t.Fatalf("OnStage calls %v: want one when staged and one when orphaned", staged)
	}
}
