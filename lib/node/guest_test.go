package node_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"github.com/mtwatch/mtwatch/lib/domid"
	"github.com/mtwatch/mtwatch/lib/node"
	"github.com/mtwatch/mtwatch/lib/xenstore/xenstoredtest"
)

// guest is a XenStore connection of a guest domain: its store ring, which
// xenemu maps into xenstored from the file ring-<domid> of the control
// directory, so xenstored applies the guest's permissions to every request,
// as on a Xen host.
type guest struct {
	t     *testing.T
	id    domid.ID
	ring  []byte
	wake  string // the event-channel FIFO
	reqID uint32
}

// Layout of struct xenstore_domain_interface (xen/include/public/io/xs_wire.h).
const (
	ringSize = 1024
	reqOff   = 0
	rspOff   = ringSize
	reqCons  = 2 * ringSize
	reqProd  = reqCons + 4
	rspCons  = reqCons + 8
	rspProd  = reqCons + 12
)

// newGuest creates guest id with a ring the test can speak on.
func newGuest(t *testing.T, in *xenstoredtest.Instance, id domid.ID) *guest {
	t.Helper()
	path := filepath.Join(in.Dir(), fmt.Sprintf("ring-%d", id))
	if err := os.WriteFile(path, make([]byte, 4096), 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	ring, err := syscall.Mmap(int(f.Fd()), 0, 4096, syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_SHARED)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Munmap(ring) })
	in.CreateDomain(id)
	return &guest{t: t, id: id, ring: ring, wake: filepath.Join(in.Dir(), "evtchn")}
}

func (g *guest) idx(off int) *uint32 { return (*uint32)(unsafe.Pointer(&g.ring[off])) }

// request sends one request and returns the reply's payload, or the
// errno xenstored answered with.
func (g *guest) request(typ uint32, args ...string) (string, error) {
	g.t.Helper()
	var payload []byte
	for i, a := range args {
		payload = append(payload, a...)
		if typ != 11 || i == 0 { // a WRITE's value is not NUL-terminated
			payload = append(payload, 0)
		}
	}
	g.reqID++
	msg := binary.LittleEndian.AppendUint32(nil, typ)
	msg = binary.LittleEndian.AppendUint32(msg, g.reqID)
	msg = binary.LittleEndian.AppendUint32(msg, 0)
	msg = binary.LittleEndian.AppendUint32(msg, uint32(len(payload)))
	msg = append(msg, payload...)
	if len(msg) > ringSize {
		g.t.Fatalf("request of %d bytes does not fit the ring", len(msg))
	}
	prod := atomic.LoadUint32(g.idx(reqProd))
	for i, b := range msg {
		g.ring[reqOff+int((prod+uint32(i))%ringSize)] = b
	}
	atomic.StoreUint32(g.idx(reqProd), prod+uint32(len(msg)))

	var reply []byte
	deadline := time.Now().Add(10 * time.Second)
	for {
		g.kick()
		cons, prod := atomic.LoadUint32(g.idx(rspCons)), atomic.LoadUint32(g.idx(rspProd))
		for ; cons != prod; cons++ {
			reply = append(reply, g.ring[rspOff+int(cons%ringSize)])
		}
		atomic.StoreUint32(g.idx(rspCons), cons)
		if len(reply) >= 16 && len(reply) >= 16+int(binary.LittleEndian.Uint32(reply[12:])) {
			break
		}
		if time.Now().After(deadline) {
			g.t.Fatalf("guest %d: no reply from xenstored within 10s", g.id)
		}
		time.Sleep(time.Millisecond)
	}
	rtyp, body := binary.LittleEndian.Uint32(reply), reply[16:16+binary.LittleEndian.Uint32(reply[12:])]
	body = bytes.TrimSuffix(body, []byte{0})
	if rtyp == 16 { // XS_ERROR
		return "", fmt.Errorf("xenstored: %s", body)
	}
	if rtyp != typ {
		g.t.Fatalf("guest %d: reply of type %d to a request of type %d", g.id, rtyp, typ)
	}
	return string(body), nil
}

// kick wakes xenstored, which then looks at every ring.
func (g *guest) kick() {
	f, err := os.OpenFile(g.wake, os.O_WRONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		g.t.Fatal(err)
	}
	f.Write([]byte{1})
	f.Close()
}

const (
	xsRead  = 2
	xsWrite = 11
	xsRm    = 13
)

// wantRefused checks that xenstored refuses the guest's request with EACCES.
func (g *guest) wantRefused(typ uint32, args ...string) {
	g.t.Helper()
	if _, err := g.request(typ, args...); err == nil || err.Error() != "xenstored: EACCES" {
		g.t.Errorf("guest %d: request %d %q = %v, want EACCES", g.id, typ, args, err)
	}
}

func (g *guest) wantOK(typ uint32, args ...string) {
	g.t.Helper()
	if _, err := g.request(typ, args...); err != nil {
		g.t.Fatalf("guest %d: request %d %q: %v", g.id, typ, args, err)
	}
}

// TestGuestShutOut: a real guest connection cannot touch the directory as
// create leaves it, and what it made while the directory was loosened is
// removed or taken from it by the next create.
func TestGuestShutOut(t *testing.T) {
	t.Parallel()
	in, c, ctx := setup(t)
	g := newGuest(t, in, 100)
	in.CreateDomain(5)
	g.wantOK(xsWrite, "/local/domain/100/data", "x") // the ring works

	if err := node.Create(ctx, c, 5, uuidOf(5)); err != nil {
		t.Fatal(err)
	}
	g.wantRefused(xsWrite, node.Dir+"/100", "")
	g.wantRefused(xsRead, node.Path(5))
	g.wantRefused(xsWrite, node.Path(5), "forged")
	g.wantRefused(xsRm, node.Path(5))

	// An administrator loosens the directory and node 5; the guest
	// helps itself.
	in.Run("xenstore-chmod", node.Dir, "b0")
	in.Run("xenstore-chmod", node.Path(5), "b0")
	for _, p := range []string{"/100", "/3", "/abc", "/5/child"} {
		g.wantOK(xsWrite, node.Dir+p, "forged")
	}
	g.wantOK(xsWrite, node.Path(5), uuidOf(99))
	if _, err := node.Get(ctx, c, 5); !errors.Is(err, node.ErrUntrusted) {
		t.Errorf("Get of a node the guest can write = %v, want ErrUntrusted", err)
	}
	if nodes, err := node.List(ctx, c); err != nil || len(nodes) != 0 {
		t.Errorf("List = %v, %v; want no trusted node", nodes, err)
	}

	// The next hook, for any domain, repairs it all.
	if err := node.Create(ctx, c, 7, uuidOf(7)); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{"/101", "/100", "/5/child", "/7/child"} {
		g.wantRefused(xsWrite, node.Dir+p, "forged")
	}
	for _, p := range []string{"/100", "/5", "/7"} {
		g.wantRefused(xsRm, node.Dir+p)
		g.wantRefused(xsRead, node.Dir+p)
	}
	nodes, err := node.List(ctx, c)
	if err != nil {
		t.Fatal(err)
	}
	// Node 7 has no domain, but was written by create once the directory
	// was private again. 100's node is its domain's own; its value is what
	// the guest wrote (see the package doc).
	want := []node.Node{{Domid: 5, UUID: uuidOf(99)}, {Domid: 7, UUID: uuidOf(7)}, {Domid: 100, UUID: "forged"}}
	if !slices.Equal(nodes, want) {
		t.Errorf("List = %v, want %v", nodes, want)
	}
	wantClean(t, in, "5", "7", "100")
}
