package main

import (
	"os"
	"testing"

	"github.com/mtwatch/mtwatch/internal/testenv"
)

// TestMain keeps the tests independent of the caller's MTWATCH_* and
// XENSTORED_* settings.
func TestMain(m *testing.M) {
	testenv.Scrub()
	os.Exit(m.Run())
}
