package goldenfile

import "testing"

// TestSplitBlock: the block is the whole lines between the markers; a
// marker missing, repeated, not a whole line or out of order is an error,
// not a block silently taken from the wrong place.
func TestSplitBlock(t *testing.T) {
	const b, e = "<!-- b -->", "<!-- e -->"
	for _, tc := range []struct {
		doc, head, block, tail string
		ok                     bool
	}{
		{"x\n" + b + "\none\ntwo\n" + e + "\ny\n", "x\n" + b + "\n", "one\ntwo\n", e + "\ny\n", true},
		{b + "\n" + e, b + "\n", "", e, true},
		{"x\n" + e + "\n", "", "", "", false},
		{b + "\n" + b + "\n" + e + "\n", "", "", "", false},
		{e + "\n" + b + "\n", "", "", "", false},
		{" " + b + "\n" + e + "\n", "", "", "", false},
		{b + e + "\n", "", "", "", false},
	} {
		head, block, tail, err := splitBlock(tc.doc, b, e)
		if (err == nil) != tc.ok || head != tc.head || block != tc.block || tail != tc.tail {
			t.Errorf("splitBlock(%q) = %q, %q, %q, %v", tc.doc, head, block, tail, err)
		}
	}
}
