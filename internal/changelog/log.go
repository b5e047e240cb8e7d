package changelog

import (
	"bytes"
	"cmp"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"github.com/klauspost/compress/gzip"
	"log/slog"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/sluicehq/sluice/internal/azstore"
)

// Log is one pipeline's change log in a store.
type Log struct {
	store    *azstore.Store
	pipeline string
	log      *slog.Logger
	now      func() time.Time
}

// Options tune a Log.
type Options struct {
	Logger *slog.Logger
	// Now is the capture clock; nil is time.Now.
	Now func() time.Time
}

// New returns the log of pipeline in store.
func New(store *azstore.Store, pipeline string, opts Options) *Log {
	l := &Log{store: store, pipeline: pipeline, log: opts.Logger, now: opts.Now}
	if l.log == nil {
		l.log = slog.New(slog.DiscardHandler)
	}
	if l.now == nil {
		l.now = time.Now
	}
	return l
}

// Pipeline names the log's pipeline.
func (l *Log) Pipeline() string { return l.pipeline }

// Appender writes records past the committed head. One process at a time
// should append (the read lease sees to that); when two do, the fence makes
// sure that only one can commit and the other gets ErrConflict.
type Appender struct {
	l     *Log
	st    *State
	runID string

	next   int64     // seq of the next record
	lastTS time.Time // ts of the last record added

	// The open segment: records gzip-compressed into buf.
	buf      bytes.Buffer
	gz       *gzip.Writer
	segFirst int64
	segCount int
	segTS    [2]time.Time
	line     []byte

	written int64 // last seq written in a segment blob
}

// NewAppender takes over the log for appending: it fences out every earlier
// writer by bumping st.Fence (compare-and-swap), then removes orphans — the
// segments that a dead or fenced-out writer left past the committed head or
// over a committed range.
// st must be freshly loaded; on ErrConflict load it again.
func (l *Log) NewAppender(ctx context.Context, st *State) (*Appender, error) {
	prevFrom := st.FencedFrom
	st.Fence++
	// Until this writer's cleanup succeeds, the range to search keeps
	// starting where the previous writer's did: a takeover that dies after
	// the bump must not make its successor skip that range.
	st.FencedFrom = st.Head.Seq + 1
	if prevFrom > 0 && prevFrom < st.FencedFrom {
		st.FencedFrom = prevFrom
	}
	if err := l.SaveState(ctx, st); err != nil {
		st.Fence--
		st.FencedFrom = prevFrom
		return nil, fmt.Errorf("fence pipeline %s: %w", l.pipeline, err)
	}
	// A fenced-out writer that kept flushing left its orphans over what the
	// writers after it committed: the previous writer's range starts at
	// prevFrom. Orphans over older ranges (from a writer paused through
	// more than one takeover) are not searched for; reads never pick them
	// (locate prefers the highest fence), they only take space.
	if err := l.removeOrphans(ctx, st, st.FencedFrom); err != nil {
		return nil, err
	}
	// Cleaned: this writer's own range starts at the head. The next commit
	// saves it.
	st.FencedFrom = st.Head.Seq + 1
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	a := &Appender{l: l, st: st, runID: hex.EncodeToString(b), next: st.Head.Seq + 1, lastTS: st.Head.TS, written: st.Head.Seq}
	return a, nil
}

// removeOrphans deletes segments that no writer can ever commit: those whose
// first seq is past the committed head, and those that overlap a segment
// written under a higher fence. It lists the buckets from the one before
// from's (a segment holding from may start there) through the head's, and
// on while a bucket holds segments past the head.
//
// Invariant 1: committed segments are never rewritten, nor deleted. An orphan
// is deleted only by its own ETag, and only after this writer's fence is in
// place and has been re-read unchanged after the listing.
//
// Past the head: any segment seen in the listing was then either uncommitted
// for good (its writer was fenced out before it could commit) or written
// under a later fence, which the re-read would have shown.
//
// Overlapping a higher fence: a writer commits its segments by a
// compare-and-swap of the state, which fails once a later fence is in place;
// so every writer with a higher fence took over after those commits, from a
// head at or past their last seq, and writes only seqs past that head. No
// segment with a higher fence can therefore hold a seq of a committed
// segment: of two overlapping segments, the one with the lower fence was
// never committed, whatever the other one is, and its writer can never commit
// it. A segment without a fence (from before fences) is never judged so,
// neither removed nor taken as proof against another. So a committed segment
// is never deleted, even by a writer that was paused and lost its lease.
func (l *Log) removeOrphans(ctx context.Context, st *State, from int64) error {
	head := st.Head.Seq
	var segs, orphans []segment
	for b := max(bucketOf(from)-1, 0); ; b++ {
		past := false
		err := l.store.List(ctx, l.bucketPrefix(b), func(bi azstore.BlobInfo) error {
			s, err := parseSegment(bi.Name, string(bi.ETag), bi.Metadata)
			if err != nil {
				// A segment whose metadata was never completed cannot be
				// committed; treat unparseable blobs past the head as orphans.
				if first, ok := firstFromName(bi.Name); ok && first > head {
					orphans = append(orphans, segment{name: bi.Name, etag: string(bi.ETag), first: first})
					past = true
				}
				return nil
			}
			segs = append(segs, s)
			if s.first > head {
				orphans = append(orphans, s)
				past = true
			} else if s.last > head {
				// A stale writer's segment across the head: its next
				// segments may start in a later bucket; look there too.
				past = true
			}
			return nil
		})
		if err != nil {
			return fmt.Errorf("list orphans of pipeline %s: %w", l.pipeline, err)
		}
		// The previous writer's orphans are contiguous from the head and no
		// segment spans a whole bucket, so past the head's bucket the first
		// bucket without one ends the search. An older writer's orphans may
		// lie further on; once commits reach them they overlap what the
		// next writer finds committed (or take a name a writer needs, which
		// fails its pass until one starts right there and removes them).
		if b >= bucketOf(head+1) && !past {
			break
		}
	}
	over := overlapped(segs)
	for _, s := range segs {
		if _, ok := over[s.name]; ok && s.first <= head {
			orphans = append(orphans, s) // those past the head are in already
		}
	}
	if len(orphans) == 0 {
		return nil
	}
	cur, err := l.LoadState(ctx)
	if err != nil {
		return err
	}
	if cur.etag != st.etag {
		return fmt.Errorf("remove orphans of pipeline %s: %w", l.pipeline, ErrConflict)
	}
	for _, o := range orphans {
		if o.etag == "" {
			continue // without an ETag the delete would not be conditional
		}
		if err := l.store.Delete(ctx, o.name, azstore.ETag(o.etag)); err != nil &&
			!errors.Is(err, azstore.ErrNotFound) && !errors.Is(err, azstore.ErrConflict) {
			return fmt.Errorf("remove orphan segment %s: %w", o.name, err)
		}
		attrs := []any{"pipeline", l.pipeline, "segment", o.name, "first", o.first, "last", o.last, "fence", o.fence, "head", head}
		if w, ok := over[o.name]; ok {
			attrs = append(attrs, "overlaps", w.name, "overlapsFence", w.fence)
		}
		l.log.Info("removed orphan segment", attrs...)
	}
	return nil
}

// overlapped returns the segments of segs that share a seq with a segment of
// a higher fence, each with one such segment. Segments without a fence are
// left out on both sides.
func overlapped(segs []segment) map[string]segment {
	sorted := slices.Clone(segs)
	slices.SortFunc(sorted, func(a, b segment) int { return cmp.Compare(a.first, b.first) })
	out := map[string]segment{}
	for i, s := range sorted {
		for _, t := range sorted[i+1:] {
			if t.first > s.last {
				break // sorted by first seq: no later one overlaps s either
			}
			lo, hi := s, t
			if lo.fence > hi.fence {
				lo, hi = hi, lo
			}
			if lo.fence > 0 && lo.fence < hi.fence {
				out[lo.name] = hi
			}
		}
	}
	return out
}

func firstFromName(name string) (int64, bool) {
	s, err := parseSegment(name, "", map[string]string{})
	if err == nil {
		return s.first, true
	}
	i := len(name) - len("00000000000000000000.ndjson.gz")
	if i < 0 {
		return 0, false
	}
	v, err := strconv.ParseInt(name[i:i+20], 10, 64)
	return v, err == nil
}

// Head returns the seq and ts the next commit would set.
func (a *Appender) Head() Head { return Head{Seq: a.next - 1, TS: a.lastTS} }

// Add gives rec the next seq and a capture ts of max(now, last ts) — so ts
// never goes backwards even when the clocks of two instances differ — and
// buffers it. A full segment is written out by itself; nothing is visible
// to readers before Commit.
func (a *Appender) Add(ctx context.Context, rec *Record) error {
	ts := a.l.now().UTC().Truncate(time.Millisecond)
	if ts.Before(a.lastTS) {
		ts = a.lastTS
	}
	rec.Seq, rec.TS = a.next, ts
	var err error
	a.line, err = AppendLine(a.line[:0], rec)
	if err != nil {
		return err
	}
	if a.gz == nil {
		a.buf.Reset()
		a.gz, _ = gzip.NewWriterLevel(&a.buf, gzip.BestSpeed)
		a.segFirst, a.segCount = rec.Seq, 0
		a.segTS[0] = ts
	} else if a.segCount > 0 && a.buf.Len() > 0 && a.buf.Len()+len(a.line)/4 > MaxSegmentBytes {
		// Estimate: a line compresses to well under a quarter of its size.
		if err := a.Flush(ctx); err != nil {
			return err
		}
		return a.Add(ctx, rec)
	}
	if _, err := a.gz.Write(a.line); err != nil {
		return fmt.Errorf("compress record %d: %w", rec.Seq, err)
	}
	a.segCount++
	a.segTS[1] = ts
	a.next++
	a.lastTS = ts
	if a.segCount >= MaxSegmentRecords {
		return a.Flush(ctx)
	}
	return nil
}

// Flush writes the open segment, if any, as a create-only blob.
//
// Invariant 1: segments are create-only (If-None-Match: *). A stale writer
// that reaches the same name after someone else wrote it gets a conflict and
// can never replace what is there.
func (a *Appender) Flush(ctx context.Context) error {
	if a.gz == nil {
		return nil
	}
	if err := a.gz.Close(); err != nil {
		return fmt.Errorf("compress segment %d: %w", a.segFirst, err)
	}
	last := a.segFirst + int64(a.segCount) - 1
	md := map[string]string{
		mdFirst:   strconv.FormatInt(a.segFirst, 10),
		mdLast:    strconv.FormatInt(last, 10),
		mdCount:   strconv.Itoa(a.segCount),
		mdFirstTS: a.segTS[0].Format(time.RFC3339Nano),
		mdLastTS:  a.segTS[1].Format(time.RFC3339Nano),
		mdFence:   strconv.FormatInt(a.st.Fence, 10),
		mdRun:     a.runID,
	}
	name := a.l.segmentName(a.segFirst)
	if _, err := a.l.store.Create(ctx, name, a.buf.Bytes(), md); err != nil {
		if errors.Is(err, azstore.ErrConflict) {
			return fmt.Errorf("write segment %d of pipeline %s: %w (a newer writer took over)", a.segFirst, a.l.pipeline, ErrConflict)
		}
		return fmt.Errorf("write segment %d of pipeline %s: %w", a.segFirst, a.l.pipeline, err)
	}
	a.gz = nil
	a.written = last
	return nil
}

// Commit writes the open segment and moves the head to the last record added,
// together with whatever update changes in the state (the read path sets the
// cursor there, so head and cursor move in one compare-and-swap).
// ErrConflict means another writer fenced this one out: stop.
func (a *Appender) Commit(ctx context.Context, update func(*State)) error {
	if err := a.Flush(ctx); err != nil {
		return err
	}
	prev := *a.st
	a.st.Head = a.Head()
	if update != nil {
		update(a.st)
	}
	if err := a.l.SaveState(ctx, a.st); err != nil {
		etag := a.st.etag
		*a.st = prev
		a.st.etag = etag
		return fmt.Errorf("commit head %d of pipeline %s: %w", a.next-1, a.l.pipeline, err)
	}
	return nil
}

// Annotate saves changes to the state that must not move the head, such as
// the outcome of a pass (compare-and-swap, like Commit). Records added since
// the last Commit stay uncommitted: a pass that failed between two page
// boundaries must not commit half of its work with the cursor of the last
// boundary (Invariant 2), or the next pass would log those pages again.
func (a *Appender) Annotate(ctx context.Context, update func(*State)) error {
	prev := *a.st
	update(a.st)
	a.st.Head = prev.Head
	if err := a.l.SaveState(ctx, a.st); err != nil {
		etag := a.st.etag
		*a.st = prev
		a.st.etag = etag
		return fmt.Errorf("save state of pipeline %s: %w", a.l.pipeline, err)
	}
	return nil
}

// State is the state as last committed by this appender.
func (a *Appender) State() *State { return a.st }

// listBucket returns the segments of bucket b in seq order.
func (l *Log) listBucket(ctx context.Context, b int64) ([]segment, error) {
	var segs []segment
	err := l.store.List(ctx, l.bucketPrefix(b), func(bi azstore.BlobInfo) error {
		s, err := parseSegment(bi.Name, string(bi.ETag), bi.Metadata)
		if err != nil {
			if _, named := firstFromName(bi.Name); named && strings.HasSuffix(bi.Name, ".ndjson.gz") {
				// Named like a segment but its metadata is unreadable: it
				// may be the committed one, damaged. Skipping it could let
				// a stale overlapping orphan be read in its place: fail.
				return err
			}
			// A blob that is not named like a segment can never be the one
			// a scan needs: it must not stop scans that merely list its
			// bucket.
			l.log.Warn("ignoring a blob that is not a segment", "pipeline", l.pipeline, "blob", bi.Name, "err", err.Error())
			return nil
		}
		segs = append(segs, s)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list log of pipeline %s: %w", l.pipeline, err)
	}
	sort.Slice(segs, func(i, j int) bool { return segs[i].first < segs[j].first })
	return segs, nil
}
