package control

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/coreos/go-systemd/v22/activation"
)

// ErrInUse is returned by Listen when another agent answers on the socket.
var ErrInUse = errors.New("control socket in use by a running agent")

// staleProbe bounds how long Listen waits for an existing socket to answer.
const staleProbe = time.Second

// Listen listens on the unix socket path for the control API. The parent
// directory is created with mode 0755 if missing. A socket left behind by an
// agent that died is removed; a socket something answers on, or a path that
// is not a socket, is refused (Listen never takes over a running agent's
// socket or deletes a file it did not make).
//
// The socket is bound under a temporary name, made 0600 and then renamed into
// place, so it is never reachable with the umask's mode. Closing the listener
// removes the socket if it is still the one Listen made.
func Listen(path string) (net.Listener, error) {
	if path == "" {
		return nil, errors.New("control socket: empty path")
	}
	dir := filepath.Dir(path)
	if err := mkdirAll(dir); err != nil {
		return nil, fmt.Errorf("control socket %s: %w", path, err)
	}
	if err := removeStale(path); err != nil {
		return nil, err
	}

	tmp := filepath.Join(dir, "."+filepath.Base(path)+".tmp-"+strconv.Itoa(os.Getpid()))
	_ = os.Remove(tmp) // a leftover of this very pid: never anyone else's
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: tmp, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("control socket %s: %w", path, err)
	}
	// The listener must not unlink the temporary name on Close: after the
	// rename it no longer exists; ownedListener removes the real path.
	ln.SetUnlinkOnClose(false)
	fail := func(err error) (net.Listener, error) {
		ln.Close()
		os.Remove(tmp)
		return nil, fmt.Errorf("control socket %s: %w", path, err)
	}
	if err := os.Chmod(tmp, 0o600); err != nil {
		return fail(err)
	}
	var st syscall.Stat_t
	if err := syscall.Stat(tmp, &st); err != nil {
		return fail(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fail(err)
	}
	return &ownedListener{UnixListener: ln, path: path, dev: uint64(st.Dev), ino: st.Ino}, nil
}

// mkdirAll creates dir and its missing parents with mode 0755 whatever the
// umask (the administrators' tools must reach the socket); existing
// directories keep their mode.
func mkdirAll(dir string) error {
	fi, err := os.Stat(dir)
	if err == nil {
		if !fi.IsDir() {
			return fmt.Errorf("%s: not a directory", dir)
		}
		return nil
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	if parent := filepath.Dir(dir); parent != dir {
		if err := mkdirAll(parent); err != nil {
			return err
		}
	}
	if err := os.Mkdir(dir, 0o755); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return nil // made concurrently
		}
		return err
	}
	return os.Chmod(dir, 0o755)
}

// removeStale removes path if it is a socket nobody answers on.
func removeStale(path string) error {
	fi, err := os.Lstat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("control socket %s: %w", path, err)
	}
	if fi.Mode()&fs.ModeSocket == 0 {
		return fmt.Errorf("control socket %s: exists and is not a socket (%v)", path, fi.Mode().Type())
	}
	c, err := net.DialTimeout("unix", path, staleProbe)
	if err == nil {
		c.Close()
		return fmt.Errorf("control socket %s: %w", path, ErrInUse)
	}
	if !errors.Is(err, syscall.ECONNREFUSED) {
		// A timeout (a hung agent with a full backlog) or a permission
		// error: not provably stale.
		return fmt.Errorf("control socket %s: exists and cannot be probed: %w", path, err)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("control socket %s: remove stale socket: %w", path, err)
	}
	return nil
}

// ownedListener removes its socket on Close unless another process has
// replaced it meanwhile (a second agent started with the same path).
type ownedListener struct {
	*net.UnixListener
	path     string
	dev, ino uint64
	once     sync.Once
}

func (l *ownedListener) Close() error {
	err := l.UnixListener.Close()
	l.once.Do(func() {
		var st syscall.Stat_t
		if syscall.Stat(l.path, &st) == nil && uint64(st.Dev) == l.dev && st.Ino == l.ino {
			os.Remove(l.path)
		}
	})
	return err
}

// Activated returns the control socket systemd passed to the process
// (mtwatchd.socket), and false when the process was not socket-activated.
// It takes the first unix stream listener systemd passed; more than one
// socket, or a socket that is not a unix stream socket, is an error: the
// socket unit is misconfigured.
func Activated() (net.Listener, bool, error) {
	lns, err := activation.Listeners()
	if err != nil {
		return nil, false, fmt.Errorf("socket activation: %w", err)
	}
	var found net.Listener
	var n int
	for _, ln := range lns {
		if ln == nil {
			// Not a stream socket: activation returns nil for it.
			n++
			continue
		}
		n++
		if found == nil {
			found = ln
			continue
		}
		ln.Close()
	}
	switch {
	case n == 0:
		return nil, false, nil
	case found == nil:
		return nil, false, errors.New("socket activation: the passed socket is not a stream socket")
	case n > 1:
		found.Close()
		return nil, false, fmt.Errorf("socket activation: %d sockets passed, want 1", n)
	}
	if _, ok := found.(*net.UnixListener); !ok {
		found.Close()
		return nil, false, fmt.Errorf("socket activation: passed socket %s is not a unix socket", found.Addr())
	}
	return found, true, nil
}
