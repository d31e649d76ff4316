// Package dispatch routes XenStore watch events to per-domain workers, the
// userspace form of Linux's xenwatch multithreading (mtwatch). The single
// XenStore reader calls Dispatch, which never blocks on handlers; each event
// runs on the worker of the domain its path belongs to, or on the default
// worker for dom0, unknown paths and domains without a worker.
//
// Guarantees:
//
//   - Events of one domain run one at a time and in arrival order, including
//     across CreateDomain (events of the domain still waiting on the default
//     worker run before its new worker starts) and DestroyDomain (events
//     arriving afterwards run on the default worker, but only once the
//     destroyed worker has drained).
//   - Events of different domains never wait for each other, except on the
//     default worker.
//   - Every queue is bounded: identical pending events are coalesced, a watch
//     may filter, and events beyond a domain's capacity are dropped but turned
//     into an overflow notice delivered to the watch's handler so it can
//     resync.
//   - An idle domain worker owns no goroutine: a goroutine runs only while its
//     queue has work, in the manner of an execqueue.
//
// Handlers that run longer than the stall threshold are reported; handler
// panics are recovered and counted; Stop cancels running handlers and drains.
package dispatch
