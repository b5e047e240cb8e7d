// Package sink defines what a destination must do with committed change
// records, and the error classes the drain relies on. It owns no delivery
// logic itself: retry, dead-lettering and checkpoints live in the engine.
package sink

import (
	"context"
	"errors"
	"fmt"

	"github.com/sluicehq/sluice/internal/changelog"
)

// Batch is an ordered run of committed records for one destination.
// Records are in seq order and contiguous; the batch may repeat records the
// sink has already applied (after a crash or a replay), so applying must be
// idempotent and guarded by seq.
type Batch struct {
	Pipeline    string
	Destination string
	// Generation is the destination's replay generation; event ids carry it
	// (DESIGN §3.4) so receivers that deduplicate still accept a replay.
	Generation int64
	// Epoch is the drain's ownership epoch; sinks that can store it
	// transactionally (SQL) refuse a batch older than the newest epoch they saw
	// (Invariant 5) and answer ErrStaleEpoch.
	Epoch   int64
	Records []changelog.Record
}

// Sink delivers batches to one destination.
//
// Apply returns nil when every record was applied. It returns a *RecordErrors
// when some records were permanently rejected (bad data) and all others were
// applied; the engine dead-letters exactly those. Any other error means the
// destination itself failed (network, outage, authentication, DDL race):
// nothing is known to be applied and the whole batch will be retried.
type Sink interface {
	Apply(ctx context.Context, b Batch) error
	Close() error
}

// ErrStaleEpoch means a newer drain (or an operator's replay) owns the
// destination; the caller must stop without advancing its checkpoint.
var ErrStaleEpoch = errors.New("stale epoch: a newer drain or a replay owns this destination")

// RecordError is one record a destination rejected for good.
type RecordError struct {
	Seq    int64
	Key    string
	Reason string
}

// RecordErrors lists the records of a batch that were rejected for good; the
// rest of the batch was applied.
type RecordErrors struct {
	Failed []RecordError
}

func (e *RecordErrors) Error() string {
	if len(e.Failed) == 1 {
		f := e.Failed[0]
		return fmt.Sprintf("record seq %d key %q rejected: %s", f.Seq, f.Key, f.Reason)
	}
	return fmt.Sprintf("%d records rejected, first seq %d key %q: %s",
		len(e.Failed), e.Failed[0].Seq, e.Failed[0].Key, e.Failed[0].Reason)
}

// AsRecordErrors reports whether err carries per-record rejections.
func AsRecordErrors(err error) (*RecordErrors, bool) {
	var re *RecordErrors
	ok := errors.As(err, &re)
	return re, ok
}
