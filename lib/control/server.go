package control

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"time"

	"golang.org/x/sys/unix"

	"github.com/mtwatch/mtwatch/lib/domid"
)

// Timeouts of the control server. Answers come from memory, so anything
// slower than this is a stuck or hostile peer.
const (
	readHeaderTimeout = 5 * time.Second
	readTimeout       = 10 * time.Second
	writeTimeout      = 30 * time.Second
	idleTimeout       = 60 * time.Second
	shutdownTimeout   = 5 * time.Second
	maxHeaderBytes    = 16 << 10
	// maxConns bounds the control socket's open connections; one more is
	// closed as soon as it is accepted. mtwatch needs a handful at once.
	maxConns = 128
)

// NewHandler returns the control API's HTTP handler serving src, with the
// routes of (*handler).routes. HEAD is accepted wherever GET is; other
// methods get 405. Every error has a JSON body, Error.
func NewHandler(src Source, metrics http.Handler) http.Handler {
	h := &handler{src: src, metrics: metrics}
	mux := http.NewServeMux()
	for _, rt := range h.routes() {
		mux.HandleFunc(rt.pattern, rt.serve)
	}
	// ServeMux's own 404 and 405 answers are plain text; the API's are
	// JSON, so whatever no route takes comes here.
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) { unrouted(mux, w, r) })
	return mux
}

type handler struct {
	src     Source
	metrics http.Handler
}

type route struct {
	pattern string // http.ServeMux pattern; GET serves HEAD too
	serve   http.HandlerFunc
}

// routes is the control API, the one table of its endpoints:
//
//	GET /v1/status            Status
//	GET /v1/domains           []Domain, dom0 first
//	GET /v1/domains/{domid}   Domain (400 for a malformed domid, 404 unknown)
//	GET /v1/stalls            []Stall, oldest first
//	GET /metrics              metrics (404 when metrics is nil)
func (h *handler) routes() []route {
	return []route{
		{"GET /v1/status", func(w http.ResponseWriter, _ *http.Request) { writeJSON(w, h.src.Status()) }},
		{"GET /v1/domains", func(w http.ResponseWriter, _ *http.Request) { writeJSON(w, nonNil(h.src.Domains())) }},
		// {domid...} takes the empty and the multi-segment rest too, so
		// that /v1/domains/ and /v1/domains/5/x are bad domids (400), not
		// unknown endpoints.
		{"GET /v1/domains/{domid...}", h.domain},
		{"GET /v1/stalls", func(w http.ResponseWriter, _ *http.Request) { writeJSON(w, nonNil(h.src.Stalls())) }},
		{"GET /metrics", h.serveMetrics},
	}
}

func (h *handler) domain(w http.ResponseWriter, r *http.Request) {
	arg := r.PathValue("domid")
	id, err := domid.Parse(arg)
	if err != nil {
		var de *domid.Error
		msg := err.Error()
		if errors.As(err, &de) {
			msg = fmt.Sprintf("domain %s: %v", quoteIfOdd(arg), de.Err)
		}
		writeError(w, http.StatusBadRequest, msg)
		return
	}
	d, ok := h.src.Domain(uint16(id))
	if !ok {
		writeError(w, http.StatusNotFound, fmt.Sprintf("domain %d: not known to the agent", id))
		return
	}
	writeJSON(w, d)
}

func (h *handler) serveMetrics(w http.ResponseWriter, r *http.Request) {
	if h.metrics == nil {
		writeError(w, http.StatusNotFound, "metrics are not enabled")
		return
	}
	h.metrics.ServeHTTP(w, r)
}

// unrouted answers a request no route took: 405 when a route serves its
// path under GET (every route is GET), else 404.
func unrouted(mux *http.ServeMux, w http.ResponseWriter, r *http.Request) {
	probe := &http.Request{Method: http.MethodGet, URL: r.URL, Host: r.Host}
	if _, pattern := mux.Handler(probe); pattern != "/" {
		w.Header().Set("Allow", "GET, HEAD")
		writeError(w, http.StatusMethodNotAllowed, fmt.Sprintf("method %s not allowed on %s", r.Method, r.URL.Path))
		return
	}
	writeError(w, http.StatusNotFound, fmt.Sprintf("no such endpoint: %s", r.URL.Path))
}

// nonNil makes a nil list encode as [], not null.
func nonNil[T any](s []T) []T {
	if s == nil {
		return []T{}
	}
	return s
}

// quoteIfOdd quotes s unless it is plain digits, so messages read
// "domain 70000: ..." but "domain \"a b\": ...".
func quoteIfOdd(s string) string {
	if s == "" {
		return `""`
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return fmt.Sprintf("%q", s)
		}
	}
	return s
}

func writeJSON(w http.ResponseWriter, v any) {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		writeError(w, http.StatusInternalServerError, "encode answer: "+err.Error())
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(http.StatusOK)
	w.Write(append(b, '\n'))
}

func writeError(w http.ResponseWriter, code int, msg string) {
	b, _ := json.Marshal(Error{Error: msg})
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(code)
	w.Write(append(b, '\n'))
}

// Serve serves h on ln until ctx ends, then shuts the server down, giving
// running requests a few seconds, and returns nil. It closes ln. Peers are
// identified by SO_PEERCRED: one whose uid is neither root nor the server's
// own uid gets 403 (the socket's mode 0600 already keeps others out; this
// also covers a socket whose mode was loosened or a passed-in listener).
func Serve(ctx context.Context, ln net.Listener, h http.Handler) error {
	self := uint32(os.Geteuid())
	srv := &http.Server{
		Handler:           peerCheck(h, self),
		ReadHeaderTimeout: readHeaderTimeout,
		ReadTimeout:       readTimeout,
		WriteTimeout:      writeTimeout,
		IdleTimeout:       idleTimeout,
		MaxHeaderBytes:    maxHeaderBytes,
		ConnContext: func(ctx context.Context, c net.Conn) context.Context {
			return context.WithValue(ctx, peerKey{}, peerOf(c.(*limitConn).Conn))
		},
	}
	return serveHTTP(ctx, newLimitListener(ln, maxConns), srv, "control server")
}

// serveHTTP runs srv on ln until ctx ends, then shuts it down.
func serveHTTP(ctx context.Context, ln net.Listener, srv *http.Server, what string) error {
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		return fmt.Errorf("%s: %w", what, err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), shutdownTimeout)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		srv.Close()
	}
	if err := <-errc; err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("%s: %w", what, err)
	}
	return nil
}

type peerKey struct{}

// peer is what SO_PEERCRED says about a connection; ok is false when the
// credentials could not be read (not a unix socket).
type peer struct {
	uid, pid int32
	ok       bool
	err      error
}

func peerOf(c net.Conn) peer {
	uc, ok := c.(*net.UnixConn)
	if !ok {
		return peer{err: fmt.Errorf("not a unix socket connection (%T)", c)}
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		return peer{err: err}
	}
	var cred *unix.Ucred
	var cerr error
	if err := raw.Control(func(fd uintptr) {
		cred, cerr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return peer{err: err}
	}
	if cerr != nil {
		return peer{err: cerr}
	}
	return peer{uid: int32(cred.Uid), pid: cred.Pid, ok: true}
}

// allowedUID reports whether a peer with uid may use the control API of a
// server running as self.
func allowedUID(uid, self uint32) bool { return uid == 0 || uid == self }

func peerCheck(h http.Handler, self uint32) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p, _ := r.Context().Value(peerKey{}).(peer)
		switch {
		case !p.ok:
			writeError(w, http.StatusForbidden, fmt.Sprintf("peer credentials unavailable: %v", p.err))
		case !allowedUID(uint32(p.uid), self):
			writeError(w, http.StatusForbidden, fmt.Sprintf("uid %d may not use the control socket (root or uid %d only)", p.uid, self))
		default:
			h.ServeHTTP(w, r)
		}
	})
}
