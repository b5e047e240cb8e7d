// Package sinktest is the conformance suite every sink.Sink must pass, as
// Watermill's pubsub/tests is for its backends: ordering, idempotent
// re-delivery, the seq guard, deletes, schema growth, replace semantics,
// failure classification, cancellation, large batches and stale epochs.
// It owns no sink and must never special-case one: a backend only describes
// itself through Harness and Capabilities.
package sinktest

import (
	"encoding/json"
	"fmt"
	"math"
	"reflect"
	"sort"
	"strings"
	"testing"

	"github.com/sluicehq/sluice/internal/changelog"
	"github.com/sluicehq/sluice/internal/sink"
)

// Harness builds destinations for the suite. Every subtest gets a fresh
// destination of its own, so implementations may run subtests in parallel
// (see Capabilities.Parallel).
type Harness interface {
	// Capabilities declares what the sink and its test destination can do;
	// subtests that need a missing capability are skipped with the reason.
	Capabilities() Capabilities
	// NewDestination creates a fresh, empty destination and registers its
	// cleanup with t.
	NewDestination(t *testing.T) Destination
}

// Capabilities declares optional behaviour. The zero value runs the core
// subtests only.
type Capabilities struct {
	// Epochs: Apply refuses a batch whose Epoch is older than the newest it
	// has seen, with ErrStaleEpoch and nothing applied (SQL sinks keep the
	// epoch in the destination, Invariant 5).
	Epochs bool
	// Transient: the Destination implements Breaker, so the suite can make
	// the destination fail as a whole (outage) and recover.
	Transient bool
	// Permanent: the Destination implements Rejecter, producing records the
	// destination refuses for good.
	Permanent bool
	// LargeBatch is the record count of the large-batch subtest; 0 means
	// 20,000.
	LargeBatch int
	// Parallel lets subtests run with t.Parallel.
	Parallel bool
}

// Destination is one fresh destination under test.
type Destination interface {
	// NewSink opens a sink writing to this destination. The suite may open
	// several on one destination (an old and a new drain); it closes them.
	NewSink(t *testing.T) sink.Sink
	// State observes the destination folded by key: for a table its rows;
	// for an event stream the received events, folded so that the event with
	// the highest seq per key wins (a receiver that keeps the last event it
	// got would regress on re-delivery — that is the receiver's job, not the
	// sink's). A deleted key may be absent or present with Deleted set.
	// Field values are compared after normalisation (see Equal).
	State(t *testing.T) map[string]Observed
}

// Breaker is implemented by destinations that can fail as a whole.
type Breaker interface {
	// Break makes every Apply fail with a transient error (the database
	// down, the endpoint answering 503) until Heal.
	Break(t *testing.T)
	Heal(t *testing.T)
}

// Rejecter is implemented by destinations that can name a record they will
// refuse for good (a value the database rejects, a receiver's 422).
type Rejecter interface {
	// BadRecord returns an upsert with exactly this seq and key that the
	// destination rejects (so the bad part must be in its fields: the key
	// may be one that good records also use). The suite fills in TS.
	BadRecord(seq int64, key string) changelog.Record
}

// Observed is what the destination holds for one key.
type Observed struct {
	Seq     int64
	Deleted bool
	// Fields as JSON-decoded values (string, float64, bool, nil, []any,
	// map[string]any). A destination storing arrays and objects as JSON text
	// may return that text; nil and absent are the same.
	Fields map[string]any
}

// Fold is the state a correct sink leaves after applying recs, in any order
// and any number of times: per key, the record with the highest seq.
func Fold(recs ...[]changelog.Record) map[string]Observed {
	best := map[string]*changelog.Record{}
	for _, rs := range recs {
		for i := range rs {
			r := &rs[i]
			if cur, ok := best[r.Key]; !ok || r.Seq > cur.Seq {
				best[r.Key] = r
			}
		}
	}
	out := make(map[string]Observed, len(best))
	for k, r := range best {
		o := Observed{Seq: r.Seq, Deleted: r.Op == changelog.OpDelete}
		if !o.Deleted {
			o.Fields = map[string]any{}
			if len(r.Fields) > 0 {
				if err := json.Unmarshal(r.Fields, &o.Fields); err != nil {
					panic(fmt.Sprintf("sinktest: record seq %d has bad fields: %v", r.Seq, err))
				}
			}
		}
		out[k] = o
	}
	return out
}

// Diff compares an observed state with the expected one and returns the
// differences (at most max of them), empty when they agree. Deleted keys in
// want may be absent from got or present with Deleted (and then the seq of
// the delete).
func Diff(want, got map[string]Observed, max int) []string {
	var diffs []string
	add := func(format string, args ...any) bool {
		diffs = append(diffs, fmt.Sprintf(format, args...))
		return len(diffs) < max
	}
	keys := make([]string, 0, len(want)+len(got))
	for k := range want {
		keys = append(keys, k)
	}
	for k := range got {
		if _, ok := want[k]; !ok {
			keys = append(keys, k)
		}
	}
	sort.Strings(keys)
	for _, k := range keys {
		w, inWant := want[k]
		g, inGot := got[k]
		switch {
		case !inWant:
			if !g.Deleted && !add("key %q: unexpected live row/event (seq %d)", k, g.Seq) {
				return diffs
			}
		case w.Deleted:
			if inGot && !g.Deleted && !add("key %q: want deleted at seq %d, got live seq %d %v", k, w.Seq, g.Seq, g.Fields) {
				return diffs
			}
			if inGot && g.Deleted && g.Seq != w.Seq && !add("key %q: deleted with seq %d, want %d", k, g.Seq, w.Seq) {
				return diffs
			}
		case !inGot:
			if !add("key %q: missing, want seq %d", k, w.Seq) {
				return diffs
			}
		case g.Deleted:
			if !add("key %q: deleted (seq %d), want live seq %d", k, g.Seq, w.Seq) {
				return diffs
			}
		default:
			if g.Seq != w.Seq && !add("key %q: seq %d, want %d", k, g.Seq, w.Seq) {
				return diffs
			}
			for _, f := range unionKeys(w.Fields, g.Fields) {
				if !Equal(w.Fields[f], g.Fields[f]) && !add("key %q field %q: got %s, want %s", k, f, show(g.Fields[f]), show(w.Fields[f])) {
					return diffs
				}
			}
		}
	}
	return diffs
}

func unionKeys(a, b map[string]any) []string {
	var ks []string
	for k := range a {
		ks = append(ks, k)
	}
	for k := range b {
		if _, ok := a[k]; !ok {
			ks = append(ks, k)
		}
	}
	sort.Strings(ks)
	return ks
}

func show(v any) string {
	s := fmt.Sprintf("%#v", v)
	if len(s) > 80 {
		s = s[:77] + "..."
	}
	return s
}

// Equal compares an expected JSON-decoded value with an observed one,
// forgiving representation only: any Go number equals the same float64,
// []byte equals its string, and an array or object equals JSON text that
// decodes to it (SQL columns hold them as text).
func Equal(want, got any) bool {
	got = normalize(got)
	switch w := want.(type) {
	case nil:
		return got == nil
	case float64:
		g, ok := got.(float64)
		return ok && (g == w || math.Abs(g-w) <= 1e-9*math.Abs(w))
	case []any, map[string]any:
		if s, ok := got.(string); ok {
			var v any
			if json.Unmarshal([]byte(s), &v) != nil {
				return false
			}
			got = v
		}
		return reflect.DeepEqual(want, got)
	}
	return reflect.DeepEqual(want, got)
}

func normalize(v any) any {
	switch x := v.(type) {
	case []byte:
		return string(x)
	case int:
		return float64(x)
	case int32:
		return float64(x)
	case int64:
		return float64(x)
	case float32:
		return float64(x)
	case json.Number:
		f, _ := x.Float64()
		return f
	}
	return v
}

// checkState fails t when the destination's state differs from want.
func checkState(t *testing.T, d Destination, want map[string]Observed) {
	t.Helper()
	got := d.State(t)
	if diffs := Diff(want, got, 10); len(diffs) > 0 {
		t.Fatalf("destination state differs from the fold of applied records (%d keys expected, %d observed):\n  %s",
			len(want), len(got), strings.Join(diffs, "\n  "))
	}
}
