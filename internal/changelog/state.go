package changelog

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/sluicehq/sluice/internal/azstore"
)

// ErrConflict means another process changed the pipeline state first: a
// second writer committed, or fenced this one out. The loser must stop; its
// uncommitted segments are orphans the next writer removes.
var ErrConflict = errors.New("another writer changed the pipeline state first")

// Head is the committed end of the log. Readers never look past it.
type Head struct {
	Seq int64     `json:"seq"`
	TS  time.Time `json:"ts,omitzero"`
}

// SourceState is the read path's part of the pipeline state: where the
// source cursor stands and what it was made for.
type SourceState struct {
	// Cursor is the Graph link to follow next: the link after the last
	// complete page inside the committed head (Invariant 2).
	Cursor string `json:"cursor,omitempty"`
	// SiteID and ListID cache the resolved Graph ids.
	SiteID string `json:"siteId,omitempty"`
	ListID string `json:"listId,omitempty"`
	// Fingerprint identifies the site, list and fields the cursor was made for.
	Fingerprint string `json:"fingerprint,omitempty"`
	// RoundStartSeq is the head before a full round (initial enumeration or
	// resync) began; 0 when no full round is in progress.
	RoundStartSeq int64 `json:"roundStartSeq,omitempty"`
	// FullRound is true while a full enumeration is in progress.
	FullRound bool `json:"fullRound,omitempty"`
	// RoundSeen names the newest blob of keys a full round delivered
	// unchanged (and so did not log); each such blob names the one before.
	// It moves with the head, so it always matches the cursor.
	RoundSeen string `json:"roundSeen,omitempty"`
	// ThrottledUntil is when Graph allows the next request.
	ThrottledUntil time.Time `json:"throttledUntil,omitzero"`
	// CursorAt is when the cursor was last advanced to a deltaLink.
	CursorAt time.Time `json:"cursorAt,omitzero"`
	// LastRead and LastOutcome describe the most recent read pass.
	LastRead    time.Time `json:"lastRead,omitzero"`
	LastOutcome string    `json:"lastOutcome,omitempty"`
}

// State is the pipeline state document, <pipeline>/state.json.
type State struct {
	Head Head `json:"head"`
	// Fence counts the writers that took over the log. Each writer bumps it
	// (compare-and-swap) before touching segments, which both stops older
	// writers from committing and orders segments: of two segments holding
	// the same seq, the committed one has the higher fence.
	Fence int64 `json:"fence"`
	// FencedFrom is the first seq the writer holding Fence may write (the
	// head when it took over, plus one); 0 in a state saved before the field
	// existed. The next writer looks for orphans from there (removeOrphans).
	FencedFrom int64       `json:"fencedFrom,omitempty"`
	Source     SourceState `json:"source"`

	etag azstore.ETag
}

func (l *Log) stateName() string { return l.pipeline + "/state.json" }

// LoadState reads the pipeline state; a pipeline never written has a zero
// state (head 0).
func (l *Log) LoadState(ctx context.Context) (*State, error) {
	var st State
	etag, err := l.store.ReadDoc(ctx, l.stateName(), &st)
	if errors.Is(err, azstore.ErrNotFound) {
		return &State{}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("load state of pipeline %s: %w", l.pipeline, err)
	}
	st.etag = etag
	return &st, nil
}

// SaveState writes st if nobody changed it since it was loaded
// (compare-and-swap), and remembers the new version in st. A lost race is
// ErrConflict.
//
// Invariant 2: the head moves only by compare-and-swap — every state write,
// including a head move, goes through here with If-Match (or create-only).
func (l *Log) SaveState(ctx context.Context, st *State) error {
	etag, err := l.store.WriteDoc(ctx, l.stateName(), st, st.etag)
	if errors.Is(err, azstore.ErrConflict) {
		return fmt.Errorf("save state of pipeline %s: %w", l.pipeline, ErrConflict)
	}
	if err != nil {
		return fmt.Errorf("save state of pipeline %s: %w", l.pipeline, err)
	}
	st.etag = etag
	return nil
}
