// Package checkpoint owns the per-destination state document,
// <pipeline>/dest/<destination>.json: how far the destination has applied the
// log, its replay generation and ownership epoch, and its health. Every write
// is a compare-and-swap; this package never decides what the values should be.
package checkpoint

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/sluicehq/sluice/internal/azstore"
)

// ErrConflict means someone else (a replay, another drain) changed the
// checkpoint since it was loaded.
var ErrConflict = errors.New("checkpoint changed by someone else")

// DeadLetters summarises what was set aside for this destination.
type DeadLetters struct {
	Count    int64 `json:"count"`
	FirstSeq int64 `json:"firstSeq,omitempty"`
	LastSeq  int64 `json:"lastSeq,omitempty"`
}

// Replay is one operator rewind, kept for audit.
type Replay struct {
	At         time.Time `json:"at"`
	By         string    `json:"by,omitempty"`
	From       string    `json:"from,omitempty"` // the time asked for, if any
	FromSeq    int64     `json:"fromSeq"`
	Previous   int64     `json:"previous"` // checkpoint before the rewind
	Generation int64     `json:"generation"`
}

// Checkpoint is one destination's drain state.
type Checkpoint struct {
	// Seq is the last seq applied or dead-lettered (Invariant 4).
	Seq int64 `json:"seq"`
	// Generation counts replays; event ids carry it (DESIGN §3.4).
	Generation int64 `json:"generation"`
	// Epoch is bumped by every drain that takes the destination and by every
	// replay, so that an older drain can be refused (Invariant 5).
	Epoch int64 `json:"epoch"`
	// TS is the capture time of the record at Seq (lag by event time).
	TS          time.Time   `json:"ts,omitzero"`
	UpdatedAt   time.Time   `json:"updatedAt,omitzero"`
	LastError   string      `json:"lastError,omitempty"`
	LastErrorAt time.Time   `json:"lastErrorAt,omitzero"`
	Halted      bool        `json:"halted,omitempty"`
	DeadLetters DeadLetters `json:"deadLetters"`
	// DeadLetterRun counts consecutive batches that dead-lettered records.
	DeadLetterRun int `json:"deadLetterRun,omitempty"`
	// Stalled counts the drains in a row that took the destination and
	// ended without moving Seq while records waited (the destination refused
	// them as stale); whoever moves Seq clears it.
	Stalled Stall    `json:"stalled,omitzero"`
	Replays []Replay `json:"replays,omitempty"`

	etag azstore.ETag
}

// Stall is a run of drain outcomes without progress: how many, since when,
// and the last one's reason.
type Stall struct {
	Count  int       `json:"count"`
	Reason string    `json:"reason,omitempty"`
	Since  time.Time `json:"since,omitzero"`
	Last   time.Time `json:"last,omitzero"`
}

// Note adds one outcome without progress to the run.
func (s *Stall) Note(reason string, now time.Time) {
	if s.Count == 0 {
		s.Since = now
	}
	s.Count++
	s.Reason, s.Last = reason, now
}

// MaxReplays bounds the audit trail kept in the document.
const MaxReplays = 50

// Name is the blob name of a destination's checkpoint.
func Name(pipeline, destination string) string {
	return pipeline + "/dest/" + destination + ".json"
}

// Load reads a destination's checkpoint; one never written is zero.
func Load(ctx context.Context, st *azstore.Store, pipeline, destination string) (*Checkpoint, error) {
	var cp Checkpoint
	etag, err := st.ReadDoc(ctx, Name(pipeline, destination), &cp)
	if errors.Is(err, azstore.ErrNotFound) {
		return &Checkpoint{}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("load checkpoint of %s/%s: %w", pipeline, destination, err)
	}
	cp.etag = etag
	return &cp, nil
}

// Save writes cp if nobody changed it since it was loaded, and remembers the
// new version. A lost race is ErrConflict.
//
// Invariant 5: checkpoints move by compare-and-swap, and an operator's rewind
// wins — a drain whose save fails here must stop, never merge.
func Save(ctx context.Context, st *azstore.Store, pipeline, destination string, cp *Checkpoint) error {
	if len(cp.Replays) > MaxReplays {
		cp.Replays = cp.Replays[len(cp.Replays)-MaxReplays:]
	}
	etag, err := st.WriteDoc(ctx, Name(pipeline, destination), cp, cp.etag)
	if errors.Is(err, azstore.ErrConflict) {
		return fmt.Errorf("save checkpoint of %s/%s: %w", pipeline, destination, ErrConflict)
	}
	if err != nil {
		return fmt.Errorf("save checkpoint of %s/%s: %w", pipeline, destination, err)
	}
	cp.etag = etag
	return nil
}

// Stalls is the run of outcomes without progress of the wake-ups that could
// not write the checkpoint: those answered busy (another drain holds the
// lease) and drains that lost their checkpoint to someone else (rewound).
// They must not touch the checkpoint — its owner takes any change for an
// operator's rewind and stops (Invariant 5) — so they keep this document
// next to it, <pipeline>/dest/<destination>.stalls.json. It counts only
// while the checkpoint stays at Seq in Generation: a checkpoint that moved
// ends the run, and so does a replay, even one back to the same seq.
type Stalls struct {
	Seq        int64 `json:"seq"`
	Generation int64 `json:"generation"`
	Stall
	// Busy is how many outcomes of the run were wake-ups answered busy.
	// A busy answer says only that a drain holds the lease, which a healthy
	// drain inside a slow batch does too: status weighs them by time, not
	// by number.
	Busy int `json:"busy,omitempty"`

	etag azstore.ETag
}

// At reports whether the run was seen with the checkpoint where cp is.
func (s *Stalls) At(cp *Checkpoint) bool {
	return s.Seq == cp.Seq && s.Generation == cp.Generation
}

// StallsName is the blob name of a destination's stalls document.
func StallsName(pipeline, destination string) string {
	return pipeline + "/dest/" + destination + ".stalls.json"
}

// LoadStalls reads a destination's stalls; one never written is zero.
func LoadStalls(ctx context.Context, st *azstore.Store, pipeline, destination string) (*Stalls, error) {
	var s Stalls
	etag, err := st.ReadDoc(ctx, StallsName(pipeline, destination), &s)
	if errors.Is(err, azstore.ErrNotFound) {
		return &Stalls{}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("load stalls of %s/%s: %w", pipeline, destination, err)
	}
	s.etag = etag
	return &s, nil
}

// NoteStall adds one outcome without progress, seen with the checkpoint
// where at is (seq and generation), to a destination's stalls; a run kept
// for another seq or generation starts over. busy marks a wake-up answered
// busy. Writers race by compare-and-swap and retry a few times; the
// document is a diagnosis, so a write that keeps losing is given up.
func NoteStall(ctx context.Context, st *azstore.Store, pipeline, destination string, at *Checkpoint, reason string, busy bool, now time.Time) error {
	var err error
	for range 4 {
		var s *Stalls
		if s, err = LoadStalls(ctx, st, pipeline, destination); err != nil {
			return err
		}
		if !s.At(at) {
			s.Seq, s.Generation, s.Stall, s.Busy = at.Seq, at.Generation, Stall{}, 0
		}
		s.Note(reason, now)
		if busy {
			s.Busy++
		}
		if _, err = st.WriteDoc(ctx, StallsName(pipeline, destination), s, s.etag); !errors.Is(err, azstore.ErrConflict) {
			break
		}
	}
	if err != nil {
		return fmt.Errorf("note a stall of %s/%s: %w", pipeline, destination, err)
	}
	return nil
}
