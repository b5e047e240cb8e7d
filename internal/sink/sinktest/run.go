package sinktest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/sluicehq/sluice/internal/changelog"
	"github.com/sluicehq/sluice/internal/sink"
)

// Run runs every conformance subtest against h.
func Run(t *testing.T, h Harness) {
	caps := h.Capabilities()
	tests := []struct {
		name string
		need string // capability the test needs, "" for none
		fn   func(t *testing.T, h Harness, caps Capabilities)
	}{
		{"OrderedApplication", "", testOrdered},
		{"RedeliverSuffix", "", testRedeliverSuffix},
		{"RedeliverOlderPrefix", "", testRedeliverOlderPrefix},
		{"Deletes", "", testDeletes},
		{"SchemaGrowth", "", testSchemaGrowth},
		{"UpsertReplaces", "", testUpsertReplaces},
		{"PermanentFailures", "Permanent", testPermanent},
		{"TransientFailures", "Transient", testTransient},
		{"ContextCancellation", "", testCancel},
		{"LargeBatch", "", testLargeBatch},
		{"StaleEpoch", "Epochs", testStaleEpoch},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if caps.Parallel {
				t.Parallel()
			}
			switch tc.need {
			case "Permanent":
				if !caps.Permanent {
					t.Skip("harness declares no Permanent capability: the destination cannot name a record it rejects")
				}
			case "Transient":
				if !caps.Transient {
					t.Skip("harness declares no Transient capability: the destination cannot be broken and healed")
				}
			case "Epochs":
				if !caps.Epochs {
					t.Skip("harness declares no Epochs capability: the sink does not store epochs")
				}
			}
			tc.fn(t, h, caps)
		})
	}
}

// gen makes deterministic records with consecutive seqs.
type gen struct {
	seq int64
	ts  time.Time
	rnd *rand.Rand
}

func newGen() *gen {
	return &gen{ts: time.Date(2026, 11, 25, 8, 0, 0, 0, time.UTC), rnd: rand.New(rand.NewPCG(1, 2))}
}

func (g *gen) next() (int64, time.Time) {
	g.seq++
	g.ts = g.ts.Add(time.Millisecond)
	return g.seq, g.ts
}

// upsert makes an upsert of key with fields (plus "id", as Graph sends it).
func (g *gen) upsert(key string, fields map[string]any) changelog.Record {
	seq, ts := g.next()
	f := map[string]any{"id": key}
	for k, v := range fields {
		f[k] = v
	}
	raw, err := json.Marshal(f)
	if err != nil {
		panic(err)
	}
	return changelog.Record{Seq: seq, TS: ts, Op: changelog.OpUpsert, Key: key, Fields: raw,
		Source: changelog.Source{Site: "contoso.sharepoint.com:/sites/test", List: "Items"}}
}

func (g *gen) del(key string) changelog.Record {
	seq, ts := g.next()
	return changelog.Record{Seq: seq, TS: ts, Op: changelog.OpDelete, Key: key,
		Source: changelog.Source{Site: "contoso.sharepoint.com:/sites/test", List: "Items"}}
}

// item makes typical SharePoint fields: text, number, boolean, a multi-choice
// array and a hyperlink object; some are omitted, as Graph omits empty ones.
func (g *gen) item(key string) map[string]any {
	f := map[string]any{
		"Title":  fmt.Sprintf("PO-%s-%d", key, g.rnd.IntN(1000)),
		"Amount": float64(g.rnd.IntN(1_000_000)) / 100,
	}
	if g.rnd.IntN(3) > 0 {
		f["Done"] = g.rnd.IntN(2) == 0
	}
	if g.rnd.IntN(3) == 0 {
		f["Tags"] = []any{"a", fmt.Sprintf("t%d", g.rnd.IntN(5))}
	}
	if g.rnd.IntN(4) == 0 {
		f["Link"] = map[string]any{"Url": "https://example.com/" + key, "Description": "doc"}
	}
	return f
}

// mixed makes n records over keys k0..k(keys-1) with about delPct% deletes.
func (g *gen) mixed(n, keys, delPct int) []changelog.Record {
	recs := make([]changelog.Record, 0, n)
	for range n {
		key := fmt.Sprintf("k%d", g.rnd.IntN(keys))
		if g.rnd.IntN(100) < delPct {
			recs = append(recs, g.del(key))
		} else {
			recs = append(recs, g.upsert(key, g.item(key)))
		}
	}
	return recs
}

func batch(epoch int64, recs []changelog.Record) sink.Batch {
	return sink.Batch{Pipeline: "conformance", Destination: "dest", Generation: epoch - 1, Epoch: epoch, Records: recs}
}

// apply applies recs in batches of size n and fails t on any error.
func apply(t *testing.T, s sink.Sink, epoch int64, recs []changelog.Record, n int) {
	t.Helper()
	for lo := 0; lo < len(recs); lo += n {
		hi := min(lo+n, len(recs))
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		err := s.Apply(ctx, batch(epoch, recs[lo:hi]))
		cancel()
		if err != nil {
			t.Fatalf("Apply(seq %d..%d, epoch %d): %v", recs[lo].Seq, recs[hi-1].Seq, epoch, err)
		}
	}
}

func openSink(t *testing.T, d Destination) sink.Sink {
	t.Helper()
	s := d.NewSink(t)
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return s
}

func testOrdered(t *testing.T, h Harness, _ Capabilities) {
	d := h.NewDestination(t)
	s := openSink(t, d)
	g := newGen()
	// Within one batch: several versions per key, interleaved, a delete
	// followed by a newer upsert, and an upsert followed by a delete.
	var recs []changelog.Record
	for v := range 4 {
		for k := range 20 {
			key := fmt.Sprintf("k%d", k)
			switch {
			case k%5 == 0 && v == 1:
				recs = append(recs, g.del(key))
			case k%7 == 0 && v == 3:
				recs = append(recs, g.del(key))
			default:
				recs = append(recs, g.upsert(key, g.item(key)))
			}
		}
	}
	apply(t, s, 1, recs, len(recs))
	checkState(t, d, Fold(recs))
	// Across batches: later batches win.
	more := g.mixed(200, 30, 10)
	apply(t, s, 1, more, 23)
	checkState(t, d, Fold(recs, more))
}

func testRedeliverSuffix(t *testing.T, h Harness, _ Capabilities) {
	d := h.NewDestination(t)
	s := openSink(t, d)
	g := newGen()
	recs := g.mixed(300, 40, 15)
	apply(t, s, 1, recs, 50)
	want := Fold(recs)
	checkState(t, d, want)
	// A crash after applying but before the checkpoint, or a replay (a newer
	// epoch), re-delivers any suffix; the state must not change.
	for i, from := range []int{250, 100, 0, 299, 17} {
		apply(t, s, int64(1+i), recs[from:], 37)
		checkState(t, d, want)
	}
}

func testRedeliverOlderPrefix(t *testing.T, h Harness, _ Capabilities) {
	d := h.NewDestination(t)
	s := openSink(t, d)
	g := newGen()
	recs := g.mixed(300, 40, 15)
	apply(t, s, 1, recs, 60)
	want := Fold(recs)
	// Older records after newer ones must not regress any key (seq guard).
	for _, to := range []int{1, 50, 150, 299} {
		apply(t, s, 1, recs[:to], 41)
		checkState(t, d, want)
	}
	// Single old records one by one, newest first.
	for i := 120; i >= 100; i-- {
		apply(t, s, 1, recs[i:i+1], 1)
	}
	checkState(t, d, want)
}

func testDeletes(t *testing.T, h Harness, _ Capabilities) {
	d := h.NewDestination(t)
	s := openSink(t, d)
	g := newGen()
	a1 := g.upsert("a", map[string]any{"Title": "first"})
	b1 := g.upsert("b", map[string]any{"Title": "bee"})
	aDel := g.del("a")
	ghost := g.del("never-seen")
	apply(t, s, 1, []changelog.Record{a1, b1, aDel, ghost}, 10)
	all := []changelog.Record{a1, b1, aDel, ghost}
	checkState(t, d, Fold(all))

	// A re-delivered older upsert never resurrects the row.
	apply(t, s, 1, []changelog.Record{a1}, 1)
	checkState(t, d, Fold(all))
	// Nor does the whole prefix, nor the delete applied twice.
	apply(t, s, 1, []changelog.Record{a1, b1}, 2)
	apply(t, s, 1, []changelog.Record{aDel, aDel}, 1)
	checkState(t, d, Fold(all))

	// Delete in one batch, the older upsert alone in the next.
	bDel := g.del("b")
	all = append(all, bDel)
	apply(t, s, 1, []changelog.Record{bDel}, 1)
	apply(t, s, 1, []changelog.Record{b1}, 1)
	checkState(t, d, Fold(all))

	// A newer upsert does bring a deleted key back.
	a2 := g.upsert("a", map[string]any{"Title": "again"})
	all = append(all, a2)
	apply(t, s, 1, []changelog.Record{a2}, 1)
	apply(t, s, 1, []changelog.Record{a1, aDel}, 2) // and old ones stay old
	checkState(t, d, Fold(all))

	// Delete and re-create within one batch, then delete again.
	c1 := g.upsert("c", map[string]any{"Title": "c1"})
	cDel := g.del("c")
	c2 := g.upsert("c", map[string]any{"Title": "c2"})
	cDel2 := g.del("c")
	all = append(all, c1, cDel, c2, cDel2)
	apply(t, s, 1, []changelog.Record{c1, cDel, c2}, 3)
	apply(t, s, 1, []changelog.Record{cDel2}, 1)
	apply(t, s, 1, []changelog.Record{c1, cDel, c2}, 3)
	checkState(t, d, Fold(all))
}

func testSchemaGrowth(t *testing.T, h Harness, _ Capabilities) {
	d := h.NewDestination(t)
	s := openSink(t, d)
	g := newGen()
	first := []changelog.Record{
		g.upsert("1", map[string]any{"Title": "one"}),
		g.upsert("2", map[string]any{"Title": "two"}),
		g.upsert("bare", nil), // no fields but id
	}
	apply(t, s, 1, first, 10)
	checkState(t, d, Fold(first))
	// New fields appear later: a number, a boolean, a lookup (array), a
	// hyperlink (object), and a field name with a space in it.
	second := []changelog.Record{
		g.upsert("3", map[string]any{"Title": "three", "Quantity": 350.0, "Approved": true}),
		g.upsert("1", map[string]any{"Title": "one again", "Approved": false, "Owners": []any{map[string]any{"LookupId": 10.0, "LookupValue": "Henrietta"}}}),
		g.upsert("4", map[string]any{"Title": "four", "Web Link": map[string]any{"Url": "https://x", "Description": "x"}, "My_x0020_Column": "spaced"}),
	}
	apply(t, s, 1, second, 10)
	checkState(t, d, Fold(first, second))
	// And a re-opened sink (a new process) keeps working with the grown schema.
	s2 := openSink(t, d)
	third := []changelog.Record{g.upsert("2", map[string]any{"Quantity": 7.5, "Later": "x"})}
	apply(t, s2, 1, third, 1)
	checkState(t, d, Fold(first, second, third))
}

func testUpsertReplaces(t *testing.T, h Harness, _ Capabilities) {
	d := h.NewDestination(t)
	s := openSink(t, d)
	g := newGen()
	r1 := g.upsert("x", map[string]any{"Title": "full", "Amount": 12.5, "Tags": []any{"a"}, "Done": true})
	other := g.upsert("y", map[string]any{"Title": "y", "Amount": 1.0})
	apply(t, s, 1, []changelog.Record{r1, other}, 2)
	// Graph omits empty fields: the next version without Amount, Tags and
	// Done means they are now empty.
	r2 := g.upsert("x", map[string]any{"Title": "only title"})
	apply(t, s, 1, []changelog.Record{r2}, 1)
	checkState(t, d, Fold([]changelog.Record{r1, other, r2}))
	// Both in one batch: the last one alone decides.
	r3 := g.upsert("y", map[string]any{"Done": false})
	r4 := g.upsert("y", map[string]any{"Tags": []any{"b", "c"}})
	apply(t, s, 1, []changelog.Record{r3, r4}, 2)
	checkState(t, d, Fold([]changelog.Record{r1, other, r2, r3, r4}))
}

func testPermanent(t *testing.T, h Harness, _ Capabilities) {
	d := h.NewDestination(t)
	rej, ok := d.(Rejecter)
	if !ok {
		t.Fatalf("harness declares Permanent but %T does not implement sinktest.Rejecter", d)
	}
	s := openSink(t, d)
	g := newGen()
	var recs, good []changelog.Record
	badSeqs := map[int64]bool{}
	for i := range 60 {
		key := fmt.Sprintf("k%d", i%15)
		switch i {
		case 7, 31:
			// A bad record whose key has no other record.
			seq, ts := g.next()
			r := rej.BadRecord(seq, fmt.Sprintf("bad%d", i))
			r.TS = ts
			recs = append(recs, r)
			badSeqs[seq] = true
		case 58:
			// A bad record that is the last for a key that has good ones:
			// the good ones still count.
			seq, ts := g.next()
			r := rej.BadRecord(seq, "k3")
			r.TS = ts
			recs = append(recs, r)
			badSeqs[seq] = true
		default:
			var r changelog.Record
			if i%11 == 5 {
				r = g.del(key)
			} else {
				r = g.upsert(key, g.item(key))
			}
			recs = append(recs, r)
			good = append(good, r)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	err := s.Apply(ctx, batch(1, recs))
	re, ok := sink.AsRecordErrors(err)
	if !ok {
		t.Fatalf("Apply with %d bad records: got %v, want *sink.RecordErrors", len(badSeqs), err)
	}
	got := map[int64]bool{}
	for _, f := range re.Failed {
		got[f.Seq] = true
		if f.Reason == "" {
			t.Errorf("record seq %d rejected without a reason", f.Seq)
		}
	}
	if fmt.Sprint(got) != fmt.Sprint(badSeqs) {
		t.Fatalf("rejected seqs %v, want exactly %v (%v)", got, badSeqs, err)
	}
	checkState(t, d, Fold(good))
	// Re-delivering the batch rejects the same records and changes nothing.
	err = s.Apply(ctx, batch(1, recs))
	if re, ok := sink.AsRecordErrors(err); !ok || len(re.Failed) != len(badSeqs) {
		t.Fatalf("re-delivered batch: got %v, want the same %d rejections", err, len(badSeqs))
	}
	checkState(t, d, Fold(good))
}

func testTransient(t *testing.T, h Harness, _ Capabilities) {
	d := h.NewDestination(t)
	br, ok := d.(Breaker)
	if !ok {
		t.Fatalf("harness declares Transient but %T does not implement sinktest.Breaker", d)
	}
	s := openSink(t, d)
	g := newGen()
	first := g.mixed(100, 20, 10)
	apply(t, s, 1, first, 100)
	second := g.mixed(100, 20, 10)
	br.Break(t)
	healed := false
	defer func() {
		if !healed {
			br.Heal(t)
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	err := s.Apply(ctx, batch(1, second))
	if err == nil {
		t.Fatal("Apply on a broken destination succeeded")
	}
	if _, ok := sink.AsRecordErrors(err); ok {
		t.Fatalf("broken destination reported per-record rejections (would dead-letter good data): %v", err)
	}
	if errors.Is(err, sink.ErrStaleEpoch) {
		t.Fatalf("broken destination reported a stale epoch: %v", err)
	}
	br.Heal(t)
	healed = true
	// The same sink recovers: the engine retries with the same batch.
	apply(t, s, 1, second, 100)
	checkState(t, d, Fold(first, second))
}

func testCancel(t *testing.T, h Harness, caps Capabilities) {
	d := h.NewDestination(t)
	s := openSink(t, d)
	g := newGen()
	first := g.mixed(200, 50, 5)
	apply(t, s, 1, first, 200)

	// An already cancelled context: an error at once, not a rejection.
	recs := g.mixed(largeN(caps)/4, 2000, 2)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	start := time.Now()
	err := s.Apply(ctx, batch(1, recs))
	if err == nil {
		t.Fatal("Apply with a cancelled context returned nil")
	}
	if _, ok := sink.AsRecordErrors(err); ok {
		t.Fatalf("cancelled Apply reported per-record rejections: %v", err)
	}
	if el := time.Since(start); el > 5*time.Second {
		t.Fatalf("cancelled Apply took %v", el)
	}

	// Cancelled midway: Apply returns promptly (error, or nil if it won).
	for _, after := range []time.Duration{time.Millisecond, 10 * time.Millisecond, 50 * time.Millisecond} {
		ctx, cancel := context.WithCancel(context.Background())
		timer := time.AfterFunc(after, cancel)
		start := time.Now()
		err := s.Apply(ctx, batch(1, recs))
		el := time.Since(start)
		timer.Stop()
		cancel()
		if _, ok := sink.AsRecordErrors(err); ok {
			t.Fatalf("Apply cancelled after %v reported per-record rejections: %v", after, err)
		}
		if el > after+10*time.Second {
			t.Fatalf("Apply cancelled after %v returned only after %v", after, el)
		}
	}
	// A later Apply converges.
	apply(t, s, 1, recs, len(recs))
	checkState(t, d, Fold(first, recs))
}

func largeN(caps Capabilities) int {
	if caps.LargeBatch > 0 {
		return caps.LargeBatch
	}
	return 20_000
}

func testLargeBatch(t *testing.T, h Harness, caps Capabilities) {
	d := h.NewDestination(t)
	s := openSink(t, d)
	g := newGen()
	n := largeN(caps)
	recs := g.mixed(n, n/4, 2)
	apply(t, s, 1, recs, n)
	want := Fold(recs)
	checkState(t, d, want)
	apply(t, s, 1, recs, n)
	checkState(t, d, want)
}

func testStaleEpoch(t *testing.T, h Harness, _ Capabilities) {
	d := h.NewDestination(t)
	old := openSink(t, d)
	g := newGen()
	b1 := g.mixed(50, 20, 10)
	apply(t, old, 1, b1, 50)
	// An operator's replay bumps the epoch; the new drain applies with it.
	newer := openSink(t, d)
	b2 := g.mixed(50, 20, 10)
	apply(t, newer, 2, b2, 50)
	// Invariant 5: the paused old drain wakes up and must not apply.
	b3 := g.mixed(50, 20, 10)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := old.Apply(ctx, batch(1, b3)); !errors.Is(err, sink.ErrStaleEpoch) {
		t.Fatalf("Apply with epoch 1 after epoch 2: got %v, want ErrStaleEpoch", err)
	}
	checkState(t, d, Fold(b1, b2))
	// The same epoch keeps working, from either sink.
	apply(t, old, 2, b3, 50)
	checkState(t, d, Fold(b1, b2, b3))
}
