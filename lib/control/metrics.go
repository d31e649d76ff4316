package control

import (
	"context"
	"net"
	"net/http"
	"sync"
	"time"
)

// Limits of the metrics server: unlike the control socket, its TCP port is
// open to any network peer, so it must not let one hold descriptors or
// memory the agent needs (a command's pipes, the control socket). A
// scraper makes one short request per interval.
const (
	metricsMaxConns    = 16
	metricsIdleTimeout = 10 * time.Second
)

// ServeMetrics serves metrics alone (GET and HEAD /metrics, 404 elsewhere)
// on ln, a TCP listener of mtwatchd --metrics-listen, until ctx ends; it
// closes ln. Headers must come within 5 s and fit 16 KiB, a request is read
// within 10 s, an answer written within 30 s, an idle keep-alive connection
// is closed after 10 s, and at most 16 connections are open: one more is
// closed as soon as it is accepted.
func ServeMetrics(ctx context.Context, ln net.Listener, metrics http.Handler) error {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", metrics)
	srv := &http.Server{
		Handler:           mux,
		ReadHeaderTimeout: readHeaderTimeout,
		ReadTimeout:       readTimeout,
		WriteTimeout:      writeTimeout,
		IdleTimeout:       metricsIdleTimeout,
		MaxHeaderBytes:    maxHeaderBytes,
	}
	return serveHTTP(ctx, newLimitListener(ln, metricsMaxConns), srv, "metrics server")
}

// limitListener closes a connection accepted while max are open, at once:
// the peer sees the refusal instead of waiting in the backlog, and holds no
// descriptor of ours.
type limitListener struct {
	net.Listener
	slots chan struct{}
}

func newLimitListener(ln net.Listener, max int) *limitListener {
	return &limitListener{Listener: ln, slots: make(chan struct{}, max)}
}

func (l *limitListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		select {
		case l.slots <- struct{}{}:
			return &limitConn{Conn: c, l: l}, nil
		default:
			c.Close()
		}
	}
}

type limitConn struct {
	net.Conn
	l    *limitListener
	once sync.Once
}

func (c *limitConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() { <-c.l.slots })
	return err
}
