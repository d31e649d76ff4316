package xenstore

import (
	"errors"
	"fmt"
	"syscall"

	"github.com/mtwatch/mtwatch/lib/domid"
)

// Sentinel errors. Errors returned by the client wrap them (or a
// syscall.Errno), so callers test with errors.Is.
var (
	// ErrClosed is returned by calls on a client closed with Close.
	ErrClosed = errors.New("xenstore client closed")
	// ErrConnectionLost is returned when the connection to xenstored failed
	// (daemon gone, protocol violation, I/O error): every pending call and
	// every watch ends with an error wrapping it. A new client must be
	// dialled.
	ErrConnectionLost = errors.New("xenstore connection lost")
	// ErrUnwatched is returned when a watch was removed by Unwatch or
	// RESET_WATCHES: it ends the watch.
	ErrUnwatched = errors.New("xenstore watch removed")
	// ErrWatchOverflow is returned when a watch's consumer fell more than
	// the per-watch buffer behind (see Watch): it ends the watch.
	ErrWatchOverflow = errors.New("xenstore watch overflow: consumer too slow")
	// ErrNotSupported is returned when the server does not implement the
	// operation (it answered ENOSYS, which the error also wraps).
	ErrNotSupported = errors.New("operation not supported by xenstored")
	// ErrTxDone is returned when a Tx is used after its transaction ended.
	ErrTxDone = errors.New("xenstore transaction already ended")
)

// Error is the error returned for a failed operation: the operation, the
// path (or domid) it concerned, and the cause, which is a syscall.Errno for
// errors reported by xenstored or found by local validation.
type Error struct {
	Op   string // "read", "write", ...
	Path string // the path, domid or other subject; may be empty
	Err  error
}

func (e *Error) Error() string {
	if e.Path == "" {
		return "xenstore " + e.Op + ": " + e.Err.Error()
	}
	return "xenstore " + e.Op + " " + e.Path + ": " + e.Err.Error()
}

func (e *Error) Unwrap() error { return e.Err }

// errnoByName maps the error strings of xsd_errors (xs_wire.h) to errnos.
var errnoByName = map[string]syscall.Errno{
	"EINVAL": syscall.EINVAL, "EACCES": syscall.EACCES, "EEXIST": syscall.EEXIST,
	"EISDIR": syscall.EISDIR, "ENOENT": syscall.ENOENT, "ENOMEM": syscall.ENOMEM,
	"ENOSPC": syscall.ENOSPC, "EIO": syscall.EIO, "ENOTEMPTY": syscall.ENOTEMPTY,
	"ENOSYS": syscall.ENOSYS, "EROFS": syscall.EROFS, "EBUSY": syscall.EBUSY,
	"EAGAIN": syscall.EAGAIN, "EISCONN": syscall.EISCONN, "E2BIG": syscall.E2BIG,
	"EPERM": syscall.EPERM, "EQUOTA": syscall.EDQUOT, "EDQUOT": syscall.EDQUOT,
	"EOVERFLOW": syscall.EOVERFLOW, "ENOTDIR": syscall.ENOTDIR, "ERANGE": syscall.ERANGE,
}

// UnknownError is a server error string the client does not know; it wraps
// EIO so that it still classifies as an I/O error.
type UnknownError struct{ Name string }

func (e *UnknownError) Error() string { return fmt.Sprintf("unknown xenstore error %q", e.Name) }
func (e *UnknownError) Unwrap() error { return syscall.EIO }

// serverError converts an ERROR reply payload.
func serverError(p []byte) error {
	name := trimNUL(p)
	if e, ok := errnoByName[string(name)]; ok {
		if e == syscall.ENOSYS {
			return notSupported{}
		}
		return e
	}
	if len(name) > 32 {
		name = name[:32]
	}
	return &UnknownError{Name: string(name)}
}

// notSupported is ENOSYS that also matches ErrNotSupported.
type notSupported struct{}

func (notSupported) Error() string { return ErrNotSupported.Error() }
func (notSupported) Unwrap() []error {
	return []error{ErrNotSupported, syscall.ENOSYS}
}

func opErr(op, path string, err error) error {
	if err == nil {
		return nil
	}
	return &Error{Op: op, Path: path, Err: err}
}

func domErr(op string, id domid.ID, err error) error {
	if err == nil {
		return nil
	}
	return &Error{Op: op, Path: "domain " + id.String(), Err: err}
}

// invalid builds a local validation error that wraps EINVAL.
type invalidError struct{ why string }

func (e *invalidError) Error() string { return "invalid argument: " + e.why }
func (e *invalidError) Unwrap() error { return syscall.EINVAL }

func invalidf(format string, args ...any) error {
	return &invalidError{why: fmt.Sprintf(format, args...)}
}
