package exec

import (
	"os"
	"testing"

	"github.com/mtwatch/mtwatch/internal/testenv"
)

// TestMain keeps the tests independent of the caller's MTWATCH_* and
// XENSTORED_* settings: commands inherit the agent's environment, and the
// golden files record the MTWATCH_* variables they see.
func TestMain(m *testing.M) {
	testenv.Scrub()
	os.Exit(m.Run())
}
