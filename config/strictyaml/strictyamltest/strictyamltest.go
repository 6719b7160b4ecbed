// Package strictyamltest checks, in tests, the error listing a strict YAML
// load produced against the lines expected, one by one.
package strictyamltest

import (
	"fmt"
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

// ExpectPositions fails t unless every line of err reads "file:line:col: …"
// with a real line and column.
func ExpectPositions(t testing.TB, err error, file string) {
	t.Helper()
	for _, line := range strings.Split(err.Error(), "\n") {
		var l, c int
		rest, ok := strings.CutPrefix(line, file+":")
		if !ok {
			t.Fatalf("error line without position: %q", line)
		}
		if _, serr := fmt.Sscanf(rest, "%d:%d:", &l, &c); serr != nil || l < 1 || c < 1 {
			t.Fatalf("line %q is not %s:line:col: message", line, file)
		}
	}
}
