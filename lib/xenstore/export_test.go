package xenstore

import "io"

// NewClientForTest wraps an established transport; framePerWrite selects
// the xenbus-device framing (one message per write).
func NewClientForTest(rwc io.ReadWriteCloser, framePerWrite bool, opts ...Option) *Client {
	o := options{}
	for _, opt := range opts {
		opt(&o)
	}
	return newClient(rwc, framePerWrite, o)
}

// ReaderState names who reads c's connection: "none", "caller" (a caller
// reading its own reply) or "background" (the reader goroutine).
func ReaderState(c *Client) string {
	c.mu.Lock()
	defer c.mu.Unlock()
	switch c.reader {
	case readerCaller:
		return "caller"
	case readerBackground:
		return "background"
	}
	return "none"
}
