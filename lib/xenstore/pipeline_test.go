package xenstore_test

import (
	"context"
	"errors"
	"io/fs"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"

	"github.com/mtwatch/mtwatch/lib/xenstore"
)

// TestPipeline: a pipeline's ops take effect in order, each with the
// result its single call would have (a read after a write in the same
// batch sees the write; a read of a missing node is ENOENT and does not
// stop the ones after it); invalid ops fail locally and the others run.
func TestPipeline(t *testing.T) {
	t.Parallel()
	_, c := start(t)
	ctx := testCtx(t)
	mustWrite(t, c, "/p/a", "1")

	ops := []xenstore.Op{
		xenstore.Read("/p/a"),
		xenstore.Write("/p/a", []byte("2")),
		xenstore.Read("/p/a"),
		xenstore.Read("/p/missing"),
		xenstore.Mkdir("/p/dir/sub"),
		xenstore.Read("/p/dir"),
		xenstore.Read("no//such"),
		xenstore.Write("/p/big", make([]byte, xenstore.PayloadMax)),
		xenstore.Rm("/p/dir"),
		xenstore.Read("/p/dir/sub"),
		{Kind: xenstore.OpKind(99), Path: "/p/a"},
	}
	err := c.Pipeline(ctx, ops)
	if !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Pipeline = %v, want the first failure (ENOENT of /p/missing)", err)
	}
	want := []struct {
		val string
		err error
	}{
		{"1", nil},
		{"", nil},
		{"2", nil},
		{"", fs.ErrNotExist},
		{"", nil},
		{"", nil},
		{"", syscall.EINVAL},
		{"", syscall.EINVAL},
		{"", nil},
		{"", fs.ErrNotExist},
		{"", syscall.EINVAL},
	}
	for i, w := range want {
		op := ops[i]
		if w.err == nil && op.Err != nil || w.err != nil && !errors.Is(op.Err, w.err) {
			t.Errorf("op %d (%s): err %v, want %v", i, op.Path, op.Err, w.err)
		}
		if op.Kind == xenstore.OpRead && string(op.Value) != w.val {
			t.Errorf("op %d (%s): value %q, want %q", i, op.Path, op.Value, w.val)
		}
	}
	if err := ops[3].Err; err == nil || !strings.Contains(err.Error(), "/p/missing") {
		t.Errorf("error %q does not name its path", err)
	}
	if got := mustRead(t, c, "/p/a"); got != "2" {
		t.Errorf("/p/a = %q after the pipeline, want 2", got)
	}
	if err := c.Pipeline(ctx, nil); err != nil {
		t.Errorf("empty pipeline: %v", err)
	}
}

// TestPipelineTransaction: a pipeline inside a transaction sees the
// transaction's own writes, and its effects appear only at commit, or
// never after an abort.
func TestPipelineTransaction(t *testing.T) {
	t.Parallel()
	_, c := start(t)
	ctx := testCtx(t)
	mustWrite(t, c, "/t/state", "2")

	for _, commit := range []bool{false, true} {
		tx, err := c.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		ops := []xenstore.Op{
			xenstore.Read("/t/state"),
			xenstore.Write("/t/marker", []byte("m")),
			xenstore.Read("/t/marker"),
		}
		if err := tx.Pipeline(ctx, ops); err != nil {
			t.Fatal(err)
		}
		if string(ops[0].Value) != "2" || string(ops[2].Value) != "m" {
			t.Fatalf("inside the transaction: %q %q", ops[0].Value, ops[2].Value)
		}
		if _, err := c.Read(ctx, "/t/marker"); !errors.Is(err, fs.ErrNotExist) {
			t.Fatalf("the transaction's write is visible before its end: %v", err)
		}
		if commit {
			err = tx.Commit(ctx)
		} else {
			err = tx.Abort(ctx)
		}
		if err != nil {
			t.Fatal(err)
		}
		_, err = c.Read(ctx, "/t/marker")
		if commit && err != nil || !commit && !errors.Is(err, fs.ErrNotExist) {
			t.Fatalf("commit %v: read after the end: %v", commit, err)
		}
		ops = []xenstore.Op{xenstore.Read("/t/state")}
		if err := tx.Pipeline(ctx, ops); !errors.Is(err, xenstore.ErrTxDone) || !errors.Is(ops[0].Err, xenstore.ErrTxDone) {
			t.Fatalf("pipeline on an ended transaction: %v, %v", err, ops[0].Err)
		}
	}
}

// TestPipelineConcurrent: pipelines longer than the in-flight bound, from
// several goroutines at once, beside single calls, all complete with their
// own replies: slots are taken a round at a time and freed by the
// background reader, so pipelines never wait for each other's slots.
func TestPipelineConcurrent(t *testing.T) {
	t.Parallel()
	_, c := start(t, xenstore.WithMaxInflight(4))
	ctx := testCtx(t)
	const n = 40
	for i := range n {
		mustWrite(t, c, "/c/"+strconv.Itoa(i), strconv.Itoa(i))
	}
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	for g := range 6 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ops := make([]xenstore.Op, n)
			for i := range ops {
				ops[i] = xenstore.Read("/c/" + strconv.Itoa((i+g)%n))
			}
			if err := c.Pipeline(ctx, ops); err != nil {
				errs <- err
				return
			}
			for i, op := range ops {
				if string(op.Value) != strconv.Itoa((i+g)%n) {
					errs <- errors.New("pipeline " + strconv.Itoa(g) + ": op " + strconv.Itoa(i) + " got " + string(op.Value))
					return
				}
			}
			if v, err := c.Read(ctx, "/c/"+strconv.Itoa(g)); err != nil || string(v) != strconv.Itoa(g) {
				errs <- errors.New("single read beside the pipelines: " + string(v))
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

// TestPipelineCancelled: a pipeline whose context ends reports the
// context's error for the ops not answered, and the connection stays
// usable.
func TestPipelineCancelled(t *testing.T) {
	t.Parallel()
	_, c := start(t)
	ctx, cancel := context.WithCancel(testCtx(t))
	cancel()
	ops := []xenstore.Op{xenstore.Read("/"), xenstore.Read("/local")}
	if err := c.Pipeline(ctx, ops); !errors.Is(err, context.Canceled) {
		t.Fatalf("Pipeline with an ended context = %v", err)
	}
	for _, op := range ops {
		if !errors.Is(op.Err, context.Canceled) {
			t.Errorf("%s: %v", op.Path, op.Err)
		}
	}
	mustWrite(t, c, "/after", "x")
	if got := mustRead(t, c, "/after"); got != "x" {
		t.Errorf("read after a cancelled pipeline: %q", got)
	}
}
