package changelog_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sluicehq/sluice/internal/azstore"
	"github.com/sluicehq/sluice/internal/changelog"
	"github.com/sluicehq/sluice/internal/testenv"
)

// clock is a controllable capture clock.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

func newLog(t *testing.T, st *azstore.Store, c *clock) *changelog.Log {
	opts := changelog.Options{}
	if c != nil {
		opts.Now = c.now
	}
	return changelog.New(st, "orders", opts)
}

func rec(key string, v int) *changelog.Record {
	return &changelog.Record{Op: changelog.OpUpsert, Key: key,
		Fields: json.RawMessage(fmt.Sprintf(`{"Title":"item %s","N":%d}`, key, v))}
}

// appendPages appends pages of n records each, committing after every page.
func appendPages(t *testing.T, ctx context.Context, l *changelog.Log, pages, n int, tick func()) {
	t.Helper()
	st, err := l.LoadState(ctx)
	if err != nil {
		t.Fatal(err)
	}
	a, err := l.NewAppender(ctx, st)
	if err != nil {
		t.Fatal(err)
	}
	for p := range pages {
		for i := range n {
			if tick != nil {
				tick()
			}
			if err := a.Add(ctx, rec(fmt.Sprint(i), p)); err != nil {
				t.Fatal(err)
			}
		}
		if err := a.Commit(ctx, func(s *changelog.State) { s.Source.Cursor = fmt.Sprintf("page-%d", p) }); err != nil {
			t.Fatal(err)
		}
	}
}

func scanAll(t *testing.T, ctx context.Context, l *changelog.Log, from int64) []changelog.Record {
	t.Helper()
	st, err := l.LoadState(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var out []changelog.Record
	sc := l.Scan(ctx, from, st.Head.Seq)
	for sc.Next() {
		r := *sc.Record()
		r.Fields = append(json.RawMessage(nil), r.Fields...)
		out = append(out, r)
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

func TestRoundTrip100k(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	l := newLog(t, testenv.Store(t), nil)
	// 100 pages of 1,000: 100 segments across 10 buckets.
	appendPages(t, ctx, l, 100, 1000, nil)

	st, err := l.LoadState(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.Head.Seq != 100_000 || st.Source.Cursor != "page-99" {
		t.Fatalf("head = %d cursor %q, want 100000 page-99", st.Head.Seq, st.Source.Cursor)
	}

	var peak uint64
	var ms runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&ms)
	base := ms.HeapInuse
	want := int64(1)
	var lastTS time.Time
	sc := l.Scan(ctx, 1, st.Head.Seq)
	for sc.Next() {
		r := sc.Record()
		if r.Seq != want {
			t.Fatalf("seq %d, want %d", r.Seq, want)
		}
		if r.TS.Before(lastTS) {
			t.Fatalf("ts went backwards at seq %d", r.Seq)
		}
		lastTS = r.TS
		wantKey := fmt.Sprint((want - 1) % 1000)
		if r.Key != wantKey || !strings.Contains(string(r.Fields), `"item `+wantKey+`"`) {
			t.Fatalf("seq %d: key %q fields %s", r.Seq, r.Key, r.Fields)
		}
		if want%5000 == 0 {
			runtime.ReadMemStats(&ms)
			peak = max(peak, ms.HeapInuse)
		}
		want++
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	if want != 100_001 {
		t.Fatalf("scanned up to %d, want 100000", want-1)
	}
	// Flat memory: a scan holds one segment's decoder, never the log.
	if grow := int64(peak) - int64(base); grow > 32<<20 {
		t.Fatalf("heap grew by %d MB during the scan", grow>>20)
	}

	// A scan from the middle of a segment starts exactly there.
	got := scanAll(t, ctx, l, 54_321)
	if len(got) != 100_000-54_321+1 || got[0].Seq != 54_321 {
		t.Fatalf("scan from 54321: %d records, first %d", len(got), got[0].Seq)
	}
}

func TestSeekByTime(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	start := time.Date(2026, 11, 25, 8, 0, 0, 0, time.UTC)
	c := &clock{t: start}
	l := newLog(t, testenv.Store(t), c)
	// 30 pages of 700 records, one second apart; a ten-minute pause
	// between pages 10 and 11 leaves a time between two segments.
	st, _ := l.LoadState(ctx)
	a, err := l.NewAppender(ctx, st)
	if err != nil {
		t.Fatal(err)
	}
	for p := range 30 {
		if p == 11 {
			c.add(10 * time.Minute)
		}
		for i := range 700 {
			c.add(time.Second)
			if err := a.Add(ctx, rec(fmt.Sprint(i), p)); err != nil {
				t.Fatal(err)
			}
		}
		if err := a.Commit(ctx, nil); err != nil {
			t.Fatal(err)
		}
	}
	head := int64(30 * 700)
	tsOf := func(seq int64) time.Time {
		extra := time.Duration(0)
		if seq > 11*700 {
			extra = 10 * time.Minute
		}
		return start.Add(time.Duration(seq)*time.Second + extra)
	}
	tests := []struct {
		name string
		at   time.Time
		want int64
	}{
		{"before the first", start.Add(-time.Hour), 1},
		{"at the first", tsOf(1), 1},
		{"exact ts mid-segment", tsOf(1234), 1234},
		{"between two records", tsOf(1234).Add(-500 * time.Millisecond), 1234},
		{"first record of a segment", tsOf(701), 701},
		{"last record of a segment", tsOf(700), 700},
		{"between segments (in the pause)", tsOf(11 * 700).Add(5 * time.Minute), 11*700 + 1},
		{"at the last", tsOf(head), head},
		{"after the last", tsOf(head).Add(time.Second), head + 1},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := l.Seek(ctx, tc.at, head)
			if err != nil {
				t.Fatal(err)
			}
			if got != tc.want {
				t.Fatalf("Seek(%s) = %d, want %d", tc.at.Format(time.RFC3339Nano), got, tc.want)
			}
		})
	}
	// Seek never looks past the head it is given.
	if got, err := l.Seek(ctx, tsOf(5000), 3000); err != nil || got != 3001 {
		t.Fatalf("Seek past a smaller head = %d, %v; want 3001", got, err)
	}
}

func TestCrashBeforeCommitLeavesHead(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	l := newLog(t, testenv.Store(t), nil)
	appendPages(t, ctx, l, 1, 100, nil)

	// A run writes three segments, then dies before committing.
	st, _ := l.LoadState(ctx)
	dead, err := l.NewAppender(ctx, st)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 3 * 50 {
		if err := dead.Add(ctx, rec("dead", i)); err != nil {
			t.Fatal(err)
		}
		if i%50 == 49 {
			if err := dead.Flush(ctx); err != nil {
				t.Fatal(err)
			}
		}
	}
	st, _ = l.LoadState(ctx)
	if st.Head.Seq != 100 {
		t.Fatalf("head after crash = %d, want 100", st.Head.Seq)
	}
	for _, r := range scanAll(t, ctx, l, 1) {
		if r.Key == "dead" {
			t.Fatalf("reader saw uncommitted record %d", r.Seq)
		}
	}
	// The next run removes the orphans and commits its own records.
	appendPages(t, ctx, l, 1, 120, nil)
	got := scanAll(t, ctx, l, 1)
	if len(got) != 220 {
		t.Fatalf("%d records after recovery, want 220", len(got))
	}
	for i, r := range got {
		if r.Seq != int64(i+1) || r.Key == "dead" {
			t.Fatalf("record %d: seq %d key %q", i, r.Seq, r.Key)
		}
	}
	// The dead run can never commit.
	if err := dead.Commit(ctx, nil); !errors.Is(err, changelog.ErrConflict) {
		t.Fatalf("dead run's commit: %v, want ErrConflict", err)
	}
}

func TestStaleWriterCannotReplaceCommittedSegment(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	l := newLog(t, testenv.Store(t), nil)
	appendPages(t, ctx, l, 1, 10, nil)

	// Writer A takes over, writes 11..30 and pauses (lost its lease).
	stA, _ := l.LoadState(ctx)
	a, err := l.NewAppender(ctx, stA)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 20 {
		if err := a.Add(ctx, rec("A", i)); err != nil {
			t.Fatal(err)
		}
	}
	if err := a.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	// Writer B takes over, removes A's orphan, commits 11..60.
	stB, _ := l.LoadState(ctx)
	b, err := l.NewAppender(ctx, stB)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 50 {
		if err := b.Add(ctx, rec("B", i)); err != nil {
			t.Fatal(err)
		}
	}
	if err := b.Commit(ctx, nil); err != nil {
		t.Fatal(err)
	}
	// A wakes up: its next segment (31..) lands inside B's committed range
	// under a free name; its commit must fail, and readers must keep
	// reading B's records everywhere.
	for i := range 40 {
		if err := a.Add(ctx, rec("A", i)); err != nil {
			t.Fatal(err)
		}
	}
	if err := a.Flush(ctx); err != nil {
		t.Fatalf("A's write into a free name: %v", err)
	}
	if err := a.Commit(ctx, nil); !errors.Is(err, changelog.ErrConflict) {
		t.Fatalf("A's commit: %v, want ErrConflict", err)
	}
	// A stale writer that reaches a committed name can never replace it.
	stC := *stA // A's view: head 10
	c, err := l.NewAppender(ctx, &stC)
	if !errors.Is(err, changelog.ErrConflict) {
		t.Fatalf("stale fence: %v, want ErrConflict", err)
	}
	_ = c

	for _, from := range []int64{1, 11, 35, 45, 60} {
		got := scanAll(t, ctx, l, from)
		if int64(len(got)) != 60-from+1 {
			t.Fatalf("scan from %d: %d records", from, len(got))
		}
		for _, r := range got {
			want := "B"
			if r.Seq <= 10 {
				want = fmt.Sprint(r.Seq - 1)
			}
			if r.Key != want {
				t.Fatalf("scan from %d: seq %d has key %q, want %q (an orphan was read)", from, r.Seq, r.Key, want)
			}
		}
	}
	// A's overlapping orphan does not disturb the next writer either.
	appendPages(t, ctx, l, 1, 5, nil)
	if got := scanAll(t, ctx, l, 1); len(got) != 65 {
		t.Fatalf("%d records, want 65", len(got))
	}
}

func TestStaleSegmentWriteConflicts(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	l := newLog(t, testenv.Store(t), nil)
	stA, _ := l.LoadState(ctx)
	a, err := l.NewAppender(ctx, stA)
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Add(ctx, rec("A", 1)); err != nil {
		t.Fatal(err)
	}
	// B fences A out and commits seq 1 before A writes its segment.
	stB, _ := l.LoadState(ctx)
	b, err := l.NewAppender(ctx, stB)
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Add(ctx, rec("B", 1)); err != nil {
		t.Fatal(err)
	}
	if err := b.Commit(ctx, nil); err != nil {
		t.Fatal(err)
	}
	if err := a.Flush(ctx); !errors.Is(err, changelog.ErrConflict) {
		t.Fatalf("A's segment write over B's committed segment: %v, want ErrConflict", err)
	}
	if got := scanAll(t, ctx, l, 1); len(got) != 1 || got[0].Key != "B" {
		t.Fatalf("log = %+v, want B's record", got)
	}
}

func TestConcurrentWritersOneCommits(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	l := newLog(t, testenv.Store(t), nil)
	appendPages(t, ctx, l, 1, 1, nil)
	st0, _ := l.LoadState(ctx)

	var wins, conflicts atomic.Int32
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			st := *st0
			a, err := l.NewAppender(ctx, &st)
			if err == nil {
				for i := range 10 {
					if err = a.Add(ctx, rec(fmt.Sprintf("w%d", w), i)); err != nil {
						break
					}
				}
				if err == nil {
					err = a.Commit(ctx, nil)
				}
			}
			switch {
			case err == nil:
				wins.Add(1)
			case errors.Is(err, changelog.ErrConflict):
				if !strings.Contains(err.Error(), "orders") {
					t.Errorf("conflict error does not name the pipeline: %v", err)
				}
				conflicts.Add(1)
			default:
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	if wins.Load() != 1 || conflicts.Load() != 3 {
		t.Fatalf("wins=%d conflicts=%d, want 1 and 3", wins.Load(), conflicts.Load())
	}
	got := scanAll(t, ctx, l, 1)
	if len(got) != 11 {
		t.Fatalf("%d records, want 11", len(got))
	}
	for _, r := range got[1:] {
		if r.Key != got[1].Key {
			t.Fatalf("records of two writers were committed: %q and %q", got[1].Key, r.Key)
		}
	}
}

func TestTimestampsNeverGoBackwards(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	c := &clock{t: time.Date(2026, 11, 25, 8, 0, 0, 0, time.UTC)}
	l := newLog(t, testenv.Store(t), c)
	appendPages(t, ctx, l, 1, 3, nil)
	c.add(-time.Hour) // another instance with a slow clock
	appendPages(t, ctx, l, 1, 3, nil)
	got := scanAll(t, ctx, l, 1)
	for i := 1; i < len(got); i++ {
		if got[i].TS.Before(got[i-1].TS) {
			t.Fatalf("ts of seq %d (%s) before seq %d (%s)", got[i].Seq, got[i].TS, got[i-1].Seq, got[i-1].TS)
		}
	}
}

func TestScanDetectsCorruption(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	st := testenv.Store(t)
	l := newLog(t, st, nil)
	appendPages(t, ctx, l, 3, 10, nil)
	// Someone deletes a committed segment out of band.
	name := fmt.Sprintf("orders/log/%010d/%020d.ndjson.gz", 0, 11)
	if err := st.Delete(ctx, name, ""); err != nil {
		t.Fatal(err)
	}
	sc := l.Scan(ctx, 1, 30)
	n := 0
	for sc.Next() {
		n++
	}
	if !errors.Is(sc.Err(), changelog.ErrCorrupt) || n != 10 {
		t.Fatalf("scan over a missing segment: %d records, err %v; want 10 and ErrCorrupt", n, sc.Err())
	}
}

// A blob that is not named like a segment never stops a scan; one named
// like a segment whose metadata is unreadable does (it may be the committed
// segment, damaged: skipping it could let an overlapping orphan be read).
func TestScanAndForeignBlobs(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	st := testenv.Store(t)
	l := newLog(t, st, nil)
	appendPages(t, ctx, l, 3, 10, nil)
	scanAll := func() error {
		sc := l.Scan(ctx, 1, 30)
		defer sc.Close()
		for sc.Next() {
		}
		return sc.Err()
	}
	if _, err := st.Create(ctx, "orders/log/0000000000/notes.txt", []byte("hello"), nil); err != nil {
		t.Fatal(err)
	}
	if err := scanAll(); err != nil {
		t.Fatalf("a foreign blob in the log's bucket stopped the scan: %v", err)
	}
	if _, err := st.Create(ctx, "orders/log/0000000000/00000000000000000011.ndjson.gz", []byte("x"), nil); err == nil {
		t.Fatal("a segment's name was free")
	}
	if _, err := st.Create(ctx, "orders/log/0000000000/00000000000000000005.ndjson.gz", []byte("x"), nil); err != nil {
		t.Fatal(err)
	}
	if err := scanAll(); err == nil {
		t.Fatal("a segment-named blob without metadata was skipped silently")
	}
}
