package httpsink

import (
	"cmp"
	"context"
	"fmt"
	"slices"
	"strconv"
	"sync"

	"github.com/sluicehq/sluice/internal/changelog"
	"github.com/sluicehq/sluice/internal/sink"
)

// apply is the state of one Apply call shared by its POSTs.
type apply struct {
	enc  *encoder
	name string // "<pipeline>/<destination>", for messages
	// keyHead is "<pipeline>/<destination>/<g>/" of every Idempotency-Key.
	keyHead string
}

// Apply POSTs the batch's records in CloudEvents batches of at most
// BatchSize events.
//
// With MaxInFlight 1 the POSTs go one at a time in seq order and the first
// destination-wide failure stops the batch: later POSTs are not sent. A POST
// the receiver answers 400/422 (bad records) or 413 (too large) is split in
// halves until the records it refuses are found; they are returned as
// *sink.RecordErrors once everything else is delivered. Any other failure is
// returned as a plain error: the engine retries the whole batch, and
// receivers drop the repeats by event id or Idempotency-Key.
func (s *Sink) Apply(ctx context.Context, b sink.Batch) error {
	a := &apply{
		enc:     newEncoder(b.Pipeline, b.Generation),
		name:    b.Pipeline + "/" + b.Destination,
		keyHead: b.Pipeline + "/" + b.Destination + "/" + strconv.FormatInt(b.Generation, 10) + "/",
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("http destination %s: POST to %s: %w", a.name, s.target, err)
	}
	recs, rejected := s.precheck(a, b.Records)
	posts := chunk(recs, s.cfg.BatchSize)
	var (
		more []sink.RecordError
		err  error
	)
	if s.cfg.MaxInFlight <= 1 || len(posts) <= 1 {
		more, err = s.sequential(ctx, a, posts)
	} else {
		more, err = s.concurrent(ctx, a, posts)
	}
	if err != nil {
		// Some records may not be delivered: nothing is dead-lettered now,
		// the bad ones will be found again when the batch is retried.
		return err
	}
	rejected = append(rejected, more...)
	if len(rejected) == 0 {
		return nil
	}
	slices.SortFunc(rejected, func(x, y sink.RecordError) int { return cmp.Compare(x.Seq, y.Seq) })
	return &sink.RecordErrors{Failed: rejected}
}

// precheck rejects records whose fields cannot be sent without corrupting
// the body. It returns recs itself when all are fine (the common case: no
// copy).
func (s *Sink) precheck(a *apply, recs []changelog.Record) ([]changelog.Record, []sink.RecordError) {
	var (
		ok       []changelog.Record
		rejected []sink.RecordError
	)
	for i := range recs {
		reason := checkFields(&recs[i])
		if reason == "" {
			if rejected != nil {
				ok = append(ok, recs[i])
			}
			continue
		}
		if rejected == nil {
			ok = append(make([]changelog.Record, 0, len(recs)-1), recs[:i]...)
		}
		rejected = append(rejected, sink.RecordError{Seq: recs[i].Seq, Key: recs[i].Key, Reason: reason})
		s.log.Warn("http destination: record not sent", "destination", a.name, "seq", recs[i].Seq, "key", recs[i].Key, "reason", reason)
	}
	if rejected == nil {
		return recs, nil
	}
	return ok, rejected
}

func chunk(recs []changelog.Record, n int) [][]changelog.Record {
	out := make([][]changelog.Record, 0, (len(recs)+n-1)/n)
	for lo := 0; lo < len(recs); lo += n {
		out = append(out, recs[lo:min(lo+n, len(recs))])
	}
	return out
}

// sequential delivers the POSTs one by one in seq order and stops at the
// first destination-wide failure.
func (s *Sink) sequential(ctx context.Context, a *apply, posts [][]changelog.Record) ([]sink.RecordError, error) {
	var rejected []sink.RecordError
	for _, p := range posts {
		r, err := s.deliver(ctx, a, p)
		if err != nil {
			return nil, err
		}
		rejected = append(rejected, r...)
	}
	return rejected, nil
}

// concurrent delivers up to MaxInFlight POSTs at once. The first
// destination-wide failure cancels the others and stops new ones; its error
// is the one reported (the others are mostly the cancellation it caused).
func (s *Sink) concurrent(ctx context.Context, a *apply, posts [][]changelog.Record) ([]sink.RecordError, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		mu       sync.Mutex
		next     int
		firstErr error
		rejected []sink.RecordError
		wg       sync.WaitGroup
	)
	take := func() ([]changelog.Record, bool) {
		mu.Lock()
		defer mu.Unlock()
		if firstErr != nil || next == len(posts) {
			return nil, false
		}
		next++
		return posts[next-1], true
	}
	for range min(s.cfg.MaxInFlight, len(posts)) {
		wg.Go(func() {
			for {
				p, ok := take()
				if !ok {
					return
				}
				r, err := s.deliver(ctx, a, p)
				mu.Lock()
				rejected = append(rejected, r...)
				if err != nil && firstErr == nil {
					firstErr = err
					cancel()
				}
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	return rejected, firstErr
}

// deliver POSTs recs and, when the receiver refuses the POST for its content
// (400/422) or its size (413), splits it in halves, recursively and in
// order, down to the single events it refuses. Every POST holds a contiguous
// run of records, so one Idempotency-Key always names the same body.
func (s *Sink) deliver(ctx context.Context, a *apply, recs []changelog.Record) ([]sink.RecordError, error) {
	res, err := s.post(ctx, a, recs)
	if err != nil {
		return nil, err
	}
	if res.ok {
		return nil, nil
	}
	if len(recs) == 1 {
		r := &recs[0]
		s.log.Warn("http destination: receiver rejected a record", "destination", a.name, "seq", r.Seq, "key", r.Key, "reason", res.reason)
		return []sink.RecordError{{Seq: r.Seq, Key: r.Key, Reason: res.reason}}, nil
	}
	s.log.Info("http destination: splitting a POST the receiver refused", "destination", a.name,
		"first_seq", recs[0].Seq, "last_seq", recs[len(recs)-1].Seq, "events", len(recs), "status", res.status)
	mid := len(recs) / 2
	left, err := s.deliver(ctx, a, recs[:mid])
	if err != nil {
		return nil, err
	}
	right, err := s.deliver(ctx, a, recs[mid:])
	if err != nil {
		return nil, err
	}
	return append(left, right...), nil
}
