package hotplug

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/mtwatch/mtwatch/lib/domid"
	"github.com/mtwatch/mtwatch/lib/xenstore"
)

// The journal makes a device's scripts run exactly once across crashes of
// mtwatchd. For each device it has an action under way or done it holds a
// record in XenStore, in the runner's own domain-private directory
// (journalDir, relative to the agent's home, readable by its own domain
// only): which action, whether it is running or done, the script's pid and
// start time, and the nodes a remove needs. The incarnation of the device
// the record is about is the marker node the plugin writes into the
// backend directory at add, in a transaction beside the record's first
// version (submitAdd; the script starts once both are written, so a record
// whose marker never got written is an add that never ran): a backend
// directory removed and written again by the toolstack
// (libxl__device_generic_add removes it in the transaction that writes it)
// has no marker, so a record whose marker is gone is about a device that
// no longer exists.
const (
	journalDir = "data/mtwatch-hotplug"
	markerNode = "mtwatch-incarnation"
)

// Journal phases.
const (
	phaseRunning = "running"
	phaseDone    = "done"
)

// record is one device's journal entry.
type record struct {
	Action string `json:"action"` // add or remove
	Phase  string `json:"phase"`
	Inc    string `json:"inc"`
	// PID is the script's process (and process group) id, 0 until it
	// started; Start is its start time in clock ticks since boot
	// (/proc/<pid>/stat), which tells it from a later process with the
	// same pid; Began is when it started (Unix seconds), for its timeout.
	PID   int   `json:"pid,omitempty"`
	Start int64 `json:"start,omitempty"`
	Began int64 `json:"began,omitempty"`
	nodes
}

// ErrJournal is wrapped by errors about journal records that cannot be
// understood.
var ErrJournal = errors.New("malformed hotplug journal record")

func parseRecord(b []byte) (record, error) {
	var r record
	if err := json.Unmarshal(b, &r); err != nil {
		return r, fmt.Errorf("%w: %v", ErrJournal, err)
	}
	if (r.Action != "add" && r.Action != "remove") || (r.Phase != phaseRunning && r.Phase != phaseDone) ||
		!validInc(r.Inc) || r.PID < 0 || r.Start < 0 {
		return r, fmt.Errorf("%w: %q", ErrJournal, b)
	}
	return r, nil
}

func (r record) encode() []byte {
	b, _ := json.Marshal(r)
	return b
}

// newInc returns a new incarnation id: random, so that no two mtwatchd
// processes, nor two hosts' journals, ever pick the same one.
func newInc() string {
	var b [8]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic(fmt.Sprintf("hotplug: no randomness for an incarnation id: %v", err))
	}
	return hex.EncodeToString(b[:])
}

func validInc(s string) bool {
	if len(s) != 16 {
		return false
	}
	_, err := hex.DecodeString(s)
	return err == nil
}

func journalPath(k devKey) string {
	return journalDir + "/" + k.typ + "/" + k.dom.String() + "/" + k.devid
}

// loadJournal reads every record. A record that cannot be parsed is
// logged by the caller and dropped: it cannot say what ran.
func loadJournal(ctx context.Context, st interface {
	Directory(context.Context, string) ([]string, error)
	Read(context.Context, string) ([]byte, error)
}, bad func(path string, err error)) (map[devKey]record, error) {
	out := map[devKey]record{}
	types, err := st.Directory(ctx, journalDir)
	if errors.Is(err, os.ErrNotExist) {
		return out, nil
	}
	if err != nil {
		return nil, fmt.Errorf("hotplug: list %s: %w", journalDir, err)
	}
	for _, typ := range types {
		doms, err := st.Directory(ctx, journalDir+"/"+typ)
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("hotplug: list %s/%s: %w", journalDir, typ, err)
		}
		for _, d := range doms {
			devs, err := st.Directory(ctx, journalDir+"/"+typ+"/"+d)
			if err != nil && !errors.Is(err, os.ErrNotExist) {
				return nil, fmt.Errorf("hotplug: list %s/%s/%s: %w", journalDir, typ, d, err)
			}
			for _, dev := range devs {
				k, _, n, ok := parsePath(Backend + "/" + typ + "/" + d + "/" + dev)
				if !ok || n != 3 {
					bad(journalDir+"/"+typ+"/"+d+"/"+dev, fmt.Errorf("%w: not a device", ErrJournal))
					continue
				}
				b, err := st.Read(ctx, journalPath(k))
				if errors.Is(err, os.ErrNotExist) {
					continue
				}
				if err != nil {
					return nil, fmt.Errorf("hotplug: read %s: %w", journalPath(k), err)
				}
				r, err := parseRecord(b)
				if err != nil {
					bad(journalPath(k), err)
					continue
				}
				out[k] = r
			}
		}
	}
	return out, nil
}

// initJournal creates the journal directory private to the agent's domain.
func initJournal(ctx context.Context, st interface {
	Mkdir(context.Context, string) error
	SetPerms(context.Context, string, xenstore.Perms) error
}, self domid.ID) error {
	if err := st.Mkdir(ctx, journalDir); err != nil {
		return fmt.Errorf("hotplug: create %s: %w", journalDir, err)
	}
	if err := st.SetPerms(ctx, journalDir, xenstore.Perms{{Domid: self, Access: xenstore.AccessNone}}); err != nil {
		return fmt.Errorf("hotplug: set permissions of %s: %w", journalDir, err)
	}
	return nil
}

// procStart returns a process's start time in clock ticks since boot
// (field 22 of /proc/<pid>/stat), or false if it is gone or a zombie.
func procStart(pid int) (int64, bool) {
	if pid <= 0 {
		return 0, false
	}
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, false
	}
	// The command name (field 2) is in parentheses and may hold spaces.
	i := strings.LastIndexByte(string(b), ')')
	if i < 0 {
		return 0, false
	}
	f := strings.Fields(string(b[i+1:]))
	// f[0] is field 3 (state), so field 22 is f[19].
	if len(f) < 20 || f[0] == "Z" || f[0] == "X" {
		return 0, false
	}
	v, err := strconv.ParseInt(f[19], 10, 64)
	if err != nil {
		return 0, false
	}
	return v, true
}

// alive reports whether the script a record names still runs: the same pid
// with the same start time.
func (r record) alive() bool {
	if r.PID <= 0 || r.Phase != phaseRunning {
		return false
	}
	st, ok := procStart(r.PID)
	return ok && st == r.Start
}

// began returns when the record's script started.
func (r record) began() time.Time { return time.Unix(r.Began, 0) }

// incEnv is the variable every script gets with its incarnation: a crash
// between a script's start and the journal's record of its pid leaves a
// record without one, and the next start finds the script by it.
const incEnv = "MTWATCH_HOTPLUG_INCARNATION"

// findByInc returns the script running for incarnation inc: the process
// group leader whose environment holds incEnv=inc, and its start time.
func findByInc(inc string) (pid int, start int64, ok bool) {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return 0, 0, false
	}
	want := []byte(incEnv + "=" + inc + "\x00")
	for _, e := range ents {
		p, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		env, err := os.ReadFile("/proc/" + e.Name() + "/environ")
		if err != nil || !bytes.Contains(append([]byte{0}, env...), append([]byte{0}, want...)) {
			continue
		}
		if pgid, err := syscall.Getpgid(p); err != nil || pgid != p {
			continue // a child of the script: its leader is the script
		}
		if st, ok := procStart(p); ok {
			return p, st, true
		}
	}
	return 0, 0, false
}
