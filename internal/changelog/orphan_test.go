package changelog_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/sluicehq/sluice/internal/azstore"
	"github.com/sluicehq/sluice/internal/changelog"
	"github.com/sluicehq/sluice/internal/testenv"
)

// segName is the blob name of the segment starting at first in pipeline "orders".
func segName(first int64) string {
	return fmt.Sprintf("orders/log/%010d/%020d.ndjson.gz", first/changelog.BucketSize, first)
}

// listSegments returns the segment blobs of pipeline "orders" by name.
func listSegments(t *testing.T, ctx context.Context, st *azstore.Store) map[string]azstore.BlobInfo {
	t.Helper()
	out := map[string]azstore.BlobInfo{}
	if err := st.List(ctx, "orders/log/", func(bi azstore.BlobInfo) error {
		out[bi.Name] = bi
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return out
}

// addN adds n records with key to a.
func addN(t *testing.T, ctx context.Context, a *changelog.Appender, key string, n int, tick func(*changelog.Record)) {
	t.Helper()
	for i := range n {
		r := rec(key, i)
		if err := a.Add(ctx, r); err != nil {
			t.Fatal(err)
		}
		if tick != nil {
			tick(r)
		}
	}
}

// staleOrphanInLaterBucket builds, with the real Appender, a stale writer's
// orphan in a later bucket than the committed segment that overlaps it:
//
//	committed  1..9,989      bucket 0, first writer
//	committed  9,990..10,500 bucket 0, writer "B" (fenced after "stale")
//	orphan     10,000..10,300 bucket 1, writer "stale", flushed after B committed
//
// It returns the ts of each of B's records by seq.
func staleOrphanInLaterBucket(t *testing.T, ctx context.Context, l *changelog.Log, c *clock) map[int64]time.Time {
	t.Helper()
	appendPages(t, ctx, l, 1, 9989, func() { c.add(time.Millisecond) })

	st, err := l.LoadState(ctx)
	if err != nil {
		t.Fatal(err)
	}
	stale, err := l.NewAppender(ctx, st)
	if err != nil {
		t.Fatal(err)
	}
	tick := func(*changelog.Record) { c.add(time.Millisecond) }
	addN(t, ctx, stale, "stale", 10, tick) // 9,990..9,999
	if err := stale.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	addN(t, ctx, stale, "stale", 301, tick) // 10,000..10,300, still buffered

	// B fences the stale writer out (removing its segment 9,990..9,999,
	// which is past the head) and commits 9,990..10,500 as one segment.
	st, err = l.LoadState(ctx)
	if err != nil {
		t.Fatal(err)
	}
	b, err := l.NewAppender(ctx, st)
	if err != nil {
		t.Fatal(err)
	}
	tsB := map[int64]time.Time{}
	addN(t, ctx, b, "B", 511, func(r *changelog.Record) { tsB[r.Seq] = r.TS; c.add(time.Second) })
	if err := b.Commit(ctx, nil); err != nil {
		t.Fatal(err)
	}

	// The stale writer wakes up: its segment starting at 10,000 goes to a
	// free name in bucket 1; only its commit fails.
	if err := stale.Flush(ctx); err != nil {
		t.Fatalf("stale writer's flush into bucket 1: %v", err)
	}
	if err := stale.Commit(ctx, nil); !errors.Is(err, changelog.ErrConflict) {
		t.Fatalf("stale writer's commit: %v, want ErrConflict", err)
	}
	return tsB
}

// checkScan scans from..to and fails unless every record there is B's.
func checkScanB(t *testing.T, ctx context.Context, l *changelog.Log, from, to int64) {
	t.Helper()
	sc := l.Scan(ctx, from, to)
	defer sc.Close()
	want := from
	for sc.Next() {
		r := sc.Record()
		if r.Seq != want {
			t.Fatalf("scan %d..%d: seq %d, want %d", from, to, r.Seq, want)
		}
		if r.Key != "B" {
			t.Fatalf("scan %d..%d: seq %d has key %q, want \"B\" (an uncommitted orphan was read)", from, to, r.Seq, r.Key)
		}
		want++
	}
	if err := sc.Err(); err != nil {
		t.Fatalf("scan %d..%d: %v", from, to, err)
	}
	if want != to+1 {
		t.Fatalf("scan %d..%d ended at %d", from, to, want-1)
	}
}

// Defect 3: a stale writer's orphan in a later bucket than the committed
// segment that overlaps it must never be read.
func TestScanPrefersCommittedSegmentInEarlierBucket(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	c := &clock{t: time.Date(2026, 11, 25, 8, 0, 0, 0, time.UTC)}
	l := newLog(t, testenv.Store(t), c)
	tsB := staleOrphanInLaterBucket(t, ctx, l, c)

	for _, r := range [][2]int64{
		{10_100, 10_500}, // the brief's example: locate(10,100)
		{10_000, 10_500},
		{10_100, 10_300}, // ends inside the orphan: no error to give it away
		{10_300, 10_301},
		{9_990, 10_500},
	} {
		checkScanB(t, ctx, l, r[0], r[1])
	}

	// Seek locates segments by seq too.
	for _, seq := range []int64{9_990, 10_000, 10_100, 10_300, 10_301, 10_500} {
		got, err := l.Seek(ctx, tsB[seq], 10_500)
		if err != nil {
			t.Fatalf("Seek(ts of %d): %v", seq, err)
		}
		if got != seq {
			t.Fatalf("Seek(ts of %d) = %d", seq, got)
		}
	}
}

// The next appender removes the orphan that overlaps the committed range
// and nothing else.
func TestNewAppenderRemovesOrphanOverlappingCommitted(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	store := testenv.Store(t)
	c := &clock{t: time.Date(2026, 11, 25, 8, 0, 0, 0, time.UTC)}
	l := newLog(t, store, c)
	staleOrphanInLaterBucket(t, ctx, l, c)

	orphan := segName(10_000)
	before := listSegments(t, ctx, store)
	if _, ok := before[orphan]; !ok {
		t.Fatalf("setup: no orphan %s in %v", orphan, before)
	}
	st, err := l.LoadState(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := l.NewAppender(ctx, st); err != nil {
		t.Fatal(err)
	}
	after := listSegments(t, ctx, store)
	if _, ok := after[orphan]; ok {
		t.Errorf("orphan %s overlapping committed 9,990..10,500 was not removed", orphan)
	}
	for name, bi := range before {
		if name == orphan {
			continue
		}
		if got, ok := after[name]; !ok || got.ETag != bi.ETag {
			t.Errorf("committed segment %s was removed or changed", name)
		}
	}
	checkScanB(t, ctx, l, 9_990, 10_500)
}

// TestOverlapCleanupNeverDeletesCommitted drives writers that take over from
// each other while the fenced-out ones keep adding and flushing, across
// bucket boundaries. After every takeover each committed segment is still
// there, unchanged, the log reads back exactly what was committed, and no
// orphan is left in the range the previous writer committed.
func TestOverlapCleanupNeverDeletesCommitted(t *testing.T) {
	t.Parallel()
	// Seeds whose runs remove orphans over committed ranges, also in a later
	// bucket than the segment they overlap.
	for _, seed := range []uint64{7, 8} {
		t.Run(fmt.Sprint("seed ", seed), func(t *testing.T) {
			t.Parallel()
			removed := overlapCleanupRun(t, seed)
			over, later := 0, 0
			for _, r := range removed {
				if r.Overlaps != "" {
					over++
					if bucketOfName(r.Segment) > bucketOfName(r.Overlaps) {
						later++
					}
				}
			}
			t.Logf("%d orphans removed, %d over another segment, %d of them in a later bucket than it", len(removed), over, later)
			if later == 0 {
				t.Fatal("no orphan in a later bucket than the segment it overlapped was removed: the run proves little")
			}
		})
	}
}

// removal is one "removed orphan segment" log entry.
type removal struct {
	Segment, Overlaps string
}

func bucketOfName(name string) int64 {
	var b int64
	fmt.Sscanf(name[strings.Index(name, "/log/")+len("/log/"):], "%d/", &b)
	return b
}

// removals collects the removals a Log reports.
type removals struct{ list []removal }

func (r *removals) Enabled(context.Context, slog.Level) bool { return true }
func (r *removals) WithAttrs([]slog.Attr) slog.Handler       { return r }
func (r *removals) WithGroup(string) slog.Handler            { return r }
func (r *removals) Handle(_ context.Context, rec slog.Record) error {
	if rec.Message != "removed orphan segment" {
		return nil
	}
	var m removal
	rec.Attrs(func(a slog.Attr) bool {
		switch a.Key {
		case "segment":
			m.Segment = a.Value.String()
		case "overlaps":
			m.Overlaps = a.Value.String()
		}
		return true
	})
	r.list = append(r.list, m)
	return nil
}

func overlapCleanupRun(t *testing.T, seed uint64) []removal {
	ctx := context.Background()
	store := testenv.Store(t)
	var removed removals
	l := changelog.New(store, "orders", changelog.Options{Logger: slog.New(&removed)})
	rng := rand.New(rand.NewPCG(seed, 17))

	type writer struct {
		key       string
		a         *changelog.Appender
		committed int64   // last seq this writer committed
		open      int64   // first seq of the open segment; 0 if none
		flushed   []int64 // first seqs of segments flushed since the last commit
	}
	var live []*writer
	want := map[int64]string{}             // committed seq -> writer key
	committed := map[string]azstore.ETag{} // committed segment -> its ETag
	prevFrom := int64(0)                   // first seq of the previous writer's range

	flush := func(w *writer) error {
		if err := w.a.Flush(ctx); err != nil {
			return err
		}
		if w.open != 0 {
			w.flushed = append(w.flushed, w.open)
			w.open = 0
		}
		return nil
	}
	takeOver := func(n int) {
		st, err := l.LoadState(ctx)
		if err != nil {
			t.Fatal(err)
		}
		head := st.Head.Seq
		a, err := l.NewAppender(ctx, st)
		if err != nil {
			t.Fatal(err)
		}
		segs := listSegments(t, ctx, store)
		for name, etag := range committed {
			if bi, ok := segs[name]; !ok || bi.ETag != etag {
				t.Fatalf("takeover %d: committed segment %s was removed or changed", n, name)
			}
		}
		for name, bi := range segs {
			if _, ok := committed[name]; ok {
				continue
			}
			var first, last int64
			fmt.Sscan(bi.Metadata["firstseq"], &first)
			fmt.Sscan(bi.Metadata["lastseq"], &last)
			if prevFrom > 0 && first <= head && last >= prevFrom {
				t.Fatalf("takeover %d: orphan %s (%d..%d) left in the previous writer's range %d..%d", n, name, first, last, prevFrom, head)
			}
			if first > head && first/changelog.BucketSize == (head+1)/changelog.BucketSize {
				t.Fatalf("takeover %d: orphan %s past head %d left in the head's bucket", n, name, head)
			}
		}
		sc := l.Scan(ctx, 1, head)
		seq := int64(1)
		for sc.Next() {
			r := sc.Record()
			if r.Seq != seq || r.Key != want[seq] {
				t.Fatalf("takeover %d: seq %d key %q, want seq %d key %q", n, r.Seq, r.Key, seq, want[seq])
			}
			seq++
		}
		if err := sc.Err(); err != nil {
			t.Fatalf("takeover %d: %v", n, err)
		}
		if seq != head+1 {
			t.Fatalf("takeover %d: scan ended at %d, head %d", n, seq-1, head)
		}
		sc.Close()
		prevFrom = head + 1
		live = append(live, &writer{key: fmt.Sprintf("w%d", n), a: a, committed: head})
	}

	takeOver(0)
	for step := range 60 {
		if rng.IntN(4) == 0 {
			takeOver(step + 1)
			continue
		}
		i := len(live) - 1 // mostly the current writer, often a stale one
		if rng.IntN(2) == 0 {
			i = rng.IntN(len(live))
		}
		w := live[i]
		n := 1 + rng.IntN(6000) // segments of up to 6,000 records often straddle buckets
		for range n {
			r := rec(w.key, step)
			if err := w.a.Add(ctx, r); err != nil {
				t.Fatal(err)
			}
			if w.open == 0 {
				w.open = r.Seq
			}
		}
		if err := flush(w); err != nil {
			if !errors.Is(err, changelog.ErrConflict) {
				t.Fatal(err)
			}
			// Its segment's name was taken: its buffer is lost and it stops.
			live = append(live[:i], live[i+1:]...)
		} else if rng.IntN(2) == 0 {
			switch err := w.a.Commit(ctx, nil); {
			case err == nil:
				head := w.a.Head().Seq
				for s := w.committed + 1; s <= head; s++ {
					want[s] = w.key
				}
				w.committed = head
				segs := listSegments(t, ctx, store)
				for _, first := range w.flushed {
					bi, ok := segs[segName(first)]
					if !ok {
						t.Fatalf("step %d: segment %s is missing right after its commit", step, segName(first))
					}
					committed[bi.Name] = bi.ETag
				}
				w.flushed = nil
			case !errors.Is(err, changelog.ErrConflict):
				t.Fatal(err)
			}
		}
		if len(live) == 0 {
			takeOver(step + 1)
		}
	}
	takeOver(1000)
	return removed.list
}

// A committed segment removed out of band and replaced by a stale writer's
// segment of the same name and seqs is refused, not read.
func TestScanRefusesLowerFenceSuccessor(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	store := testenv.Store(t)
	l := newLog(t, store, nil)

	st, _ := l.LoadState(ctx)
	stale, err := l.NewAppender(ctx, st)
	if err != nil {
		t.Fatal(err)
	}
	addN(t, ctx, stale, "stale", 10, nil) // 1..10
	if err := stale.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	addN(t, ctx, stale, "stale", 10, nil) // 11..20, buffered

	st, _ = l.LoadState(ctx)
	b, err := l.NewAppender(ctx, st)
	if err != nil {
		t.Fatal(err)
	}
	for range 2 {
		addN(t, ctx, b, "B", 10, nil)
		if err := b.Commit(ctx, nil); err != nil {
			t.Fatal(err)
		}
	}
	if err := store.Delete(ctx, segName(11), ""); err != nil {
		t.Fatal(err)
	}
	if err := stale.Flush(ctx); err != nil {
		t.Fatal(err)
	}

	sc := l.Scan(ctx, 1, 20)
	defer sc.Close()
	for sc.Next() {
		if r := sc.Record(); r.Key != "B" {
			t.Fatalf("seq %d: read the stale writer's record", r.Seq)
		}
	}
	if !errors.Is(sc.Err(), changelog.ErrCorrupt) {
		t.Fatalf("scan over a replaced segment: %v, want ErrCorrupt", sc.Err())
	}
}
