package xenstore_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/mtwatch/mtwatch/lib/xenstore"
	"github.com/mtwatch/mtwatch/lib/xenstore/xenstoredtest"
)

// testTimeout bounds every wait in these tests.
const testTimeout = 10 * time.Second

func testCtx(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	t.Cleanup(cancel)
	return ctx
}

// start launches a private xenstored and dials it.
func start(t *testing.T, opts ...xenstore.Option) (*xenstoredtest.Instance, *xenstore.Client) {
	t.Helper()
	in := xenstoredtest.Start(t)
	return in, dial(t, in, opts...)
}

func dial(t *testing.T, in *xenstoredtest.Instance, opts ...xenstore.Option) *xenstore.Client {
	t.Helper()
	c, err := xenstore.Dial(testCtx(t), append([]xenstore.Option{xenstore.WithPath(in.Socket())}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func mustWrite(t *testing.T, c *xenstore.Client, path, value string) {
	t.Helper()
	if err := c.Write(testCtx(t), path, []byte(value)); err != nil {
		t.Fatal(err)
	}
}

func mustRead(t *testing.T, c *xenstore.Client, path string) string {
	t.Helper()
	v, err := c.Read(testCtx(t), path)
	if err != nil {
		t.Fatal(err)
	}
	return string(v)
}

func mustWatch(t *testing.T, c *xenstore.Client, path, token string) *xenstore.Watch {
	t.Helper()
	w, err := c.Watch(testCtx(t), path, token)
	if err != nil {
		t.Fatal(err)
	}
	return w
}

// next returns the next event, failing the test after testTimeout.
func next(t *testing.T, w *xenstore.Watch) xenstore.Event {
	t.Helper()
	select {
	case ev, ok := <-w.Events():
		if !ok {
			t.Fatalf("watch %s ended: %v", w.Path(), w.Err())
		}
		return ev
	case <-time.After(testTimeout):
		t.Fatalf("no event on watch %s after %v", w.Path(), testTimeout)
	}
	return xenstore.Event{}
}

// expectEvent waits for an event for path, skipping others (watches may
// fire spuriously).
func expectEvent(t *testing.T, w *xenstore.Watch, path string) {
	t.Helper()
	if err := awaitEvent(w, path); err != nil {
		t.Fatal(err)
	}
}

// awaitEvent is expectEvent for goroutines other than the test's, which
// must not call t.Fatal.
func awaitEvent(w *xenstore.Watch, path string) error {
	deadline := time.After(testTimeout)
	for {
		select {
		case ev, ok := <-w.Events():
			if !ok {
				return fmt.Errorf("watch %s ended while waiting for %s: %w", w.Path(), path, w.Err())
			}
			if ev.Path == path {
				if ev.Token != w.Token() {
					return fmt.Errorf("event %v: token %q, want %q", ev, ev.Token, w.Token())
				}
				return nil
			}
		case <-deadline:
			return fmt.Errorf("no event for %s on watch %s", path, w.Path())
		}
	}
}

// waitReader waits until the client's reader is in state ("none",
// "caller", "background"; see reader.go).
func waitReader(t *testing.T, c *xenstore.Client, state string) {
	t.Helper()
	deadline := time.Now().Add(testTimeout)
	for xenstore.ReaderState(c) != state {
		if time.Now().After(deadline) {
			t.Fatalf("reader is %s, want %s", xenstore.ReaderState(c), state)
		}
		time.Sleep(time.Millisecond)
	}
}

// noEvent checks that no event arrives for a short while.
func noEvent(t *testing.T, w *xenstore.Watch) {
	t.Helper()
	select {
	case ev, ok := <-w.Events():
		if ok {
			t.Fatalf("unexpected event %v", ev)
		}
		t.Fatalf("watch ended unexpectedly: %v", w.Err())
	case <-time.After(50 * time.Millisecond):
	}
}

// waitEnd waits until the watch's channel is closed and returns Err.
func waitEnd(t *testing.T, w *xenstore.Watch) error {
	t.Helper()
	deadline := time.After(testTimeout)
	for {
		select {
		case _, ok := <-w.Events():
			if !ok {
				err := w.Err()
				if err == nil {
					t.Fatal("watch channel closed with nil Err")
				}
				return err
			}
		case <-deadline:
			t.Fatalf("watch %s did not end", w.Path())
		}
	}
}
