package changelog

import (
	"bytes"
	"compress/gzip"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"
)

// gzipped compresses b as the Appender does.
func gzipped(t testing.TB, b []byte) []byte {
	var buf bytes.Buffer
	zw, err := gzip.NewWriterLevel(&buf, gzip.BestSpeed)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := zw.Write(b); err != nil {
		t.Fatal(err)
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// segmentLines encodes records first..first+n-1 with AppendLine.
func segmentLines(t testing.TB, first int64, n int) []byte {
	var out []byte
	ts := time.Date(2026, 11, 25, 8, 0, 1, 123e6, time.UTC)
	for i := range n {
		r := Record{Seq: first + int64(i), TS: ts, Op: OpUpsert, Key: "k", Source: Source{Site: "s", List: "l"},
			Fields: json.RawMessage(`{"Title":"x"}`)}
		var err error
		if out, err = AppendLine(out, &r); err != nil {
			t.Fatal(err)
		}
	}
	return out
}

func TestDecodeSegment(t *testing.T) {
	t.Parallel()
	body := gzipped(t, segmentLines(t, 5, 3))
	var seqs []int64
	if err := decodeSegment(bytes.NewReader(body), "p/log/x", 5, 7, func(r *Record) error {
		seqs = append(seqs, r.Seq)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if len(seqs) != 3 || seqs[0] != 5 || seqs[2] != 7 {
		t.Fatalf("seqs = %v", seqs)
	}
	for name, c := range map[string]struct {
		body        []byte
		first, last int64
		want        string
	}{
		"not gzip":       {[]byte("{}\n"), 1, 1, "open segment p/log/x"},
		"short":          {body, 5, 8, "ends at seq 7, its metadata says 8"},
		"gap":            {body, 4, 7, "expected seq 4, found 5"},
		"no newline":     {gzipped(t, bytes.TrimSuffix(segmentLines(t, 1, 1), []byte("\n"))), 1, 1, "no newline"},
		"not a record":   {gzipped(t, []byte("[1]\n")), 1, 1, "segment p/log/x"},
		"truncated gzip": {body[:len(body)/2], 5, 7, "read segment p/log/x"},
	} {
		err := decodeSegment(bytes.NewReader(c.body), "p/log/x", c.first, c.last, func(*Record) error { return nil })
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: err = %v, want one containing %q", name, err, c.want)
		}
	}
}

// FuzzSegment feeds arbitrary bytes through the Scanner's segment decoding
// (decodeSegment). With raw false the input is the NDJSON text, compressed
// here, so the fuzzer explores records; with raw true it is the blob body
// itself (gzip framing). Nothing may panic, and a segment that decodes must
// have yielded every seq of its range exactly once, in order, each record
// valid enough to be written again.
func FuzzSegment(f *testing.F) {
	f.Add(segmentLines(f, 1, 3), false, uint16(0), uint16(2))
	f.Add(gzipped(f, segmentLines(f, 7, 2)), true, uint16(6), uint16(1))
	f.Add([]byte(`{"seq":1,"ts":"2026-11-25T08:00:01.123Z","op":"delete","key":"3","source":{}}`+"\n"), false, uint16(0), uint16(0))
	// One compressor per worker, reset for each input: a new one costs
	// about a megabyte, which would dominate every exec.
	var buf bytes.Buffer
	zw, _ := gzip.NewWriterLevel(&buf, gzip.BestSpeed)
	f.Fuzz(func(t *testing.T, data []byte, raw bool, first0, span uint16) {
		body := data
		if !raw {
			buf.Reset()
			zw.Reset(&buf)
			_, _ = zw.Write(data)
			_ = zw.Close()
			body = buf.Bytes()
		}
		first := int64(first0) + 1
		last := first + int64(span%256)
		next := first
		err := decodeSegment(bytes.NewReader(body), "p/log/seg", first, last, func(r *Record) error {
			if r.Seq != next {
				t.Fatalf("record seq %d, want %d", r.Seq, next)
			}
			next++
			if r.Op != OpUpsert && r.Op != OpDelete {
				t.Fatalf("record %d has op %q", r.Seq, r.Op)
			}
			line, err := AppendLine(nil, r)
			if err != nil {
				t.Fatalf("record %d decoded but cannot be written again: %v", r.Seq, err)
			}
			var back Record
			if err := back.UnmarshalJSON(line[:len(line)-1]); err != nil || back.Seq != r.Seq || back.Key != r.Key || !back.TS.Equal(r.TS) {
				t.Fatalf("record %d does not survive a round trip: %v (%s)", r.Seq, err, line)
			}
			return nil
		})
		if err != nil {
			if !strings.Contains(err.Error(), "p/log/seg") {
				t.Fatalf("error does not name the segment: %v", err)
			}
			if errors.Is(err, ErrCorrupt) && next > last {
				t.Fatalf("every record decoded, yet ErrCorrupt: %v", err)
			}
			return
		}
		if next != last+1 {
			t.Fatalf("decoded up to seq %d, want %d", next-1, last)
		}
	})
}
