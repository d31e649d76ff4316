package plugintest

import (
	"context"
	"log/slog"
	"sync"
)

// Logs records log entries, for assertions: what the host's agent and the
// plugins built on it log. Handler returns the slog handler that feeds it.
type Logs struct {
	// Level is the lowest level recorded (slog.LevelInfo by default);
	// set it before logging starts.
	Level slog.Level

	mu   sync.Mutex
	recs []Record
}

// Record is one entry: its level, message and attributes, group members
// named "group.key" as lib/logging names them.
type Record struct {
	Level   slog.Level
	Message string
	Attrs   map[string]any
}

// Records returns the entries recorded so far, oldest first.
func (l *Logs) Records() []Record {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]Record(nil), l.recs...)
}

// Reset forgets the entries recorded so far.
func (l *Logs) Reset() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.recs = nil
}

// Handler returns a handler that records into l and, when next is not nil,
// passes every entry on to next too.
func (l *Logs) Handler(next slog.Handler) slog.Handler { return &recorder{logs: l, next: next} }

type recorder struct {
	logs   *Logs
	next   slog.Handler
	attrs  []slog.Attr // with their group prefix in the key
	prefix string
}

func (h *recorder) Enabled(ctx context.Context, level slog.Level) bool {
	return level >= h.logs.Level || h.next != nil && h.next.Enabled(ctx, level)
}

func (h *recorder) Handle(ctx context.Context, r slog.Record) error {
	if r.Level >= h.logs.Level {
		rec := Record{Level: r.Level, Message: r.Message, Attrs: make(map[string]any, len(h.attrs)+r.NumAttrs())}
		for _, a := range h.attrs {
			rec.Attrs[a.Key] = a.Value.Any()
		}
		r.Attrs(func(a slog.Attr) bool {
			flatten(rec.Attrs, h.prefix, a)
			return true
		})
		h.logs.mu.Lock()
		h.logs.recs = append(h.logs.recs, rec)
		h.logs.mu.Unlock()
	}
	if h.next != nil && h.next.Enabled(ctx, r.Level) {
		return h.next.Handle(ctx, r)
	}
	return nil
}

func flatten(m map[string]any, prefix string, a slog.Attr) {
	v := a.Value.Resolve()
	if v.Kind() == slog.KindGroup {
		p := prefix
		if a.Key != "" {
			p += a.Key + "."
		}
		for _, g := range v.Group() {
			flatten(m, p, g)
		}
		return
	}
	if a.Key != "" {
		m[prefix+a.Key] = v.Any()
	}
}

func (h *recorder) WithAttrs(as []slog.Attr) slog.Handler {
	m := map[string]any{}
	for _, a := range as {
		flatten(m, h.prefix, a)
	}
	n := *h
	n.attrs = append([]slog.Attr(nil), h.attrs...)
	for k, v := range m {
		n.attrs = append(n.attrs, slog.Any(k, v))
	}
	if h.next != nil {
		n.next = h.next.WithAttrs(as)
	}
	return &n
}

func (h *recorder) WithGroup(name string) slog.Handler {
	if name == "" {
		return h
	}
	n := *h
	n.prefix += name + "."
	if h.next != nil {
		n.next = h.next.WithGroup(name)
	}
	return &n
}
