package xenstore

import (
	"context"
	"errors"
	"io"
	"os"
	"time"
)

// Reader election: one goroutine at a time owns the connection's read side.
// A caller waiting for its reply reads itself when nobody does, so a lone
// request costs no goroutine hand-off; while other calls are pending or
// watches exist after its reply, a background reader goroutine takes over.
//
//	state       entered                               left
//	none        keepReading/handOver: nothing to      do: the caller becomes reader
//	            read for                              (send, or no read deadlines:
//	                                                  background)
//	caller      do, on a transport with read          its reply arrives or its
//	            deadlines                             context ends: handOver
//	background  handOver with calls pending or        keepReading finds nothing
//	            watches registered; send              to read for: none
//
// A caller's context ends while it reads: its turn's interrupt sets a read
// deadline in the past. Turns are numbered, and an interrupt fires only in
// its own turn (under dlMu, which the turn's end takes too), so a late one
// never reaches the next reader.

// readerState says who owns the connection's read side; guarded by mu.
type readerState uint8

const (
	readerNone readerState = iota
	readerCaller
	readerBackground
)

// electLocked makes sure somebody reads for a call just registered. It
// reports true if the caller must read itself. Called with c.mu held.
func (c *Client) electLocked() (self bool) {
	if c.reader != readerNone {
		return false
	}
	if c.dl == nil {
		c.startReaderLocked()
		return false
	}
	c.reader = readerCaller
	return true
}

// startReaderLocked starts a background reader. Called with c.mu held,
// by a goroutine that owns reading or when nobody does.
func (c *Client) startReaderLocked() {
	c.reader = readerBackground
	c.readers.Add(1)
	go c.readLoop()
}

// readLoop is the background reader: it matches replies to pending calls
// by req_id and hands watch events to their watches, never blocking on a
// caller or a watch consumer, and exits when nothing is left to read for.
func (c *Client) readLoop() {
	defer c.readers.Done()
	for {
		if err := c.readMsg(c.br); err != nil {
			c.readFailed(err)
			return
		}
		if !c.keepReading() {
			return
		}
	}
}

// keepReading reports whether the reader must go on: calls are pending or
// watches may receive events. Otherwise it gives up reading, atomically with
// respect to do(), which elects a new reader when none is active.
func (c *Client) keepReading() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.err == nil && (len(c.pending) > 0 || c.nwatch.Load() > 0) {
		return true
	}
	c.reader = readerNone
	return false
}

// readOwn reads as the elected reader until cl is done, then hands reading
// over. It reports true if ctx ended first and the call was abandoned.
func (c *Client) readOwn(ctx context.Context, cl *call, cleanup func([]byte)) (abandoned bool) {
	stop := c.beginTurn(ctx)
	defer func() {
		c.endTurn(stop)
		c.handOver()
	}()
	for {
		select {
		case <-cl.done:
			return false
		default:
		}
		err := c.readMsg(c.br)
		switch {
		case err == nil:
		case errors.Is(err, os.ErrDeadlineExceeded):
			// Only this turn's interrupt sets a deadline: ctx ended.
			if c.abandon(cl, cleanup) {
				return true
			}
			<-cl.done
			return false
		default:
			c.readFailed(err)
			<-cl.done // failed by readFailed, as every pending call
			return false
		}
	}
}

// beginTurn opens a caller's reading turn: from now until endTurn, ctx
// ending interrupts the read. It returns what endTurn needs to stop that.
func (c *Client) beginTurn(ctx context.Context) (stop func() bool) {
	if ctx.Done() == nil { // a context that never ends; AfterFunc allocates
		return nil
	}
	c.dlMu.Lock()
	c.turns++
	turn := c.turns
	c.dlTurn = turn
	c.dlMu.Unlock()
	return context.AfterFunc(ctx, func() { c.interrupt(turn) })
}

// interrupt wakes the caller reading in turn, if that turn is still open.
func (c *Client) interrupt(turn uint64) {
	if c.hooks != nil {
		c.hooks.beforeInterrupt()
	}
	c.dlMu.Lock()
	fire := c.dlTurn == turn
	if fire {
		c.dl.SetReadDeadline(time.Unix(1, 0)) // in the past: wakes the read
	}
	c.dlMu.Unlock()
	if c.hooks != nil {
		c.hooks.afterInterrupt(fire)
	}
}

// endTurn closes a caller's reading turn: no interrupt of it can fire once
// endTurn returns, and a deadline it set is cleared.
func (c *Client) endTurn(stop func() bool) {
	if stop == nil {
		return
	}
	// stop false: the interrupt ran, or runs now and finds its turn closed.
	ran := !stop()
	c.dlMu.Lock()
	c.dlTurn = 0
	if ran {
		c.dl.SetReadDeadline(time.Time{})
	}
	c.dlMu.Unlock()
}

// testHooks lets tests stop the client at points where timing decides.
type testHooks struct {
	// beforeInterrupt runs when a reading caller's context ends, before
	// the interrupt looks at the turn; afterInterrupt reports whether it
	// set the deadline.
	beforeInterrupt func()
	afterInterrupt  func(fired bool)
}

// handOver ends a caller's turn as reader: a background reader takes over
// if anything is left to read for.
func (c *Client) handOver() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.err == nil && (len(c.pending) > 0 || c.nwatch.Load() > 0) {
		c.startReaderLocked()
		return
	}
	c.reader = readerNone
}

func (c *Client) readFailed(err error) {
	if errors.Is(err, os.ErrClosed) {
		err = io.EOF
	}
	c.fail(err)
}
