package xenstore

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"
)

// FuzzFrameDecoder feeds arbitrary server output to the reader with three
// calls pending (ids 1-3) and one watch registered: it must never panic,
// must stop with an error at the end of the input, and must hand every
// reply to the right call.
func FuzzFrameDecoder(f *testing.F) {
	f.Add(frame(typeRead, 1, 0, []byte("value")))
	f.Add(append(frame(typeWatchEvent, 0, 0, []byte("/w/x\x001:t\x00")), frame(typeError, 2, 0, []byte("ENOENT\x00"))...))
	f.Add(frame(typeDirectory, 3, 0, []byte("a\x00b\x00")))
	f.Add(append(frame(typeWatchEvent, 0, 0, []byte("/f/y\x002:f\x00")), frame(typeWatchEvent, 0, 0, []byte("/w/x\x001:t\x00"))...))
	f.Add(frame(typeRead, 9, 0, nil))
	f.Add(frame(typeRead, 1, 0, make([]byte, PayloadMax)))
	f.Add(frame(typeRead, 1, 0, []byte("trunc"))[:headerSize+2])
	f.Add([]byte{2, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff})
	f.Fuzz(func(t *testing.T, data []byte) {
		c := newClient(nopConn{}, false, options{watchQueue: 4, maxInflight: 8})
		c.reader = readerCaller // the fuzz loop below is the reader
		types := map[uint32]msgType{1: typeRead, 2: typeWrite, 3: typeDirectory}
		calls := map[uint32]*call{}
		for id, typ := range types {
			cl := &call{id: id, typ: typ, done: make(chan struct{}, 1)}
			calls[id] = cl
			c.pending[id] = cl
			c.sem <- struct{}{}
		}
		w := &Watch{c: c, path: "/w", token: "t", wire: "1:t", ch: make(chan Event, watchChanCap), stop: make(chan struct{})}
		c.watches[w.wire] = w
		c.byPath[watchKey{w.path, w.token}] = w
		// A WatchFunc watch: its events reach the function intact.
		wf := &Watch{c: c, path: "/f", token: "f", wire: "2:f", ch: make(chan Event), stop: make(chan struct{})}
		wf.fn = func(ev Event) {
			if ev.Token != "f" || strings.IndexByte(ev.Path, 0) >= 0 {
				t.Fatalf("bad event %+v", ev)
			}
		}
		c.watches[wf.wire] = wf
		c.byPath[watchKey{wf.path, wf.token}] = wf
		defer c.Close()

		br := bufio.NewReaderSize(bytes.NewReader(data), readBufSize)
		var err error
		for n := 0; err == nil; n++ {
			if n > len(data) {
				t.Fatal("reader loops without consuming input")
			}
			err = c.readMsg(br)
		}
		if err != io.EOF && !errors.Is(err, errProtocol) {
			t.Fatalf("reader stopped with %v", err)
		}
		for id, cl := range calls {
			select {
			case <-cl.done:
				if _, still := c.pending[id]; still {
					t.Fatalf("call %d signalled but still pending", id)
				}
				if cl.err == nil && cl.rtyp != cl.typ && cl.rtyp != typeError {
					t.Fatalf("call %d (%s) got a %s reply", id, cl.typ, cl.rtyp)
				}
				if len(cl.reply) > maxReplyPayload {
					t.Fatalf("reply of %d bytes", len(cl.reply))
				}
			default:
			}
		}
		// Events reached the watch intact.
	drain:
		for {
			select {
			case ev, ok := <-w.ch:
				if !ok {
					break drain // the watch overflowed and ended
				}
				if ev.Token != "t" || strings.IndexByte(ev.Path, 0) >= 0 {
					t.Fatalf("bad event %+v", ev)
				}
			default:
				break drain
			}
		}
	})
}

// refValidPath is a deliberately naive restatement of xenstored's rules.
func refValidPath(p string) bool {
	if p == "/" {
		return true
	}
	if p == "" || strings.Contains(p, "//") || strings.HasSuffix(p, "/") {
		return false
	}
	if (p[0] == '/' && len(p) > AbsPathMax) || (p[0] != '/' && len(p) > RelPathMax) {
		return false
	}
	for _, r := range p {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("-/_@", r)) {
			return false
		}
	}
	return true
}

func FuzzValidatePath(f *testing.F) {
	for _, s := range []string{"/", "", "/a/b", "a/b", "//", "/a/", "/a//b", "@introduceDomain", "/a b", "/\xff", "/local/domain/0/mtwatch/5"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, p string) {
		err := ValidatePath(p)
		if (err == nil) != refValidPath(p) {
			t.Fatalf("ValidatePath(%q) = %v, reference says valid=%v", p, err, refValidPath(p))
		}
		if err != nil && !strings.Contains(err.Error(), "invalid argument") {
			t.Fatalf("error %q", err)
		}
		if werr := validateWatchPath(p); err == nil && werr != nil {
			t.Fatalf("valid node path %q rejected as a watch path: %v", p, werr)
		}
	})
}

func FuzzParsePerm(f *testing.F) {
	for _, s := range []string{"n0", "r5", "w5", "b5", "b32751", "r32752", "x1", "r", "r05", "r-1", "r99999999999", "n0,r5", "n0 r5"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		p, err := ParsePerm(s)
		if err == nil {
			// Only canonical spellings are accepted: formatting gives
			// the input back.
			if p.String() != s {
				t.Fatalf("ParsePerm(%q) = %v, formats as %q", s, p, p.String())
			}
			if p.Domid.IsReserved() {
				t.Fatalf("ParsePerm(%q) accepted reserved domid", s)
			}
		}
		ps, err := ParsePermsString(s)
		if err == nil {
			again, err := ParsePermsString(ps.String())
			if err != nil || again.String() != ps.String() {
				t.Fatalf("round trip of %q: %v, %v", s, again, err)
			}
			// The wire encoding decodes to the same list.
			dec, err := decodePerms(appendPerms(nil, ps))
			if err != nil || dec.String() != ps.String() {
				t.Fatalf("wire round trip of %q: %v, %v", s, dec, err)
			}
		}
	})
}

// nopConn swallows what the client writes (an overflowed watch's UNWATCH).
type nopConn struct{}

func (nopConn) Read([]byte) (int, error)    { return 0, io.EOF }
func (nopConn) Write(p []byte) (int, error) { return len(p), nil }
func (nopConn) Close() error                { return nil }
