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
	// State sums up the rest: StateOK, StateHalted, StateStuck, StateError
	// or StateUnknown.
	State string `json:"state"`
	// StateError says why State is StateUnknown.
	StateError  string    `json:"stateError,omitempty"`
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
	StateOK      = "ok"
	StateHalted  = "halted"  // stopped on rejected records until a replay or `sluice write`
	StateStuck   = "stuck"   // behind, and the checkpoint does not move (see health)
	StateError   = "error"   // the last drain failed (LastError)
	StateUnknown = "unknown" // status could not tell (StateError says why)
)

// DefaultLeaseDuration is the destination lease's duration unless the
// Drainer sets another.
const DefaultLeaseDuration = 30 * time.Second

// StuckAfter is how many refused or rewound drains in a row, without the
// checkpoint moving, make a destination that is behind its head stuck.
const StuckAfter = 3

// StuckFor is how long a destination that is behind must have kept its
// checkpoint still before wake-ups answered busy make it stuck — well over a
// lease duration: a healthy drain inside one slow batch renews its lease
// and has every wake-up answered busy meanwhile. A checkpoint that moved
// within StuckFor is never stuck.
const StuckFor = 2 * DefaultLeaseDuration

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
			if stalls, err := checkpoint.LoadStalls(ctx, st, p.Name, d.Name); err != nil {
				// The stalls are a diagnosis: without them this
				// destination's health is unknown, and nothing else.
				ds.State, ds.StateError = StateUnknown, err.Error()
			} else {
				ds.Stalled, ds.State = health(cp, stalls, ds.LagRecords, now)
			}
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
// counts only while the checkpoint stays at the seq and generation it was
// seen at, and says what state the destination is in.
//
// A destination behind its head is stuck when its checkpoint has not moved
// within StuckFor and either StuckAfter refused or rewound drains in a row
// found it there, or wake-ups were answered busy while it stood still for
// longer than StuckFor. Busy answers count by time, not by number: they
// say only that a drain holds the lease.
func health(cp *checkpoint.Checkpoint, side *checkpoint.Stalls, lag int64, now time.Time) (*checkpoint.Stall, string) {
	var stall *checkpoint.Stall
	counted, busy := 0, false
	if lag > 0 {
		s := cp.Stalled
		counted = s.Count
		if side.Count > 0 && side.At(cp) {
			if s.Count == 0 || side.Since.Before(s.Since) {
				s.Since = side.Since
			}
			if side.Last.After(s.Last) {
				s.Reason, s.Last = side.Reason, side.Last
			}
			s.Count += side.Count
			counted += side.Count - side.Busy
			busy = side.Busy > 0
		}
		if s.Count > 0 {
			stall = &s
		}
	}
	// When the checkpoint last moved: forward with a batch, or back with a
	// replay. One that never moved stood still at least since the run of
	// busy answers began.
	moved := cp.UpdatedAt
	if n := len(cp.Replays); n > 0 && cp.Replays[n-1].At.After(moved) {
		moved = cp.Replays[n-1].At
	}
	still := moved
	if still.IsZero() && busy {
		still = side.Since
	}
	stuck := false
	switch {
	case stall == nil || !moved.IsZero() && now.Sub(moved) <= StuckFor:
	case counted >= StuckAfter:
		stuck = true
	case busy && now.Sub(still) > StuckFor:
		stuck = true
		stall.Reason = stallBusy
	}
	switch {
	case cp.Halted:
		return stall, StateHalted
	case stuck:
		return stall, StateStuck
	case cp.LastError != "":
		return stall, StateError
	}
	return stall, StateOK
}
