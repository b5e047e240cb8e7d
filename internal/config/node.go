package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"go.yaml.in/yaml/v3"
)

// decoder walks a yaml.Node tree (rather than unmarshalling into structs) so
// that every problem can name its line and key path, unknown keys can be
// told apart from misplaced ones, and all problems are collected.
type decoder struct {
	file string
	env  func(string) (string, bool)
	errs Errors
}

func (d *decoder) errorf(line int, path, format string, args ...any) {
	d.errs = append(d.errs, &Error{File: d.file, Line: line, Path: path, Msg: fmt.Sprintf(format, args...)})
}

// yamlLine picks the position out of the YAML library's messages
// ("yaml: line 3: mapping values are not allowed in this context").
var yamlLine = regexp.MustCompile(`^yaml: line (\d+): (.*)$`)

// yamlParserProblems are the messages of the library's parser (as opposed to
// its scanner). For them it reports the 0-based line where the enclosing
// construct started, so one is added to point at the right line.
var yamlParserProblems = []string{
	"did not find expected ',' or ']'",
	"did not find expected ',' or '}'",
	"did not find expected '-' indicator",
	"did not find expected <document start>",
	"did not find expected <stream-start>",
	"did not find expected key",
	"did not find expected node content",
	"found duplicate %TAG directive",
	"found duplicate %YAML directive",
	"found incompatible YAML document",
	"found undefined tag handle",
}

// yamlError turns a YAML syntax error into an Error with the best line we
// can find: the library omits it for some problems and gives it 0-based for
// others.
func (d *decoder) yamlError(err error, data []byte) {
	msg := strings.TrimPrefix(err.Error(), "yaml: ")
	line := 0
	if m := yamlLine.FindStringSubmatch(err.Error()); m != nil {
		line, _ = strconv.Atoi(m[1])
		msg = m[2]
		if slices.Contains(yamlParserProblems, msg) {
			line++
		}
	} else {
		line = problemLine(msg, data)
	}
	if strings.Contains(msg, "tab character") {
		// The library reports the line before; the first line indented
		// with a tab is the one to fix.
		for i, l := range bytes.Split(data, []byte("\n")) {
			if indent := l[:len(l)-len(bytes.TrimLeft(l, " \t"))]; bytes.IndexByte(indent, '\t') >= 0 {
				line = i + 1
				break
			}
		}
	}
	// The end of the input is the last line, not the one after it.
	last := bytes.Count(data, []byte("\n"))
	if len(data) > 0 && data[len(data)-1] != '\n' {
		last++
	}
	d.errorf(max(min(line, last), 1), "", "invalid YAML: %s", msg)
}

// problemLine finds the line of a YAML error that came without one: a bad
// byte, or an alias to an anchor that does not exist. It returns 1 when it
// cannot tell, because the library leaves the line out for problems on the
// first line.
func problemLine(msg string, data []byte) int {
	if name, ok := strings.CutPrefix(msg, "unknown anchor '"); ok {
		name, _, _ = strings.Cut(name, "' referenced")
		if i := bytes.Index(data, []byte("*"+name)); i >= 0 {
			return 1 + bytes.Count(data[:i], []byte("\n"))
		}
		return 1
	}
	line := 1
	for i := 0; i < len(data); {
		r, size := utf8.DecodeRune(data[i:])
		if r == utf8.RuneError && size <= 1 || r < 0x20 && r != '\t' && r != '\n' && r != '\r' || r == 0x7f {
			return line
		}
		if r == '\n' {
			line++
		}
		i += size
	}
	return 1
}

// document parses data into the root node of its single YAML document, or
// reports why it cannot and returns nil.
func (d *decoder) document(data []byte) *yaml.Node {
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var doc yaml.Node
	if err := dec.Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) {
			d.errorf(1, "pipelines", "the file is empty; at least one pipeline is required")
		} else {
			d.yamlError(err, data)
		}
		return nil
	}
	// A second document would be silently ignored by a plain Unmarshal.
	var extra yaml.Node
	switch err := dec.Decode(&extra); {
	case err == nil:
		if len(extra.Content) > 0 && !isNull(extra.Content[0]) {
			d.errorf(extra.Line, "", "the file holds more than one YAML document (---); put all pipelines in one")
		}
	case !errors.Is(err, io.EOF):
		d.yamlError(err, data)
	}
	root := &doc
	if root.Kind == yaml.DocumentNode {
		if len(root.Content) == 0 {
			d.errorf(1, "pipelines", "the file is empty; at least one pipeline is required")
			return nil
		}
		root = root.Content[0]
	}
	root = resolve(root)
	if isNull(root) {
		// An implicit null has the position of whatever follows it.
		line := max(doc.Line, 1)
		if root != nil && root.Value != "" {
			line = max(root.Line, 1)
		}
		d.errorf(line, "pipelines", "the file is empty; at least one pipeline is required")
		return nil
	}
	return root
}

// resolve follows aliases (*name) to the anchored node.
func resolve(n *yaml.Node) *yaml.Node {
	for i := 0; n != nil && n.Kind == yaml.AliasNode && n.Alias != nil && i < 100; i++ {
		n = n.Alias
	}
	return n
}

func isNull(n *yaml.Node) bool {
	return n == nil || n.Kind == 0 || (n.Kind == yaml.ScalarNode && n.ShortTag() == "!!null")
}

// kindName describes what a node holds, for "expected X, got Y" messages.
// It never includes the node's value.
func kindName(n *yaml.Node) string {
	switch {
	case isNull(n):
		return "nothing (null)"
	case n.Kind == yaml.MappingNode:
		return "a mapping"
	case n.Kind == yaml.SequenceNode:
		return "a list"
	case n.Kind == yaml.ScalarNode:
		switch n.ShortTag() {
		case "!!int", "!!float":
			return "a number"
		case "!!bool":
			return "a boolean"
		}
		return "a string"
	}
	return "an unsupported YAML node"
}

// quote shows a value the user wrote, shortened, for messages about
// non-secret keys. Callers pass the text as written in the file (before
// ${VAR} expansion), so a variable's value never reaches a message.
func quote(raw string) string {
	const maxLen = 60
	if utf8.RuneCountInString(raw) > maxLen {
		raw = string([]rune(raw)[:maxLen]) + "…"
	}
	return strconv.Quote(raw)
}

func joinPath(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

// entry is one key of a mapping and its (alias-resolved) value.
type entry struct {
	key *yaml.Node
	val *yaml.Node
}

// obj is a YAML mapping whose keys have been checked. Its getters report
// wrong-typed values and return the Go value with ok=false when the key is
// absent, null or bad, so callers only add their own rules.
type obj struct {
	d     *decoder
	path  string
	line  int // where "required" problems point: the line of the key or list item holding the mapping
	m     map[string]entry
	order []string
	typos map[string]bool // keys that an unknown key was suggested as
}

// object checks that n is a mapping whose keys are all in keys. A key that
// is not, gets misplaced(key) as its message when that says something
// (e.g. "url belongs to http destinations"), else "unknown key" with a
// suggestion. It returns nil when n is not a mapping.
func (d *decoder) object(n *yaml.Node, path string, line int, keys []string, misplaced func(string) string) *obj {
	n = resolve(n)
	if n == nil || n.Kind != yaml.MappingNode {
		d.errorf(line, path, "expected a mapping, got %s", kindName(n))
		return nil
	}
	o := &obj{d: d, path: path, line: line, m: map[string]entry{}, typos: map[string]bool{}}
	firstLine := map[string]int{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := resolve(n.Content[i]), resolve(n.Content[i+1])
		if k == nil || k.Kind != yaml.ScalarNode {
			d.errorf(n.Content[i].Line, path, "keys must be plain strings, got %s", kindName(k))
			continue
		}
		name := k.Value
		kp := joinPath(path, name)
		if first, dup := firstLine[name]; dup {
			d.errorf(k.Line, kp, "duplicate key (first at line %d)", first)
			continue
		}
		firstLine[name] = k.Line
		if !slices.Contains(keys, name) {
			msg := "unknown key"
			if c := suggest(name, keys); c != "" {
				msg += fmt.Sprintf(" (did you mean %q?)", c)
				o.typos[c] = true
			}
			if name == "<<" {
				msg = "YAML merge keys are not supported; write the settings out"
			} else if misplaced != nil {
				if m := misplaced(name); m != "" {
					msg = m
				}
			}
			d.errorf(k.Line, kp, "%s", msg)
			continue
		}
		o.m[name] = entry{key: k, val: v}
		o.order = append(o.order, name)
	}
	return o
}

// restrict reports and drops keys that are valid in general but not here,
// e.g. url on a sql destination, once the object's type is known.
func (o *obj) restrict(allowed []string, why func(key string) string) {
	for _, k := range o.order {
		if _, ok := o.m[k]; !ok || slices.Contains(allowed, k) {
			continue
		}
		o.d.errorf(o.m[k].key.Line, joinPath(o.path, k), "%s", why(k))
		delete(o.m, k)
	}
}

func (o *obj) keyPath(k string) string { return joinPath(o.path, k) }

// lineOf is the line of key k, or of the object when k is absent.
func (o *obj) lineOf(k string) int {
	if e, ok := o.m[k]; ok {
		return e.key.Line
	}
	return o.line
}

func (o *obj) errorf(k, format string, args ...any) {
	o.d.errorf(o.lineOf(k), o.keyPath(k), format, args...)
}

// missing reports that required key k is absent, unless an unknown key was
// already reported as a likely typo of k: one mistake, one message.
func (o *obj) missing(k, format string, args ...any) {
	if !o.typos[k] {
		o.errorf(k, format, args...)
	}
}

// present reports whether k is set to something other than null.
func (o *obj) present(k string) bool {
	e, ok := o.m[k]
	return ok && !isNull(e.val)
}

// scalarAt expands the scalar n; want names the expected type for messages.
// It returns the expanded value and the text as written.
func (d *decoder) scalarAt(n *yaml.Node, line int, path, want string) (val, raw string, ok bool) {
	if n.Kind != yaml.ScalarNode {
		d.errorf(line, path, "expected %s, got %s", want, kindName(n))
		return "", "", false
	}
	val, problems := expand(n.Value, d.env)
	for _, p := range problems {
		d.errorf(line, path, "%s", p)
	}
	return val, n.Value, len(problems) == 0
}

// scalar returns k's expanded value and its text as written.
func (o *obj) scalar(k, want string) (val, raw string, ok bool) {
	if !o.present(k) {
		return "", "", false
	}
	e := o.m[k]
	return o.d.scalarAt(e.val, e.key.Line, o.keyPath(k), want)
}

// str returns k as a string; ok is false when k is absent, null or bad.
func (o *obj) str(k string) (string, bool) {
	v, _, ok := o.scalar(k, "a string")
	return v, ok
}

// need is str for a required, non-empty key.
func (o *obj) need(k string) (string, bool) {
	if !o.present(k) {
		o.missing(k, "required")
		return "", false
	}
	v, ok := o.str(k)
	if ok && strings.TrimSpace(v) == "" {
		o.errorf(k, "must not be empty")
		return "", false
	}
	return v, ok
}

// optional is str for a key that may be absent but not empty when given.
func (o *obj) optional(k string) (string, bool) {
	v, ok := o.str(k)
	if ok && strings.TrimSpace(v) == "" {
		o.errorf(k, "must not be empty when given (remove the key instead)")
		return "", false
	}
	return v, ok
}

// enum returns k's value, which must be one of allowed, or def when absent.
func (o *obj) enum(k string, allowed []string, def string) (string, bool) {
	v, raw, ok := o.scalar(k, "a string")
	if !ok {
		return def, !o.present(k)
	}
	if !slices.Contains(allowed, v) {
		o.errorf(k, "%s is not one of %s%s", quote(raw), strings.Join(allowed, ", "), didYouMean(v, allowed))
		return def, false
	}
	return v, true
}

// integer returns k as an int ≥ minVal, or def when absent.
func (o *obj) integer(k string, def, minVal int) int {
	v, raw, ok := o.scalar(k, "an integer")
	if !ok {
		return def
	}
	n, err := strconv.Atoi(strings.TrimSpace(v))
	if err != nil {
		o.errorf(k, "expected an integer, got %s", quote(raw))
		return def
	}
	if n < minVal {
		o.errorf(k, "must be at least %d, got %d", minVal, n)
		return def
	}
	return n
}

// boolean returns k as a bool, or false when absent.
func (o *obj) boolean(k string) bool {
	v, raw, ok := o.scalar(k, "true or false")
	if !ok {
		return false
	}
	switch v {
	case "true", "True", "TRUE":
		return true
	case "false", "False", "FALSE":
		return false
	}
	o.errorf(k, "expected true or false, got %s", quote(raw))
	return false
}

// duration returns k as a positive Go duration ("30s", "2m"), or def when absent.
func (o *obj) duration(k string, def time.Duration) time.Duration {
	v, raw, ok := o.scalar(k, "a duration")
	if !ok {
		return def
	}
	dur, err := time.ParseDuration(strings.TrimSpace(v))
	if err != nil {
		o.errorf(k, "%s is not a duration: write a number with a unit, such as 30s, 2m or 1m30s", quote(raw))
		return def
	}
	if dur <= 0 {
		o.errorf(k, "must be positive, got %s", quote(raw))
		return def
	}
	return dur
}

// list returns k's items (alias-resolved); ok is false when k is absent,
// null or not a list.
func (o *obj) list(k string) ([]*yaml.Node, bool) {
	if !o.present(k) {
		return nil, false
	}
	n := o.m[k].val
	if n.Kind != yaml.SequenceNode {
		o.errorf(k, "expected a list, got %s", kindName(n))
		return nil, false
	}
	items := make([]*yaml.Node, len(n.Content))
	for i, c := range n.Content {
		items[i] = resolve(c)
	}
	return items, true
}

// stringList returns k as a list of non-empty strings.
func (o *obj) stringList(k string) ([]string, bool) {
	items, ok := o.list(k)
	if !ok {
		return nil, false
	}
	out := make([]string, 0, len(items))
	for i, it := range items {
		path := fmt.Sprintf("%s[%d]", o.keyPath(k), i)
		if isNull(it) {
			o.d.errorf(it.Line, path, "expected a string, got nothing (null)")
			ok = false
			continue
		}
		v, _, good := o.d.scalarAt(it, it.Line, path, "a string")
		if good && strings.TrimSpace(v) == "" {
			o.d.errorf(it.Line, path, "must not be empty")
			good = false
		}
		if !good {
			ok = false
			continue
		}
		out = append(out, v)
	}
	return out, ok
}

// stringMap returns k as a mapping of string keys (as written) to expanded
// string values, with the line of each key. It never quotes values: headers
// may carry credentials.
func (o *obj) stringMap(k string) (map[string]string, map[string]int, bool) {
	if !o.present(k) {
		return nil, nil, false
	}
	n := o.m[k].val
	if n.Kind != yaml.MappingNode {
		o.errorf(k, "expected a mapping, got %s", kindName(n))
		return nil, nil, false
	}
	out, lines := map[string]string{}, map[string]int{}
	ok := true
	for i := 0; i+1 < len(n.Content); i += 2 {
		kn, vn := resolve(n.Content[i]), resolve(n.Content[i+1])
		if kn == nil || kn.Kind != yaml.ScalarNode {
			o.d.errorf(n.Content[i].Line, o.keyPath(k), "keys must be plain strings, got %s", kindName(kn))
			ok = false
			continue
		}
		path := joinPath(o.keyPath(k), kn.Value)
		if first, dup := lines[kn.Value]; dup {
			o.d.errorf(kn.Line, path, "duplicate key (first at line %d)", first)
			ok = false
			continue
		}
		lines[kn.Value] = kn.Line
		if isNull(vn) {
			o.d.errorf(kn.Line, path, "expected a string, got nothing (null)")
			ok = false
			continue
		}
		v, _, good := o.d.scalarAt(vn, kn.Line, path, "a string")
		if !good {
			ok = false
			continue
		}
		out[kn.Value] = v
	}
	return out, lines, ok
}

// child returns k as a nested object, or nil when absent, null or bad.
func (o *obj) child(k string, keys []string, misplaced func(string) string) *obj {
	if !o.present(k) {
		return nil
	}
	return o.d.object(o.m[k].val, o.keyPath(k), o.m[k].key.Line, keys, misplaced)
}
