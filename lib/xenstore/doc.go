// Package xenstore is a pure-Go XenStore client for dom0 tools: it speaks the
// xs_wire protocol over the xenstored unix socket or the kernel's
// /dev/xen/xenbus device. One connection carries many outstanding requests,
// one reader at a time routes replies and watch events, and every watch
// has its own bounded buffer, so a slow consumer of one watch never delays
// other callers.
//
// # Concurrency
//
// A Client is safe for concurrent use. Each request gets a req_id (from 1,
// never 0, which watch events carry) and a slot in a pending map, as in
// net/rpc; the reader matches replies by req_id, so requests from many
// goroutines are pipelined on the one connection instead of serialised as
// libxenstore does. Writers batch: a caller that finds another caller
// writing leaves its frame in the shared buffer for that caller to write,
// so concurrent requests go out in one write(2) without a writer goroutine
// (the xenbus device, which takes one message per write, gets them one at a
// time). WithMaxInflight bounds the outstanding requests.
//
// Readers are elected the same way: a caller that finds nobody reading
// reads for everyone until its own reply arrives, so a lone request costs
// no goroutine hand-off (the round trip of a one-shot tool or a sequential
// caller); if calls are still pending or watches exist when it is done, a
// background reader goroutine takes over and runs until nothing is left to
// read for. The reader never blocks on a caller or a watch consumer.
//
// A caller that needs several nodes at once sends them as one Pipeline:
// the requests go out together and xenstored answers them in order, so the
// batch costs one round trip instead of one per request. On a busy
// xenstored, which takes one request per connection per turn of its main
// loop, each round trip of a sequential caller waits for the daemon's next
// turn; BenchmarkReadBatch measures eight reads both ways.
//
// A watch delivers its events over a channel (Watch), or, for a consumer
// that queues them itself without blocking (an event dispatcher), by a
// function the reader calls for each event (WatchFunc): no goroutine
// hand-off per event, which on a multi-CPU host is most of the cost of
// receiving one.
//
// Every blocking call takes a context. Cancelling it abandons the call: the
// late reply is recognised and dropped, and a transaction or watch that the
// server set up for an abandoned call is undone.
//
// If the connection fails (xenstored exits or restarts, or sends a
// malformed message: unknown req_id, oversized length, truncated payload,
// mismatched reply type), every pending call fails with an error wrapping
// ErrConnectionLost and every watch ends with it. The Client does not
// reconnect: XenStore state, watches and transactions do not survive a
// restart, so the owner dials again and resynchronises. On the xenbus
// device a write(2) the kernel refuses with a request's errno (a WATCH past
// the domain's watch quota: xenbus_write_watch) fails that call only, with
// the errno; any other failed write ends the connection.
//
// # Errors
//
// Errors are *Error values naming the operation and path; they wrap the
// syscall.Errno that xenstored reported, so errors.Is(err, fs.ErrNotExist)
// holds for ENOENT, fs.ErrExist for EEXIST, fs.ErrPermission for EACCES.
// Paths, values and arguments are checked before sending; bad input fails
// locally with an error wrapping syscall.EINVAL and never reaches the wire.
//
// # Paths
//
// Absolute paths start with "/"; relative paths are resolved by xenstored
// against the connection's home (/local/domain/0 for dom0's socket), and a
// watch registered with a relative path reports relative event paths.
package xenstore
