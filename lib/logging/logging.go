// Package logging sets up mtwatchd's logger: logrus owns levels, formatting
// and the journal, and a log/slog handler backed by it carries the entries
// of the lib/ packages, which log through slog. When stderr is the journal
// (JOURNAL_STREAM, the systemd convention) entries go natively through
// go-systemd's journal with SYSLOG_IDENTIFIER=mtwatchd and DOMID, XS_PATH,
// WATCH, PLUGIN and ERROR fields. An error is always the field "error"
// (logrus's WithError), whether logged through logrus or slog ("err").
package logging

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"strings"

	"github.com/coreos/go-systemd/v22/journal"
	"github.com/sirupsen/logrus"
)

// Identifier is the journal's SYSLOG_IDENTIFIER of every entry
// (journalctl -t mtwatchd).
const Identifier = "mtwatchd"

// TimestampFormat is RFC 3339 with milliseconds: a stall, its handler's
// start and the event before it often share a second.
const TimestampFormat = "2006-01-02T15:04:05.000Z07:00"

// Formats.
const (
	FormatAuto = "auto" // the journal when stderr is it, else text
	FormatText = "text"
	FormatJSON = "json"
)

// New returns a logger writing to w in format at level. journal reports
// whether entries go to the journal natively.
func New(w io.Writer, level, format string) (l *logrus.Logger, toJournal bool, err error) {
	l = logrus.New()
	l.SetOutput(w)
	if err := SetLevel(l, level); err != nil {
		return nil, false, err
	}
	switch format {
	case FormatJSON:
		l.SetFormatter(&logrus.JSONFormatter{TimestampFormat: TimestampFormat})
	case FormatText, FormatAuto:
		l.SetFormatter(&logrus.TextFormatter{FullTimestamp: true, TimestampFormat: TimestampFormat})
		if format == FormatAuto {
			if ok, _ := journal.StderrIsJournalStream(); ok && journal.Enabled() {
				l.AddHook(journalHook{})
				l.SetOutput(io.Discard)
				toJournal = true
			}
		}
	default:
		return nil, false, fmt.Errorf("log format %q: want auto, text or json", format)
	}
	return l, toJournal, nil
}

// SetLevel sets l's level by name.
func SetLevel(l *logrus.Logger, level string) error {
	lv, err := parseLevel(level)
	if err != nil {
		return err
	}
	l.SetLevel(lv)
	return nil
}

// CheckLevel returns an error unless level names a log level: trace,
// debug, info, warning or error.
func CheckLevel(level string) error {
	_, err := parseLevel(level)
	return err
}

func parseLevel(level string) (logrus.Level, error) {
	lv, err := logrus.ParseLevel(level)
	if err != nil {
		return 0, fmt.Errorf("log level %q: want trace, debug, info, warning or error", level)
	}
	return lv, nil
}

// journalFields maps the field names used across mtwatch to journal fields.
var journalFields = map[string]string{
	"domid": "DOMID", "path": "XS_PATH", "watch": "WATCH", "plugin": "PLUGIN", logrus.ErrorKey: "ERROR",
}

// JournalField returns the journal field name of a log field.
func JournalField(k string) string {
	if f, ok := journalFields[k]; ok {
		return f
	}
	var b strings.Builder
	b.WriteString("MTWATCH_")
	for _, r := range strings.ToUpper(k) {
		if r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' {
			b.WriteRune(r)
		} else {
			b.WriteByte('_')
		}
	}
	return b.String()
}

type journalHook struct{}

func (journalHook) Levels() []logrus.Level { return logrus.AllLevels }

func (journalHook) Fire(e *logrus.Entry) error {
	vars := make(map[string]string, len(e.Data)+1)
	for k, v := range e.Data {
		vars[JournalField(k)] = fmt.Sprint(v)
	}
	vars["SYSLOG_IDENTIFIER"] = Identifier
	return journal.Send(e.Message, priority(e.Level), vars)
}

func priority(l logrus.Level) journal.Priority {
	switch l {
	case logrus.PanicLevel:
		return journal.PriEmerg
	case logrus.FatalLevel:
		return journal.PriCrit
	case logrus.ErrorLevel:
		return journal.PriErr
	case logrus.WarnLevel:
		return journal.PriWarning
	case logrus.InfoLevel:
		return journal.PriInfo
	}
	return journal.PriDebug
}

// Slog returns a slog handler that logs through l.
func Slog(l *logrus.Logger) slog.Handler { return &handler{l: l} }

type handler struct {
	l      *logrus.Logger
	attrs  logrus.Fields
	prefix string // group prefix, "g." per group
}

func level(l slog.Level) logrus.Level {
	switch {
	case l >= slog.LevelError:
		return logrus.ErrorLevel
	case l >= slog.LevelWarn:
		return logrus.WarnLevel
	case l >= slog.LevelInfo:
		return logrus.InfoLevel
	case l >= slog.LevelDebug:
		return logrus.DebugLevel
	}
	return logrus.TraceLevel
}

func (h *handler) Enabled(_ context.Context, l slog.Level) bool { return h.l.IsLevelEnabled(level(l)) }

func (h *handler) Handle(_ context.Context, r slog.Record) error {
	f := make(logrus.Fields, len(h.attrs)+r.NumAttrs())
	for k, v := range h.attrs {
		f[k] = v
	}
	r.Attrs(func(a slog.Attr) bool {
		add(f, h.prefix, a)
		return true
	})
	e := h.l.WithFields(f)
	e.Time = r.Time
	e.Log(level(r.Level), r.Message)
	return nil
}

func add(f logrus.Fields, prefix string, a slog.Attr) {
	v := a.Value.Resolve()
	if v.Kind() == slog.KindGroup {
		p := prefix
		if a.Key != "" {
			p += a.Key + "."
		}
		for _, g := range v.Group() {
			add(f, p, g)
		}
		return
	}
	if a.Key == "" {
		return
	}
	key := prefix + a.Key
	if key == "err" {
		// lib/ logs errors as "err", logrus's WithError as "error": one
		// name in every output.
		key = logrus.ErrorKey
	}
	f[key] = v.Any()
}

func (h *handler) WithAttrs(as []slog.Attr) slog.Handler {
	n := &handler{l: h.l, prefix: h.prefix, attrs: make(logrus.Fields, len(h.attrs)+len(as))}
	for k, v := range h.attrs {
		n.attrs[k] = v
	}
	for _, a := range as {
		add(n.attrs, h.prefix, a)
	}
	return n
}

func (h *handler) WithGroup(name string) slog.Handler {
	if name == "" {
		return h
	}
	return &handler{l: h.l, attrs: h.attrs, prefix: h.prefix + name + "."}
}
