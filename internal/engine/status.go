// Package engine runs sluice's protocol (DESIGN §4): the read pass, the drain
// of each destination, replay and status. It talks to storage through the
// changelog and checkpoint packages and to the outside world through small
// interfaces; it never imports an SDK.
package engine

import (
	"context"
	"time"

	"github.com/sluicehq/sluice/internal/azstore"
	"github.com/sluicehq/sluice/internal/changelog"
	"github.com/sluicehq/sluice/internal/checkpoint"
	"github.com/sluicehq/sluice/internal/config"
)

// PipelineStatus is what `sluice status --json` prints for one pipeline.
type PipelineStatus struct {
	Name         string              `json:"name"`
	Head         changelog.Head      `json:"head"`
	LastRead     time.Time           `json:"lastRead,omitzero"`
	LastOutcome  string              `json:"lastOutcome,omitempty"`
	CursorAge    string              `json:"cursorAge,omitempty"`
	Throttled    time.Time           `json:"throttledUntil,omitzero"`
	Destinations []DestinationStatus `json:"destinations"`
}

// DestinationStatus is one destination's progress and health.
type DestinationStatus struct {
	Name       string  `json:"name"`
	Type       string  `json:"type"`
	Checkpoint int64   `json:"checkpoint"`
	Generation int64   `json:"generation"`
	LagRecords int64   `json:"lagRecords"`
	LagSeconds float64 `json:"lagSeconds"`
	// State sums up the rest: StateOK, StateHalted, StateStuck or StateError.
	State       string    `json:"state"`
	Halted      bool      `json:"halted,omitempty"`
	LastError   string    `json:"lastError,omitempty"`
	LastErrorAt time.Time `json:"lastErrorAt,omitzero"`
	// Stalled is the run of drains and wake-ups that ended without moving
	// the checkpoint while records waited (refused, rewound, busy), if any.
	Stalled     *checkpoint.Stall      `json:"stalled,omitempty"`
	DeadLetters checkpoint.DeadLetters `json:"deadLetters"`
}

// Destination states in status.
const (
	StateOK     = "ok"
	StateHalted = "halted" // stopped on rejected records until a replay or `sluice write`
	StateStuck  = "stuck"  // StuckAfter or more outcomes in a row without progress
	StateError  = "error"  // the last drain failed (LastError)
)

// StuckAfter is how many outcomes without progress in a row (a refused
// epoch, a rewind, a wake-up answered busy) make a destination that is
// behind its head stuck.
const StuckAfter = 3

// Status reports heads, checkpoints, lag and last errors of the pipelines
// (all when only is empty).
func Status(ctx context.Context, st *azstore.Store, cfg *config.Config, only string, now time.Time) ([]PipelineStatus, error) {
	var out []PipelineStatus
	for _, p := range cfg.Pipelines {
		if only != "" && p.Name != only {
			continue
		}
		ps, err := changelog.New(st, p.Name, changelog.Options{}).LoadState(ctx)
		if err != nil {
			return nil, err
		}
		s := PipelineStatus{Name: p.Name, Head: ps.Head, LastRead: ps.Source.LastRead, LastOutcome: ps.Source.LastOutcome,
			Throttled: ps.Source.ThrottledUntil, Destinations: []DestinationStatus{}}
		if !ps.Source.CursorAt.IsZero() {
			s.CursorAge = now.Sub(ps.Source.CursorAt).Round(time.Second).String()
		}
		for _, d := range p.Destinations {
			cp, err := checkpoint.Load(ctx, st, p.Name, d.Name)
			if err != nil {
				return nil, err
			}
			ds := DestinationStatus{Name: d.Name, Type: d.Type, Checkpoint: cp.Seq, Generation: cp.Generation,
				LagRecords: max(0, ps.Head.Seq-cp.Seq), Halted: cp.Halted, LastError: cp.LastError,
				LastErrorAt: cp.LastErrorAt, DeadLetters: cp.DeadLetters}
			stalls, err := checkpoint.LoadStalls(ctx, st, p.Name, d.Name)
			if err != nil {
				return nil, err
			}
			ds.Stalled, ds.State = health(cp, stalls, ds.LagRecords)
			// Lag by event time: how far behind the head's capture time the
			// destination's last applied record is. An idle pipeline whose
			// destinations are caught up is not behind, however old its head.
			if ds.LagRecords > 0 && !cp.TS.IsZero() {
				ds.LagSeconds = ps.Head.TS.Sub(cp.TS).Seconds()
			} else if ds.LagRecords > 0 {
				// Nothing applied yet: measure from the oldest record waiting.
				lg := changelog.New(st, p.Name, changelog.Options{})
				sc := lg.Scan(ctx, cp.Seq+1, cp.Seq+1)
				if sc.Next() {
					ds.LagSeconds = ps.Head.TS.Sub(sc.Record().TS).Seconds()
				}
				sc.Close()
			}
			s.Destinations = append(s.Destinations, ds)
		}
		out = append(out, s)
	}
	return out, nil
}

// health joins the stall counted on the checkpoint (drains it refused) with
// the one kept beside it (wake-ups answered busy, rewound drains), which
// counts only while the checkpoint has not moved since, and says what state
// the destination is in.
func health(cp *checkpoint.Checkpoint, side *checkpoint.Stalls, lag int64) (*checkpoint.Stall, string) {
	var stall *checkpoint.Stall
	if lag > 0 {
		s := cp.Stalled
		if side.Seq == cp.Seq && side.Count > 0 {
			if s.Count == 0 || side.Since.Before(s.Since) {
				s.Since = side.Since
			}
			if side.Last.After(s.Last) {
				s.Reason, s.Last = side.Reason, side.Last
			}
			s.Count += side.Count
		}
		if s.Count > 0 {
			stall = &s
		}
	}
	switch {
	case cp.Halted:
		return stall, StateHalted
	case stall != nil && stall.Count >= StuckAfter:
		return stall, StateStuck
	case cp.LastError != "":
		return stall, StateError
	}
	return stall, StateOK
}
