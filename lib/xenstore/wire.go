package xenstore

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// msgType is the type field of an xs_wire message (public/io/xs_wire.h).
type msgType uint32

// Message types.
const (
	typeControl            msgType = 0 // XS_CONTROL (formerly XS_DEBUG)
	typeDirectory          msgType = 1
	typeRead               msgType = 2
	typeGetPerms           msgType = 3
	typeWatch              msgType = 4
	typeUnwatch            msgType = 5
	typeTransactionStart   msgType = 6
	typeTransactionEnd     msgType = 7
	typeIntroduce          msgType = 8
	typeRelease            msgType = 9
	typeGetDomainPath      msgType = 10
	typeWrite              msgType = 11
	typeMkdir              msgType = 12
	typeRm                 msgType = 13
	typeSetPerms           msgType = 14
	typeWatchEvent         msgType = 15
	typeError              msgType = 16
	typeIsDomainIntroduced msgType = 17
	typeResume             msgType = 18
	typeSetTarget          msgType = 19
	typeResetWatches       msgType = 21
	typeDirectoryPart      msgType = 22
	typeGetFeature         msgType = 23
	typeSetFeature         msgType = 24
	typeGetQuota           msgType = 25
	typeSetQuota           msgType = 26
)

var typeNames = [...]string{
	typeControl: "control", typeDirectory: "directory", typeRead: "read",
	typeGetPerms: "get-perms", typeWatch: "watch", typeUnwatch: "unwatch",
	typeTransactionStart: "transaction-start", typeTransactionEnd: "transaction-end",
	typeIntroduce: "introduce", typeRelease: "release", typeGetDomainPath: "get-domain-path",
	typeWrite: "write", typeMkdir: "mkdir", typeRm: "rm", typeSetPerms: "set-perms",
	typeWatchEvent: "watch-event", typeError: "error",
	typeIsDomainIntroduced: "is-domain-introduced", typeResume: "resume",
	typeSetTarget: "set-target", 20: "", typeResetWatches: "reset-watches",
	typeDirectoryPart: "directory-part", typeGetFeature: "get-feature",
	typeSetFeature: "set-feature", typeGetQuota: "get-quota", typeSetQuota: "set-quota",
}

func (t msgType) String() string {
	if int(t) < len(typeNames) && typeNames[t] != "" {
		return typeNames[t]
	}
	return fmt.Sprintf("type-%d", uint32(t))
}

const (
	// headerSize is the size of struct xsd_sockmsg.
	headerSize = 16
	// PayloadMax is XENSTORE_PAYLOAD_MAX: the largest payload either side
	// may send; xenstored drops a connection that sends more.
	PayloadMax = 4096
	// AbsPathMax and RelPathMax are XENSTORE_ABS_PATH_MAX and
	// XENSTORE_REL_PATH_MAX.
	AbsPathMax = 3072
	RelPathMax = 2048
)

// header is struct xsd_sockmsg.
type header struct {
	typ   msgType
	reqID uint32
	txID  uint32
	len   uint32
}

func putHeader(b []byte, h header) {
	binary.LittleEndian.PutUint32(b[0:], uint32(h.typ))
	binary.LittleEndian.PutUint32(b[4:], h.reqID)
	binary.LittleEndian.PutUint32(b[8:], h.txID)
	binary.LittleEndian.PutUint32(b[12:], h.len)
}

// errProtocol is wrapped by every error that reports a malformed message
// from the server; the connection is closed when one is seen.
var errProtocol = errors.New("xenstore protocol violation")

// maxReplyPayload bounds a reply's payload. Over a Unix socket oxenstored
// does not hold its replies to PayloadMax: it answers DIRECTORY of a node
// with more than 4096 bytes of names in one oversized reply
// (tools/ocaml/xenstored/connection.ml, packet_of: only ring connections
// get E2BIG), and it has no DIRECTORY_PART to page through it. Such a
// reply is taken, up to this bound against a hostile server; /local/domain
// of a host full of guests (32752 domids of up to 5 digits) is under 200
// KiB. Watch events stay bounded by PayloadMax.
const maxReplyPayload = 1 << 20

// parseHeader decodes a header and checks the length bound before anything
// is allocated for the payload.
func parseHeader(b []byte) (header, error) {
	h := header{
		typ:   msgType(binary.LittleEndian.Uint32(b[0:])),
		reqID: binary.LittleEndian.Uint32(b[4:]),
		txID:  binary.LittleEndian.Uint32(b[8:]),
		len:   binary.LittleEndian.Uint32(b[12:]),
	}
	limit := uint32(maxReplyPayload)
	if h.typ == typeWatchEvent {
		limit = PayloadMax
	}
	if h.len > limit {
		return h, fmt.Errorf("%w: %s message with payload length %d over %d", errProtocol, h.typ, h.len, limit)
	}
	return h, nil
}

// splitEvent splits a WATCH_EVENT payload "<path>\0<token>\0" without
// allocating. Anything after the token's terminator is ignored, as
// libxenstore does.
func splitEvent(p []byte) (path, token []byte, err error) {
	i := indexNUL(p)
	if i < 0 {
		return nil, nil, fmt.Errorf("%w: watch event without NUL after the path", errProtocol)
	}
	path, rest := p[:i], p[i+1:]
	j := indexNUL(rest)
	if j < 0 {
		return nil, nil, fmt.Errorf("%w: watch event without NUL after the token", errProtocol)
	}
	return path, rest[:j], nil
}

func indexNUL(p []byte) int {
	for i, c := range p {
		if c == 0 {
			return i
		}
	}
	return -1
}

// splitStrings splits a reply made of NUL-terminated strings (DIRECTORY,
// GET_PERMS). A missing final terminator is tolerated; empty input yields no
// strings.
func splitStrings(p []byte) []string {
	if len(p) == 0 {
		return nil
	}
	if p[len(p)-1] == 0 {
		p = p[:len(p)-1]
	}
	n := 1
	for _, c := range p {
		if c == 0 {
			n++
		}
	}
	out := make([]string, 0, n)
	s := string(p) // one allocation shared by all substrings
	start := 0
	for i := 0; i < len(s); i++ {
		if s[i] == 0 {
			out = append(out, s[start:i])
			start = i + 1
		}
	}
	return append(out, s[start:])
}

// trimNUL drops one trailing NUL (replies such as "OK\0", a domain path or a
// transaction id carry one).
func trimNUL(p []byte) []byte {
	if len(p) > 0 && p[len(p)-1] == 0 {
		return p[:len(p)-1]
	}
	return p
}
