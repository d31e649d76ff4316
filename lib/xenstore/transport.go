package xenstore

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"syscall"
)

// The transport: frames out through a shared write buffer, frames in
// through one bufio.Reader read by whoever owns reading (reader.go).

// open connects to a unix socket, or opens a character device (the kernel's
// xenbus device speaks the same protocol but takes one message per write).
func open(ctx context.Context, path string) (rwc io.ReadWriteCloser, device bool, err error) {
	if fi, err := os.Stat(path); err == nil && fi.Mode()&os.ModeCharDevice != 0 {
		f, err := os.OpenFile(path, os.O_RDWR, 0)
		if err != nil {
			return nil, false, err
		}
		return f, true, nil
	}
	conn, err := dialSocket(ctx, path)
	if err != nil {
		return nil, false, err
	}
	return conn, false, nil
}

// appendFrame encodes r into the write buffer. Called with c.mu held.
func (c *Client) appendFrame(id uint32, r *req) {
	b := c.wbuf
	off := len(b)
	b = append(b, make([]byte, headerSize)...)
	for _, a := range r.args[:r.nargs] {
		b = append(b, a...)
		b = append(b, 0)
	}
	b = append(b, r.raw...)
	putHeader(b[off:], header{typ: r.typ, reqID: id, txID: r.tx, len: uint32(len(b) - off - headerSize)})
	c.wbuf = b
}

// flushLocked writes the buffered frames out unless another caller is
// already doing so, in which case that caller writes ours too: under
// concurrency requests are batched into one write(2) without a dedicated
// writer goroutine, and a lone caller writes its own request with no
// hand-off. Called with c.mu held; returns with it released.
func (c *Client) flushLocked() {
	if c.flushing {
		c.mu.Unlock()
		return
	}
	c.flushing = true
	for len(c.wbuf) > 0 {
		b := c.wbuf
		c.wbuf = c.wspare[:0]
		c.mu.Unlock()
		err := c.writeOut(b)
		c.mu.Lock()
		if cap(b) <= keepWriteBuf {
			c.wspare = b[:0]
		} else {
			c.wspare = nil
		}
		if err != nil || c.err != nil {
			c.flushing = false
			c.mu.Unlock()
			if err != nil {
				c.fail(fmt.Errorf("write: %w", err))
			}
			return
		}
	}
	c.flushing = false
	c.mu.Unlock()
}

func (c *Client) writeOut(b []byte) error {
	if !c.framePerWrite {
		_, err := c.conn.Write(b)
		return err
	}
	for len(b) > 0 {
		n := headerSize + int(binary.LittleEndian.Uint32(b[12:16]))
		w, err := c.conn.Write(b[:n])
		switch {
		case err != nil && refusedByDevice(err):
			c.refuse(binary.LittleEndian.Uint32(b[4:8]), err)
		case err != nil:
			return err
		case w != n:
			return io.ErrShortWrite
		}
		b = b[n:]
	}
	return nil
}

// refusedByDevice reports whether a failed write of one message to the
// xenbus device failed that message only. The kernel's device handles
// WATCH, UNWATCH and the transaction bookkeeping itself and fails the
// write(2) with the errno of what went wrong, the file staying usable
// (drivers/xen/xenbus/xenbus_dev_frontend.c): xenbus_write_watch returns
// register_xenbus_watch's error, which is xenstored's answer to the WATCH
// as get_error maps it (xenbus_xs.c: xs_watch, xs_talkv; one of xsd_errors,
// a name it does not know such as oxenstored's EQUOTA is EINVAL), or ENOMEM;
// xenbus_write_transaction and xenbus_dev_request_and_reply fail with
// ENOMEM only; xenbus_file_write with EINVAL or E2BIG for a message larger
// than its buffer, which it drops. EIO (read_reply: xenstored unreachable)
// and anything else (EBADF, EPIPE, a closed file) end the connection.
// EAGAIN never reaches here: the runtime's poller takes it as "wait".
func refusedByDevice(err error) bool {
	var errno syscall.Errno
	if !errors.As(err, &errno) {
		return false
	}
	switch errno {
	case syscall.EINVAL, syscall.EACCES, syscall.EEXIST, syscall.EISDIR,
		syscall.ENOENT, syscall.ENOMEM, syscall.ENOSPC, syscall.ENOTEMPTY,
		syscall.ENOSYS, syscall.EROFS, syscall.EBUSY, syscall.EISCONN,
		syscall.E2BIG, syscall.EPERM:
		return true
	}
	return false
}

// refuse fails the call whose frame the device refused with the write's
// error: no reply comes for it. As with a reply (takeCall) and a lost
// connection (fail), whoever takes the call out of pending under mu
// completes it and releases its slot, so that happens once; a placeholder
// of an abandoned call is only dropped. A caller reading for its own reply
// is woken: the call may be its own.
func (c *Client) refuse(id uint32, err error) {
	c.mu.Lock()
	cl, ok := c.pending[id]
	if ok {
		delete(c.pending, id)
	}
	c.mu.Unlock()
	if !ok {
		return // the connection ended meanwhile: fail completed it
	}
	<-c.sem
	if cl.abandoned {
		return // its caller gave up; a refused request needs no cleanup
	}
	cl.err = err
	cl.done <- struct{}{}
	c.wakeReader()
}

// readMsg reads one message: a watch event goes to its watch, a reply to
// the call waiting for it. Called only by the goroutine that owns reading.
func (c *Client) readMsg(br *bufio.Reader) error {
	h, msg, err := peekMsg(br)
	if err != nil {
		return err
	}
	if msg == nil {
		return c.readLargeReply(br, h)
	}
	payload := msg[headerSize:]
	if h.typ == typeWatchEvent {
		err := c.dispatchEvent(payload)
		br.Discard(len(msg))
		return err
	}
	cl, err := c.takeCall(h)
	if err != nil {
		return err
	}
	reply := make([]byte, len(payload))
	copy(reply, payload)
	br.Discard(len(msg))
	c.complete(cl, h.typ, reply)
	return nil
}

// readLargeReply reads a reply too large for br's buffer (see
// maxReplyPayload) into its own.
func (c *Client) readLargeReply(br *bufio.Reader, h header) error {
	if _, err := br.Discard(headerSize); err != nil {
		return err
	}
	reply := make([]byte, h.len)
	if _, err := io.ReadFull(br, reply); err != nil {
		if err == io.EOF || err == io.ErrUnexpectedEOF {
			err = fmt.Errorf("%w: connection closed inside a %d-byte %s payload", errProtocol, h.len, h.typ)
		}
		return err
	}
	cl, err := c.takeCall(h)
	if err != nil {
		return err
	}
	c.complete(cl, h.typ, reply)
	return nil
}

// peekMsg returns the next whole message, header included, still in br's
// buffer; a reply larger than the buffer (see maxReplyPayload) comes back
// as its header alone, with a nil message.
func peekMsg(br *bufio.Reader) (header, []byte, error) {
	hb, err := br.Peek(headerSize)
	if err != nil {
		if err == io.EOF && br.Buffered() > 0 {
			err = fmt.Errorf("%w: truncated header", errProtocol)
		}
		return header{}, nil, err
	}
	h, err := parseHeader(hb)
	if err != nil {
		return header{}, nil, err
	}
	if headerSize+int(h.len) > br.Size() {
		return h, nil, nil
	}
	msg, err := br.Peek(headerSize + int(h.len))
	if err != nil {
		if err == io.EOF {
			err = fmt.Errorf("%w: connection closed inside a %d-byte %s payload", errProtocol, h.len, h.typ)
		}
		return header{}, nil, err
	}
	return h, msg, nil
}

// takeCall removes the call a reply answers from pending and releases its
// slot. A reply nobody asked for, or of the wrong type, is a protocol
// violation; the call it names fails with it.
func (c *Client) takeCall(h header) (*call, error) {
	c.mu.Lock()
	cl, ok := c.pending[h.reqID]
	if ok {
		delete(c.pending, h.reqID)
	}
	c.mu.Unlock()
	if !ok {
		return nil, fmt.Errorf("%w: %s reply for unknown request id %d", errProtocol, h.typ, h.reqID)
	}
	<-c.sem
	if h.typ != cl.typ && h.typ != typeError {
		err := fmt.Errorf("%w: %s reply to %s request %d", errProtocol, h.typ, cl.typ, h.reqID)
		if !cl.abandoned {
			cl.err = &connLost{cause: err}
			cl.done <- struct{}{}
		}
		return nil, err
	}
	return cl, nil
}

// complete hands a reply to its caller, or drops it if the caller gave up
// (running the call's cleanup if the server reports success).
func (c *Client) complete(cl *call, typ msgType, reply []byte) {
	if cl.abandoned {
		if cl.cleanup != nil && typ != typeError {
			go cl.cleanup(reply)
		}
		return
	}
	cl.rtyp, cl.reply = typ, reply
	cl.done <- struct{}{}
}
