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
//	state       who reads                    next
//	none        nobody                       do -> caller (background if the transport has
//	                                         no read deadlines); send -> background
//	caller      a caller, until its reply    handOver, when the reply arrives or the caller's
//	            arrives                      context ends -> background if calls are pending
//	                                         or watches exist, else none
//	background  the readLoop goroutine       keepReading, when no call is pending and no
//	                                         watch exists -> none
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
			// This turn's interrupt (ctx ended) or wakeReader (a frame
			// the device refused, maybe cl's) set the deadline.
			select {
			case <-cl.done:
				return false
			default:
			}
			if ctx.Err() == nil {
				// Woken for another call. ctx ending before the clear
				// shows in the check after it; after, it sets the
				// deadline again.
				c.clearDeadline()
				if ctx.Err() == nil {
					continue
				}
			}
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
// ending interrupts the read, and so does a frame refused by the device
// (wakeReader). It returns what endTurn needs to stop the former.
func (c *Client) beginTurn(ctx context.Context) (stop func() bool) {
	c.dlMu.Lock()
	c.turns++
	turn := c.turns
	c.dlTurn = turn
	c.dlMu.Unlock()
	if ctx.Done() == nil { // a context that never ends; AfterFunc allocates
		return nil
	}
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
		c.dlSet = true
	}
	c.dlMu.Unlock()
	if c.hooks != nil {
		c.hooks.afterInterrupt(fire)
	}
}

// wakeReader wakes the caller reading for its reply, if one is: a call
// whose frame the device refused gets no reply, and may be that caller's.
// A background reader waits for no call in particular.
func (c *Client) wakeReader() {
	if c.dl == nil {
		return // callers never read
	}
	c.dlMu.Lock()
	if c.dlTurn != 0 {
		c.dl.SetReadDeadline(time.Unix(1, 0))
		c.dlSet = true
	}
	c.dlMu.Unlock()
}

// clearDeadline clears a deadline set in the current turn.
func (c *Client) clearDeadline() {
	c.dlMu.Lock()
	if c.dlSet {
		c.dl.SetReadDeadline(time.Time{})
		c.dlSet = false
	}
	c.dlMu.Unlock()
}

// endTurn closes a caller's reading turn: no interrupt of it can fire once
// endTurn returns, and a deadline set in it is cleared.
func (c *Client) endTurn(stop func() bool) {
	if stop != nil {
		// stop false: the interrupt ran, or runs now and finds its turn
		// closed.
		stop()
	}
	c.dlMu.Lock()
	c.dlTurn = 0
	if c.dlSet {
		c.dl.SetReadDeadline(time.Time{})
		c.dlSet = false
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
