package main

import "testing"

func TestDebVersion(t *testing.T) {
	for _, c := range []struct{ in, want string }{
		{"v1.2.0", "1.2.0"},
		{"v1.2.0-3-gabc1234", "1.2.0+3.gabc1234"},
		{"v1.2.0-3-gabc1234-dirty", "1.2.0+3.gabc1234.dirty"},
		{"v1.2.0-dirty", "1.2.0+dirty"},
		{"v0.3.0-rc1", ""},
		{"abc1234", "0.0.0+gabc1234"},
		{"1234567-dirty", "0.0.0+g1234567.dirty"},
		{"1.2.0", ""},
		{"abc1234-dirty", "0.0.0+gabc1234.dirty"},
		{"dev", "0.0.0+dev"},
		{"", ""},
		{"1.0 beta", ""},
	} {
		got, err := DebVersion(c.in)
		if got != c.want || (err != nil) != (c.want == "") {
			t.Errorf("DebVersion(%q) = %q, %v; want %q", c.in, got, err, c.want)
		}
	}
}
