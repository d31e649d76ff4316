// Package fanout runs many independent XenStore requests at once with a
// bound on those in flight, so that one connection pipelines them: a
// directory of thousands of domains is read in a few round trips' time
// rather than thousands. lib/node (the hook, the agent's scan) and the
// admin CLI's listings share it.
package fanout

import (
	"context"
	"errors"
	"sync"
)

// Each calls fn(0), ..., fn(n-1) from at most width goroutines and waits
// for them. After the first error, or once ctx ends, no further call
// starts; the calls already running finish. It returns the errors joined,
// each distinct message once (a lost connection fails every request in
// flight with the same error), or ctx's error if ctx ended before every
// call started.
func Each(ctx context.Context, n, width int, fn func(i int) error) error {
	var (
		mu   sync.Mutex
		next int
		errs []error
		seen map[string]bool
		wg   sync.WaitGroup
	)
	take := func() (int, bool) {
		mu.Lock()
		defer mu.Unlock()
		if next == n || len(errs) > 0 || ctx.Err() != nil {
			return 0, false
		}
		next++
		return next - 1, true
	}
	fail := func(err error) {
		mu.Lock()
		defer mu.Unlock()
		if seen == nil {
			seen = make(map[string]bool)
		}
		if msg := err.Error(); !seen[msg] {
			seen[msg] = true
			errs = append(errs, err)
		}
	}
	for range min(n, max(width, 1)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i, ok := take(); ok; i, ok = take() {
				if err := fn(i); err != nil {
					fail(err)
				}
			}
		}()
	}
	wg.Wait()
	if len(errs) == 0 && next < n {
		return ctx.Err()
	}
	return errors.Join(errs...)
}
