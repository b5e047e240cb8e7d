package changelog

import (
	"bytes"
	"encoding/json"
	"fmt"
	"time"
)

// wireRecord is Record as one NDJSON line: ts always UTC with milliseconds.
type wireRecord struct {
	Seq    int64           `json:"seq"`
	TS     string          `json:"ts"`
	Op     Op              `json:"op"`
	Key    string          `json:"key"`
	Source Source          `json:"source"`
	Fields json.RawMessage `json:"fields,omitempty"`
}

// MarshalJSON writes the record exactly as DESIGN §3.3 shows it.
func (r Record) MarshalJSON() ([]byte, error) {
	return appendRecordJSON(nil, &r)
}

// UnmarshalJSON reads one record and checks the envelope: a record with a
// bad op, no key or an unparseable ts is an error, never a silent zero.
func (r *Record) UnmarshalJSON(data []byte) error {
	if err := decodeFast(data, r); err == nil {
		return nil
	}
	return r.decodeSlow(data)
}

func (r *Record) decodeSlow(data []byte) error {
	var w wireRecord
	if err := json.Unmarshal(data, &w); err != nil {
		return err
	}
	ts, err := time.Parse(time.RFC3339Nano, w.TS)
	if err != nil {
		return fmt.Errorf("record seq %d: bad ts %q", w.Seq, w.TS)
	}
	if w.Op != OpUpsert && w.Op != OpDelete {
		return fmt.Errorf("record seq %d: bad op %q", w.Seq, w.Op)
	}
	if w.Seq < 1 {
		return fmt.Errorf("record seq %d: seq must be >= 1", w.Seq)
	}
	fields := w.Fields
	if len(fields) == 0 || bytes.Equal(fields, []byte("null")) {
		fields = nil
	}
	*r = Record{Seq: w.Seq, TS: ts, Op: w.Op, Key: w.Key, Source: w.Source, Fields: fields}
	return nil
}

// AppendLine appends the record and a newline to buf.
func AppendLine(buf []byte, r *Record) ([]byte, error) {
	start := len(buf)
	buf, err := appendRecordJSON(buf, r)
	if err != nil {
		return buf[:start], fmt.Errorf("encode record seq %d: fields are not valid JSON: %w", r.Seq, err)
	}
	return append(buf, '\n'), nil
}
