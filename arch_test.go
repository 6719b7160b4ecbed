package main

import (
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
)

const module = "github.com/matrix-hipaa/matrix-hipaa"

// features are the packages that add a capability on the engine. The engine
// (appservice and what it is built from) imports none of them, and no
// feature imports another: features talk through the engine's interfaces.
// Surfaces (main, the admin API and management room, the compliance
// report) present features to
// people and may use any of them; assembly names them all.
var (
	features = []string{
		module + "/appservice/enforce",
		module + "/appservice/expiry",
		module + "/appservice/sessions",
		module + "/appservice/identity",
		module + "/appservice/pushers",
		module + "/appservice/archive",
	}
	surfaces = []string{
		module + "/appservice/admin",
		module + "/appservice/assembly",
		module + "/appservice/compliance",
	}
)

// imports lists, for each package of the module, the module packages its
// non-test files import.
func moduleImports(t *testing.T) map[string][]string {
	t.Helper()
	out := map[string][]string{}
	err := filepath.WalkDir(".", func(path string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && (strings.HasPrefix(d.Name(), ".") && path != "." || d.Name() == "testdata") {
			return filepath.SkipDir
		}
		if d.IsDir() || !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
			return nil
		}
		f, err := parser.ParseFile(token.NewFileSet(), path, nil, parser.ImportsOnly)
		if err != nil {
			return err
		}
		pkg := module
		if dir := filepath.Dir(path); dir != "." {
			pkg += "/" + filepath.ToSlash(dir)
		}
		for _, imp := range f.Imports {
			p, _ := strconv.Unquote(imp.Path.Value)
			if strings.HasPrefix(p, module+"/") && !slices.Contains(out[pkg], p) {
				out[pkg] = append(out[pkg], p)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func isFeature(pkg string) bool { return under(pkg, features) }

func under(pkg string, roots []string) bool {
	for _, f := range roots {
		if pkg == f || strings.HasPrefix(pkg, f+"/") {
			return true
		}
	}
	return false
}

// The engine imports no feature, and no feature imports another.
func TestArchitectureLayers(t *testing.T) {
	imports := moduleImports(t)
	for _, f := range append(features, surfaces...) {
		if _, ok := imports[f]; !ok {
			t.Fatalf("no package %s: keep the lists in arch_test.go current", f)
		}
	}
	if len(imports) < 10 {
		t.Fatalf("found only %d packages: is the walk reading the module?", len(imports))
	}
	for pkg, deps := range imports {
		if pkg == module || strings.HasPrefix(pkg, module+"/deploy") || under(pkg, surfaces) {
			continue // assembly (main), surfaces and tools may import anything
		}
		for _, dep := range deps {
			switch {
			case !isFeature(pkg) && isFeature(dep):
				t.Errorf("engine package %s imports feature %s", pkg, dep)
			case isFeature(pkg) && isFeature(dep) && !strings.HasPrefix(dep, pkg):
				t.Errorf("feature %s imports another feature, %s", pkg, dep)
			}
		}
	}
}
