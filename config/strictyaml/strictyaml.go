// Package strictyaml decodes hand-edited YAML into Go structs and reports every
// problem at once, each with the file, line and column where it stands.
//
// yaml.v3's KnownFields stops at the first unknown key and its type errors carry
// no column, which is not good enough for a file an admin edits under pressure.
package strictyaml

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"reflect"
	"regexp"
	"sort"
	"strings"

	"gopkg.in/yaml.v3"
)

// Pos is a place in a source file.
type Pos struct {
	Line, Column int
}

// Problem is one error at one place.
type Problem struct {
	File string
	Pos  Pos
	Msg  string
}

func (p Problem) String() string {
	return fmt.Sprintf("%s:%d:%d: %s", p.File, p.Pos.Line, p.Pos.Column, p.Msg)
}

// Errors is every problem found in one file, in source order.
type Errors []Problem

func (e Errors) Error() string {
	lines := make([]string, len(e))
	for i, p := range e {
		lines[i] = p.String()
	}
	return strings.Join(lines, "\n")
}

// Doc is a decoded document: its node tree and the position of every key path
// (such as "appservice.listen" or "rooms[2].alias"), so later validation can
// point at the value it complains about.
type Doc struct {
	File  string
	Root  *yaml.Node
	Paths map[string]Pos
	errs  Errors
	steps int
}

// maxSteps bounds the work one file can cause: aliases can make a small file
// expand exponentially ("billion laughs"), and a config never needs this much.
const maxSteps = 100000

// Errorf records a problem at the value found under path, or at the top of the
// file when that path is absent (a required key that is missing, say).
func (d *Doc) Errorf(path, format string, args ...any) {
	pos, ok := d.Paths[path]
	if !ok {
		pos = d.nearest(path)
	}
	d.errs = append(d.errs, Problem{File: d.File, Pos: pos, Msg: fmt.Sprintf(format, args...)})
}

// Problem is a problem at the value found under path (as Errorf places
// it), without recording it: for warnings.
func (d *Doc) Problem(path, format string, args ...any) Problem {
	pos, ok := d.Paths[path]
	if !ok {
		pos = d.nearest(path)
	}
	return Problem{File: d.File, Pos: pos, Msg: fmt.Sprintf(format, args...)}
}

// nearest finds the closest existing parent of path, so "a missing key" points
// at the section it belongs in.
func (d *Doc) nearest(path string) Pos {
	for path != "" {
		i := strings.LastIndexAny(path, ".[")
		if i < 0 {
			break
		}
		path = path[:i]
		if pos, ok := d.Paths[path]; ok {
			return pos
		}
	}
	return Pos{Line: 1, Column: 1}
}

// Err returns the problems recorded so far, sorted by position, or nil.
func (d *Doc) Err() error {
	if len(d.errs) == 0 {
		return nil
	}
	sort.SliceStable(d.errs, func(i, j int) bool {
		a, b := d.errs[i].Pos, d.errs[j].Pos
		if a.Line != b.Line {
			return a.Line < b.Line
		}
		return a.Column < b.Column
	})
	return d.errs
}

// Decode parses data into out (a pointer to a struct). Unknown keys, duplicate
// keys and values of the wrong type are all reported; decoding continues past
// each so the caller sees every problem. The returned Doc lets the caller add
// validation errors at the right places; its Err includes decode problems.
func Decode(file string, data []byte, out any) *Doc {
	d := &Doc{File: file, Paths: map[string]Pos{}}
	var root yaml.Node
	dec := yaml.NewDecoder(bytes.NewReader(data))
	if err := dec.Decode(&root); err != nil {
		if errors.Is(err, io.EOF) {
			d.errs = append(d.errs, Problem{File: file, Pos: Pos{1, 1}, Msg: "file is empty"})
			return d
		}
		d.errs = append(d.errs, syntaxProblem(file, err))
		return d
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); err == nil {
		d.errs = append(d.errs, Problem{File: file, Pos: Pos{extra.Line, extra.Column}, Msg: "only one YAML document is allowed"})
	}
	d.Root = &root
	node := &root
	if node.Kind == yaml.DocumentNode && len(node.Content) == 1 {
		node = node.Content[0]
	}
	d.walk(node, reflect.ValueOf(out).Elem(), "")
	return d
}

var lineRE = regexp.MustCompile(`^yaml: line (\d+): (.*)$`)

func syntaxProblem(file string, err error) Problem {
	msg := err.Error()
	if m := lineRE.FindStringSubmatch(msg); m != nil {
		var line int
		fmt.Sscan(m[1], &line)
		return Problem{File: file, Pos: Pos{line, 1}, Msg: m[2]}
	}
	return Problem{File: file, Pos: Pos{1, 1}, Msg: strings.TrimPrefix(msg, "yaml: ")}
}

var unmarshalerType = reflect.TypeOf((*yaml.Unmarshaler)(nil)).Elem()

func (d *Doc) add(n *yaml.Node, format string, args ...any) {
	d.errs = append(d.errs, Problem{File: d.File, Pos: Pos{n.Line, n.Column}, Msg: fmt.Sprintf(format, args...)})
}

func (d *Doc) walk(n *yaml.Node, v reflect.Value, path string) {
	d.steps++
	if d.steps == maxSteps {
		d.add(n, "document too large or too deeply aliased")
	}
	if d.steps >= maxSteps {
		return
	}
	if path != "" {
		d.Paths[path] = Pos{n.Line, n.Column}
	}
	if n.Kind == yaml.AliasNode {
		n = n.Alias
	}
	// Types with their own YAML decoding (durations, secrets, enums) decide for themselves.
	if v.CanAddr() && v.Addr().Type().Implements(unmarshalerType) {
		d.leaf(n, v, path)
		return
	}
	switch v.Kind() {
	case reflect.Struct:
		d.walkStruct(n, v, path)
	case reflect.Slice:
		if n.Kind == yaml.ScalarNode && n.Tag == "!!null" {
			return
		}
		if n.Kind != yaml.SequenceNode {
			d.add(n, "%s: expected a list", name(path))
			return
		}
		s := reflect.MakeSlice(v.Type(), len(n.Content), len(n.Content))
		for i, c := range n.Content {
			d.walk(c, s.Index(i), fmt.Sprintf("%s[%d]", path, i))
		}
		v.Set(s)
	case reflect.Map:
		if n.Kind == yaml.ScalarNode && n.Tag == "!!null" {
			return
		}
		if n.Kind != yaml.MappingNode {
			d.add(n, "%s: expected a mapping", name(path))
			return
		}
		m := reflect.MakeMapWithSize(v.Type(), len(n.Content)/2)
		seen := map[string]bool{}
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, val := n.Content[i], n.Content[i+1]
			if seen[k.Value] {
				d.add(k, "%s: duplicate key %q", name(path), k.Value)
				continue
			}
			seen[k.Value] = true
			kv := reflect.New(v.Type().Key()).Elem()
			if err := k.Decode(kv.Addr().Interface()); err != nil {
				d.add(k, "%s: bad key %q", name(path), k.Value)
				continue
			}
			ev := reflect.New(v.Type().Elem()).Elem()
			d.walk(val, ev, join(path, k.Value))
			m.SetMapIndex(kv, ev)
		}
		v.Set(m)
	case reflect.Pointer:
		if n.Kind == yaml.ScalarNode && n.Tag == "!!null" {
			return
		}
		p := reflect.New(v.Type().Elem())
		d.walk(n, p.Elem(), path)
		v.Set(p)
	default:
		d.leaf(n, v, path)
	}
}

func (d *Doc) walkStruct(n *yaml.Node, v reflect.Value, path string) {
	if n.Kind == yaml.ScalarNode && n.Tag == "!!null" {
		return
	}
	if n.Kind != yaml.MappingNode {
		d.add(n, "%s: expected a mapping", name(path))
		return
	}
	fields := structFields(v.Type())
	seen := map[string]bool{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, val := n.Content[i], n.Content[i+1]
		if k.Kind != yaml.ScalarNode {
			d.add(k, "%s: keys must be plain names", name(path))
			continue
		}
		if seen[k.Value] {
			d.add(k, "%s: duplicate key %q", name(path), k.Value)
			continue
		}
		seen[k.Value] = true
		idx, ok := fields[k.Value]
		if !ok {
			d.add(k, "unknown key %q%s%s", k.Value, inSection(path), suggest(k.Value, fields))
			continue
		}
		d.Paths[join(path, k.Value)] = Pos{val.Line, val.Column}
		d.walk(val, v.FieldByIndex(idx), join(path, k.Value))
	}
}

func (d *Doc) leaf(n *yaml.Node, v reflect.Value, path string) {
	if n.Kind != yaml.ScalarNode {
		d.add(n, "%s: expected a single value, not a %s", name(path), kindName(n.Kind))
		return
	}
	tmp := reflect.New(v.Type())
	if err := n.Decode(tmp.Interface()); err != nil {
		d.add(n, "%s: %s", name(path), cleanTypeError(err, n))
		return
	}
	v.Set(tmp.Elem())
}

var typeErrRE = regexp.MustCompile(`line \d+: `)

func cleanTypeError(err error, n *yaml.Node) string {
	var te *yaml.TypeError
	if errors.As(err, &te) && len(te.Errors) > 0 {
		msg := typeErrRE.ReplaceAllString(te.Errors[0], "")
		if strings.HasPrefix(msg, "cannot unmarshal") {
			return fmt.Sprintf("%q is not a valid value here", n.Value)
		}
		return msg
	}
	return strings.TrimPrefix(err.Error(), "yaml: ")
}

func kindName(k yaml.Kind) string {
	switch k {
	case yaml.MappingNode:
		return "mapping"
	case yaml.SequenceNode:
		return "list"
	}
	return "value"
}

func structFields(t reflect.Type) map[string][]int {
	out := map[string][]int{}
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		if !f.IsExported() {
			continue
		}
		tag := f.Tag.Get("yaml")
		key, opts, _ := strings.Cut(tag, ",")
		if key == "-" {
			continue
		}
		if strings.Contains(opts, "inline") && f.Type.Kind() == reflect.Struct {
			for k, idx := range structFields(f.Type) {
				out[k] = append([]int{i}, idx...)
			}
			continue
		}
		if key == "" {
			key = strings.ToLower(f.Name)
		}
		out[key] = []int{i}
	}
	return out
}

func join(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

func name(path string) string {
	if path == "" {
		return "document"
	}
	return path
}

func inSection(path string) string {
	if path == "" {
		return ""
	}
	return " in " + path
}

// suggest names the closest known key, for typos like "lisen".
func suggest(key string, fields map[string][]int) string {
	best, bestD := "", 3
	for k := range fields {
		if d := distance(key, k); d < bestD || (d == bestD && best != "" && k < best) {
			best, bestD = k, d
		}
	}
	if best == "" {
		return ""
	}
	return fmt.Sprintf(" (did you mean %q?)", best)
}

func distance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			c := 1
			if a[i-1] == b[j-1] {
				c = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+c)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}
