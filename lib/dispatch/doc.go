// Package dispatch routes XenStore watch events to per-domain workers, the
// userspace form of Linux's xenwatch multithreading (mtwatch). The single
// XenStore reader calls Dispatch, which never blocks on handlers; each event
// runs on the worker of the domain its path belongs to, or on the default
// worker for dom0, unknown paths and domains without a worker.
//
// Invariants, cited by number in the code that keeps them and in the tests
// that check them:
//
//   - I1 order: events of one domain run one at a time and in dispatch
//     order, including across CreateDomain (events of the domain still
//     waiting on the default worker run before its new worker starts) and
//     DestroyDomain (events arriving afterwards run on the default worker,
//     but only once the destroyed worker has drained).
//   - I2 isolation: events of different domains never wait for each other,
//     except on the default worker.
//   - I3 routing: an event runs on the worker that was live for its domain
//     when it was dispatched, or on the default worker if there was none.
//   - I4 unregistering: once Unregister returns, no handler of the watch
//     runs or starts, apart from a handler that called it for its own watch.
//   - I5 accounting: every event Dispatch accepts runs exactly once, unless
//     it is coalesced into a pending one, filtered, dropped for overflow (and
//     then counted in an overflow notice for its watch), or purged by
//     Unregister or Stop; every case is counted.
//   - I6 bounds: a domain's pending events are bounded by the capacity,
//     overflow notices by one per watch and domain, and a domain's worker
//     generations by its pending events plus one, however often it is
//     created and destroyed.
//   - I7 goroutines: an idle worker owns no goroutine (one runs only while
//     its worker has work, in the manner of an execqueue), and every
//     goroutine of the dispatcher has exited when Stop returns nil.
//   - I8 stopping: once Stop has begun, Dispatch, Register, CreateDomain and
//     DestroyDomain fail with ErrStopped.
//
// With Config.Staging, no event of a guest domid runs on the default worker:
// events of a domid with no live worker wait in its bounded staging queue
// and are promoted, in order, to its next worker, or flushed to a drain
// generation of the domid of their own when FlushStaged says no worker will
// come (with a cancelled context if the domid is no domain) or when the
// staging timeout passes. I1 and I3 then read "on the
// domid's worker" where they say "on the default worker". A domid's worker
// generations belong to an incarnation (CreateIncarnation): I1 holds within
// an incarnation, and a new incarnation of a reused domid does not wait for
// the old one's handlers. Hold stages a domain's events even while it has a
// live worker, until Release: for a caller that has read, in stream order,
// that the worker may be about to change.
//
// Handlers that run longer than the stall threshold are reported; handler
// panics are recovered and counted; Stop cancels running handlers and drains.
package dispatch
