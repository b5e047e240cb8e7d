package engine

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/sluicehq/sluice/internal/azstore"
	"github.com/sluicehq/sluice/internal/changelog"
	"github.com/sluicehq/sluice/internal/checkpoint"
	"github.com/sluicehq/sluice/internal/config"
)

// ReplayRequest asks to rewind one destination. Exactly one of From and
// FromSeq is set.
type ReplayRequest struct {
	Pipeline    *config.Pipeline
	Destination *config.Destination
	From        time.Time
	FromSeq     int64
	DryRun      bool
	// By names who asked, for the audit trail (a user, "http", "cli").
	By string
	// Queue receives the wake-up; default WriteQueue.
	Queue string
}

// ReplayResult is what replay answers (DESIGN §3.5).
type ReplayResult struct {
	FromSeq    int64 `json:"fromSeq"`
	ToSeq      int64 `json:"toSeq"`
	Records    int64 `json:"records"`
	DryRun     bool  `json:"dryRun"`
	Generation int64 `json:"generation"`
}

// ErrBadRequest marks a replay request that cannot be served as asked.
var ErrBadRequest = errors.New("bad replay request")

// Replay rewinds a destination's checkpoint and wakes its writer.
//
// Invariant 6: replay only moves back — the new checkpoint is
// min(current, target-1) — and bumps the generation, so receivers that
// deduplicate by event id accept the replayed records. It needs only the
// checkpoint's compare-and-swap (Invariant 5), so it never waits behind a
// running drain; that drain's next checkpoint write fails and it stops.
func Replay(ctx context.Context, st *azstore.Store, req ReplayRequest, now time.Time) (ReplayResult, error) {
	if (req.From.IsZero()) == (req.FromSeq == 0) {
		return ReplayResult{}, fmt.Errorf("%w: give exactly one of a time (from) and a sequence number (fromSeq)", ErrBadRequest)
	}
	if req.FromSeq < 0 {
		return ReplayResult{}, fmt.Errorf("%w: fromSeq %d must be 1 or more", ErrBadRequest, req.FromSeq)
	}
	p, d := req.Pipeline.Name, req.Destination.Name
	lg := changelog.New(st, p, changelog.Options{})
	state, err := lg.LoadState(ctx)
	if err != nil {
		return ReplayResult{}, err
	}
	head := state.Head.Seq
	from := req.FromSeq
	if from > head+1 {
		return ReplayResult{}, fmt.Errorf("%w: fromSeq %d is past the head of pipeline %s (%d)", ErrBadRequest, from, p, head)
	}
	if !req.From.IsZero() {
		if from, err = lg.Seek(ctx, req.From, head); err != nil {
			return ReplayResult{}, fmt.Errorf("replay %s/%s: find the first record at or after %s: %w", p, d, req.From.Format(time.RFC3339), err)
		}
	}
	for {
		cp, err := checkpoint.Load(ctx, st, p, d)
		if err != nil {
			return ReplayResult{}, err
		}
		target := min(cp.Seq, from-1)
		res := ReplayResult{FromSeq: target + 1, ToSeq: head, Records: max(0, head-target), DryRun: req.DryRun, Generation: cp.Generation + 1}
		if req.DryRun || target == cp.Seq && from > cp.Seq {
			// A dry run, or nothing to rewind: the checkpoint is already
			// before the target, so the generation stays.
			res.Generation = cp.Generation
			if !req.DryRun && cp.Seq < head {
				_ = st.Enqueue(ctx, queueOr(req.Queue), WakeUp{Pipeline: p, Destination: d, Head: head})
			}
			return res, nil
		}
		audit := checkpoint.Replay{At: now.UTC(), By: req.By, FromSeq: target + 1, Previous: cp.Seq, Generation: cp.Generation + 1}
		if !req.From.IsZero() {
			audit.From = req.From.UTC().Format(time.RFC3339Nano)
		}
		cp.Seq = target
		cp.TS = time.Time{}
		cp.Generation++
		cp.Epoch++ // Invariant 5: a drain still running under the old epoch is refused by SQL sinks.
		cp.Halted, cp.DeadLetterRun, cp.LastError, cp.Stalled = false, 0, "", checkpoint.Stall{}
		cp.Replays = append(cp.Replays, audit)
		err = checkpoint.Save(ctx, st, p, d, cp)
		if errors.Is(err, checkpoint.ErrConflict) {
			continue // a drain moved it meanwhile; the rewind wins on the next try
		}
		if err != nil {
			return ReplayResult{}, err
		}
		if err := st.Enqueue(ctx, queueOr(req.Queue), WakeUp{Pipeline: p, Destination: d, Head: head}); err != nil {
			return res, fmt.Errorf("replay %s/%s: rewound, but the wake-up could not be enqueued (the next read tick will wake it): %w", p, d, err)
		}
		return res, nil
	}
}

func queueOr(q string) string {
	if q == "" {
		return WriteQueue
	}
	return q
}
