package changelog_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/sluicehq/sluice/internal/changelog"
	"github.com/sluicehq/sluice/internal/testenv"
)

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
