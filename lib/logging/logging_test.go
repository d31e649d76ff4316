package logging

import (
	"bytes"
	"encoding/json"
	"log/slog"
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
