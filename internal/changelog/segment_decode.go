package changelog

import (
	"bufio"
	"fmt"
	"github.com/klauspost/compress/gzip"
	"io"
)

// startSegment points the scanner at an opened segment body: the gzip and
// line-reading layers every record of seg is decoded through. It owns body
// from here on (closed by closeBody, or now when the gzip header is bad).
func (s *Scanner) startSegment(body io.ReadCloser, seg segment) error {
	gz, err := gzip.NewReader(body)
	if err != nil {
		body.Close()
		return fmt.Errorf("open segment %s: %v: %w", seg.name, err, ErrCorrupt)
	}
	s.body, s.gz, s.seg, s.opened, s.segNext = body, gz, seg, true, seg.first
	if s.br == nil {
		s.br = bufio.NewReaderSize(gz, 256<<10)
	} else {
		s.br.Reset(gz)
	}
	return nil
}

// decodeSegment decodes one segment body (gzip NDJSON, as the Appender writes
// it) whose metadata says it holds first..last, and calls fn with each record
// in order. It runs the Scanner's own code after the blob read — the gzip
// header check, line reading with its length bound, record decoding, and the
// seq checks (every seq of first..last exactly once, in order, nothing
// missing at the end) — so that code can be exercised without storage.
// The record passed to fn is overwritten by the next one.
func decodeSegment(body io.Reader, name string, first, last int64, fn func(*Record) error) error {
	if first < 1 || last < first {
		return fmt.Errorf("segment %s: bad seq range %d..%d", name, first, last)
	}
	// A scanner that ends at the segment's last seq never looks for another
	// segment, so it needs no Log.
	s := &Scanner{next: first, to: last}
	if err := s.startSegment(io.NopCloser(body), segment{name: name, first: first, last: last}); err != nil {
		return err
	}
	defer s.Close()
	for s.Next() {
		if err := fn(s.Record()); err != nil {
			return err
		}
	}
	return s.Err()
}
