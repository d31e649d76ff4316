package testenv

import (
	"os"
	"testing"
)

func TestScrubbed(t *testing.T) {
	for _, tc := range []struct {
		k    string
		want bool
	}{
		{"MTWATCH_CONTROL", true},
		{"MTWATCH_XENSTORE", true},
		{"MTWATCH_HOOK_STRICT", true},
		{"XENSTORED_PATH", true},
		{"XENSTORED_RUNDIR", true},
		{"MTWATCH_XENSTORED", false},
		{"MTWATCH_XENEMU", false},
		{"MTWATCH_TEST_KEEP", false},
		{"PATH", false},
		{"HOME", false},
	} {
		if got := Scrubbed(tc.k); got != tc.want {
			t.Errorf("Scrubbed(%q) = %v, want %v", tc.k, got, tc.want)
		}
	}
}

func TestScrub(t *testing.T) {
	t.Setenv("MTWATCH_CONTROL", "/nonexistent/control.sock")
	t.Setenv("MTWATCH_TEST_KEEP", "1")
	t.Setenv("XENSTORED_PATH", "/nonexistent/socket")
	Scrub()
	if v, ok := os.LookupEnv("MTWATCH_CONTROL"); ok {
		t.Errorf("MTWATCH_CONTROL=%q survived", v)
	}
	if _, ok := os.LookupEnv("XENSTORED_PATH"); ok {
		t.Error("XENSTORED_PATH survived")
	}
	if os.Getenv("MTWATCH_TEST_KEEP") != "1" {
		t.Error("MTWATCH_TEST_KEEP was removed")
	}
}
