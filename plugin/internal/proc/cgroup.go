package proc

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// Confinement by cgroup v2: each run gets a cgroup of its own under the
// agent's (under systemd, the service's), made before the command starts
// and entered from birth (clone3 CLONE_INTO_CGROUP). A member that left
// the process group (setsid, setpgid) cannot leave the cgroup, so ending a
// run signals and kills the cgroup. Where the agent's cgroup v2 directory is
// missing or not writable, or the kernel refuses to start a process in a
// cgroup, the process group is all there is.

var (
	cgOnce   sync.Once
	cgMu     sync.Mutex
	cgParent string // the agent's cgroup v2 directory; "" when not usable
	cgReason error  // why not
	cgSeq    atomic.Uint64
	// cgroups a command left a daemon in: removed once empty.
	cgLeftover []string
)

// cgPrefix starts the name of every command cgroup, followed by the
// agent's pid and a sequence number.
const cgPrefix = "mtwatch-"

// Confinement tells how runs are confined: the cgroup v2 directory under
// which each run gets a cgroup of its own, or "" and the reason the process
// group is all there is.
func Confinement() (dir string, err error) {
	cgOnce.Do(detectCgroup)
	cgMu.Lock()
	defer cgMu.Unlock()
	return cgParent, cgReason
}

func detectCgroup() {
	dir, err := ownCgroupDir()
	if err == nil {
		probe := filepath.Join(dir, fmt.Sprintf("%s%d-probe", cgPrefix, os.Getpid()))
		if err = os.Mkdir(probe, 0o755); err == nil {
			os.Remove(probe)
		} else {
			err = fmt.Errorf("cgroup v2 %s is not writable: %w", dir, err)
		}
	}
	cgMu.Lock()
	defer cgMu.Unlock()
	if err != nil {
		cgReason = err
		return
	}
	cgParent = dir
	sweepDead(dir)
}

// disableCgroups falls back to process groups for good.
func disableCgroups(err error) {
	cgMu.Lock()
	defer cgMu.Unlock()
	cgParent, cgReason = "", err
}

// ownCgroupDir finds the directory of this process's cgroup v2: its path
// in /proc/self/cgroup ("0::/path") below the cgroup2 mount of
// /proc/self/mountinfo.
func ownCgroupDir() (string, error) {
	own, err := cgroupPath("self")
	if err != nil {
		return "", err
	}
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return "", fmt.Errorf("cgroup v2: %w", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// id parent major:minor root mountpoint options... - fstype source superoptions
		pre, post, ok := strings.Cut(sc.Text(), " - ")
		fs := strings.Fields(pre)
		if !ok || len(fs) < 5 || !strings.HasPrefix(post, "cgroup2 ") {
			continue
		}
		root, mnt := unescapeMount(fs[3]), unescapeMount(fs[4])
		rel, ok := strings.CutPrefix(own, root)
		if !ok {
			continue
		}
		return filepath.Join(mnt, rel), nil
	}
	return "", fmt.Errorf("cgroup v2: no cgroup2 mount holding %s", own)
}

// cgroupPath returns the cgroup v2 path of process pid ("self" for this
// one): the "0::" line of /proc/<pid>/cgroup, relative to the cgroup
// namespace's root.
func cgroupPath(pid string) (string, error) {
	b, err := os.ReadFile("/proc/" + pid + "/cgroup")
	if err != nil {
		return "", fmt.Errorf("cgroup v2: %w", err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if p, ok := strings.CutPrefix(l, "0::"); ok && p != "" {
			return p, nil
		}
	}
	return "", fmt.Errorf("cgroup v2: not in a cgroup v2 hierarchy (/proc/%s/cgroup has no 0:: line)", pid)
}

// unescapeMount undoes mountinfo's octal escapes (\040 for a space).
func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// sweepDead removes the empty cgroups of agents that are gone (a daemon
// they left has since exited); cgMu is held.
func sweepDead(parent string) {
	ents, err := os.ReadDir(parent)
	if err != nil {
		return
	}
	for _, e := range ents {
		rest, ok := strings.CutPrefix(e.Name(), cgPrefix)
		if !ok || !e.IsDir() {
			continue
		}
		pidStr, _, _ := strings.Cut(rest, "-")
		pid, err := strconv.Atoi(pidStr)
		if err != nil || pid == os.Getpid() || syscall.Kill(pid, 0) != syscall.ESRCH {
			continue
		}
		os.Remove(filepath.Join(parent, e.Name())) // fails while populated
	}
}

// cgroup is one run's cgroup.
type cgroup struct {
	dir string
	fd  *os.File // the directory, for clone3's CLONE_INTO_CGROUP
}

// newCgroup makes a run's cgroup; nil when runs are not confined by cgroup.
func newCgroup() *cgroup {
	parent, _ := Confinement()
	if parent == "" {
		return nil
	}
	sweepLeftover()
	var dir string
	for tries := 0; ; tries++ {
		dir = filepath.Join(parent, fmt.Sprintf("%s%d-%d", cgPrefix, os.Getpid(), cgSeq.Add(1)))
		err := os.Mkdir(dir, 0o755)
		if err == nil {
			break
		}
		// An earlier mtwatchd with the same pid (a container's, restarted)
		// may have left a command running in a cgroup of this name.
		if !errors.Is(err, os.ErrExist) || tries == 100 {
			disableCgroups(fmt.Errorf("cgroup v2: make %s: %w", dir, err))
			return nil
		}
	}
	f, err := os.Open(dir)
	if err != nil {
		os.Remove(dir)
		disableCgroups(fmt.Errorf("cgroup v2: open %s: %w", dir, err))
		return nil
	}
	return &cgroup{dir: dir, fd: f}
}

// procs lists the cgroup's processes.
func (c *cgroup) procs() []int {
	b, err := os.ReadFile(filepath.Join(c.dir, "cgroup.procs"))
	if err != nil {
		return nil
	}
	var pids []int
	for _, f := range bytes.Fields(b) {
		if pid, err := strconv.Atoi(string(f)); err == nil {
			pids = append(pids, pid)
		}
	}
	return pids
}

// signal sends sig to every process of the cgroup.
func (c *cgroup) signal(sig syscall.Signal) {
	for _, pid := range c.procs() {
		syscall.Kill(pid, sig)
	}
}

// populated reports whether a live process is in the cgroup (zombies are
// not: a task leaves its cgroup as it exits).
func (c *cgroup) populated() bool {
	b, err := os.ReadFile(filepath.Join(c.dir, "cgroup.events"))
	if err != nil {
		return false
	}
	return bytes.Contains(b, []byte("populated 1"))
}

// kill SIGKILLs every process of the cgroup: cgroup.kill where the kernel
// has it (5.14), which also takes the ones forked meanwhile; otherwise one
// pass after another until the cgroup is empty.
func (c *cgroup) kill() {
	if err := os.WriteFile(filepath.Join(c.dir, "cgroup.kill"), []byte("1"), 0); err == nil {
		return
	}
	for i := 0; i < 100 && c.populated(); i++ {
		c.signal(syscall.SIGKILL)
		time.Sleep(time.Millisecond)
	}
}

// release removes the cgroup; one a daemon still runs in is removed later,
// once empty.
func (c *cgroup) release() {
	if c.fd != nil {
		c.fd.Close()
	}
	if err := os.Remove(c.dir); err != nil {
		cgMu.Lock()
		cgLeftover = append(cgLeftover, c.dir)
		cgMu.Unlock()
	}
}

func sweepLeftover() {
	cgMu.Lock()
	defer cgMu.Unlock()
	kept := cgLeftover[:0]
	for _, dir := range cgLeftover {
		if err := os.Remove(dir); err != nil && !errors.Is(err, os.ErrNotExist) {
			kept = append(kept, dir)
		}
	}
	cgLeftover = kept
}
