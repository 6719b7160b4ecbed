package store

import (
	"strings"
	"testing"
)

// A migration's comment that happens to begin "-- only" is a comment: only
// "-- only sqlite", "-- only postgres" and "-- only end" are directives.
func TestSplitStatementsDirectives(t *testing.T) {
	sql := "-- only a file its sender uploaded is deleted\nCREATE TABLE a (x INTEGER);\n-- only postgres\nCREATE INDEX b ON a (x);\n-- only end\nCREATE TABLE c (y INTEGER);\n"
	for d, want := range map[Dialect]int{SQLite: 2, Postgres: 3} {
		if got := splitStatements(sql, d); len(got) != want || !strings.HasPrefix(got[0], "CREATE TABLE a") {
			t.Errorf("dialect %v: %q", d, got)
		}
	}
}
