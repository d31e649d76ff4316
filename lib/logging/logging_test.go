package logging

import (
	"bytes"
	"encoding/json"
	"errors"
	"log/slog"
	"regexp"
	"strings"
	"testing"
)

func TestSlogThroughLogrus(t *testing.T) {
	var buf bytes.Buffer
	l, journal, err := New(&buf, "info", FormatJSON)
	if err != nil || journal {
		t.Fatal(err, journal)
	}
	log := slog.New(Slog(l)).With("plugin", "exec").WithGroup("g")
	log.Debug("hidden")
	log.Warn("stall", "domid", 5, "path", "backend/vif/5/0")
	var e map[string]any
	if err := json.Unmarshal(buf.Bytes(), &e); err != nil {
		t.Fatalf("%v: %q", err, buf.String())
	}
	if e["level"] != "warning" || e["msg"] != "stall" || e["plugin"] != "exec" || e["g.domid"] != float64(5) || e["g.path"] != "backend/vif/5/0" {
		t.Fatalf("entry %v", e)
	}
	if _, _, err := New(&buf, "loud", FormatText); err == nil {
		t.Fatal("bad level accepted")
	}
	if _, _, err := New(&buf, "info", "xml"); err == nil {
		t.Fatal("bad format accepted")
	}
}

func TestJournalField(t *testing.T) {
	for in, want := range map[string]string{"domid": "DOMID", "path": "XS_PATH", "watch": "WATCH", "plugin": "PLUGIN", "worker": "MTWATCH_WORKER", "g.x-y": "MTWATCH_G_X_Y"} {
		if got := JournalField(in); got != want {
			t.Errorf("%s -> %s, want %s", in, got, want)
		}
	}
}

// TestOneErrorFieldAndMilliseconds: an error is the field "error" whether
// it was logged through slog ("err") or logrus (WithError), and text and
// JSON timestamps carry milliseconds.
func TestOneErrorFieldAndMilliseconds(t *testing.T) {
	ms := regexp.MustCompile(`\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}(Z|[+-]\d\d:\d\d)`)
	for _, format := range []string{FormatText, FormatJSON} {
		var buf bytes.Buffer
		l, _, err := New(&buf, "info", format)
		if err != nil {
			t.Fatal(err)
		}
		slog.New(Slog(l)).Error("through slog", "err", errors.New("boom"))
		l.WithError(errors.New("bang")).Error("through logrus")
		lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
		if len(lines) != 2 {
			t.Fatalf("%s: %q", format, buf.String())
		}
		for i, want := range []string{"boom", "bang"} {
			l := lines[i]
			switch format {
			case FormatText:
				if !strings.Contains(l, "error="+want) || strings.Contains(l, " err=") {
					t.Errorf("text: %q lacks error=%s", l, want)
				}
				if !ms.MatchString(l) {
					t.Errorf("text: %q has no millisecond timestamp", l)
				}
			case FormatJSON:
				var e map[string]any
				if err := json.Unmarshal([]byte(l), &e); err != nil {
					t.Fatal(err)
				}
				if e["error"] != want || e["err"] != nil {
					t.Errorf("json: %v: want error=%s", e, want)
				}
				if ts, _ := e["time"].(string); !ms.MatchString(ts) {
					t.Errorf("json: time %q without milliseconds", e["time"])
				}
			}
		}
	}
	if JournalField("error") != "ERROR" {
		t.Errorf("error -> %s", JournalField("error"))
	}
}
