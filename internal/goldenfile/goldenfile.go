// Package goldenfile compares a test's output with a file kept under
// testdata, and rewrites the file instead when the test binary runs with
// -update. It is imported by tests only.
package goldenfile

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite the golden files")

// Check compares got with the file at path; with -update it writes got
// there (creating its directory) and passes.
func Check(t testing.TB, path, got string) {
	t.Helper()
	if *update {
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (go test -update creates it)", err)
	}
	if got != string(want) {
		t.Errorf("%s differs (go test -update rewrites it)\n--- got\n%s--- want\n%s", path, got, want)
	}
}

// Updating reports whether the test binary runs with -update, for a test
// that compares in its own way.
func Updating() bool { return *update }

// CheckBlock is Check for the lines between the marker lines begin and end
// of the file at path, a generated block inside a hand-written document;
// with -update it rewrites only those lines. Each marker must be a whole
// line, once, begin before end.
func CheckBlock(t testing.TB, path, begin, end, got string) {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	head, block, tail, err := splitBlock(string(data), begin, end)
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	if *update {
		if block != got {
			if err := os.WriteFile(path, []byte(head+got+tail), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		return
	}
	if block != got {
		t.Errorf("%s: the block between %s and %s differs (go test -update rewrites it)\n--- got\n%s--- want\n%s", path, begin, end, got, block)
	}
}

// splitBlock cuts doc into what precedes the block (the begin line
// included), the block and the rest (from the end line).
func splitBlock(doc, begin, end string) (head, block, tail string, err error) {
	find := func(marker string) (int, error) {
		at, n := -1, 0
		for off := 0; off < len(doc); {
			line, _, _ := strings.Cut(doc[off:], "\n")
			if line == marker {
				at, n = off, n+1
			}
			off += len(line) + 1
		}
		if n != 1 {
			return 0, fmt.Errorf("%d lines %q, want 1", n, marker)
		}
		return at, nil
	}
	b, err := find(begin)
	if err != nil {
		return "", "", "", err
	}
	e, err := find(end)
	if err != nil {
		return "", "", "", err
	}
	b += len(begin) + 1
	if e < b {
		return "", "", "", fmt.Errorf("%q before %q", end, begin)
	}
	return doc[:b], doc[b:e], doc[e:], nil
}
