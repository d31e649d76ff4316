package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mtwatch/mtwatch/lib/xenstore"
)

// The writer is this program re-executed (envWriter names the xenstored
// socket), so that the event stream comes from another process, as a
// toolstack's or a guest's writes do, and is the same for the agent and for
// the libxenstore watcher. It speaks a line protocol on stdin/stdout:
//
//	stream <n> <domains>   n writes to backend/vbd/<d>/0/state, d round-robin
//	                       over 1..domains, pipelined; then the sentinel;
//	                       "done"
//	flood <path> <dur>     rewrite path for dur, pipelined; "done <writes>"
const (
	envWriter = "MTWATCH_BENCH_WRITER"
	// writerDepth concurrent writes keep xenstored busy producing events.
	writerDepth = 32
	dom0Home    = "/local/domain/0/"
	sentinel    = dom0Home + benchWatch + "/bench/end"
)

// isSentinel reports whether an event path (absolute or relative to dom0's
// home) is the sentinel's.
func isSentinel(p string) bool {
	return p == sentinel || p == sentinel[len(dom0Home):]
}

// absPath makes an event path of the relative benchWatch absolute.
func absPath(p string) string {
	if strings.HasPrefix(p, "/") {
		return p
	}
	return dom0Home + p
}

func streamPath(d int) string { return fmt.Sprintf("%s%s/vbd/%d/0/state", dom0Home, benchWatch, d) }

func writerMain(sock string) int {
	ctx := context.Background()
	c, err := xenstore.Dial(ctx, xenstore.WithPath(sock))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer c.Close()
	in := bufio.NewScanner(os.Stdin)
	fmt.Println("ready")
	for in.Scan() {
		f := strings.Fields(in.Text())
		var err error
		var writes int64
		switch {
		case len(f) == 3 && f[0] == "stream":
			n, _ := strconv.Atoi(f[1])
			doms, _ := strconv.Atoi(f[2])
			paths := make([]string, doms)
			for i := range paths {
				paths[i] = streamPath(i + 1)
			}
			err = pipelined(func(i int64) (string, bool) { return paths[i%int64(doms)], i < int64(n) }, c)
			if err == nil {
				err = c.Write(ctx, sentinel, []byte("1"))
			}
			writes = int64(n)
		case len(f) == 3 && f[0] == "flood":
			d, perr := time.ParseDuration(f[2])
			if perr != nil {
				err = perr
				break
			}
			end := time.Now().Add(d)
			var count atomic.Int64
			err = pipelined(func(i int64) (string, bool) {
				if i%64 == 0 && time.Now().After(end) {
					return "", false
				}
				count.Add(1)
				return f[1], true
			}, c)
			writes = count.Load()
		default:
			err = fmt.Errorf("writer: bad command %q", in.Text())
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		fmt.Println("done", writes)
	}
	return 0
}

// pipelined writes next(i)'s paths from writerDepth goroutines until next
// says stop.
func pipelined(next func(i int64) (string, bool), c *xenstore.Client) error {
	ctx := context.Background()
	var seq atomic.Int64
	var wg sync.WaitGroup
	var mu sync.Mutex
	var first error
	val := []byte("4")
	for range writerDepth {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				p, ok := next(seq.Add(1) - 1)
				if !ok {
					return
				}
				if err := c.Write(ctx, p, val); err != nil {
					mu.Lock()
					first = err
					mu.Unlock()
					return
				}
			}
		}()
	}
	wg.Wait()
	return first
}

// proc is a helper process speaking a line protocol (the writer, cbench).
type proc struct {
	cmd *exec.Cmd
	in  io.WriteCloser
	out *bufio.Scanner
}

func startProc(cmd *exec.Cmd) (*proc, error) {
	cmd.Stderr = os.Stderr
	in, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	p := &proc{cmd: cmd, in: in, out: bufio.NewScanner(out)}
	if l, err := p.line(); err != nil || l != "ready" {
		p.close()
		return nil, fmt.Errorf("%s: %q, %v; want ready", cmd.Path, l, err)
	}
	return p, nil
}

func (p *proc) send(s string) error {
	_, err := fmt.Fprintln(p.in, s)
	return err
}

func (p *proc) line() (string, error) {
	if !p.out.Scan() {
		return "", fmt.Errorf("%s exited: %v", p.cmd.Path, p.out.Err())
	}
	return p.out.Text(), nil
}

// close ends the process: stdin closed, then it exits on its own.
func (p *proc) close() {
	p.in.Close()
	done := make(chan struct{})
	go func() { p.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		p.cmd.Process.Kill()
		<-done
	}
}

func startWriter(sock string) (*proc, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(exe)
	cmd.Env = append(os.Environ(), envWriter+"="+sock)
	return startProc(cmd)
}
