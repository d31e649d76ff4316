package xenstore

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strconv"
	"sync/atomic"
	"syscall"
	"time"
)

// Tx is a XenStore transaction: its operations see a consistent snapshot
// and take effect, and fire watches, only when it commits. Operations on a
// Tx may run concurrently; after Commit or Abort they fail with ErrTxDone.
type Tx struct {
	c    *Client
	id   uint32
	done atomic.Bool
}

// ID is the transaction id xenstored assigned.
func (tx *Tx) ID() uint32 { return tx.id }

// Begin starts a transaction. The caller must end it with Commit or Abort;
// Transaction does both, with retries.
func (c *Client) Begin(ctx context.Context) (*Tx, error) {
	r := req{typ: typeTransactionStart, nargs: 1}
	// If the caller gives up before the reply, abort the transaction the
	// server started, so it does not hold a slot of the quota.
	r.cleanup = func(reply []byte) {
		if id, err := strconv.ParseUint(string(trimNUL(reply)), 10, 32); err == nil && id != 0 {
			c.send(endReq(uint32(id), false))
		}
	}
	reply, err := c.do(ctx, &r)
	if err != nil {
		return nil, opErr("transaction-start", "", err)
	}
	id, err := strconv.ParseUint(string(trimNUL(reply)), 10, 32)
	if err != nil || id == 0 {
		return nil, opErr("transaction-start", "", fmt.Errorf("%w: transaction id %q", errProtocol, trimNUL(reply)))
	}
	return &Tx{c: c, id: uint32(id)}, nil
}

func endReq(id uint32, commit bool) req {
	r := req{typ: typeTransactionEnd, tx: id, nargs: 1}
	r.args[0] = "F"
	if commit {
		r.args[0] = "T"
	}
	return r
}

func (tx *Tx) name() string { return "transaction " + strconv.FormatUint(uint64(tx.id), 10) }

// Commit ends the transaction, applying its changes. An error wrapping
// syscall.EAGAIN means a conflicting change was committed first: nothing
// was applied and the transaction should be run again.
func (tx *Tx) Commit(ctx context.Context) error {
	if tx.done.Swap(true) {
		return opErr("transaction-end", tx.name(), ErrTxDone)
	}
	r := endReq(tx.id, true)
	_, err := tx.c.do(ctx, &r)
	tx.c.txEnded()
	return opErr("transaction-end", tx.name(), err)
}

// Abort ends the transaction, discarding its changes.
func (tx *Tx) Abort(ctx context.Context) error {
	if tx.done.Swap(true) {
		return opErr("transaction-end", tx.name(), ErrTxDone)
	}
	r := endReq(tx.id, false)
	_, err := tx.c.do(ctx, &r)
	tx.c.txEnded()
	return opErr("transaction-end", tx.name(), err)
}

// txEnded wakes a Transaction waiting for the transaction quota, if any:
// one of the client's transactions ended (or may have).
func (c *Client) txEnded() {
	select {
	case c.txFreed <- struct{}{}:
	default:
	}
}

// abortAsync queues the abort without waiting for its reply: a failed fn
// returns at once, and nothing later on the connection depends on when
// xenstored drops the transaction (its id is never reused by this Tx).
func (tx *Tx) abortAsync() {
	if !tx.done.Swap(true) {
		r := endReq(tx.id, false)
		r.cleanup = func([]byte) { tx.c.txEnded() }
		tx.c.send(r)
	}
}

// Transaction runs fn in a transaction and commits it. If fn fails, the
// transaction is aborted and fn's error returned. If the commit fails with
// EAGAIN (a conflict), or fn's error wraps EAGAIN, fn runs again in a new
// transaction after a randomised exponential backoff (1 ms doubling up to
// 100 ms), at most WithTxAttempts times; fn must therefore be idempotent
// apart from its effects through tx.
//
// A start refused for the domain's transaction quota (an unprivileged
// domain's: C xenstored answers ENOSPC, oxenstored EQUOTA) waits for one
// of the client's transactions to end, or polls, and starts again, for
// txQuotaWait at most: a driver domain's workers may run more transactions
// at once than the quota lets it hold.
func (c *Client) Transaction(ctx context.Context, fn func(tx *Tx) error) error {
	delay := time.Millisecond
	for attempt := 1; ; attempt++ {
		tx, err := c.beginWaiting(ctx)
		if err != nil {
			return err
		}
		err = fn(tx)
		if err != nil {
			tx.abortAsync()
		} else {
			err = tx.Commit(ctx)
			if err == nil {
				return nil
			}
		}
		if !errors.Is(err, syscall.EAGAIN) || errors.Is(err, ErrTxDone) {
			return err
		}
		if attempt >= c.opt.txAttempts {
			return fmt.Errorf("xenstore transaction: still conflicting after %d attempts: %w", attempt, err)
		}
		if !backoff(ctx, delay/2+rand.N(delay)) {
			return ctx.Err()
		}
		delay = min(2*delay, 100*time.Millisecond)
	}
}

// Bounds of beginWaiting's wait for the transaction quota.
const (
	txQuotaWait = 10 * time.Second
	txQuotaPoll = 50 * time.Millisecond
)

// beginWaiting is Begin, waiting while the domain's transaction quota is
// full: for a transaction of the client's to end (txEnded), or, as another
// process of the domain may hold the quota, polling.
func (c *Client) beginWaiting(ctx context.Context) (*Tx, error) {
	var waited time.Duration
	for {
		tx, err := c.Begin(ctx)
		if err == nil || !(errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT)) {
			return tx, err
		}
		if waited >= txQuotaWait {
			return nil, fmt.Errorf("xenstore transaction: the transaction quota still full after %v: %w", txQuotaWait, err)
		}
		start := time.Now()
		t := time.NewTimer(txQuotaPoll/2 + rand.N(txQuotaPoll))
		select {
		case <-c.txFreed:
		case <-t.C:
		case <-ctx.Done():
		}
		t.Stop()
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		waited += time.Since(start)
	}
}

func (tx *Tx) check(op, path string) error {
	if tx.done.Load() {
		return opErr(op, path, ErrTxDone)
	}
	return nil
}

// Read is Client.Read inside the transaction.
func (tx *Tx) Read(ctx context.Context, path string) ([]byte, error) {
	if err := tx.check("read", path); err != nil {
		return nil, err
	}
	return tx.c.read(ctx, tx.id, path)
}

// Write is Client.Write inside the transaction.
func (tx *Tx) Write(ctx context.Context, path string, value []byte) error {
	if err := tx.check("write", path); err != nil {
		return err
	}
	return tx.c.write(ctx, tx.id, path, value)
}

// Mkdir is Client.Mkdir inside the transaction.
func (tx *Tx) Mkdir(ctx context.Context, path string) error {
	if err := tx.check("mkdir", path); err != nil {
		return err
	}
	return tx.c.pathOp(ctx, typeMkdir, tx.id, path)
}

// Rm is Client.Rm inside the transaction.
func (tx *Tx) Rm(ctx context.Context, path string) error {
	if err := tx.check("rm", path); err != nil {
		return err
	}
	return tx.c.pathOp(ctx, typeRm, tx.id, path)
}

// Directory is Client.Directory inside the transaction.
func (tx *Tx) Directory(ctx context.Context, path string) ([]string, error) {
	if err := tx.check("directory", path); err != nil {
		return nil, err
	}
	return tx.c.directory(ctx, tx.id, path)
}

// GetPerms is Client.GetPerms inside the transaction.
func (tx *Tx) GetPerms(ctx context.Context, path string) (Perms, error) {
	if err := tx.check("get-perms", path); err != nil {
		return nil, err
	}
	return tx.c.getPerms(ctx, tx.id, path)
}

// SetPerms is Client.SetPerms inside the transaction.
func (tx *Tx) SetPerms(ctx context.Context, path string, perms Perms) error {
	if err := tx.check("set-perms", path); err != nil {
		return err
	}
	return tx.c.setPerms(ctx, tx.id, path, perms)
}
