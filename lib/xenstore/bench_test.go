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
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/mtwatch/mtwatch/lib/dispatch"
	"github.com/mtwatch/mtwatch/lib/domid"
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
	envLayout    = "MTWATCH_BENCH_LAYOUT"
	// benchDomains guests own the nodes of the "domains" layout, which is
	// the agent's: backend nodes of 1,000 domains under one watched
	// directory, so that a dispatcher routes every event to a domain worker.
	benchDomains   = 1000
	benchDomainDir = "/local/domain/0/backend/vbd"
)

// eventLayout is where a watch benchmark's writer writes: the watched
// directory, the benchEventPaths nodes written round-robin and the
// sentinel, which ends a run.
type eventLayout struct {
	name, dir, sentinel string
	paths               []string
}

func layoutOf(name string) eventLayout {
	l := eventLayout{name: name, dir: benchEventDir, sentinel: benchSentinel}
	if name == "domains" {
		l.dir, l.sentinel = benchDomainDir, benchDomainDir+"/end"
	}
	l.paths = make([]string, benchEventPaths)
	for i := range l.paths {
		if name == "domains" {
			// Domain 1+i%1000, one device of it per round.
			l.paths[i] = fmt.Sprintf("%s/%d/%d/state", l.dir, 1+i%benchDomains, 51712+i/benchDomains)
		} else {
			l.paths[i] = fmt.Sprintf("%s/%d", l.dir, i)
		}
	}
	return l
}

func TestMain(m *testing.M) {
	if sock := os.Getenv(envWriter); sock != "" {
		os.Exit(eventWriter(sock))
	}
	os.Exit(m.Run())
}

// eventWriter is the writer process of the watch benchmarks: for each line
// "N" on stdin it writes N nodes of the layout named by $MTWATCH_BENCH_LAYOUT
// (pipelined), then the sentinel, then prints "done".
func eventWriter(sock string) int {
	ctx := context.Background()
	c, err := xenstore.Dial(ctx, xenstore.WithPath(sock))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	l := layoutOf(os.Getenv(envLayout))
	paths := l.paths
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
			failed = c.Write(ctx, l.sentinel, val)
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
	for _, name := range []string{"", "domains"} {
		for _, p := range layoutOf(name).paths {
			if err := c.Write(ctx, p, nil); err != nil {
				b.Fatal(err)
			}
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

// BenchmarkReadBatch: the eight reads a caller needs at once (a device's
// backend nodes), one after another and as one Pipeline. ns/op is per
// batch of eight.
func BenchmarkReadBatch(b *testing.B) {
	srv, _ := benchServer(b)
	paths := make([]string, 8)
	for i := range paths {
		paths[i] = benchValuePath
	}
	b.Run("sequential", func(b *testing.B) {
		c := benchDial(b, srv)
		ctx := context.Background()
		b.ReportAllocs()
		for b.Loop() {
			for _, p := range paths {
				if _, err := c.Read(ctx, p); err != nil {
					b.Fatal(err)
				}
			}
		}
	})
	b.Run("pipeline", func(b *testing.B) {
		c := benchDial(b, srv)
		ctx := context.Background()
		ops := make([]xenstore.Op, len(paths))
		b.ReportAllocs()
		for b.Loop() {
			for i, p := range paths {
				ops[i] = xenstore.Read(p)
			}
			if err := c.Pipeline(ctx, ops); err != nil {
				b.Fatal(err)
			}
		}
	})
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
// ns/op is per write; events/s counts what the watcher received;
// cpu-ns/event and ctxsw/event are the watcher process's own CPU time (all
// threads, user and system) and context switches per event received, which
// other load on the host disturbs far less than the rate.
//
//	go           Watch: the reader goroutine hands events to Events()
//	go-func      WatchFunc: events are handled on the reading goroutine
//	libxenstore  xs_watch + xs_read_watch (bench/cbench.c)
func BenchmarkWatchEvents(b *testing.B) {
	srv, _ := benchServer(b)
	l := layoutOf("")
	b.Run("go", func(b *testing.B) { runGoWatch(b, srv, l, watchChan, nil) })
	b.Run("go-func", func(b *testing.B) { runGoWatch(b, srv, l, watchFunc, nil) })
	b.Run("libxenstore", func(b *testing.B) { runCWatch(b, srv, l) })
}

// BenchmarkWatchDispatch: the agent's receive path. Events of 1,000
// domains' backend nodes (layout "domains") go from the client to a
// lib/dispatch Dispatcher with a worker per domain and a no-op handler;
// a run ends when every dispatched event has been handled (or coalesced by
// the dispatcher). Baselines in the same run: the client alone on the same
// stream, and libxenstore's watcher.
//
//	go                 Watch + Events(), no dispatch
//	go-dispatch        Events() -> Dispatch from a consumer goroutine
//	go-func-dispatch   WatchFunc calling Dispatch on the reading goroutine
//	libxenstore        xs_watch + xs_read_watch, no dispatch
func BenchmarkWatchDispatch(b *testing.B) {
	srv, _ := benchServer(b)
	l := layoutOf("domains")
	b.Run("go", func(b *testing.B) { runGoWatch(b, srv, l, watchChan, nil) })
	b.Run("go-dispatch", func(b *testing.B) { runGoWatch(b, srv, l, watchChan, benchDispatcher(b, l)) })
	b.Run("go-func-dispatch", func(b *testing.B) { runGoWatch(b, srv, l, watchFunc, benchDispatcher(b, l)) })
	b.Run("libxenstore", func(b *testing.B) { runCWatch(b, srv, l) })
}

type watchMode int

const (
	watchChan watchMode = iota
	watchFunc
)

// benchDispatcher returns a dispatcher with a no-op handler for l's watch
// and a worker for each of its domains.
func benchDispatcher(b *testing.B, l eventLayout) *dispatch.Dispatcher {
	b.Helper()
	d, err := dispatch.New(dispatch.Config{Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { d.Stop(context.Background()) })
	noop := func(context.Context, dispatch.Event) error { return nil }
	if _, err := d.Register(dispatch.WatchConfig{Path: l.dir, Token: "bench", Handler: noop}); err != nil {
		b.Fatal(err)
	}
	for id := 1; id <= benchDomains; id++ {
		if err := d.CreateDomain(domid.ID(id)); err != nil {
			b.Fatal(err)
		}
	}
	return d
}

// waitHandled waits until every event d accepted was handled, coalesced,
// filtered or dropped.
func waitHandled(d *dispatch.Dispatcher) dispatch.Counters {
	for {
		t := d.Stats().Totals
		if t.Processed-t.Overflows+t.Coalesced+t.Filtered+t.Dropped >= t.Dispatched {
			return t
		}
		time.Sleep(100 * time.Microsecond)
	}
}

// usage is the process's CPU time and context switches so far.
func usage() (cpu time.Duration, ctxsw int64) {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	cpu = time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	return cpu, ru.Nvcsw + ru.Nivcsw
}

func startWriter(b *testing.B, srv *xenstoredtest.Server, l eventLayout) *proc {
	exe, err := os.Executable()
	if err != nil {
		b.Fatal(err)
	}
	cmd := exec.Command(exe)
	cmd.Env = append(os.Environ(), envWriter+"="+srv.Socket(), envLayout+"="+l.name)
	return startProc(b, cmd)
}

func reportWatch(b *testing.B, events int, d, cpu time.Duration, ctxsw int64) {
	b.ReportMetric(float64(events)/d.Seconds(), "events/s")
	b.ReportMetric(float64(events)/float64(b.N+1), "events/write")
	b.ReportMetric(float64(cpu.Nanoseconds())/float64(events), "cpu-ns/event")
	b.ReportMetric(float64(ctxsw)/float64(events), "ctxsw/event")
}

// runGoWatch receives the events of b.N writes (plus the sentinel) through
// a Go watch of mode m, dispatching them to d if it is not nil.
func runGoWatch(b *testing.B, srv *xenstoredtest.Server, l eventLayout, m watchMode, d *dispatch.Dispatcher) {
	b.StopTimer()
	c := benchDial(b, srv)
	ctx := context.Background()
	var (
		w      *xenstore.Watch
		err    error
		events int // written by fn, read after end is closed
		armed  atomic.Bool
		end    = make(chan struct{})
	)
	handle := func(ev xenstore.Event) {
		if d != nil {
			if err := d.Dispatch(ev.Path, ev.Token); err != nil {
				b.Error(err)
			}
		}
	}
	switch m {
	case watchChan:
		w, err = c.Watch(ctx, l.dir, "bench")
	case watchFunc:
		initial := make(chan struct{})
		w, err = c.WatchFunc(ctx, l.dir, "bench", func(ev xenstore.Event) {
			if !armed.Load() {
				close(initial)
				return
			}
			events++
			handle(ev)
			if ev.Path == l.sentinel {
				armed.Store(false)
				close(end)
			}
		})
		if err == nil {
			<-initial
		}
	}
	if err != nil {
		b.Fatal(err)
	}
	if m == watchChan {
		<-w.Events() // initial event
	}
	wp := startWriter(b, srv, l)
	b.ReportAllocs()
	cpu0, sw0 := usage()
	armed.Store(true)
	b.StartTimer()
	start := time.Now()
	wp.send(b, strconv.Itoa(b.N))
	if m == watchChan {
		for ev := range w.Events() {
			events++
			handle(ev)
			if ev.Path == l.sentinel {
				break
			}
		}
	} else {
		select {
		case <-end:
		case <-w.Events(): // ended: Err says why
		}
	}
	if d != nil {
		waitHandled(d)
	}
	dur := time.Since(start)
	b.StopTimer()
	cpu1, sw1 := usage()
	if got := wp.line(b); got != "done" {
		b.Fatalf("writer: %q", got)
	}
	if err := w.Err(); err != nil {
		b.Fatal(err)
	}
	reportWatch(b, events, dur, cpu1-cpu0, sw1-sw0)
	if d != nil {
		t := d.Stats().Totals
		b.ReportMetric(float64(t.Coalesced)/float64(events), "coalesced/event")
	}
	w.Unwatch(ctx)
}

// runCWatch is runGoWatch's baseline: cbench.c's libxenstore watcher on the
// same stream.
func runCWatch(b *testing.B, srv *xenstoredtest.Server, l eventLayout) {
	b.StopTimer()
	cmd := exec.Command(cbench(b), "watch", l.dir)
	cmd.Env = append(os.Environ(), srv.Env()...)
	cw := startProc(b, cmd)
	wp := startWriter(b, srv, l)
	b.StartTimer()
	start := time.Now()
	cw.send(b, l.sentinel)
	wp.send(b, strconv.Itoa(b.N))
	got := cw.line(b)
	dur := time.Since(start)
	b.StopTimer()
	if line := wp.line(b); line != "done" {
		b.Fatalf("writer: %q", line)
	}
	var events int
	var cpu, ctxsw int64
	if _, err := fmt.Sscanf(got, "done %d %d %d", &events, &cpu, &ctxsw); err != nil {
		b.Fatalf("cbench: %q: %v", got, err)
	}
	reportWatch(b, events, dur, time.Duration(cpu), ctxsw)
}
