// Package strictyamltest checks, in tests, the error listing a strict YAML
// load produced against the lines expected, one by one.
package strictyamltest

import (
	"strings"
	"testing"
)

// ExpectLines fails t for every line of err that differs from want.
func ExpectLines(t testing.TB, err error, want []string) {
	t.Helper()
	if err == nil {
		t.Fatal("no error; expected the listed problems")
	}
	got := strings.Split(err.Error(), "\n")
	for i := 0; i < max(len(got), len(want)); i++ {
		var g, w string
		if i < len(got) {
			g = got[i]
		}
		if i < len(want) {
			w = want[i]
		}
		if g != w {
			t.Errorf("line %d\n got %s\nwant %s", i+1, g, w)
		}
	}
}
