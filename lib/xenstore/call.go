package xenstore

import (
	"context"
	"sync"
)

// The life of a call: do takes an in-flight slot (sem), registers the call
// in the pending map and queues its frame (under mu), writes it out or
// leaves it to the caller already flushing, then waits for the reply,
// reading it itself if it was elected reader (reader.go). The reader removes
// the call from pending and signals done. A caller whose context ends first
// abandons the call: a placeholder stays pending so that the late reply is
// recognised and dropped.

// call is one outstanding request.
type call struct {
	id   uint32
	typ  msgType
	tx   uint32
	done chan struct{} // capacity 1: the reader never blocks on it
	// Set by the reader before signalling done.
	rtyp  msgType
	reply []byte
	err   error
	// abandoned marks a placeholder left in pending by a caller that gave
	// up: its reply is dropped, after running cleanup on success.
	abandoned bool
	cleanup   func(reply []byte)
}

var callPool = sync.Pool{New: func() any { return &call{done: make(chan struct{}, 1)} }}

// req describes a request: NUL-terminated string arguments followed by raw
// bytes (a WRITE value). It is passed by pointer to stay on the caller's
// stack.
type req struct {
	typ   msgType
	tx    uint32
	nargs int
	args  [3]string
	raw   []byte
	// cleanup runs (in a new goroutine) if the caller abandons the call
	// and the server then reports success.
	cleanup func(reply []byte)
}

func (r *req) size() int {
	n := len(r.raw)
	for _, a := range r.args[:r.nargs] {
		n += len(a) + 1
	}
	return n
}

// do sends r and waits for its reply. A reply of type ERROR is returned as
// the errno it names.
func (c *Client) do(ctx context.Context, r *req) ([]byte, error) {
	if n := r.size(); n > PayloadMax {
		return nil, invalidf("request payload of %d bytes over the %d-byte limit", n, PayloadMax)
	}
	if err := c.acquireSlot(ctx); err != nil {
		return nil, err
	}
	cl, self, err := c.issue(r)
	if err != nil {
		return nil, err
	}
	var abandoned bool
	if self {
		abandoned = c.readOwn(ctx, cl, r.cleanup)
	} else {
		abandoned = c.await(ctx, cl, r.cleanup)
	}
	if abandoned {
		return nil, ctx.Err()
	}
	return c.finish(cl)
}

// acquireSlot takes an in-flight slot, waiting for one if all are taken.
func (c *Client) acquireSlot(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	select {
	case c.sem <- struct{}{}:
		return nil
	default:
	}
	select {
	case c.sem <- struct{}{}:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	case <-c.dead:
		return c.Err()
	}
}

// issue registers a call for r, queues its frame and writes it out. self
// reports that the caller was elected reader and must read its own reply.
// It releases the caller's slot if the connection has ended.
func (c *Client) issue(r *req) (cl *call, self bool, err error) {
	cl = callPool.Get().(*call)
	cl.typ, cl.tx = r.typ, r.tx
	c.mu.Lock()
	if c.err != nil {
		err := c.err
		c.mu.Unlock()
		<-c.sem
		callPool.Put(cl)
		return nil, false, err
	}
	cl.id = c.allocID()
	c.pending[cl.id] = cl
	c.appendFrame(cl.id, r)
	self = c.electLocked()
	c.flushLocked()
	return cl, self, nil
}

// await waits for the reader to deliver cl's reply. It reports true if ctx
// ended first and the call was abandoned.
func (c *Client) await(ctx context.Context, cl *call, cleanup func([]byte)) (abandoned bool) {
	select {
	case <-cl.done:
		return false
	case <-ctx.Done():
	}
	if c.abandon(cl, cleanup) {
		return true
	}
	// The reply (or the connection's failure) is already being
	// delivered: take it.
	<-cl.done
	return false
}

// finish returns a delivered call's outcome and recycles it.
func (c *Client) finish(cl *call) ([]byte, error) {
	reply, rtyp, err := cl.reply, cl.rtyp, cl.err
	cl.reply, cl.err = nil, nil
	callPool.Put(cl)
	if err != nil {
		return nil, err
	}
	if rtyp == typeError {
		return nil, serverError(reply)
	}
	return reply, nil
}

// send queues a request whose reply nobody waits for (aborting a
// transaction, undoing an abandoned watch); r.cleanup runs on its success.
// It never blocks the caller.
func (c *Client) send(r req) {
	go func() {
		select {
		case c.sem <- struct{}{}:
		case <-c.dead:
			return
		}
		c.mu.Lock()
		if c.err != nil {
			c.mu.Unlock()
			<-c.sem
			return
		}
		id := c.allocID()
		c.pending[id] = &call{id: id, typ: r.typ, tx: r.tx, abandoned: true, cleanup: r.cleanup}
		c.appendFrame(id, &r)
		if c.reader == readerNone {
			c.startReaderLocked()
		}
		c.flushLocked()
	}()
}

// abandon replaces a pending call by a placeholder so that its reply is
// dropped. It reports false if the reader already took the call.
func (c *Client) abandon(cl *call, cleanup func([]byte)) bool {
	c.mu.Lock()
	if c.pending[cl.id] != cl {
		c.mu.Unlock()
		return false
	}
	c.pending[cl.id] = &call{id: cl.id, typ: cl.typ, tx: cl.tx, abandoned: true, cleanup: cleanup}
	c.mu.Unlock()
	cl.reply, cl.err = nil, nil
	callPool.Put(cl)
	return true
}

// allocID returns a request id not in use. Ids start at 1 and skip 0, which
// watch events carry. Called with c.mu held; terminates because pending
// holds at most maxInflight entries.
func (c *Client) allocID() uint32 {
	for {
		c.nextID++
		if c.nextID == 0 {
			continue
		}
		if _, busy := c.pending[c.nextID]; !busy {
			return c.nextID
		}
	}
}
