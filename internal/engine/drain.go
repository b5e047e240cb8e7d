package engine

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"time"

	"github.com/sluicehq/sluice/internal/azstore"
	"github.com/sluicehq/sluice/internal/changelog"
	"github.com/sluicehq/sluice/internal/checkpoint"
	"github.com/sluicehq/sluice/internal/config"
	"github.com/sluicehq/sluice/internal/sink"
)

// WriteQueue is the queue of wake-ups, one message per destination.
const WriteQueue = "sluice-write"

// WakeUp is the write queue's message (DESIGN §3.5).
type WakeUp struct {
	Pipeline    string `json:"pipeline"`
	Destination string `json:"destination"`
	Head        int64  `json:"head,omitempty"`
}

// SinkOpener opens the sink of a destination. cmd/sluice wires the real
// ones; the engine never imports a driver or SDK.
type SinkOpener func(ctx context.Context, p *config.Pipeline, d *config.Destination) (sink.Sink, error)

// EpochFloorer is what a sink that stores epochs itself (SQL, Invariant 5)
// may also do: report the highest epoch it holds for a destination of a
// pipeline. A drain whose epoch is not above it would be refused by every
// batch, so the drain raises its epoch past it before the first one.
type EpochFloorer interface {
	EpochFloor(ctx context.Context, pipeline, destination string) (int64, error)
}

// Drainer runs the Write protocol of DESIGN §4 for one destination at a time.
type Drainer struct {
	Store *azstore.Store
	Open  SinkOpener
	Log   *slog.Logger
	// Queue receives continuations and wake-ups; default WriteQueue.
	Queue string
	// LeaseDuration of the destination lease (15..60 s); default
	// DefaultLeaseDuration. A killed drain blocks its destination until the
	// lease expires; safety does not depend on it (Invariant 5), so short
	// is better.
	LeaseDuration time.Duration
	// HaltAfter is how many batches in a row may dead-letter records before
	// the destination is halted (then it is the destination, not the data).
	HaltAfter int
	// MaxBackoff caps the wait between retries of a failing batch.
	MaxBackoff time.Duration
	Now        func() time.Time
}

// DrainRequest says what to drain and within what limits.
type DrainRequest struct {
	Pipeline    *config.Pipeline
	Destination *config.Destination
	// Head is the head the wake-up carried; 0 when unknown.
	Head int64
	// Deadline is when the invocation must have finished (the host's
	// functionTimeout); the drain stops starting batches well before it.
	Deadline time.Time
	// LastAttempt is true on the host's last delivery of the message
	// (DequeueCount >= maxDequeueCount): a failure is recorded on the
	// checkpoint and the invocation completes instead of failing.
	LastAttempt bool
	// Resume lets the drain continue a halted destination (sluice write,
	// replay); queue wake-ups leave a halted destination alone.
	Resume bool
	// Progress, if set, is called after each batch.
	Progress func(done, total int64)
}

// Outcome says how a drain ended.
type Outcome string

// Drain outcomes.
const (
	OutcomeIdle      Outcome = "idle"      // nothing to do
	OutcomeBusy      Outcome = "busy"      // another drain holds the lease
	OutcomeDrained   Outcome = "drained"   // reached the head
	OutcomeContinued Outcome = "continued" // budget spent, continuation enqueued
	OutcomeRewound   Outcome = "rewound"   // a replay took over; wake-up enqueued
	OutcomeHalted    Outcome = "halted"    // the destination is halted
	OutcomeFailed    Outcome = "failed"    // recorded on the checkpoint (last attempt)
)

// DrainResult reports what a drain did.
type DrainResult struct {
	Outcome      Outcome `json:"outcome"`
	From         int64   `json:"from"`
	To           int64   `json:"to"`
	Head         int64   `json:"head"`
	Applied      int64   `json:"applied"`
	DeadLettered int64   `json:"deadLettered"`
	Error        string  `json:"error,omitempty"`

	// stallNoted: the outcome was already counted on the checkpoint.
	stallNoted bool
	// leaseKept: the lease could not be released; it runs out by itself.
	leaseKept bool
}

// Why a drain ended without progress, as status shows it.
const (
	stallBusy    = "busy: another drain holds the destination lease and the checkpoint does not move"
	stallRefused = "refused by the destination (stale epoch: it holds a newer epoch than the drain's)"
	stallRewound = "rewound: the checkpoint changed under the drain (a replay, or another drain took over)"
)

func (d *Drainer) defaults() {
	if d.Queue == "" {
		d.Queue = WriteQueue
	}
	if d.LeaseDuration == 0 {
		d.LeaseDuration = DefaultLeaseDuration
	}
	if d.HaltAfter == 0 {
		d.HaltAfter = 3
	}
	if d.MaxBackoff == 0 {
		d.MaxBackoff = 30 * time.Second
	}
	if d.Now == nil {
		d.Now = time.Now
	}
	if d.Log == nil {
		d.Log = slog.New(slog.DiscardHandler)
	}
}

func lockName(pipeline, destination string) string { return pipeline + "/lock/" + destination }

// Drain applies the committed records past the destination's checkpoint.
// It returns an error only when the host should retry the invocation.
func (d *Drainer) Drain(ctx context.Context, req DrainRequest) (DrainResult, error) {
	d.defaults()
	p, dst := req.Pipeline, req.Destination
	log := d.Log.With("pipeline", p.Name, "destination", dst.Name)

	cp, err := checkpoint.Load(ctx, d.Store, p.Name, dst.Name)
	if err != nil {
		return DrainResult{}, err
	}
	// Write 1: a wake-up whose head the checkpoint already passed is done.
	if req.Head > 0 && req.Head <= cp.Seq {
		return DrainResult{Outcome: OutcomeIdle, From: cp.Seq, To: cp.Seq, Head: req.Head}, nil
	}
	if cp.Halted && !req.Resume {
		return DrainResult{Outcome: OutcomeHalted, From: cp.Seq, To: cp.Seq, Error: cp.LastError}, nil
	}
	lease, err := d.Store.AcquireLease(ctx, lockName(p.Name, dst.Name), d.LeaseDuration)
	if errors.Is(err, azstore.ErrLeaseHeld) {
		// The holder will see the new head before it stops: it looks again
		// before releasing the lease, and once more after (below); if the
		// release fails, a wake-up looks once the lease has run out. A
		// holder that never moves the checkpoint must still show in status.
		d.noteStall(ctx, p.Name, dst.Name, cp, stallBusy, log)
		return DrainResult{Outcome: OutcomeBusy, From: cp.Seq, To: cp.Seq}, nil
	}
	if err != nil {
		return DrainResult{}, err
	}
	lg := changelog.New(d.Store, p.Name, changelog.Options{Logger: d.Log})
	res, err := d.drainLeased(ctx, req, lease, lg, log)
	if err != nil {
		if res.leaseKept {
			// The host retries at once, and our own leftover lease would
			// answer that retry, and every wake-up until it runs out, busy:
			// one wake-up once the lease is surely gone (best effort; the
			// host's retries are answered busy, not failed).
			w := WakeUp{Pipeline: p.Name, Destination: dst.Name}
			if qerr := d.Store.EnqueueAfter(ctx, d.Queue, w, d.LeaseDuration+5*time.Second); qerr != nil {
				log.Warn("could not enqueue a wake-up for after the lease runs out", "err", qerr.Error())
			}
		}
		return res, err
	}
	if res.Outcome == OutcomeRewound && !res.stallNoted {
		if cur, err := checkpoint.Load(ctx, d.Store, p.Name, dst.Name); err == nil {
			d.noteStall(ctx, p.Name, dst.Name, cur, stallRewound, log)
		}
	}

	// The lease is released. Write 3: a continuation, or a wake-up after a
	// rewind. And a wake-up answered busy between this drain's last look at
	// the head and the release was promised that the holder would see its
	// head: look once more, now that a new wake-up would find the lease
	// free, and wake the destination if the head moved past what was done.
	switch res.Outcome {
	case OutcomeContinued, OutcomeRewound, OutcomeDrained, OutcomeIdle:
	default:
		return res, nil
	}
	if res.leaseKept {
		// The release failed: the lease stays until it runs out, up to
		// LeaseDuration after its last renewal, and wake-ups until then are
		// answered busy after this drain's last look at the head. One
		// wake-up, visible once the lease is surely gone, looks for them
		// (and continues, or follows the rewind): an earlier one would be
		// answered busy too. Its head is 0, unknown: the head it must see
		// is one committed after now.
		w := WakeUp{Pipeline: p.Name, Destination: dst.Name}
		if err := d.Store.EnqueueAfter(ctx, d.Queue, w, d.LeaseDuration+5*time.Second); err != nil {
			return res, fmt.Errorf("enqueue a wake-up of %s/%s after its drain (%s at %d) could not release the lease: %w", p.Name, dst.Name, res.Outcome, res.To, err)
		}
		return res, nil
	}
	// A head this look could not read stays 0 in the wake-up: 0 means
	// unknown, so the next drain reads the head itself. Any seq this drain
	// knows of (the head it reached) would be at or before the checkpoint,
	// and Write 1 would complete the wake-up as idle while the records
	// behind a busy answer wait for the next tick.
	head, known := int64(0), false
	if st, err := lg.LoadState(ctx); err == nil {
		head, known = st.Head.Seq, true
	} else {
		log.Warn("could not look at the head after the drain; the wake-up leaves it to the next drain", "err", err.Error())
	}
	if (res.Outcome == OutcomeDrained || res.Outcome == OutcomeIdle) && known && head <= res.To {
		return res, nil
	}
	if err := d.Store.Enqueue(ctx, d.Queue, WakeUp{Pipeline: p.Name, Destination: dst.Name, Head: head}); err != nil {
		// A lost wake-up would wait for the next tick; fail so the host
		// retries now.
		return res, fmt.Errorf("enqueue a wake-up of %s/%s after its drain (%s at %d, head %d): %w", p.Name, dst.Name, res.Outcome, res.To, head, err)
	}
	return res, nil
}

// drainLeased is the part of a drain that holds the destination lease; the
// lease is released when it returns, after the sink was closed.
func (d *Drainer) drainLeased(ctx context.Context, req DrainRequest, lease *azstore.Lease, lg *changelog.Log, log *slog.Logger) (out DrainResult, err error) {
	p, dst := req.Pipeline, req.Destination
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	stopKeep := lease.Keep(ctx, func(err error) { cancel(fmt.Errorf("destination lease lost: %w", err)) })
	defer func() {
		stopKeep()
		rctx, rcancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		if rerr := lease.Release(rctx); rerr != nil {
			log.Warn("could not release the destination lease; it runs out by itself", "err", rerr.Error())
			out.leaseKept = true
		}
		rcancel()
	}()

	// Invariant 5: taking the destination bumps its epoch by
	// compare-and-swap, so a paused older drain is refused from here on.
	cp, err := d.bumpEpoch(ctx, p.Name, dst.Name)
	if err != nil {
		return DrainResult{}, err
	}
	if cp.Halted && !req.Resume {
		return DrainResult{Outcome: OutcomeHalted, From: cp.Seq, To: cp.Seq, Error: cp.LastError}, nil
	}
	if req.Resume {
		// An operator asked: give the destination a fresh start.
		cp.DeadLetterRun, cp.Halted = 0, false
	}
	st, err := lg.LoadState(ctx)
	if err != nil {
		return DrainResult{}, err
	}
	res := DrainResult{From: cp.Seq, To: cp.Seq, Head: st.Head.Seq}
	if st.Head.Seq <= cp.Seq {
		res.Outcome = OutcomeIdle
		if cp.Halted || cp.LastError != "" || cp.Stalled.Count > 0 {
			cp.Halted, cp.LastError, cp.Stalled = false, "", checkpoint.Stall{}
			_ = checkpoint.Save(ctx, d.Store, p.Name, dst.Name, cp)
		}
		return res, nil
	}
	sk, floor, err := d.open(ctx, req)
	if err != nil {
		return d.fail(ctx, req, cp, res, err)
	}
	defer sk.Close()

	if rewound, err := d.raiseEpoch(ctx, p.Name, dst.Name, cp, floor, log); err != nil {
		return d.fail(ctx, req, cp, res, err)
	} else if rewound {
		res.Outcome = OutcomeRewound
		return res, nil
	}
	head := st.Head
	var slowest time.Duration
	for pass := 1; ; pass++ {
		res, err = d.run(ctx, req, lg, head, cp, sk, res, &slowest, log)
		if err != nil {
			if cause := context.Cause(ctx); cause != nil && ctx.Err() != nil && !errors.Is(cause, context.Canceled) {
				err = fmt.Errorf("%w (%v)", err, cause)
			}
			return d.fail(ctx, req, cp, res, err)
		}
		if res.Outcome != OutcomeDrained {
			return res, nil
		}
		// Wake-ups answered busy while this drain held the lease were told
		// it would see their head: look again before letting go, and go on
		// while the budget allows (Write 3).
		st, err := lg.LoadState(ctx)
		if err != nil || st.Head.Seq <= res.To {
			return res, nil // a failed look is repeated after the release
		}
		head, res.Head = st.Head, st.Head.Seq
		// Without a deadline (sluice write, sluice replay) only the head
		// would end this loop, and a busy list keeps moving it: one pass
		// past the head seen at the start, and the wake-up after the
		// release takes the rest.
		if d.budgetSpent(req, slowest) || req.Deadline.IsZero() && pass >= 2 {
			res.Outcome = OutcomeContinued
			return res, nil
		}
		log.Debug("the head moved during the drain; draining on", "to", head.Seq)
	}
}

// noteStall counts an outcome without progress of a wake-up that must not
// write the checkpoint (it does not own it), for status.
func (d *Drainer) noteStall(ctx context.Context, pipeline, destination string, at *checkpoint.Checkpoint, reason string, log *slog.Logger) {
	if err := checkpoint.NoteStall(ctx, d.Store, pipeline, destination, at, reason, reason == stallBusy, d.Now().UTC()); err != nil {
		log.Warn("could not note a drain without progress for status", "reason", reason, "err", err.Error())
	}
}

// budgetSpent reports whether the invocation's deadline leaves too little
// time for another batch and the hand-over (Write 3).
func (d *Drainer) budgetSpent(req DrainRequest, slowest time.Duration) bool {
	return !req.Deadline.IsZero() && d.Now().Add(2*slowest+15*time.Second).After(req.Deadline)
}

func (d *Drainer) bumpEpoch(ctx context.Context, pipeline, destination string) (*checkpoint.Checkpoint, error) {
	for attempt := 0; ; attempt++ {
		cp, err := checkpoint.Load(ctx, d.Store, pipeline, destination)
		if err != nil {
			return nil, err
		}
		cp.Epoch++
		err = checkpoint.Save(ctx, d.Store, pipeline, destination, cp)
		if err == nil {
			return cp, nil
		}
		if !errors.Is(err, checkpoint.ErrConflict) || attempt >= 5 {
			return nil, err
		}
	}
}

// raiseEpoch lifts cp's epoch past floor, the highest epoch the destination
// itself holds for it, by compare-and-swap. A lower epoch would be refused
// by every batch: a legacy _sluice_checkpoints row shared by two pipelines
// holds the higher of their epochs, and a recreated checkpoint blob starts
// again at 1 while the table keeps its row. It reports true when the swap
// lost: someone (a replay) changed the checkpoint, and the drain must stop.
//
// Invariant 5 still holds: the epoch only grows, so every drain that was
// older than this one stays older (and refused); nothing that was refused
// becomes accepted, and a rewind that happened meanwhile wins the swap.
func (d *Drainer) raiseEpoch(ctx context.Context, pipeline, destination string, cp *checkpoint.Checkpoint, floor int64, log *slog.Logger) (rewound bool, err error) {
	if cp.Epoch > floor {
		return false, nil
	}
	was := cp.Epoch
	cp.Epoch = floor + 1
	err = checkpoint.Save(ctx, d.Store, pipeline, destination, cp)
	if errors.Is(err, checkpoint.ErrConflict) {
		return true, nil
	}
	if err != nil {
		return false, fmt.Errorf("raise the epoch of %s/%s past the destination's %d: %w", pipeline, destination, floor, err)
	}
	log.Info("epoch raised past the one the destination holds", "was", was, "floor", floor, "epoch", cp.Epoch)
	return false, nil
}

// run streams (checkpoint, head] in batches into the sink.
// slowest is the longest a batch took so far in this drain.
func (d *Drainer) run(ctx context.Context, req DrainRequest, lg *changelog.Log, head changelog.Head, cp *checkpoint.Checkpoint, sk sink.Sink, res DrainResult, slowest *time.Duration, log *slog.Logger) (DrainResult, error) {
	p, dst := req.Pipeline, req.Destination
	batchSize := dst.BatchSize
	if batchSize <= 0 {
		batchSize = 1000
	}
	batches, stop := prefetch(ctx, lg, cp.Seq+1, head.Seq, batchSize)
	defer stop()
	total := head.Seq - res.From

	// The checkpoint of a batch is written while the next batch is applied:
	// the destination and the storage account work at the same time. The
	// write is waited for before anything else touches the checkpoint, so
	// it still moves only after its batch was applied (Invariant 4) and
	// still stops the drain on a conflict (Invariant 5).
	var saving chan error
	var savedTo, savedApplied int64
	settle := func() (rewound bool, err error) {
		if saving == nil {
			return false, nil
		}
		err = <-saving
		saving = nil
		if errors.Is(err, checkpoint.ErrConflict) {
			return true, nil
		}
		if err != nil {
			return false, err
		}
		res.To = savedTo
		res.Applied += savedApplied
		if req.Progress != nil {
			req.Progress(savedTo-res.From, total)
		}
		return false, nil
	}
	defer func() {
		if saving != nil {
			<-saving
		}
	}()
	for {
		next, ok := <-batches
		if ok && next.err != nil {
			if rewound, _ := settle(); rewound {
				res.Outcome = OutcomeRewound
				return res, nil
			}
			return res, next.err
		}
		batch := next.records
		if len(batch) == 0 {
			if rewound, err := settle(); rewound || err != nil {
				res.Outcome = OutcomeRewound
				return res, err
			}
			res.Outcome = OutcomeDrained
			if cp.LastError != "" || cp.Halted || cp.Stalled.Count > 0 {
				cp.LastError, cp.Halted, cp.Stalled = "", false, checkpoint.Stall{}
				if err := checkpoint.Save(ctx, d.Store, p.Name, dst.Name, cp); errors.Is(err, checkpoint.ErrConflict) {
					res.Outcome = OutcomeRewound
				}
			}
			return res, nil
		}
		started := d.Now()
		b := sink.Batch{Pipeline: p.Name, Destination: dst.Name, Generation: cp.Generation, Epoch: cp.Epoch, Records: batch}
		failed, err := d.apply(ctx, req, sk, b)
		if rewound, serr := settle(); rewound {
			res.Outcome = OutcomeRewound
			return res, nil
		} else if serr != nil {
			return res, serr
		}
		if errors.Is(err, sink.ErrStaleEpoch) {
			res.Outcome = OutcomeRewound
			// Usually a replay or a newer drain took over, and then the
			// checkpoint changed too: this save fails and the rewind is
			// counted by Drain. A checkpoint still this drain's means nobody
			// moves it and the destination will refuse the next drain as
			// well: count the refusal on it, for status.
			cp.Stalled.Note(stallRefused, d.Now().UTC())
			res.stallNoted = checkpoint.Save(ctx, d.Store, p.Name, dst.Name, cp) == nil
			log.Warn("the destination refused the drain's epoch as stale", "epoch", cp.Epoch, "noted", res.stallNoted)
			return res, nil
		}
		if err != nil {
			return res, err
		}
		last := batch[len(batch)-1]
		if len(failed) > 0 {
			if dst.OnError == config.OnErrorHalt {
				// Invariant 4: the checkpoint stays before the first
				// rejected record; nothing is skipped.
				// The records before it were applied; applying them again
				// on resume is idempotent.
				first := failed[0]
				cp.Halted = true
				cp.LastError = fmt.Sprintf("record seq %d key %q rejected: %s (on_error: halt)", first.Seq, first.Key, first.Reason)
				cp.LastErrorAt = d.Now().UTC()
				if err := checkpoint.Save(ctx, d.Store, p.Name, dst.Name, cp); errors.Is(err, checkpoint.ErrConflict) {
					res.Outcome = OutcomeRewound
					return res, nil
				} else if err != nil {
					return res, err
				}
				res.Outcome = OutcomeHalted
				res.Error = cp.LastError
				log.Warn("destination halted on a rejected record", "seq", first.Seq, "reason", first.Reason)
				return res, nil
			}
			// Invariant 4: dead letters are written before the checkpoint
			// passes them.
			if err := d.deadLetter(ctx, p.Name, dst.Name, cp.Generation, batch, failed); err != nil {
				return res, err
			}
			cp.DeadLetters.Count += int64(len(failed))
			if cp.DeadLetters.FirstSeq == 0 {
				cp.DeadLetters.FirstSeq = failed[0].Seq
			}
			cp.DeadLetters.LastSeq = failed[len(failed)-1].Seq
			cp.DeadLetterRun++
			res.DeadLettered += int64(len(failed))
			log.Warn("records dead-lettered", "count", len(failed), "first_seq", failed[0].Seq, "reason", failed[0].Reason)
		} else {
			cp.DeadLetterRun = 0
		}
		cp.Seq, cp.TS, cp.UpdatedAt = last.Seq, last.TS, d.Now().UTC()
		cp.Stalled = checkpoint.Stall{} // progress ends a stall
		if cp.DeadLetterRun >= d.HaltAfter {
			cp.Halted = true
			cp.LastError = fmt.Sprintf("%d batches in a row had rejected records: the destination itself looks broken (last: %s)", cp.DeadLetterRun, failed[0].Reason)
			cp.LastErrorAt = d.Now().UTC()
		}
		// Invariant 5: the checkpoint moves by compare-and-swap; a conflict
		// means an operator rewound it — stop, never merge.
		savedTo, savedApplied = cp.Seq, int64(len(batch))-int64(len(failed))
		saving = make(chan error, 1)
		go func(c chan<- error) { c <- checkpoint.Save(ctx, d.Store, p.Name, dst.Name, cp) }(saving)
		if cp.Halted {
			if rewound, err := settle(); rewound || err != nil {
				res.Outcome = OutcomeRewound
				return res, err
			}
			res.Outcome = OutcomeHalted
			res.Error = cp.LastError
			return res, nil
		}
		// Write 3: stop starting batches while there is still time to
		// finish one more and hand over.
		*slowest = max(*slowest, d.Now().Sub(started))
		if d.budgetSpent(req, *slowest) {
			if rewound, err := settle(); rewound || err != nil {
				res.Outcome = OutcomeRewound
				return res, err
			}
			res.Outcome = OutcomeContinued
			return res, nil
		}
	}
}

// open opens the destination and reads its epoch floor (0 for sinks that
// keep no epochs), retrying like apply does: a database that is down when
// the drain starts is the same outage as one that fails mid-way.
func (d *Drainer) open(ctx context.Context, req DrainRequest) (sink.Sink, int64, error) {
	wait := 500 * time.Millisecond
	for attempt := 1; ; attempt++ {
		sk, err := d.Open(ctx, req.Pipeline, req.Destination)
		var floor int64
		if err == nil {
			ef, ok := sk.(EpochFloorer)
			if !ok {
				return sk, 0, nil
			}
			if floor, err = ef.EpochFloor(ctx, req.Pipeline.Name, req.Destination.Name); err == nil {
				return sk, floor, nil
			}
			sk.Close()
		}
		err = fmt.Errorf("open destination %s/%s: %w", req.Pipeline.Name, req.Destination.Name, err)
		if !d.backoff(ctx, req, &wait, attempt, err) {
			return nil, 0, err
		}
	}
}

// backoff sleeps before the next attempt, and reports false when the budget
// or the context does not allow another one.
func (d *Drainer) backoff(ctx context.Context, req DrainRequest, wait *time.Duration, attempt int, err error) bool {
	if ctx.Err() != nil {
		return false
	}
	sleep := *wait/2 + rand.N(*wait/2+1)
	if !req.Deadline.IsZero() && d.Now().Add(sleep+5*time.Second).After(req.Deadline) {
		return false
	}
	if req.Deadline.IsZero() && attempt > 8 {
		return false // a CLI run without a budget gives up after ~1 minute
	}
	d.Log.Warn("destination failed; retrying", "pipeline", req.Pipeline.Name, "destination", req.Destination.Name,
		"attempt", attempt, "wait", sleep.String(), "err", err.Error())
	select {
	case <-ctx.Done():
		return false
	case <-time.After(sleep):
	}
	*wait = min(2**wait, d.MaxBackoff)
	return true
}

// apply delivers one batch, retrying destination-wide failures with
// exponential backoff and jitter while the budget allows. It returns the
// records the destination rejected for good.
func (d *Drainer) apply(ctx context.Context, req DrainRequest, sk sink.Sink, b sink.Batch) ([]sink.RecordError, error) {
	wait := 500 * time.Millisecond
	for attempt := 1; ; attempt++ {
		err := sk.Apply(ctx, b)
		if err == nil {
			return nil, nil
		}
		if re, ok := sink.AsRecordErrors(err); ok {
			return re.Failed, nil
		}
		if errors.Is(err, sink.ErrStaleEpoch) {
			return nil, err
		}
		if !d.backoff(ctx, req, &wait, attempt, err) {
			return nil, fmt.Errorf("apply seq %d..%d to %s/%s after %d attempts: %w", b.Records[0].Seq, b.Records[len(b.Records)-1].Seq, b.Pipeline, b.Destination, attempt, err)
		}
	}
}

// deadLetter stores each rejected record with its reason under
// <pipeline>/deadletter/<destination>/. Names are fixed by generation and
// seq, so a drain that crashed after writing them writes the same names
// again and finds them there.
func (d *Drainer) deadLetter(ctx context.Context, pipeline, destination string, gen int64, batch []changelog.Record, failed []sink.RecordError) error {
	bySeq := make(map[int64]*changelog.Record, len(failed))
	for i := range batch {
		bySeq[batch[i].Seq] = &batch[i]
	}
	for _, f := range failed {
		rec := bySeq[f.Seq]
		doc := struct {
			Reason   string            `json:"reason"`
			At       time.Time         `json:"at"`
			Record   *changelog.Record `json:"record"`
			Gen      int64             `json:"generation"`
			Pipeline string            `json:"pipeline"`
		}{f.Reason, d.Now().UTC(), rec, gen, pipeline}
		name := fmt.Sprintf("%s/deadletter/%s/%d/%020d.json", pipeline, destination, gen, f.Seq)
		if _, err := d.Store.WriteDoc(ctx, name, doc, ""); err != nil && !errors.Is(err, azstore.ErrConflict) {
			return fmt.Errorf("dead-letter seq %d of %s/%s: %w", f.Seq, pipeline, destination, err)
		}
	}
	return nil
}

// fail ends a drain that could not finish: on the host's last attempt it
// records the error and completes (the next tick wakes the destination
// again); otherwise it records it and asks the host to retry.
func (d *Drainer) fail(ctx context.Context, req DrainRequest, cp *checkpoint.Checkpoint, res DrainResult, cause error) (DrainResult, error) {
	res.Outcome, res.Error = OutcomeFailed, cause.Error()
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	if cur, err := checkpoint.Load(sctx, d.Store, req.Pipeline.Name, req.Destination.Name); err == nil {
		cur.LastError, cur.LastErrorAt = cause.Error(), d.Now().UTC()
		_ = checkpoint.Save(sctx, d.Store, req.Pipeline.Name, req.Destination.Name, cur)
	}
	if req.LastAttempt {
		d.Log.Error("drain failed on the host's last attempt; recorded, the next tick retries", "pipeline", req.Pipeline.Name, "destination", req.Destination.Name, "err", cause.Error())
		return res, nil
	}
	return res, cause
}

// maxBatchBytes bounds a batch's fields; with two batches waiting and one
// being applied, a drain holds at most about three times this.
const maxBatchBytes = 16 << 20

type prefetched struct {
	records []changelog.Record
	err     error
}

// prefetch reads and decodes the next batches while the current one is
// being applied, so that the log and the destination work at the same time.
// At most two batches wait, which keeps memory flat.
func prefetch(ctx context.Context, lg *changelog.Log, from, to int64, size int) (<-chan prefetched, func()) {
	ctx, cancel := context.WithCancel(ctx)
	out := make(chan prefetched, 2)
	done := make(chan struct{})
	go func() {
		defer close(done)
		defer close(out)
		sc := lg.Scan(ctx, from, to)
		defer sc.Close()
		for {
			batch := make([]changelog.Record, 0, size)
			bytes := 0
			// A batch ends at size records or maxBatchBytes of fields, so
			// that lists with very large items cannot blow up memory.
			for len(batch) < size && bytes < maxBatchBytes && sc.Next() {
				r := sc.Record()
				bytes += len(r.Fields) + len(r.Key) + 64
				batch = append(batch, *r)
			}
			if err := sc.Err(); err != nil {
				select {
				case out <- prefetched{err: err}:
				case <-ctx.Done():
				}
				return
			}
			if len(batch) == 0 {
				return
			}
			select {
			case out <- prefetched{records: batch}:
			case <-ctx.Done():
				return
			}
		}
	}()
	return out, func() { cancel(); <-done }
}
