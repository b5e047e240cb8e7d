package config

import (
	"cmp"
	"fmt"
	"slices"
	"strings"
)

// Error is one problem in a pipelines file, located by file, line and key
// path so that a user can go straight to it. It never carries a secret
// value: messages quote at most the text written in the file, and never for
// secret keys.
type Error struct {
	File string
	Line int    // 1-based; 0 when the YAML parser gave no position
	Path string // key path such as pipelines[0].destinations[1].driver; "" for the whole file
	Msg  string
}

// Error formats as "file:line: path: message".
func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString(e.File)
	if e.Line > 0 {
		fmt.Fprintf(&b, ":%d", e.Line)
	}
	b.WriteString(": ")
	if e.Path != "" {
		b.WriteString(e.Path)
		b.WriteString(": ")
	}
	b.WriteString(e.Msg)
	return b.String()
}

// Errors is every problem found in one pipelines file, in line order. Parse
// reports them all at once so that a user fixes the file in one round.
type Errors []*Error

// Error prints one problem per line.
func (es Errors) Error() string {
	lines := make([]string, len(es))
	for i, e := range es {
		lines[i] = e.Error()
	}
	return strings.Join(lines, "\n")
}

// Unwrap lets errors.As find each *Error.
func (es Errors) Unwrap() []error {
	out := make([]error, len(es))
	for i, e := range es {
		out[i] = e
	}
	return out
}

// sortErrors orders problems as they appear in the file; problems on the
// same line keep the order in which they were found.
func sortErrors(es Errors) {
	slices.SortStableFunc(es, func(a, b *Error) int { return cmp.Compare(a.Line, b.Line) })
}

// suggest returns the candidate closest to s when it is close enough to be a
// typo ("drver" → "driver", "graph-url" → "graph_url"), or "".
func suggest(s string, candidates []string) string {
	ns := normalizeKey(s)
	best, bestDist := "", -1
	for _, c := range candidates {
		if ns == normalizeKey(c) {
			return c
		}
		limit := 1
		if len(c) > 7 {
			limit = 2
		}
		if d := levenshtein(s, c); d <= limit && (bestDist < 0 || d < bestDist) {
			best, bestDist = c, d
		}
	}
	return best
}

// didYouMean formats suggest's answer as a message suffix.
func didYouMean(s string, candidates []string) string {
	if c := suggest(s, candidates); c != "" {
		return fmt.Sprintf(" (did you mean %q?)", c)
	}
	return ""
}

// normalizeKey folds case and separators so that graphURL, graph-url and
// graph_url compare equal.
func normalizeKey(s string) string {
	s = strings.ToLower(s)
	return strings.NewReplacer("_", "", "-", "", " ", "").Replace(s)
}

func levenshtein(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}
