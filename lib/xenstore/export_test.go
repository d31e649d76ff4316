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
