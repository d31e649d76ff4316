package control

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"strconv"
	"syscall"
)

// Errors of the client; returned errors wrap them.
var (
	// ErrAgentNotRunning is returned when the socket is missing or nobody
	// accepts on it.
	ErrAgentNotRunning = errors.New("agent not running")
	// ErrNotFound is returned when the agent answered 404 (an unknown
	// domain, metrics disabled).
	ErrNotFound = errors.New("not found")
	// ErrRejected is returned when the agent refused the request (400,
	// 403, 405); the error carries the agent's message.
	ErrRejected = errors.New("rejected by agent")
)

// maxAnswer bounds an answer: /v1/domains of 32k domains is a few MiB.
const maxAnswer = 64 << 20

// Client talks to mtwatchd's control socket. It is safe for concurrent use.
type Client struct {
	socket string
	hc     *http.Client
}

// NewClient returns a client of the agent listening on socket ("" means
// DefaultSocket). Nothing is dialled until the first call.
func NewClient(socket string) *Client {
	if socket == "" {
		socket = DefaultSocket
	}
	d := &net.Dialer{}
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return d.DialContext(ctx, "unix", socket)
		},
		MaxIdleConns:       2,
		DisableCompression: true,
	}
	return &Client{socket: socket, hc: &http.Client{Transport: tr}}
}

// Socket returns the socket path the client dials.
func (c *Client) Socket() string { return c.socket }

// Close releases idle connections.
func (c *Client) Close() { c.hc.CloseIdleConnections() }

// Status is GET /v1/status.
func (c *Client) Status(ctx context.Context) (Status, error) {
	var s Status
	err := c.getJSON(ctx, "/v1/status", &s)
	return s, err
}

// Domains is GET /v1/domains: dom0 first, then the guests by domid.
func (c *Client) Domains(ctx context.Context) ([]Domain, error) {
	var d []Domain
	err := c.getJSON(ctx, "/v1/domains", &d)
	return d, err
}

// Domain is GET /v1/domains/{domid}; an unknown domain wraps ErrNotFound.
func (c *Client) Domain(ctx context.Context, domid uint16) (Domain, error) {
	var d Domain
	err := c.getJSON(ctx, "/v1/domains/"+strconv.FormatUint(uint64(domid), 10), &d)
	return d, err
}

// Stalls is GET /v1/stalls, oldest first.
func (c *Client) Stalls(ctx context.Context) ([]Stall, error) {
	var s []Stall
	err := c.getJSON(ctx, "/v1/stalls", &s)
	return s, err
}

// Metrics is GET /metrics, the Prometheus text exposition.
func (c *Client) Metrics(ctx context.Context) (string, error) {
	b, err := c.get(ctx, "/metrics")
	return string(b), err
}

func (c *Client) getJSON(ctx context.Context, path string, v any) error {
	b, err := c.get(ctx, path)
	if err != nil {
		return err
	}
	if err := json.Unmarshal(b, v); err != nil {
		return fmt.Errorf("control %s: decode answer: %w", path, err)
	}
	return nil
}

func (c *Client) get(ctx context.Context, path string) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://mtwatchd"+path, nil)
	if err != nil {
		return nil, fmt.Errorf("control %s: %w", path, err)
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		if notRunning(err) {
			return nil, fmt.Errorf("%w (control socket %s)", ErrAgentNotRunning, c.socket)
		}
		return nil, fmt.Errorf("control %s: %w", path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxAnswer+1))
	if err != nil {
		return nil, fmt.Errorf("control %s: read answer: %w", path, err)
	}
	if len(b) > maxAnswer {
		return nil, fmt.Errorf("control %s: answer larger than %d bytes", path, maxAnswer)
	}
	if resp.StatusCode == http.StatusOK {
		return b, nil
	}
	msg := resp.Status
	var e Error
	if json.Unmarshal(b, &e) == nil && e.Error != "" {
		msg = e.Error
	}
	switch resp.StatusCode {
	case http.StatusNotFound:
		return nil, fmt.Errorf("%s: %w", msg, ErrNotFound)
	case http.StatusForbidden:
		return nil, fmt.Errorf("%s: %w", msg, fs.ErrPermission)
	case http.StatusBadRequest, http.StatusMethodNotAllowed:
		return nil, fmt.Errorf("%s: %w", msg, ErrRejected)
	}
	return nil, fmt.Errorf("control %s: %s", path, msg)
}

// notRunning: nothing to talk to (no socket file, nobody listening). A
// permission error is not that: the agent may well run.
func notRunning(err error) bool {
	return errors.Is(err, syscall.ENOENT) || errors.Is(err, syscall.ECONNREFUSED) ||
		errors.Is(err, syscall.ENOTDIR)
}
