package main

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mtwatch/mtwatch/lib/xenstore/xenstoredtest"
)

// burstSize is how many creates run at once: 100 in CI; the 500 of a host
// starting all its guests at boot is measured by hand (docs/performance.md),
// and then the mixed burst has 200 hooks (mixedSize):
//
//	MTWATCH_HOOK_BURST=500 go test -run TestBurst -count=1 -v ./cmd/mtwatch-hook/
//
// MTWATCH_HOOK_BIN runs another build instead (an earlier version, for a
// baseline).
func burstSize(t *testing.T) int {
	s := os.Getenv("MTWATCH_HOOK_BURST")
	if s == "" {
		return 100
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 3 || n > 32000 {
		t.Fatalf("MTWATCH_HOOK_BURST=%q: want a number from 3 to 32000", s)
	}
	return n
}

// mixedSize is the size of the mixed burst that follows n creates.
func mixedSize(n int) int { return min(n, 200) }

// buildHook builds mtwatch-hook as make build ships it (static, no cgo, no
// -race), so that a burst of processes costs what it costs on a host.
func buildHook(t *testing.T) string {
	t.Helper()
	if bin := os.Getenv("MTWATCH_HOOK_BIN"); bin != "" {
		return bin
	}
	bin := filepath.Join(t.TempDir(), "mtwatch-hook")
	build := exec.Command("go", "build", "-trimpath", "-o", bin, ".")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// runAll starts every command at once, with the default timeout, and
// returns the failures.
func runAll(t *testing.T, bin string, env []string, cmds [][]string) []string {
	t.Helper()
	var (
		mu       sync.Mutex
		failures []string
		wg       sync.WaitGroup
		start    = make(chan struct{})
	)
	for _, args := range cmds {
		wg.Add(1)
		go func() {
			defer wg.Done()
			cmd := exec.Command(bin, args...)
			cmd.Env = env
			var stderr bytes.Buffer
			cmd.Stderr = &stderr
			<-start
			if err := cmd.Run(); err != nil {
				mu.Lock()
				failures = append(failures, fmt.Sprintf("%v: %v: %s", args, err, stderr.String()))
				mu.Unlock()
			}
		}()
	}
	began := time.Now()
	close(start)
	wg.Wait()
	t.Logf("%d processes at once: %d failed, %v", len(cmds), len(failures), time.Since(began).Round(time.Millisecond))
	return failures
}

// TestBurst: hooks of many domains at once (a host starting or stopping all
// its guests) each get their node, or have it removed, within the default
// timeout: none fails. Then a mixed burst of creates, destroys and destroys
// by uuid of as many domains.
func TestBurst(t *testing.T) {
	t.Parallel()
	n := burstSize(t)
	xs := xenstoredtest.Start(t)
	bin := buildHook(t)
	env := append(os.Environ(), xs.Env()...)
	uuid := func(i int) string { return fmt.Sprintf("00000000-0000-0000-0000-%012d", i) }

	var creates [][]string
	for i := 1; i <= n; i++ {
		creates = append(creates, []string{"create", "--uuid", uuid(i), strconv.Itoa(i)})
	}
	if f := runAll(t, bin, env, creates); len(f) > 0 {
		t.Errorf("%d of %d creates failed; first: %s", len(f), n, f[0])
	}
	want := map[string]string{}
	for i := 1; i <= n; i++ {
		want[strconv.Itoa(i)] = uuid(i)
	}
	checkNodes(t, xs, want)

	// Mixed: new domains created, as many nodes destroyed by domid and as
	// many by uuid, in a directory of n nodes.
	var mixed [][]string
	for i := 1; i <= mixedSize(n); i++ {
		switch i % 3 {
		case 0:
			mixed = append(mixed, []string{"create", "--uuid", uuid(n + i), strconv.Itoa(n + i)})
			want[strconv.Itoa(n+i)] = uuid(n + i)
		case 1:
			mixed = append(mixed, []string{"destroy", strconv.Itoa(i)})
			delete(want, strconv.Itoa(i))
		case 2:
			mixed = append(mixed, []string{"destroy", "--uuid", uuid(i)})
			delete(want, strconv.Itoa(i))
		}
	}
	if f := runAll(t, bin, env, mixed); len(f) > 0 {
		t.Errorf("%d of %d hooks of the mixed burst failed:\n%s", len(f), len(mixed), strings.Join(f, "\n"))
	}
	checkNodes(t, xs, want)
}

// checkNodes compares the directory, read with Debian's xenstore-ls, to
// want (name to value), every node private to dom0.
func checkNodes(t *testing.T, xs *xenstoredtest.Instance, want map[string]string) {
	t.Helper()
	got := map[string]string{}
	for _, line := range strings.Split(xs.Run("xenstore-ls", "-p", "/local/domain/0/mtwatch"), "\n") {
		name, rest, ok := strings.Cut(line, " = ")
		if !ok {
			continue
		}
		if !strings.HasSuffix(rest, "(n0)") {
			t.Errorf("node %s not private to dom0: %q", name, line)
		}
		v, _, _ := strings.Cut(rest, " ")
		got[name] = strings.Trim(v, `"`)
	}
	if len(got) != len(want) {
		t.Errorf("%d nodes, want %d", len(got), len(want))
	}
	for name, v := range want {
		if got[name] != v {
			t.Errorf("node %s = %q, want %q", name, got[name], v)
		}
	}
}
