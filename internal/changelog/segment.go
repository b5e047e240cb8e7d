package changelog

import (
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Segment layout. Segments live at
//
//	<pipeline>/log/<bucket, 10 digits>/<first seq, 20 digits>.ndjson.gz
//
// where bucket = firstSeq / BucketSize. DESIGN suggests a flat
// <pipeline>/log/<first seq>.ndjson.gz; the bucket level lets a scan or a
// seek list only the few blobs around a seq instead of the whole log, which
// keeps the cost of finding a position flat however long the log grows.
const (
	// BucketSize is the seq range of one listing prefix. A segment never
	// holds more records than this, so a segment never spans a whole bucket
	// and the segment holding a seq is in its own bucket or the one before.
	BucketSize = 10000
	// MaxSegmentRecords caps a segment; equal to BucketSize (see above).
	MaxSegmentRecords = BucketSize
	// MaxSegmentBytes caps a segment's compressed size, so that a writer's
	// buffer stays small however large the records are.
	MaxSegmentBytes = 8 << 20
)

// Segment metadata keys (Azure metadata names must be C# identifiers).
const (
	mdFirst   = "firstseq"
	mdLast    = "lastseq"
	mdFirstTS = "firstts"
	mdLastTS  = "lastts"
	mdCount   = "count"
	mdFence   = "fence"
	mdRun     = "runid"
)

// segment is one segment blob as listed.
type segment struct {
	name        string
	etag        string
	first, last int64
	firstTS     time.Time
	lastTS      time.Time
	fence       int64
}

func (l *Log) logPrefix() string { return l.pipeline + "/log/" }

func (l *Log) bucketPrefix(b int64) string {
	return fmt.Sprintf("%s%010d/", l.logPrefix(), b)
}

func (l *Log) segmentName(first int64) string {
	return fmt.Sprintf("%s%020d.ndjson.gz", l.bucketPrefix(bucketOf(first)), first)
}

func bucketOf(seq int64) int64 { return seq / BucketSize }

// parseSegment reads a listed blob's name and metadata. A blob that does not
// look like a segment is an error: something else wrote into the log prefix.
func parseSegment(name, etag string, md map[string]string) (segment, error) {
	base := name[strings.LastIndexByte(name, '/')+1:]
	firstStr, ok := strings.CutSuffix(base, ".ndjson.gz")
	if !ok {
		return segment{}, fmt.Errorf("unexpected blob %s in the log", name)
	}
	first, err := strconv.ParseInt(firstStr, 10, 64)
	if err != nil {
		return segment{}, fmt.Errorf("unexpected blob %s in the log", name)
	}
	s := segment{name: name, etag: etag, first: first}
	if s.last, err = strconv.ParseInt(md[mdLast], 10, 64); err != nil {
		return segment{}, fmt.Errorf("segment %s: bad %s metadata %q", name, mdLast, md[mdLast])
	}
	if v, err := strconv.ParseInt(md[mdFirst], 10, 64); err != nil || v != first {
		return segment{}, fmt.Errorf("segment %s: %s metadata %q does not match its name", name, mdFirst, md[mdFirst])
	}
	if s.last < s.first {
		return segment{}, fmt.Errorf("segment %s: last seq %d before first %d", name, s.last, s.first)
	}
	s.fence, _ = strconv.ParseInt(md[mdFence], 10, 64)
	if s.firstTS, err = time.Parse(time.RFC3339Nano, md[mdFirstTS]); err != nil {
		return segment{}, fmt.Errorf("segment %s: bad %s metadata %q", name, mdFirstTS, md[mdFirstTS])
	}
	if s.lastTS, err = time.Parse(time.RFC3339Nano, md[mdLastTS]); err != nil {
		return segment{}, fmt.Errorf("segment %s: bad %s metadata %q", name, mdLastTS, md[mdLastTS])
	}
	return s, nil
}
