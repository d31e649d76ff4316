package xenstore_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/mtwatch/mtwatch/lib/xenstore"
	"github.com/mtwatch/mtwatch/lib/xenstore/xenstoredtest"
)

// conflictPeriod is conflict-max-history-seconds in TestConflictBurstLimit:
// oxenstored gives back one point of conflict credit per period, so a
// domain it paused stays paused at least that long, and it keeps the
// history it blames with only for transactions younger than that. The
// default 0.05 s would make a pause indistinguishable from a slow reply on
// a loaded machine, and lose the history of a transaction that happens to
// take longer.
const conflictPeriod = 2 * time.Second

// TestConflictBurstLimit: oxenstored's conflict rate limiting (Xen 4.17,
// tools/ocaml/xenstored). When a transaction's commit fails (process.ml:
// transaction_replay replays it against the current store and a reply
// differs), oxenstored blames every connection whose commit, recorded in
// History since the transaction started, turned a replay that succeeds on
// the store before it into one that fails on the store after it
// (judge_and_sentence), and takes one point of conflict credit from its
// domain (connection.ml and domains.ml: decr_conflict_credit). A domain
// starts with conflict-burst-limit points; at zero or below it is paused:
// its ring is not read (xenstored.ml: process_domains and main_loop's
// is_peaceful skip it, domain.ml: is_paused_for_conflict) until
// frequent_ops gives points back, one per conflict-max-history-seconds
// (domains.ml: incr_conflict_credit), the first not before a whole period
// after the pause (on_first_conflict_pause resets the countdown). Its
// requests are delayed, never refused. A request already in its ring is
// read only when the main loop next wakes after that: main_loop polls
// until the next credit tick while any domain is short of credit, so with
// nothing else to do the guest waits two periods (4.0 s with the 2 s
// period here).
//
// Three things bound who is blamed and who is paused:
//   - only a guest domain's commits enter History (history.ml: push drops
//     those of socket connections and of dom0, domain.ml:
//     is_free_to_conflict), so dom0 and its socket clients, mtwatchd among
//     them, never lose credit, and main_loop's is_peaceful never pauses a
//     socket connection;
//   - the victim is never blamed for its own failure (filter_connections
//     ignores it), whatever its kind;
//   - History is kept only while a transaction younger than
//     conflict-max-history-seconds is open (history.ml: trim,
//     transaction.ml: trim_short_running_transactions), and a read-only
//     transaction is never replayed (process.ml: do_transaction_end), nor
//     is one that merges (transaction.ml: commit): none of those blames
//     anyone.
//
// The C xenstored has no conflict credit: every conflicting commit fails
// with EAGAIN and nobody is paused.
//
// Each round, a victim opens a transaction and reads a node, a culprit
// writes that node, and the victim writes one of its own and commits
// (EAGAIN on both daemons: a read node changed). With a guest as the
// culprit, oxenstored pauses it once it has caused conflict-burst-limit
// conflicts; with a burst limit out of reach (the control) the same rounds
// blame it as often and never pause it; with dom0 as the culprit nobody is
// blamed or paused.
func TestConflictBurstLimit(t *testing.T) {
	t.Parallel()
	kind, err := xenstoredtest.KindFromEnv()
	if err != nil {
		t.Fatal(err)
	}
	period := fmt.Sprintf("conflict-max-history-seconds = %.1f", conflictPeriod.Seconds())
	oxSettings := func(burst string) []string {
		return []string{
			"conflict-burst-limit = " + burst, period,
			"conflict-rate-limit-is-aggregate = true",
			// The blame and the credit are logged at debug level only;
			// the log must not rotate under the test.
			"xenstored-log-level = debug",
			"xenstored-log-nb-lines = 10000000",
		}
	}
	const rounds = 12
	type testCase struct {
		name       string
		settings   []string // oxenstored only
		guestWrite bool     // the culprit is guest 7, the victim dom0; else the reverse
		wantPause  bool
		wantBlamed int // oxenstored's conflicts blamed on the culprit before a pause, or in all rounds
	}
	cases := []testCase{
		{name: "guest culprit", settings: oxSettings("5.0"), guestWrite: true,
			wantPause: kind == xenstoredtest.Oxenstored, wantBlamed: 5},
		{name: "dom0 culprit", settings: oxSettings("5.0"), wantBlamed: 0},
	}
	if kind == xenstoredtest.Oxenstored {
		// The control: the same rounds, the same blame, no pause.
		cases = append(cases, testCase{name: "guest culprit burst out of reach",
			settings: oxSettings("1000000.0"), guestWrite: true, wantBlamed: rounds})
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			cfg := xenstoredtest.Config{Kind: kind}
			if kind == xenstoredtest.Oxenstored {
				cfg.Settings = tc.settings
			}
			in := xenstoredtest.StartWith(t, cfg)
			dom0 := dial(t, in)
			probe := dial(t, in) // a second dom0 client, served while the guest is paused
			guest := xenstore.NewClient(in.GuestConn(7))
			t.Cleanup(func() { guest.Close() })
			ctx := testCtx(t)

			const node, guestOwn, dom0Own = "/local/domain/7/x", "/local/domain/7/mine", "/tx/mine"
			victim, culprit, victimOwn := dom0, guest, dom0Own
			if !tc.guestWrite {
				victim, culprit, victimOwn = guest, dom0, guestOwn
			}
			if err := guest.Write(ctx, node, []byte("start")); err != nil {
				t.Fatal(err)
			}

			paused := -1 // the round whose culprit write was held
			var commitSent time.Time
			for i := range rounds {
				tx, err := victim.Begin(ctx)
				if err != nil {
					t.Fatalf("round %d: begin: %v", i, err)
				}
				if _, err := tx.Read(ctx, node); err != nil {
					t.Fatalf("round %d: read %s in the transaction: %v", i, node, err)
				}
				held, probeServed, err := culpritWrite(ctx, culprit, probe, node, fmt.Sprint(i))
				if err != nil {
					t.Fatalf("%s: round %d: %v", in.Kind(), i, err)
				}
				if held {
					if !tc.wantPause {
						t.Fatalf("%s: round %d: the culprit's write waited more than %v: paused", in.Kind(), i, conflictPeriod/2)
					}
					if !probeServed {
						t.Errorf("%s: round %d: dom0 was not served while the guest was paused", in.Kind(), i)
					}
					// The pause began while xenstored handled the last
					// commit, and credit comes back a whole period later.
					if since := time.Since(commitSent); since < conflictPeriod*95/100 {
						t.Errorf("%s: round %d: the guest was served %v after the commit that paused it, before a period (%v)", in.Kind(), i, since, conflictPeriod)
					}
					t.Logf("%s: round %d: the guest was served %v after the commit that paused it", in.Kind(), i, time.Since(commitSent))
					paused = i
					tx.Abort(ctx)
					break
				}
				if err := tx.Write(ctx, victimOwn, []byte(fmt.Sprint(i))); err != nil {
					t.Fatalf("round %d: write %s in the transaction: %v", i, victimOwn, err)
				}
				commitSent = time.Now()
				if err := tx.Commit(ctx); !errors.Is(err, syscall.EAGAIN) {
					t.Fatalf("%s: round %d: commit after the culprit changed %s: %v, want EAGAIN", in.Kind(), i, node, err)
				}
			}
			switch {
			case tc.wantPause && paused < 0:
				t.Errorf("%s: the guest caused %d conflicts and was never paused", in.Kind(), rounds)
			case tc.wantPause && paused < tc.wantBlamed:
				t.Errorf("%s: the guest was paused after %d conflicts, want at least conflict-burst-limit (%d)", in.Kind(), paused, tc.wantBlamed)
			}

			if in.Kind() != xenstoredtest.Oxenstored {
				return
			}
			// oxenstored's own account: whom it blamed, and how often.
			log := in.DaemonLog()
			blamed := strings.Count(log, "decr_conflict_credit dom7 ")
			noCulprit := strings.Count(log, "Found no culprit for conflict")
			conflicts := rounds
			if paused >= 0 {
				conflicts = paused
			}
			switch {
			case tc.guestWrite && !tc.wantPause && (blamed != conflicts || noCulprit != 0):
				t.Errorf("oxenstored blamed guest 7 for %d of %d conflicts (no culprit: %d)", blamed, conflicts, noCulprit)
			case tc.wantPause && (blamed < tc.wantBlamed || blamed > conflicts):
				t.Errorf("oxenstored blamed guest 7 for %d conflicts before pausing it, want %d to %d", blamed, tc.wantBlamed, conflicts)
			case !tc.guestWrite && (strings.Contains(log, "decr_conflict_credit") || noCulprit != conflicts):
				t.Errorf("dom0's writes caused %d conflicts: oxenstored found no culprit for %d, and blamed someone: %v", conflicts, noCulprit, strings.Contains(log, "decr_conflict_credit"))
			}
			if !tc.guestWrite && paused >= 0 {
				t.Errorf("oxenstored paused dom0's socket connection")
			}
		})
	}
}

// culpritWrite writes value to path through c. If the write takes longer
// than half a conflict period, it reports it held and whether dom0 (the
// probe, a socket client) was served while it was: a paused guest's
// requests wait, nobody else's.
func culpritWrite(ctx context.Context, c, probe *xenstore.Client, path, value string) (held, probeServed bool, err error) {
	done := make(chan error, 1)
	go func() { done <- c.Write(ctx, path, []byte(value)) }()
	select {
	case err := <-done:
		return false, false, err
	case <-time.After(conflictPeriod / 2):
	}
	if err := probe.Write(ctx, "/probe", []byte(value)); err != nil {
		return true, false, fmt.Errorf("dom0 write while the culprit's write is held: %w", err)
	}
	if v, err := probe.Read(ctx, "/probe"); err != nil || string(v) != value {
		return true, false, fmt.Errorf("dom0 read while the culprit's write is held: %q, %v", v, err)
	}
	select {
	case err = <-done:
	default:
		probeServed = true
		err = <-done
	}
	if err != nil {
		return true, probeServed, fmt.Errorf("held write of %s: %w, want it delayed, not refused", path, err)
	}
	return true, probeServed, nil
}
