// Package xenstore is a pure-Go XenStore client for dom0 tools: it speaks the
// xs_wire protocol over the xenstored unix socket or the kernel's
// /dev/xen/xenbus device. One connection carries many outstanding requests
// (matched by req_id), a single reader goroutine routes replies and watch
// events, and every watch has its own bounded buffer, so a slow consumer of
// one watch never delays other callers.
package xenstore
