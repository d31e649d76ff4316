package xenstore_test

// Benchmarks of the client against Debian's C libxenstore, on the same
// private xenstored in the same run (docs/performance.md records results):
//
//	go test -run '^$' -bench . -benchmem ./lib/xenstore/
//
// The libxenstore side is bench/cbench.c, built here with gcc and driven
// over a pipe so that only its measured loop is timed. The event writer
// runs in a separate process (this test binary, see TestMain), so the
// allocations reported for watch events are the watcher's alone.

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mtwatch/mtwatch/lib/xenstore"
	"github.com/mtwatch/mtwatch/lib/xenstore/xenstoredtest"
)

const (
	benchValuePath = "/bench/value"
	benchEventDir  = "/bench/ev"
	benchSentinel  = "/bench/ev/end"
	// benchEventPaths distinct nodes are written round-robin, so that
	// xenstored's merging of identical pending events stays out of the
	// way of a watcher that keeps up.
	benchEventPaths = 1024
	// benchWriters concurrent writes keep xenstored busy producing events.
	benchWriters = 32
	envWriter    = "MTWATCH_BENCH_WRITER"
)

func TestMain(m *testing.M) {
	if sock := os.Getenv(envWriter); sock != "" {
		os.Exit(eventWriter(sock))
	}
	os.Exit(m.Run())
}

// eventWriter is the writer process of BenchmarkWatchEvents: for each line
// "N" on stdin it writes N nodes under benchEventDir (pipelined), then the
// sentinel, then prints "done".
func eventWriter(sock string) int {
	ctx := context.Background()
	c, err := xenstore.Dial(ctx, xenstore.WithPath(sock))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	paths := make([]string, benchEventPaths)
	for i := range paths {
		paths[i] = fmt.Sprintf("%s/%d", benchEventDir, i)
	}
	val := []byte("x")
	in := bufio.NewScanner(os.Stdin)
	fmt.Println("ready")
	for in.Scan() {
		n, _ := strconv.Atoi(in.Text())
		var wg sync.WaitGroup
		var failed error
		var mu sync.Mutex
		for g := 0; g < benchWriters; g++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := g; i < n; i += benchWriters {
					if err := c.Write(ctx, paths[i%benchEventPaths], val); err != nil {
						mu.Lock()
						failed = err
						mu.Unlock()
						return
					}
				}
			}()
		}
		wg.Wait()
		if failed == nil {
			failed = c.Write(ctx, benchSentinel, val)
		}
		if failed != nil {
			fmt.Fprintln(os.Stderr, failed)
			return 1
		}
		fmt.Println("done")
	}
	return 0
}

// benchServer launches a private xenstored without tracing (the trace
// would dominate every measurement) and fills in the benchmark nodes.
func benchServer(b *testing.B) (*xenstoredtest.Server, *xenstore.Client) {
	b.Helper()
	srv, err := xenstoredtest.Launch(context.Background(), xenstoredtest.Config{})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { srv.Close() })
	c := benchDial(b, srv)
	ctx := context.Background()
	if err := c.Write(ctx, benchValuePath, []byte(strings.Repeat("v", 64))); err != nil {
		b.Fatal(err)
	}
	for i := 0; i < benchEventPaths; i++ {
		if err := c.Write(ctx, fmt.Sprintf("%s/%d", benchEventDir, i), nil); err != nil {
			b.Fatal(err)
		}
	}
	return srv, c
}

func benchDial(b *testing.B, srv *xenstoredtest.Server) *xenstore.Client {
	b.Helper()
	c, err := xenstore.Dial(context.Background(), xenstore.WithPath(srv.Socket()))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { c.Close() })
	return c
}

var (
	cbenchOnce sync.Once
	cbenchPath string
	cbenchErr  error
)

// cbench builds bench/cbench.c against libxenstore.so.4 (cached by source
// hash).
func cbench(b *testing.B) string {
	cbenchOnce.Do(func() {
		_, file, _, _ := runtime.Caller(0)
		src := filepath.Join(filepath.Dir(file), "bench", "cbench.c")
		code, err := os.ReadFile(src)
		if err != nil {
			cbenchErr = err
			return
		}
		sum := sha256.Sum256(code)
		out := filepath.Join(os.TempDir(), "mtwatch-cbench-"+hex.EncodeToString(sum[:8]))
		if _, err := os.Stat(out); err == nil {
			cbenchPath = out
			return
		}
		tmp := out + ".tmp" + strconv.Itoa(os.Getpid())
		cmd := exec.Command("gcc", "-O2", "-Wall", "-Wextra", "-Werror", "-o", tmp, src, "-l:libxenstore.so.4", "-lpthread")
		if msg, err := cmd.CombinedOutput(); err != nil {
			cbenchErr = fmt.Errorf("build cbench (needs gcc and Debian package libxenstore4): %v\n%s", err, msg)
			return
		}
		cbenchErr = os.Rename(tmp, out)
		cbenchPath = out
	})
	if cbenchErr != nil {
		b.Fatal(cbenchErr)
	}
	return cbenchPath
}

// proc is a benchmark helper process speaking the line protocol of
// cbench.c and eventWriter.
type proc struct {
	cmd *exec.Cmd
	in  io.WriteCloser
	out *bufio.Scanner
}

func startProc(b *testing.B, cmd *exec.Cmd) *proc {
	b.Helper()
	cmd.Stderr = os.Stderr
	in, err := cmd.StdinPipe()
	if err != nil {
		b.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	p := &proc{cmd: cmd, in: in, out: bufio.NewScanner(out)}
	b.Cleanup(func() { in.Close(); cmd.Wait() })
	if got := p.line(b); got != "ready" {
		b.Fatalf("%s: %q, want ready", cmd.Path, got)
	}
	return p
}

func (p *proc) send(b *testing.B, s string) {
	if _, err := fmt.Fprintln(p.in, s); err != nil {
		b.Fatal(err)
	}
}

func (p *proc) line(b *testing.B) string {
	if !p.out.Scan() {
		b.Fatalf("%s exited: %v", p.cmd.Path, p.out.Err())
	}
	return p.out.Text()
}

// BenchmarkRead: sequential READ round trips on one connection.
func BenchmarkRead(b *testing.B) {
	srv, _ := benchServer(b)
	b.Run("go", func(b *testing.B) {
		c := benchDial(b, srv)
		ctx := context.Background()
		b.ReportAllocs()
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			if _, err := c.Read(ctx, benchValuePath); err != nil {
				b.Fatal(err)
			}
		}
	})
	// A context that can end (here a cancellable one) costs the elected
	// reader a context.AfterFunc registration per call.
	b.Run("go-cancellable-ctx", func(b *testing.B) {
		c := benchDial(b, srv)
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		b.ReportAllocs()
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			if _, err := c.Read(ctx, benchValuePath); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("libxenstore", func(b *testing.B) { runCRead(b, srv, 1) })
}

// BenchmarkRead8: 8 concurrent readers sharing one connection (one handle
// for libxenstore, which serialises them; pipelined for Go).
func BenchmarkRead8(b *testing.B) {
	srv, _ := benchServer(b)
	b.Run("go", func(b *testing.B) { runGoParallelRead(b, srv, 8) })
	b.Run("libxenstore", func(b *testing.B) { runCRead(b, srv, 8) })
}

// BenchmarkReadPipelined64: how far pipelining goes with 64 readers.
func BenchmarkReadPipelined64(b *testing.B) {
	srv, _ := benchServer(b)
	b.Run("go", func(b *testing.B) { runGoParallelRead(b, srv, 64) })
}

func runGoParallelRead(b *testing.B, srv *xenstoredtest.Server, readers int) {
	c := benchDial(b, srv)
	ctx := context.Background()
	b.ReportAllocs()
	b.ResetTimer()
	var wg sync.WaitGroup
	for g := 0; g < readers; g++ {
		n := b.N / readers
		if g < b.N%readers {
			n++
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < n; i++ {
				if _, err := c.Read(ctx, benchValuePath); err != nil {
					b.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
}

func runCRead(b *testing.B, srv *xenstoredtest.Server, threads int) {
	b.StopTimer()
	cmd := exec.Command(cbench(b), "read", benchValuePath, strconv.Itoa(threads))
	cmd.Env = append(os.Environ(), srv.Env()...)
	p := startProc(b, cmd)
	b.StartTimer()
	p.send(b, strconv.Itoa(b.N))
	if got := p.line(b); got != "done" {
		b.Fatalf("cbench: %q", got)
	}
}

// BenchmarkWatchEvents: events received by one watch while another process
// writes b.N nodes under it (pipelined, as fast as xenstored accepts them).
// ns/op is per write; events/s counts what the watcher received.
func BenchmarkWatchEvents(b *testing.B) {
	srv, _ := benchServer(b)
	exe, err := os.Executable()
	if err != nil {
		b.Fatal(err)
	}
	writer := func(b *testing.B) *proc {
		cmd := exec.Command(exe)
		cmd.Env = append(os.Environ(), envWriter+"="+srv.Socket())
		return startProc(b, cmd)
	}
	report := func(b *testing.B, events int, d time.Duration) {
		b.ReportMetric(float64(events)/d.Seconds(), "events/s")
		b.ReportMetric(float64(events)/float64(b.N+1), "events/write")
	}
	b.Run("go", func(b *testing.B) {
		b.StopTimer()
		c := benchDial(b, srv)
		ctx := context.Background()
		w, err := c.Watch(ctx, benchEventDir, "bench")
		if err != nil {
			b.Fatal(err)
		}
		<-w.Events() // initial event
		wp := writer(b)
		b.ReportAllocs()
		b.StartTimer()
		start := time.Now()
		wp.send(b, strconv.Itoa(b.N))
		events := 0
		for ev := range w.Events() {
			events++
			if ev.Path == benchSentinel {
				break
			}
		}
		d := time.Since(start)
		b.StopTimer()
		if got := wp.line(b); got != "done" {
			b.Fatalf("writer: %q", got)
		}
		if err := w.Err(); err != nil {
			b.Fatal(err)
		}
		report(b, events, d)
		w.Unwatch(ctx)
	})
	b.Run("libxenstore", func(b *testing.B) {
		b.StopTimer()
		cmd := exec.Command(cbench(b), "watch", benchEventDir)
		cmd.Env = append(os.Environ(), srv.Env()...)
		cw := startProc(b, cmd)
		wp := writer(b)
		b.StartTimer()
		start := time.Now()
		cw.send(b, benchSentinel)
		wp.send(b, strconv.Itoa(b.N))
		got := cw.line(b)
		d := time.Since(start)
		b.StopTimer()
		if l := wp.line(b); l != "done" {
			b.Fatalf("writer: %q", l)
		}
		events, err := strconv.Atoi(strings.TrimPrefix(got, "done "))
		if err != nil {
			b.Fatalf("cbench: %q", got)
		}
		report(b, events, d)
	})
}
