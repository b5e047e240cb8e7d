// Package changelog owns a pipeline's durable change log: the record envelope,
// segment encoding, and append/commit/scan/seek over blobs. It never rewrites a
// committed segment and never lets a reader see past the committed head.
package changelog

import (
	"encoding/json"
	"time"
)

// Op is what a change record does to its key.
type Op string

// The two operations a change record can carry (DESIGN §3.3).
const (
	OpUpsert Op = "upsert"
	OpDelete Op = "delete"
)

// Source says where a record came from in SharePoint.
type Source struct {
	Site     string `json:"site,omitempty"`
	List     string `json:"list,omitempty"`
	ETag     string `json:"etag,omitempty"`
	Modified string `json:"modified,omitempty"`
}

// Record is one change, exactly the envelope of DESIGN §3.3 (a contract).
//
// Fields is kept as raw JSON: sinks that forward records (HTTP, Service Bus)
// never pay for decoding it, and values stay exactly as Graph returned them.
type Record struct {
	Seq    int64           `json:"seq"`
	TS     time.Time       `json:"ts"`
	Op     Op              `json:"op"`
	Key    string          `json:"key"`
	Source Source          `json:"source"`
	Fields json.RawMessage `json:"fields,omitempty"`
}

// TSFormat is how ts is written: UTC with milliseconds, as in DESIGN §3.3.
const TSFormat = "2006-01-02T15:04:05.000Z"
