package changelog

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"github.com/klauspost/compress/gzip"
	"io"
	"time"
)

// ErrCorrupt means the log does not hold what its head promises: a missing
// segment, a gap or a record out of order. Scans fail loudly on it rather
// than skip or invent records.
var ErrCorrupt = errors.New("change log is corrupt")

// maxLine bounds one record line (a record with a few very large fields).
const maxLine = 64 << 20

// locate finds the committed segment holding seq (seq <= head).
//
// Several segments may hold the same seq when a fenced-out writer left an
// orphan inside the committed range. The committed one has the highest
// fence: a writer fenced after a segment was committed started past that
// segment's last seq, so it can never overlap it (see State.Fence).
//
// Invariant 3: writers see only committed records — the candidates are every
// segment holding seq in both buckets it can start in (a segment never spans
// a whole bucket), and the highest fence wins across both. An orphan may start
// in a later bucket than the committed segment it overlaps (a stale writer
// flushing 10,000..10,300 over a committed 9,990..10,500), so the first bucket
// with a candidate is not enough.
func (l *Log) locate(ctx context.Context, seq int64, cache map[int64][]segment) (segment, error) {
	var best segment
	for b := bucketOf(seq); b >= 0 && b >= bucketOf(seq)-1; b-- {
		segs, ok := cache[b]
		if !ok {
			var err error
			if segs, err = l.listBucket(ctx, b); err != nil {
				return segment{}, err
			}
			if cache != nil {
				cache[b] = segs
			}
		}
		for _, s := range segs {
			if s.first <= seq && seq <= s.last && (best.name == "" || s.fence > best.fence) {
				best = s
			}
		}
	}
	if best.name == "" {
		return segment{}, fmt.Errorf("pipeline %s: no segment holds committed seq %d: %w", l.pipeline, seq, ErrCorrupt)
	}
	return best, nil
}

// Scanner streams committed records in seq order. Memory stays flat: one
// segment is decompressed at a time, line by line.
type Scanner struct {
	l        *Log
	ctx      context.Context
	next, to int64

	body   io.ReadCloser
	gz     *gzip.Reader
	br     *bufio.Reader // reused across segments
	opened bool
	// segNext is the seq the open segment's next line must carry.
	segNext int64
	seg     segment
	rec     Record
	err     error
	bucket  map[int64][]segment
}

// Scan returns a scanner over the records from..to inclusive. to must not be
// past the committed head (pass the head you loaded).
//
// Invariant 3: writers see only committed records — the scan stops at to,
// which callers take from the committed head, and checks that every seq up
// to it is there exactly once, in order.
func (l *Log) Scan(ctx context.Context, from, to int64) *Scanner {
	if from < 1 {
		from = 1
	}
	return &Scanner{l: l, ctx: ctx, next: from, to: to, bucket: map[int64][]segment{}}
}

// Next advances to the next record; false at the end or on error.
func (s *Scanner) Next() bool {
	if s.err != nil || s.next > s.to {
		s.closeBody()
		return false
	}
	for {
		if !s.opened {
			if err := s.open(); err != nil {
				s.err = err
				return false
			}
		}
		line, err := s.readLine()
		if err == io.EOF {
			if s.next <= s.seg.last {
				s.err = fmt.Errorf("segment %s ends at seq %d, its metadata says %d: %w", s.seg.name, s.next-1, s.seg.last, ErrCorrupt)
				return false
			}
			s.closeBody()
			continue
		}
		if err != nil {
			s.err = fmt.Errorf("read segment %s: %w", s.seg.name, err)
			return false
		}
		if err := s.rec.UnmarshalJSON(line); err != nil {
			s.err = fmt.Errorf("segment %s: %v: %w", s.seg.name, err, ErrCorrupt)
			return false
		}
		// Every record of a segment must follow the one before it, from the
		// segment's first seq on — also those skipped when a scan enters a
		// segment in the middle.
		if s.rec.Seq != s.segNext {
			s.err = fmt.Errorf("segment %s: expected seq %d, found %d: %w", s.seg.name, s.segNext, s.rec.Seq, ErrCorrupt)
			return false
		}
		s.segNext++
		if s.rec.Seq < s.next {
			continue // the head of a segment we entered in the middle
		}
		s.next++
		return true
	}
}

// open finds and opens the segment holding s.next. Past the first segment
// the next one is named exactly by its first seq, so there is no choice to
// make and an orphan can never be picked: names are create-only, so an
// orphan holding that name would have made the committing writer fail, and
// a committed segment is never deleted (removeOrphans).
func (s *Scanner) open() error {
	var seg segment
	var err error
	if s.seg.name == "" {
		seg, err = s.l.locate(s.ctx, s.next, s.bucket)
	} else {
		seg, err = s.exact(s.next)
	}
	if err != nil {
		return err
	}
	body, _, err := s.l.store.Read(s.ctx, seg.name)
	if err != nil {
		return fmt.Errorf("open segment %s: %w", seg.name, err)
	}
	return s.startSegment(body, seg)
}

func (s *Scanner) exact(first int64) (segment, error) {
	b := bucketOf(first)
	// Keep only the buckets around the scan position: memory stays flat.
	for k := range s.bucket {
		if k < b-1 {
			delete(s.bucket, k)
		}
	}
	segs, ok := s.bucket[b]
	if !ok {
		var err error
		if segs, err = s.l.listBucket(s.ctx, b); err != nil {
			return segment{}, err
		}
		s.bucket[b] = segs
	}
	for _, seg := range segs {
		if seg.first == first {
			return s.follows(seg)
		}
	}
	// The listing may predate a commit that happened during the scan.
	delete(s.bucket, b)
	segs, err := s.l.listBucket(s.ctx, b)
	if err != nil {
		return segment{}, err
	}
	s.bucket[b] = segs
	for _, seg := range segs {
		if seg.first == first {
			return s.follows(seg)
		}
	}
	return segment{}, fmt.Errorf("pipeline %s: no segment starts at committed seq %d: %w", s.l.pipeline, first, ErrCorrupt)
}

// follows returns seg, the segment named as the one after s.seg, if it can
// be the committed one: fences never go down along the committed log, as
// later writers start past the head of earlier ones. A lower fence means a
// committed segment was removed and an orphan took its name.
//
// Invariant 1: scanners fail loudly rather than read such a segment.
func (s *Scanner) follows(seg segment) (segment, error) {
	if seg.fence > 0 && seg.fence < s.seg.fence {
		return segment{}, fmt.Errorf("segment %s (fence %d) follows %s (fence %d), an orphan where a committed segment should be: %w",
			seg.name, seg.fence, s.seg.name, s.seg.fence, ErrCorrupt)
	}
	return seg, nil
}

func (s *Scanner) readLine() ([]byte, error) {
	line, err := s.br.ReadSlice('\n')
	if err == bufio.ErrBufferFull {
		// A long record: gather it without a fixed limit below maxLine.
		buf := append([]byte(nil), line...)
		for err == bufio.ErrBufferFull {
			if len(buf) > maxLine {
				return nil, fmt.Errorf("record longer than %d bytes: %w", maxLine, ErrCorrupt)
			}
			line, err = s.br.ReadSlice('\n')
			buf = append(buf, line...)
		}
		line = buf
	}
	if err == io.EOF && len(line) > 0 {
		return nil, fmt.Errorf("segment %s: last line has no newline: %w", s.seg.name, ErrCorrupt)
	}
	return line, err
}

func (s *Scanner) closeBody() {
	if s.body != nil {
		s.body.Close()
		s.body = nil
	}
	if s.gz != nil {
		s.gz.Close()
	}
	s.opened = false
}

// Record is the current record; it is overwritten by the next call to Next,
// and its Fields must be copied to be kept.
func (s *Scanner) Record() *Record { return &s.rec }

// Err is the error that stopped the scan, if any.
func (s *Scanner) Err() error { return s.err }

// Close releases the open segment.
func (s *Scanner) Close() error { s.closeBody(); return nil }

// Seek returns the first seq at or below head whose ts is at or after t, or
// head+1 when every record is older. It reads segment metadata through a
// binary search over seqs (a few listings) and then one segment, never the
// whole log.
func (l *Log) Seek(ctx context.Context, t time.Time, head int64) (int64, error) {
	if head < 1 {
		return 1, nil
	}
	cache := map[int64][]segment{}
	// Find the first segment whose last ts is >= t: ts is non-decreasing in
	// seq, so "the segment holding seq s ends at or after t" is monotone in s.
	lo, hi := int64(1), head+1
	for lo < hi {
		mid := lo + (hi-lo)/2
		seg, err := l.locate(ctx, mid, cache)
		if err != nil {
			return 0, err
		}
		if !seg.lastTS.Before(t) {
			hi = seg.first
			if hi < lo {
				hi = lo
			}
		} else {
			lo = seg.last + 1
		}
	}
	if lo > head {
		return head + 1, nil
	}
	seg, err := l.locate(ctx, lo, cache)
	if err != nil {
		return 0, err
	}
	sc := l.Scan(ctx, lo, min(seg.last, head))
	defer sc.Close()
	for sc.Next() {
		if !sc.Record().TS.Before(t) {
			return sc.Record().Seq, nil
		}
	}
	if err := sc.Err(); err != nil {
		return 0, err
	}
	return min(seg.last, head) + 1, nil
}
