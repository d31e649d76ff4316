package proc

import (
	"fmt"
	"os"
	"path"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// An Orphan is a command an earlier mtwatchd started and left running when
// it died (kill -9, a crash), found again by its pid after a restart. It is
// ended as Run ends a command at its timeout: through its cgroup, where it
// ran in one of the agent's command cgroups, so that what it started and
// what left its process group (setsid, a double fork) ends with it; through
// its process group otherwise.
type Orphan struct {
	// PID is the command's process id, also its process group's.
	PID int
	cg  *cgroup // nil: the process group is all there is
}

// Adopt returns the orphan whose process (and process group) id is pid.
// The caller has made sure pid is still that command (its start time, as
// the hotplug journal records it). Its cgroup is taken only if it is one
// of the agent's command cgroups: a direct child of the agent's own cgroup
// (Confinement), named as Run names them ("mtwatch-<agent pid>-<n>"), the
// agent's pid being that of any mtwatchd, this one or an earlier one. Any
// other cgroup, the agent's own included, is never signalled nor killed:
// the orphan is then ended by its process group alone.
func Adopt(pid int) *Orphan {
	o := &Orphan{PID: pid}
	parent, _ := Confinement()
	if parent == "" || pid <= 0 {
		return o
	}
	own, err := cgroupPath("self")
	if err != nil {
		return o
	}
	p, err := cgroupPath(strconv.Itoa(pid))
	if err != nil || path.Dir(p) != path.Clean(own) || !commandCgroup(path.Base(p)) {
		return o
	}
	dir := filepath.Join(parent, path.Base(p))
	if st, err := os.Stat(dir); err != nil || !st.IsDir() {
		return o
	}
	o.cg = &cgroup{dir: dir}
	return o
}

// commandCgroup reports whether name is one Run gives a command's cgroup:
// cgPrefix, an agent's pid, a dash and a sequence number.
func commandCgroup(name string) bool {
	rest, ok := strings.CutPrefix(name, cgPrefix)
	if !ok {
		return false
	}
	pid, seq, ok := strings.Cut(rest, "-")
	return ok && digits(pid) && digits(seq)
}

func digits(s string) bool {
	if s == "" || (s[0] == '0' && len(s) > 1) {
		return false
	}
	for _, c := range s {
		if c < '0' || c > '9' {
			return false
		}
	}
	return true
}

// Cgroup is the directory of the orphan's cgroup, "" when it is ended by
// its process group alone.
func (o *Orphan) Cgroup() string {
	if o.cg == nil {
		return ""
	}
	return o.cg.dir
}

// End ends the whole orphan: SIGTERM (and SIGCONT, for a stopped member)
// to its process group and every process of its cgroup, then, if any is
// left after grace (zero means DefaultGrace), SIGKILL to the group and the
// cgroup (cgroup.kill). It returns once they are gone, or a second after
// the SIGKILL, and reports whether SIGKILL was needed.
func (o *Orphan) End(grace time.Duration) (killed bool) {
	if o.PID <= 1 {
		// kill(-0) would signal the agent's own process group, kill(-1)
		// every process, and a negative pid would become init.
		return false
	}
	if grace <= 0 {
		grace = DefaultGrace
	}
	alive := func() bool {
		return groupAlive(o.PID) || (o.cg != nil && o.cg.populated())
	}
	for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGCONT} {
		syscall.Kill(-o.PID, sig)
		if o.cg != nil {
			o.cg.signal(sig)
		}
	}
	for end := time.Now().Add(grace); alive() && time.Now().Before(end); {
		time.Sleep(10 * time.Millisecond)
	}
	if !alive() {
		return false
	}
	syscall.Kill(-o.PID, syscall.SIGKILL)
	if o.cg != nil {
		o.cg.kill()
	}
	// SIGKILL is not delivered synchronously.
	for end := time.Now().Add(time.Second); alive() && time.Now().Before(end); {
		time.Sleep(time.Millisecond)
	}
	return true
}

// Release removes the orphan's cgroup: now if it is empty, otherwise once
// the daemon the command left in it has exited (the next Run removes it,
// as it removes those of its own commands). The cgroup of a dead agent is
// also removed by the next agent's start, once empty.
func (o *Orphan) Release() {
	if o.cg != nil {
		o.cg.release()
	}
}

// String describes how the orphan is confined, for a log.
func (o *Orphan) String() string {
	if o.cg == nil {
		return fmt.Sprintf("process group %d", o.PID)
	}
	return fmt.Sprintf("cgroup %s", o.cg.dir)
}
