// Package proc runs the commands of mtwatchd's plugins: each in a process
// group and, where the agent's cgroup v2 is writable, a cgroup of its own,
// with stdin on /dev/null, its output logged line by line, and a deadline
// that ends the whole cgroup or group (SIGTERM, then SIGKILL after a grace
// period) so that nothing a hung script started outlives it, not even a
// process that left the group with setsid or setpgid (which only the
// cgroup holds: see Confinement). After a restart, Adopt finds again a
// command an earlier mtwatchd left running, to end it the same way.
package proc

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"
	"unicode/utf8"
)

// DefaultGrace is the time a process group gets between SIGTERM and SIGKILL.
const DefaultGrace = 5 * time.Second

// MaxLine bounds one logged line; longer lines are cut.
const MaxLine = 4096

// ErrTimeout is wrapped by Result.Err when the command ran past its timeout.
var ErrTimeout = errors.New("timed out")

// Spec describes one run.
type Spec struct {
	// Path is the program to execute; Args is its full argv, Args[0]
	// included. Env is its whole environment.
	Path string
	Args []string
	Env  []string
	// Timeout, if positive, bounds the run; ctx's end bounds it too. Either
	// ends the process group: SIGTERM, then SIGKILL after Grace (zero means
	// DefaultGrace).
	Timeout time.Duration
	Grace   time.Duration
	// Line receives each line the command writes, with the stream's name
	// ("stdout" or "stderr"), control characters and bytes that are not
	// UTF-8 escaped (see Printable). It is called from two goroutines at
	// once and must be safe for that. Nil discards the output.
	Line func(stream, line string)

	// noCgroup runs without a cgroup, as where there is none (tests).
	noCgroup bool

	// Started, if set, is called with the process id (also the process
	// group's id) once the command has started, before Run waits for it:
	// for a caller that records what runs, to find it again after a crash.
	Started func(pid int)
}

// Result is the outcome of a run.
type Result struct {
	// ExitCode is the exit status, -1 when the process was killed by a
	// signal (Signal) or did not start.
	ExitCode int
	Signal   syscall.Signal
	Duration time.Duration
	// TimedOut: the timeout ended the run; Cancelled: ctx did.
	TimedOut  bool
	Cancelled bool
	// Killed: SIGKILL had to be sent after the grace period.
	Killed bool
	// Err is nil for exit status 0, otherwise a lower-case description
	// wrapping ErrTimeout, ctx's error, *exec.ExitError or the start error.
	Err error
}

// OK reports a zero exit status within the deadline.
func (r Result) OK() bool { return r.Err == nil }

// Outcome is what became of a run, in the words of the plugins' metrics
// (the result label of mtwatch_exec_runs_total and
// mtwatch_hotplug_scripts_total) and status counters.
type Outcome string

// The outcomes of a run.
const (
	OutcomeOK      Outcome = "ok"      // exit status 0 within the deadline
	OutcomeFailed  Outcome = "failed"  // ran, and exited non-zero or was killed by a signal
	OutcomeTimeout Outcome = "timeout" // ran past its timeout and was killed
	OutcomeError   Outcome = "error"   // did not start (exec failed, or the group was stopping)
)

// Outcome classifies the run.
func (r Result) Outcome() Outcome {
	switch {
	case r.OK():
		return OutcomeOK
	case r.TimedOut:
		return OutcomeTimeout
	case r.ExitCode >= 0 || r.Signal != 0:
		return OutcomeFailed
	}
	return OutcomeError
}

// Run runs spec and returns once the command's process group is gone or, for
// a group that leaves a member behind the leader, once it was killed.
func Run(ctx context.Context, spec Spec) Result {
	grace := spec.Grace
	if grace <= 0 {
		grace = DefaultGrace
	}
	outR, outW, err := os.Pipe()
	if err != nil {
		return Result{ExitCode: -1, Err: fmt.Errorf("run %s: %w", spec.Path, err)}
	}
	errR, errW, err := os.Pipe()
	if err != nil {
		outR.Close()
		outW.Close()
		return Result{ExitCode: -1, Err: fmt.Errorf("run %s: %w", spec.Path, err)}
	}
	var cg *cgroup
	if !spec.noCgroup {
		cg = newCgroup()
	}
	newCmd := func() *exec.Cmd {
		cmd := &exec.Cmd{
			Path:        spec.Path,
			Args:        spec.Args,
			Env:         spec.Env,
			Stdout:      outW,
			Stderr:      errW,
			SysProcAttr: &syscall.SysProcAttr{Setpgid: true},
		}
		if cmd.Env == nil {
			cmd.Env = []string{}
		}
		if cg != nil {
			cmd.SysProcAttr.UseCgroupFD = true
			cmd.SysProcAttr.CgroupFD = int(cg.fd.Fd())
		}
		return cmd
	}
	start := time.Now()
	cmd := newCmd()
	err = cmd.Start()
	if err != nil && cg != nil {
		// Once more without the cgroup: if that starts, the kernel would
		// not start a process in one (clone3 or CLONE_INTO_CGROUP missing,
		// before 5.7), and process groups are all there is from now on. A
		// command that cannot start at all fails again, and says nothing
		// about cgroups.
		cgErr := err
		cg.release()
		cg = nil
		cmd = newCmd()
		if err = cmd.Start(); err == nil {
			disableCgroups(fmt.Errorf("cgroup v2: start a process in a cgroup: %w", cgErr))
		}
	}
	outW.Close()
	errW.Close()
	if err != nil {
		outR.Close()
		errR.Close()
		if cg != nil {
			cg.release()
		}
		return Result{ExitCode: -1, Duration: time.Since(start), Err: fmt.Errorf("start %s: %w", spec.Path, err)}
	}
	pgid := cmd.Process.Pid
	if spec.Started != nil {
		spec.Started(pgid)
	}

	var readers sync.WaitGroup
	for _, s := range []struct {
		name string
		r    *os.File
	}{{"stdout", outR}, {"stderr", errR}} {
		readers.Add(1)
		go func() {
			defer readers.Done()
			readLines(s.r, s.name, spec.Line)
		}()
	}

	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()

	var deadline <-chan time.Time
	if spec.Timeout > 0 {
		t := time.NewTimer(spec.Timeout)
		defer t.Stop()
		deadline = t.C
	}
	var res Result
	var werr error
	select {
	case werr = <-exited:
	case <-deadline:
		res.TimedOut = true
	case <-ctx.Done():
		res.Cancelled = true
	}
	if res.TimedOut || res.Cancelled {
		werr, res.Killed = endGroup(pgid, cg, exited, grace)
	}
	// A command that exits on its own may leave a daemon behind, as libxl
	// allows; only a run that is ended takes its whole group down.
	res.Duration = time.Since(start)
	if cg != nil {
		cg.release()
	}

	// A daemon left behind, or a member that escaped the group (setsid),
	// may still hold the pipes: give the readers a moment, then stop
	// reading.
	done := make(chan struct{})
	go func() { readers.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(time.Second):
		outR.SetReadDeadline(time.Now())
		errR.SetReadDeadline(time.Now())
		<-done
	}
	outR.Close()
	errR.Close()

	res.ExitCode = -1
	if ps := cmd.ProcessState; ps != nil {
		res.ExitCode = ps.ExitCode()
		if ws, ok := ps.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			res.Signal = ws.Signal()
		}
	}
	switch {
	case res.TimedOut:
		res.Err = fmt.Errorf("%s %w after %v", spec.Path, ErrTimeout, spec.Timeout)
	case res.Cancelled:
		res.Err = fmt.Errorf("%s: %w", spec.Path, ctx.Err())
	case werr != nil:
		res.Err = fmt.Errorf("%s: %w", spec.Path, werr)
	}
	return res
}

// endGroup sends SIGTERM to the group and the cgroup (if not nil), waits
// for the leader and the rest up to grace, then SIGKILLs whatever is left.
// It returns the leader's wait error and whether SIGKILL was needed.
func endGroup(pgid int, cg *cgroup, exited <-chan error, grace time.Duration) (error, bool) {
	alive := func() bool { return groupAlive(pgid) }
	if cg != nil {
		alive = cg.populated
	}
	for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGCONT} { // a stopped member would never see SIGTERM
		syscall.Kill(-pgid, sig)
		if cg != nil {
			cg.signal(sig)
		}
	}
	t := time.NewTimer(grace)
	defer t.Stop()
	var werr error
	leaderDone := false
	select {
	case werr = <-exited:
		leaderDone = true
	case <-t.C:
	}
	if leaderDone {
		// The leader went; the group's other members get the rest of the
		// grace period.
		tick := time.NewTicker(10 * time.Millisecond)
		defer tick.Stop()
		for alive() {
			select {
			case <-tick.C:
				continue
			case <-t.C:
			}
			break
		}
		if !alive() {
			return werr, false
		}
	}
	syscall.Kill(-pgid, syscall.SIGKILL)
	if cg != nil {
		cg.kill()
	}
	if !leaderDone {
		werr = <-exited
	}
	if cg != nil {
		// SIGKILL is not delivered synchronously: the cgroup empties
		// shortly after, and must be empty to be removed.
		for end := time.Now().Add(time.Second); cg.populated() && time.Now().Before(end); {
			time.Sleep(time.Millisecond)
		}
	}
	return werr, true
}

// groupAlive reports whether process group pgid has a member that is not a
// zombie. kill(-pgid, 0) alone would count zombies: orphans are reaped by
// init, which in a container may never happen.
func groupAlive(pgid int) bool {
	if err := syscall.Kill(-pgid, 0); err != nil {
		return false
	}
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return true
	}
	want := fmt.Sprint(pgid)
	for _, e := range entries {
		if e.Name()[0] < '0' || e.Name()[0] > '9' {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue
		}
		// pid (comm) state ppid pgrp ...; comm may hold spaces and ')'.
		s := string(b)
		i := strings.LastIndexByte(s, ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(s[i+1:])
		if len(f) >= 3 && f[2] == want && f[0] != "Z" && f[0] != "X" {
			return true
		}
	}
	return false
}

func readLines(r io.Reader, stream string, line func(stream, line string)) {
	br := bufio.NewReaderSize(r, MaxLine)
	for {
		b, err := br.ReadSlice('\n')
		if len(b) > 0 && line != nil {
			s := strings.TrimRight(string(b), "\n")
			if err == bufio.ErrBufferFull {
				s += " [cut]"
				// Skip the rest of the overlong line.
				for err == bufio.ErrBufferFull {
					_, err = br.ReadSlice('\n')
				}
			}
			line(stream, Printable(s))
		}
		if err != nil && err != bufio.ErrBufferFull {
			return
		}
	}
}

// Printable escapes what a terminal or the journal would take for
// something other than text: C0 controls but tab, DEL, C1 controls and
// bytes that are not UTF-8 become \xNN (\u0080 to \u009f for C1); a
// backslash stays as it is. A command's output is the command's, or a
// guest's through it, and must not move the cursor of whoever reads the log
// on a terminal nor add fields to a journal entry.
func Printable(s string) string {
	clean := true
	for _, r := range s {
		if r == utf8.RuneError || (r < 0x20 && r != '\t') || (r >= 0x7f && r < 0xa0) {
			clean = false
			break
		}
	}
	if clean {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); {
		r, n := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && n == 1:
			fmt.Fprintf(&b, `\x%02x`, s[i])
		case (r < 0x20 && r != '\t') || r == 0x7f:
			fmt.Fprintf(&b, `\x%02x`, r)
		case r >= 0x80 && r < 0xa0:
			fmt.Fprintf(&b, `\u%04x`, r)
		default:
			b.WriteString(s[i : i+n])
		}
		i += n
	}
	return b.String()
}

// Env returns the agent's environment as a base for commands, without the
// variables systemd hands to the service itself: a command must not send
// sd_notify messages as mtwatchd nor take its sockets.
func Env() []string {
	var out []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		switch k {
		case "NOTIFY_SOCKET", "LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES",
			"WATCHDOG_USEC", "WATCHDOG_PID", "INVOCATION_ID", "JOURNAL_STREAM":
			continue
		}
		out = append(out, kv)
	}
	return out
}

// SetEnv returns env with key set to value, replacing an earlier setting as
// setenv(3) would.
func SetEnv(env []string, key, value string) []string {
	prefix := key + "="
	out := env[:0:0]
	for _, kv := range env {
		if !strings.HasPrefix(kv, prefix) {
			out = append(out, kv)
		}
	}
	return append(out, prefix+value)
}
