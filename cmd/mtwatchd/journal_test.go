package main

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mtwatch/mtwatch/internal/daemontest"
	"github.com/mtwatch/mtwatch/lib/xenstore/xenstoredtest"
)

// journalSocket is a stand-in for journald's native socket: a unixgram
// socket whose datagrams are parsed as journal entries (the native protocol:
// KEY=value lines, or KEY\n, a little-endian 64-bit length, the value, \n).
type journalSocket struct {
	dir     string
	conn    *net.UnixConn
	mu      sync.Mutex
	entries []map[string]string
}

func newJournalSocket(t *testing.T) *journalSocket {
	t.Helper()
	dir, err := os.MkdirTemp("", "mtwj")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: filepath.Join(dir, "socket"), Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	j := &journalSocket{dir: dir, conn: conn}
	go func() {
		buf := make([]byte, 1<<20)
		for {
			n, _, _, _, err := conn.ReadMsgUnix(buf, nil)
			if err != nil {
				return
			}
			e, perr := parseJournal(buf[:n])
			if perr != nil {
				e = map[string]string{"PARSE_ERROR": perr.Error()}
			}
			j.mu.Lock()
			j.entries = append(j.entries, e)
			j.mu.Unlock()
		}
	}()
	return j
}

func parseJournal(p []byte) (map[string]string, error) {
	e := map[string]string{}
	for len(p) > 0 {
		nl := bytes.IndexByte(p, '\n')
		if nl < 0 {
			return nil, fmt.Errorf("unterminated line %q", p)
		}
		line := p[:nl]
		p = p[nl+1:]
		if k, v, ok := bytes.Cut(line, []byte("=")); ok {
			e[string(k)] = string(v)
			continue
		}
		if len(p) < 8 {
			return nil, fmt.Errorf("binary field %q without length", line)
		}
		n := binary.LittleEndian.Uint64(p)
		p = p[8:]
		if uint64(len(p)) < n+1 || p[n] != '\n' {
			return nil, fmt.Errorf("binary field %q: bad length %d", line, n)
		}
		e[string(line)] = string(p[:n])
		p = p[n+1:]
	}
	return e, nil
}

// find returns the first entry for which ok holds.
func (j *journalSocket) find(ok func(map[string]string) bool) map[string]string {
	j.mu.Lock()
	defer j.mu.Unlock()
	for _, e := range j.entries {
		if ok(e) {
			return e
		}
	}
	return nil
}

func (j *journalSocket) wait(t *testing.T, what string, ok func(map[string]string) bool) map[string]string {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		if e := j.find(ok); e != nil {
			return e
		}
		if time.Now().After(deadline) {
			j.mu.Lock()
			t.Fatalf("no journal entry %s among %d: %v", what, len(j.entries), j.entries)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestDaemonJournal: with stderr connected to the journal (JOURNAL_STREAM
// naming stderr's device and inode, as systemd sets it), mtwatchd sends
// its entries natively to /run/systemd/journal/socket with MESSAGE,
// PRIORITY and the DOMID, XS_PATH, WATCH and PLUGIN fields. go-systemd's
// socket path is fixed, so mtwatchd runs in a private mount namespace
// (unshare(1), as root) where a tmpfs over /run/systemd holds the test's
// socket; nothing changes outside it.
func TestDaemonJournal(t *testing.T) {
	t.Parallel()
	if os.Geteuid() != 0 {
		t.Fatal("needs root, for a private mount namespace over /run/systemd")
	}
	unshare, err := exec.LookPath("unshare")
	if err != nil {
		t.Fatalf("unshare (util-linux) is needed: %v", err)
	}
	in := xenstoredtest.Start(t)
	j := newJournalSocket(t)
	// A command that outlives the stall threshold: its stall entries must
	// name the plugin.
	conf := "[agent]\nstall_threshold = \"100ms\"\n[plugins.log]\nlevel = \"info\"\n" +
		"[plugins.exec]\nenabled = true\n[[plugins.exec.rule]]\nname = \"slow\"\npath = \"/local/domain/{domid}/slow\"\n" +
		"command = [\"/bin/sleep\", \"0.5\"]\n"
	script := `set -e
mount -t tmpfs -o mode=0755 tmpfs /run/systemd
mkdir /run/systemd/journal
mount --bind "$JOURNAL_DIR" /run/systemd/journal
exec "$@"`
	// stderr is a pipe whose device and inode JOURNAL_STREAM names; what
	// still reaches it is kept for the failure message.
	d := daemontest.New(t, daemontest.Options{
		Wrap:          []string{unshare, "--mount", "--propagation", "private", "--", "/bin/sh", "-c", script, "sh"},
		Config:        conf,
		Xenstore:      in.Socket(),
		Args:          []string{"--log-format", "auto"},
		Env:           []string{"JOURNAL_DIR=" + j.dir},
		JournalStream: true,
	})
	d.Start()

	ready := j.wait(t, "mtwatchd ready", func(e map[string]string) bool { return e["MESSAGE"] == "mtwatchd ready" })
	if ready["PRIORITY"] != "6" {
		t.Errorf("info entry with PRIORITY=%q", ready["PRIORITY"])
	}
	// journalctl -t mtwatchd finds every entry.
	if ready["SYSLOG_IDENTIFIER"] != "mtwatchd" {
		t.Errorf("SYSLOG_IDENTIFIER=%q, want mtwatchd", ready["SYSLOG_IDENTIFIER"])
	}
	in.CreateDomain(5)
	in.Run("xenstore-write", "backend/vif/5/0/state", "1")
	ev := j.wait(t, "of the log plugin's event", func(e map[string]string) bool {
		return e["XS_PATH"] == "backend/vif/5/0/state" && e["PLUGIN"] == "log"
	})
	for k, want := range map[string]string{"MESSAGE": "event", "PRIORITY": "6", "DOMID": "5", "WATCH": "backend", "PLUGIN": "log"} {
		if ev[k] != want {
			t.Errorf("%s=%q, want %q in %v", k, ev[k], want, ev)
		}
	}
	// A warning (the node of a reserved domid) has PRIORITY 4 and the
	// path.
	in.Run("xenstore-write", "/local/domain/0/mtwatch/32752", "")
	warn := j.wait(t, "of the ignored node", func(e map[string]string) bool {
		return strings.HasSuffix(e["XS_PATH"], "/mtwatch/32752")
	})
	if warn["PRIORITY"] != "4" {
		t.Errorf("warning with PRIORITY=%q: %v", warn["PRIORITY"], warn)
	}
	// The exec plugin's slow command stalls domain 5's worker: both stall
	// entries name the plugin.
	in.Run("xenstore-write", "/local/domain/5/slow", "1")
	for _, msg := range []string{"dispatch: handler stalled", "dispatch: stalled handler returned"} {
		e := j.wait(t, msg, func(e map[string]string) bool { return e["MESSAGE"] == msg })
		if e["PLUGIN"] != "exec" || e["DOMID"] != "5" || e["SYSLOG_IDENTIFIER"] != "mtwatchd" {
			t.Errorf("%q: PLUGIN=%q DOMID=%q SYSLOG_IDENTIFIER=%q, want exec, 5, mtwatchd: %v", msg, e["PLUGIN"], e["DOMID"], e["SYSLOG_IDENTIFIER"], e)
		}
	}
	if bad := j.find(func(e map[string]string) bool { return e["PARSE_ERROR"] != "" }); bad != nil {
		t.Errorf("malformed datagram: %v", bad)
	}
	// Nothing went to stderr as text: the journal had it all.
	if s := d.Stderr.String(); strings.Contains(s, "mtwatchd ready") {
		t.Errorf("entries also written to stderr:\n%s", s)
	}
	d.Stop()
}
