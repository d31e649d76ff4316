package xenstore

import (
	"context"
)

// OpKind is the request of an Op.
type OpKind uint8

// The requests a pipeline may carry.
const (
	OpRead OpKind = iota
	OpWrite
	OpMkdir
	OpRm
)

var opKinds = [...]struct {
	typ  msgType
	name string
}{
	OpRead:  {typeRead, "read"},
	OpWrite: {typeWrite, "write"},
	OpMkdir: {typeMkdir, "mkdir"},
	OpRm:    {typeRm, "rm"},
}

// Op is one request of a pipeline and, once Pipeline returns, its result.
type Op struct {
	Kind  OpKind
	Path  string
	Value []byte // OpWrite: the value written; OpRead: the value read
	Err   error  // the request's error, as the single call would return it
}

// Read, Write, Mkdir and Rm build the Op of that request.
func Read(path string) Op                { return Op{Kind: OpRead, Path: path} }
func Write(path string, value []byte) Op { return Op{Kind: OpWrite, Path: path, Value: value} }
func Mkdir(path string) Op               { return Op{Kind: OpMkdir, Path: path} }
func Rm(path string) Op                  { return Op{Kind: OpRm, Path: path} }

// Pipeline sends ops one after another without waiting for each reply, and
// then waits for every reply. xenstored handles a connection's requests in
// the order they come, so the ops take effect in order, as if each
// waited for the one before, but the batch costs the caller one round trip
// instead of len(ops). That matters on a busy server: both daemons take one
// request per connection per turn of their main loop (Xen 4.17: the C
// daemon's handle_input in xenstored_core.c reads one message; oxenstored's
// Process.do_input in process.ml one packet, called once per turn by
// process_connection_fds and process_domains in xenstored.ml), so a
// sequential caller's every request also waits for its own reply to come
// back and the next request to get in. It is not atomic: run it on a Tx for
// that (an op's failure does not stop the ones after it).
//
// Each op's result is in its Value and Err; Pipeline returns the first
// op's error, in order, or nil.
func (c *Client) Pipeline(ctx context.Context, ops []Op) error {
	return c.pipeline(ctx, 0, ops)
}

// Pipeline is Client.Pipeline inside the transaction.
func (tx *Tx) Pipeline(ctx context.Context, ops []Op) error {
	if len(ops) == 0 {
		return nil
	}
	if err := tx.check("pipeline", ""); err != nil {
		for i := range ops {
			ops[i].Err = opErr(opKinds[ops[i].Kind].name, ops[i].Path, ErrTxDone)
		}
		return ops[0].Err
	}
	return tx.c.pipeline(ctx, tx.id, ops)
}

func (c *Client) pipeline(ctx context.Context, tx uint32, ops []Op) error {
	calls := make([]*call, len(ops))
	reqs := make([]req, len(ops))
	for i := range ops {
		op := &ops[i]
		op.Err = nil
		if int(op.Kind) >= len(opKinds) {
			op.Err = opErr("pipeline", op.Path, invalidf("unknown op kind %d", op.Kind))
			continue
		}
		if err := ValidatePath(op.Path); err != nil {
			op.Err = opErr(opKinds[op.Kind].name, op.Path, err)
			continue
		}
		r := &reqs[i]
		r.typ, r.tx, r.nargs, r.args[0] = opKinds[op.Kind].typ, tx, 1, op.Path
		if op.Kind == OpWrite {
			r.raw = op.Value
		}
		if n := r.size(); n > PayloadMax {
			op.Err = opErr(opKinds[op.Kind].name, op.Path, invalidf("request payload of %d bytes over the %d-byte limit", n, PayloadMax))
		}
	}
	// Issue in rounds: wait for one in-flight slot, take whatever others are
	// free at once, and write all those requests out together. The
	// background reader (never this caller: it may wait for a slot, which
	// only a reply frees) takes the replies.
	next := 0
	skip := func() {
		for next < len(ops) && ops[next].Err != nil {
			next++
		}
	}
	for skip(); next < len(ops); skip() {
		if err := c.acquireSlot(ctx); err != nil {
			for i := next; i < len(ops); i++ {
				if ops[i].Err == nil {
					ops[i].Err = opErr(opKinds[ops[i].Kind].name, ops[i].Path, err)
				}
			}
			break
		}
		batch := []int{next}
		for i := next + 1; i < len(ops); i++ {
			if ops[i].Err != nil {
				continue
			}
			select {
			case c.sem <- struct{}{}:
				batch = append(batch, i)
				continue
			default:
			}
			break
		}
		c.mu.Lock()
		if c.err != nil {
			err := c.err
			c.mu.Unlock()
			for range batch {
				<-c.sem
			}
			for i := next; i < len(ops); i++ {
				if ops[i].Err == nil {
					ops[i].Err = opErr(opKinds[ops[i].Kind].name, ops[i].Path, err)
				}
			}
			break
		}
		for _, i := range batch {
			cl := callPool.Get().(*call)
			cl.typ, cl.tx = reqs[i].typ, tx
			cl.id = c.allocID()
			c.pending[cl.id] = cl
			c.appendFrame(cl.id, &reqs[i])
			calls[i] = cl
		}
		if c.reader == readerNone {
			c.startReaderLocked()
		}
		c.flushLocked()
		next = batch[len(batch)-1] + 1
	}
	for i, cl := range calls {
		if cl == nil {
			continue
		}
		if c.await(ctx, cl, nil) {
			ops[i].Err = opErr(opKinds[ops[i].Kind].name, ops[i].Path, ctx.Err())
			continue
		}
		reply, err := c.finish(cl)
		if ops[i].Kind == OpRead && err == nil {
			ops[i].Value = reply
		}
		ops[i].Err = opErr(opKinds[ops[i].Kind].name, ops[i].Path, err)
	}
	for i := range ops {
		if ops[i].Err != nil {
			return ops[i].Err
		}
	}
	return nil
}
