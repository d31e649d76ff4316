package xenstoredtest

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"syscall"
	"time"
)

// XenStore message types the harness itself needs. The harness carries its
// own minimal wire code so that it never depends on the client it tests.
const (
	TypeRead               uint32 = 2
	TypeWatch              uint32 = 4
	TypeIntroduce          uint32 = 8
	TypeWrite              uint32 = 11
	TypeSetPerms           uint32 = 14
	TypeWatchEvent         uint32 = 15
	TypeError              uint32 = 16
	TypeIsDomainIntroduced uint32 = 17
)

var errnoByName = map[string]syscall.Errno{
	"EINVAL": syscall.EINVAL, "EACCES": syscall.EACCES, "EEXIST": syscall.EEXIST,
	"EISDIR": syscall.EISDIR, "ENOENT": syscall.ENOENT, "ENOMEM": syscall.ENOMEM,
	"ENOSPC": syscall.ENOSPC, "EIO": syscall.EIO, "ENOTEMPTY": syscall.ENOTEMPTY,
	"ENOSYS": syscall.ENOSYS, "EROFS": syscall.EROFS, "EBUSY": syscall.EBUSY,
	"EAGAIN": syscall.EAGAIN, "EISCONN": syscall.EISCONN, "E2BIG": syscall.E2BIG,
	"EPERM": syscall.EPERM,
}

// Conn is a minimal, strictly sequential XenStore connection for the
// harness's own use (domain set-up and readiness checks).
type Conn struct {
	c     net.Conn
	reqID uint32
	// Events collects watch events that arrived while waiting for replies.
	Events [][2]string
}

// Dial connects to a xenstored socket. Both daemons listen with a backlog
// of one (xenstored_core.c: init_sockets, utils.ml: create_unix_socket),
// and a unix socket whose backlog is full refuses a connect with EAGAIN at
// once: Dial retries until startTimeout, as a blocking connect would wait.
func Dial(socket string) (*Conn, error) {
	deadline := time.Now().Add(startTimeout)
	for delay := time.Millisecond; ; delay = min(2*delay, 50*time.Millisecond) {
		c, err := net.DialTimeout("unix", socket, time.Until(deadline))
		if err == nil {
			return &Conn{c: c}, nil
		}
		if !errors.Is(err, syscall.EAGAIN) || time.Now().Add(delay).After(deadline) {
			return nil, err
		}
		time.Sleep(delay)
	}
}

// Close closes the connection.
func (c *Conn) Close() error { return c.c.Close() }

// Request sends a request whose arguments are each NUL-terminated and
// returns the reply payload without its trailing NUL.
func (c *Conn) Request(typ uint32, args ...string) (string, error) {
	var b bytes.Buffer
	for _, a := range args {
		b.WriteString(a)
		b.WriteByte(0)
	}
	return c.RequestRaw(typ, b.Bytes())
}

// Write writes value at path (a WRITE value is not NUL-terminated).
func (c *Conn) Write(path, value string) error {
	_, err := c.RequestRaw(TypeWrite, append([]byte(path+"\x00"), value...))
	return err
}

// RequestRaw sends one request and waits for its reply.
func (c *Conn) RequestRaw(typ uint32, payload []byte) (string, error) {
	c.reqID++
	hdr := make([]byte, 16)
	binary.LittleEndian.PutUint32(hdr[0:], typ)
	binary.LittleEndian.PutUint32(hdr[4:], c.reqID)
	binary.LittleEndian.PutUint32(hdr[12:], uint32(len(payload)))
	c.c.SetDeadline(time.Now().Add(startTimeout))
	if _, err := c.c.Write(append(hdr, payload...)); err != nil {
		return "", err
	}
	for {
		rtyp, rid, body, err := c.ReadMsg()
		if err != nil {
			return "", err
		}
		if rtyp == TypeWatchEvent {
			parts := strings.SplitN(string(body), "\x00", 3)
			if len(parts) >= 2 {
				c.Events = append(c.Events, [2]string{parts[0], parts[1]})
			}
			continue
		}
		if rid != c.reqID {
			return "", fmt.Errorf("reply for request %d, want %d", rid, c.reqID)
		}
		s := strings.TrimSuffix(string(body), "\x00")
		if rtyp == TypeError {
			if e, ok := errnoByName[s]; ok {
				return "", e
			}
			return "", fmt.Errorf("xenstore error %q", s)
		}
		return s, nil
	}
}

// ReadMsg reads one message of any kind.
func (c *Conn) ReadMsg() (typ, reqID uint32, body []byte, err error) {
	hdr := make([]byte, 16)
	if _, err = io.ReadFull(c.c, hdr); err != nil {
		return
	}
	typ = binary.LittleEndian.Uint32(hdr[0:])
	reqID = binary.LittleEndian.Uint32(hdr[4:])
	n := binary.LittleEndian.Uint32(hdr[12:])
	if n > 4096 {
		return 0, 0, nil, fmt.Errorf("reply length %d over the payload limit", n)
	}
	body = make([]byte, n)
	_, err = io.ReadFull(c.c, body)
	return
}

// SetDeadline sets the connection deadline (for waiting on events).
func (c *Conn) SetDeadline(t time.Time) error { return c.c.SetDeadline(t) }
