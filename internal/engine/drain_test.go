package engine_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sluicehq/sluice/internal/azstore"
	"github.com/sluicehq/sluice/internal/changelog"
	"github.com/sluicehq/sluice/internal/checkpoint"
	"github.com/sluicehq/sluice/internal/config"
	"github.com/sluicehq/sluice/internal/engine"
	"github.com/sluicehq/sluice/internal/sink"
	"github.com/sluicehq/sluice/internal/testenv"
)

// memSink is a destination held in memory that keeps the sink contract
// (seq guard, tombstones, epochs), with hooks to fail or pause. It tests the
// drain protocol; real destinations pass the sinktest suite.
type memSink struct {
	mu       sync.Mutex
	rows     map[string]int64 // key -> seq of the live row
	tombs    map[string]int64
	epoch    int64
	applied  int
	failNext int                             // destination-wide failures to answer
	reject   func(r changelog.Record) string // a reason rejects the record
	pause    chan struct{}                   // when set, Apply waits on it
	entered  chan struct{}
}

func newMemSink() *memSink {
	return &memSink{rows: map[string]int64{}, tombs: map[string]int64{}}
}

func (m *memSink) Apply(ctx context.Context, b sink.Batch) error {
	m.mu.Lock()
	pause, entered := m.pause, m.entered
	m.mu.Unlock()
	if pause != nil {
		if entered != nil {
			close(entered)
		}
		select {
		case <-pause:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.failNext > 0 {
		m.failNext--
		return errors.New("connection refused")
	}
	if b.Epoch < m.epoch {
		return sink.ErrStaleEpoch
	}
	m.epoch = b.Epoch
	var rej sink.RecordErrors
	for _, r := range b.Records {
		if m.reject != nil {
			if why := m.reject(r); why != "" {
				rej.Failed = append(rej.Failed, sink.RecordError{Seq: r.Seq, Key: r.Key, Reason: why})
				continue
			}
		}
		if r.Seq < m.rows[r.Key] || r.Seq < m.tombs[r.Key] {
			continue
		}
		if r.Op == changelog.OpDelete {
			delete(m.rows, r.Key)
			m.tombs[r.Key] = r.Seq
		} else {
			m.rows[r.Key] = r.Seq
		}
		m.applied++
	}
	if len(rej.Failed) > 0 {
		return &rej
	}
	return nil
}

func (m *memSink) Close() error { return nil }

type fixture struct {
	st   *azstore.Store
	p    *config.Pipeline
	dst  *config.Destination
	sink *memSink
	d    *engine.Drainer
	fold map[string]int64 // expected live keys -> seq
}

func newFixture(t *testing.T, records int) *fixture {
	t.Helper()
	ctx := context.Background()
	st := testenv.Store(t)
	f := &fixture{st: st, sink: newMemSink(), fold: map[string]int64{}}
	f.p = &config.Pipeline{Name: "orders"}
	f.p.Destinations = []config.Destination{{Name: "warehouse", Type: "sql", BatchSize: 100, OnError: config.OnErrorDeadletter}}
	f.dst = &f.p.Destinations[0]
	f.d = &engine.Drainer{Store: st, Queue: testenv.UniqueName("q"), MaxBackoff: 200 * time.Millisecond,
		Open: func(context.Context, *config.Pipeline, *config.Destination) (sink.Sink, error) { return f.sink, nil }}
	f.appendRecords(t, ctx, records)
	return f
}

// appendRecords adds n records over 50 keys, every 7th a delete.
func (f *fixture) appendRecords(t *testing.T, ctx context.Context, n int) {
	t.Helper()
	lg := changelog.New(f.st, f.p.Name, changelog.Options{})
	s, err := lg.LoadState(ctx)
	if err != nil {
		t.Fatal(err)
	}
	a, err := lg.NewAppender(ctx, s)
	if err != nil {
		t.Fatal(err)
	}
	for i := range n {
		key := fmt.Sprint((int(s.Head.Seq) + i) % 50)
		r := &changelog.Record{Op: changelog.OpUpsert, Key: key, Fields: json.RawMessage(`{"N":1}`)}
		if i%7 == 6 {
			r = &changelog.Record{Op: changelog.OpDelete, Key: key}
		}
		if err := a.Add(ctx, r); err != nil {
			t.Fatal(err)
		}
		if r.Op == changelog.OpDelete {
			delete(f.fold, key)
		} else {
			f.fold[key] = r.Seq
		}
	}
	if err := a.Commit(ctx, nil); err != nil {
		t.Fatal(err)
	}
}

func (f *fixture) req(head int64) engine.DrainRequest {
	return engine.DrainRequest{Pipeline: f.p, Destination: f.dst, Head: head, Deadline: time.Now().Add(5 * time.Minute)}
}

func (f *fixture) checkConverged(t *testing.T) {
	t.Helper()
	f.sink.mu.Lock()
	defer f.sink.mu.Unlock()
	if len(f.sink.rows) != len(f.fold) {
		t.Fatalf("destination has %d live keys, the folded log %d", len(f.sink.rows), len(f.fold))
	}
	for k, seq := range f.fold {
		if f.sink.rows[k] != seq {
			t.Fatalf("key %s at seq %d, want %d", k, f.sink.rows[k], seq)
		}
	}
}

func (f *fixture) checkpoint(t *testing.T) *checkpoint.Checkpoint {
	t.Helper()
	cp, err := checkpoint.Load(context.Background(), f.st, f.p.Name, f.dst.Name)
	if err != nil {
		t.Fatal(err)
	}
	return cp
}

func TestDrainToHead(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	f := newFixture(t, 1000)
	var progress []int64
	req := f.req(1000)
	req.Progress = func(done, total int64) { progress = append(progress, done) }
	res, err := f.d.Drain(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	if res.Outcome != engine.OutcomeDrained || res.To != 1000 || res.Applied != 1000 {
		t.Fatalf("result = %+v", res)
	}
	if len(progress) != 10 || progress[9] != 1000 {
		t.Fatalf("progress = %v, want 10 batches", progress)
	}
	f.checkConverged(t)
	cp := f.checkpoint(t)
	if cp.Seq != 1000 || cp.Epoch != 1 || cp.TS.IsZero() {
		t.Fatalf("checkpoint = %+v", cp)
	}
	// A wake-up the checkpoint has passed completes without work.
	if res, err := f.d.Drain(ctx, f.req(900)); err != nil || res.Outcome != engine.OutcomeIdle {
		t.Fatalf("stale wake-up = %+v, %v", res, err)
	}
	if cp2 := f.checkpoint(t); cp2.Epoch != 1 {
		t.Fatalf("a stale wake-up took the destination (epoch %d)", cp2.Epoch)
	}
	// New records: the next wake-up drains only those.
	f.appendRecords(t, ctx, 250)
	res, err = f.d.Drain(ctx, f.req(1250))
	if err != nil || res.From != 1000 || res.To != 1250 || res.Applied != 250 {
		t.Fatalf("second drain = %+v, %v", res, err)
	}
	f.checkConverged(t)
}

func TestDrainSkipsWhenLeaseHeld(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	f := newFixture(t, 10)
	l, err := f.st.AcquireLease(ctx, "orders/lock/warehouse", 15*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Release(ctx)
	res, err := f.d.Drain(ctx, f.req(10))
	if err != nil || res.Outcome != engine.OutcomeBusy {
		t.Fatalf("drain while leased = %+v, %v; want busy", res, err)
	}
}

func TestDrainRetriesTransientFailures(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	f := newFixture(t, 300)
	f.sink.failNext = 3
	res, err := f.d.Drain(ctx, f.req(300))
	if err != nil || res.Outcome != engine.OutcomeDrained {
		t.Fatalf("drain = %+v, %v", res, err)
	}
	f.checkConverged(t)
}

func TestDrainFailureBeyondBudget(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	f := newFixture(t, 300)
	f.sink.failNext = 1 << 30
	req := f.req(300)
	req.Deadline = time.Now().Add(7 * time.Second)
	res, err := f.d.Drain(ctx, req)
	if err == nil || res.Outcome != engine.OutcomeFailed || !strings.Contains(err.Error(), "connection refused") {
		t.Fatalf("drain = %+v, %v; want a failure for the host to retry", res, err)
	}
	cp := f.checkpoint(t)
	if cp.Seq != 0 || !strings.Contains(cp.LastError, "connection refused") || cp.LastErrorAt.IsZero() {
		t.Fatalf("checkpoint = %+v, want the error recorded and nothing passed", cp)
	}
	// The host's last attempt: recorded, and the invocation completes.
	req.LastAttempt = true
	req.Deadline = time.Now().Add(6 * time.Second)
	if res, err := f.d.Drain(ctx, req); err != nil || res.Outcome != engine.OutcomeFailed {
		t.Fatalf("last attempt = %+v, %v; want completed with outcome failed", res, err)
	}
	// The destination recovers; the next wake-up delivers everything.
	f.sink.mu.Lock()
	f.sink.failNext = 0
	f.sink.mu.Unlock()
	if res, err := f.d.Drain(ctx, f.req(300)); err != nil || res.Outcome != engine.OutcomeDrained {
		t.Fatalf("after recovery = %+v, %v", res, err)
	}
	f.checkConverged(t)
	if cp := f.checkpoint(t); cp.LastError != "" {
		t.Fatalf("error not cleared after recovery: %q", cp.LastError)
	}
}

func TestDeadLettersBeforeCheckpoint(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	f := newFixture(t, 300)
	f.sink.reject = func(r changelog.Record) string {
		if r.Seq == 42 || r.Seq == 250 {
			return "value too long for column Title"
		}
		return ""
	}
	res, err := f.d.Drain(ctx, f.req(300))
	if err != nil || res.Outcome != engine.OutcomeDrained || res.DeadLettered != 2 {
		t.Fatalf("drain = %+v, %v", res, err)
	}
	cp := f.checkpoint(t)
	if cp.Seq != 300 || cp.DeadLetters.Count != 2 || cp.DeadLetters.FirstSeq != 42 || cp.DeadLetters.LastSeq != 250 || cp.Halted {
		t.Fatalf("checkpoint = %+v", cp)
	}
	for _, seq := range []int64{42, 250} {
		var doc struct {
			Reason string
			Record changelog.Record
		}
		name := fmt.Sprintf("orders/deadletter/warehouse/0/%020d.json", seq)
		if _, err := f.st.ReadDoc(ctx, name, &doc); err != nil {
			t.Fatalf("dead letter %d: %v", seq, err)
		}
		if doc.Record.Seq != seq || !strings.Contains(doc.Reason, "too long") {
			t.Fatalf("dead letter %d = %+v", seq, doc)
		}
	}
}

func TestRejectsInEveryBatchHaltTheDestination(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	f := newFixture(t, 1000)
	f.sink.reject = func(r changelog.Record) string {
		if r.Seq%100 == 5 {
			return "permission denied for table orders"
		}
		return ""
	}
	res, err := f.d.Drain(ctx, f.req(1000))
	if err != nil || res.Outcome != engine.OutcomeHalted {
		t.Fatalf("drain = %+v, %v; want halted", res, err)
	}
	cp := f.checkpoint(t)
	if !cp.Halted || cp.Seq != 300 || !strings.Contains(cp.LastError, "destination itself") {
		t.Fatalf("checkpoint = %+v; want halted after 3 batches", cp)
	}
	// Queue wake-ups leave a halted destination alone.
	if res, err := f.d.Drain(ctx, f.req(1000)); err != nil || res.Outcome != engine.OutcomeHalted {
		t.Fatalf("wake-up of a halted destination = %+v, %v", res, err)
	}
	// `sluice write` resumes it once the destination is fixed.
	f.sink.mu.Lock()
	f.sink.reject = nil
	f.sink.mu.Unlock()
	req := f.req(1000)
	req.Resume = true
	if res, err := f.d.Drain(ctx, req); err != nil || res.Outcome != engine.OutcomeDrained {
		t.Fatalf("resume = %+v, %v", res, err)
	}
	if cp := f.checkpoint(t); cp.Halted || cp.Seq != 1000 {
		t.Fatalf("after resume: %+v", cp)
	}
}

func TestOnErrorHaltStopsAtFirstReject(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	f := newFixture(t, 300)
	f.dst.OnError = config.OnErrorHalt
	f.sink.reject = func(r changelog.Record) string {
		if r.Seq == 142 {
			return "bad value"
		}
		return ""
	}
	res, err := f.d.Drain(ctx, f.req(300))
	if err != nil || res.Outcome != engine.OutcomeHalted {
		t.Fatalf("drain = %+v, %v", res, err)
	}
	cp := f.checkpoint(t)
	// Invariant 4: the checkpoint never passes the rejected record.
	if !cp.Halted || cp.Seq != 100 || cp.DeadLetters.Count != 0 || !strings.Contains(cp.LastError, "seq 142") {
		t.Fatalf("checkpoint = %+v", cp)
	}
}

func TestDeadlineHandsOverToContinuation(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	f := newFixture(t, 500)
	req := f.req(500)
	req.Deadline = time.Now().Add(14 * time.Second) // inside the 15 s hand-over margin
	res, err := f.d.Drain(ctx, req)
	if err != nil || res.Outcome != engine.OutcomeContinued || res.To != 100 {
		t.Fatalf("drain = %+v, %v; want one batch then a continuation", res, err)
	}
	msgs, err := f.st.Dequeue(ctx, f.d.Queue, 32, time.Minute)
	if err != nil || len(msgs) != 1 {
		t.Fatalf("continuation messages = %v, %v", msgs, err)
	}
	var w engine.WakeUp
	if err := azstore.DecodeMessage(msgs[0].Text, &w); err != nil || w != (engine.WakeUp{Pipeline: "orders", Destination: "warehouse", Head: 500}) {
		t.Fatalf("continuation = %+v, %v", w, err)
	}
	// The continuation finds the lease free and finishes.
	if res, err := f.d.Drain(ctx, f.req(w.Head)); err != nil || res.Outcome != engine.OutcomeDrained {
		t.Fatalf("continuation drain = %+v, %v", res, err)
	}
	f.checkConverged(t)
}

func TestReplayRewindsAndWins(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	f := newFixture(t, 500)
	if _, err := f.d.Drain(ctx, f.req(500)); err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	// Dry run: nothing changes.
	dry, err := engine.Replay(ctx, f.st, engine.ReplayRequest{Pipeline: f.p, Destination: f.dst, FromSeq: 201, DryRun: true}, now)
	if err != nil || dry.FromSeq != 201 || dry.Records != 300 || !dry.DryRun {
		t.Fatalf("dry run = %+v, %v", dry, err)
	}
	if cp := f.checkpoint(t); cp.Seq != 500 || cp.Generation != 0 {
		t.Fatalf("dry run changed the checkpoint: %+v", cp)
	}
	// A replay while a drain is paused inside Apply: the rewind wins.
	f.appendRecords(t, ctx, 100)
	f.sink.mu.Lock()
	f.sink.pause, f.sink.entered = make(chan struct{}), make(chan struct{})
	pause, entered := f.sink.pause, f.sink.entered
	f.sink.mu.Unlock()
	done := make(chan engine.DrainResult)
	go func() {
		res, err := f.d.Drain(ctx, f.req(600))
		if err != nil {
			t.Error(err)
		}
		done <- res
	}()
	<-entered
	res, err := engine.Replay(ctx, f.st, engine.ReplayRequest{Pipeline: f.p, Destination: f.dst, FromSeq: 201, By: "test"}, now)
	if err != nil || res.FromSeq != 201 || res.ToSeq != 600 || res.Records != 400 || res.Generation != 1 {
		t.Fatalf("replay = %+v, %v", res, err)
	}
	f.sink.mu.Lock()
	f.sink.pause = nil
	f.sink.mu.Unlock()
	close(pause)
	if old := <-done; old.Outcome != engine.OutcomeRewound {
		t.Fatalf("the paused drain = %+v, want rewound", old)
	}
	cp := f.checkpoint(t)
	if cp.Seq != 200 || cp.Generation != 1 || len(cp.Replays) != 1 || cp.Replays[0].Previous != 500 || cp.Replays[0].By != "test" {
		t.Fatalf("checkpoint after replay = %+v", cp)
	}
	// Invariant 6: a replay "from" a later point never moves forward.
	res, err = engine.Replay(ctx, f.st, engine.ReplayRequest{Pipeline: f.p, Destination: f.dst, FromSeq: 400}, now)
	if err != nil || res.FromSeq != 201 {
		t.Fatalf("forward replay = %+v, %v; want it to stay at 201", res, err)
	}
	// Nothing was rewound, so the generation stays: the records from 201
	// on go out as generation 1 anyway.
	if cp := f.checkpoint(t); cp.Seq != 200 || cp.Generation != 1 || res.Generation != 1 {
		t.Fatalf("checkpoint = %+v, result %+v", cp, res)
	}
	// A fromSeq past the head is a bad request.
	if _, err := engine.Replay(ctx, f.st, engine.ReplayRequest{Pipeline: f.p, Destination: f.dst, FromSeq: 602}, now); !errors.Is(err, engine.ErrBadRequest) {
		t.Fatalf("replay past the head: %v", err)
	}
	// The wake-up drains the replayed range to the head.
	if res, err := f.d.Drain(ctx, f.req(600)); err != nil || res.Outcome != engine.OutcomeDrained || res.From != 200 {
		t.Fatalf("drain after replay = %+v, %v", res, err)
	}
	f.checkConverged(t)
	// Bad requests are named.
	for _, bad := range []engine.ReplayRequest{
		{Pipeline: f.p, Destination: f.dst},
		{Pipeline: f.p, Destination: f.dst, FromSeq: 3, From: now},
		{Pipeline: f.p, Destination: f.dst, FromSeq: -1},
	} {
		if _, err := engine.Replay(ctx, f.st, bad, now); !errors.Is(err, engine.ErrBadRequest) {
			t.Fatalf("replay %+v: %v, want ErrBadRequest", bad, err)
		}
	}
}

func TestReplayFromTime(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	f := newFixture(t, 100)
	if _, err := f.d.Drain(ctx, f.req(100)); err != nil {
		t.Fatal(err)
	}
	// Everything was captured just now: a replay from an hour ago is all of it.
	res, err := engine.Replay(ctx, f.st, engine.ReplayRequest{Pipeline: f.p, Destination: f.dst, From: time.Now().Add(-time.Hour)}, time.Now())
	if err != nil || res.FromSeq != 1 || res.Records != 100 {
		t.Fatalf("replay from an hour ago = %+v, %v", res, err)
	}
	// From the future: nothing to replay, the checkpoint stays.
	res, err = engine.Replay(ctx, f.st, engine.ReplayRequest{Pipeline: f.p, Destination: f.dst, From: time.Now().Add(time.Hour), DryRun: true}, time.Now())
	if err != nil || res.Records != 100 {
		t.Fatalf("dry run from the future after a full rewind = %+v, %v", res, err)
	}
}

// floorSink is a memSink that reports the epoch it holds, as SQL sinks do;
// before, if set, runs when the drain asks.
type floorSink struct {
	*memSink
	before func()
}

func (s *floorSink) EpochFloor(ctx context.Context, pipeline, destination string) (int64, error) {
	if s.before != nil {
		s.before()
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.epoch, nil
}

// A destination holding a newer epoch than the checkpoint (a legacy row, a
// recreated checkpoint blob) would refuse every batch: the drain raises its
// epoch past it by compare-and-swap, and a replay that changed the
// checkpoint meanwhile wins that swap.
func TestDrainRaisesItsEpochPastTheDestinations(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	f := newFixture(t, 300)
	f.sink.epoch = 30
	fs := &floorSink{memSink: f.sink}
	f.d.Open = func(context.Context, *config.Pipeline, *config.Destination) (sink.Sink, error) { return fs, nil }
	res, err := f.d.Drain(ctx, f.req(300))
	if err != nil || res.Outcome != engine.OutcomeDrained || res.To != 300 {
		t.Fatalf("drain = %+v, %v; want drained", res, err)
	}
	if cp := f.checkpoint(t); cp.Epoch != 31 {
		t.Fatalf("checkpoint = %+v; want epoch 31 (raised past the destination's 30)", cp)
	}
	f.checkConverged(t)

	// The destination moves ahead again, and a replay lands between taking
	// the destination and raising the epoch: the replay wins, nothing is
	// applied under the old generation.
	f.appendRecords(t, ctx, 100)
	f.sink.mu.Lock()
	f.sink.epoch, f.sink.applied = 50, 0
	f.sink.mu.Unlock()
	fs.before = func() {
		fs.before = nil
		if _, err := engine.Replay(ctx, f.st, engine.ReplayRequest{Pipeline: f.p, Destination: f.dst, FromSeq: 201, By: "test"}, time.Now()); err != nil {
			t.Error(err)
		}
	}
	res, err = f.d.Drain(ctx, f.req(400))
	if err != nil || res.Outcome != engine.OutcomeRewound || f.sink.applied != 0 {
		t.Fatalf("drain that lost the raise to a replay = %+v, %v (%d applied); want rewound before any batch", res, err, f.sink.applied)
	}
	// The rewind counts as one outcome without progress, noted beside the
	// checkpoint (the drain no longer owns it); one is not stuck.
	ds := f.destStatus(t)
	if state, n, why, ok := stallOf(ds); state != "ok" || !ok || n != 1 || !strings.Contains(why, "rewound") {
		t.Fatalf("status after the rewound drain = %v", ds)
	}
	res, err = f.d.Drain(ctx, f.req(400))
	if err != nil || res.Outcome != engine.OutcomeDrained || res.From != 200 || res.To != 400 {
		t.Fatalf("drain after the replay = %+v, %v; want drained from 200", res, err)
	}
	if cp := f.checkpoint(t); cp.Epoch != 51 || cp.Generation != 1 {
		t.Fatalf("checkpoint = %+v; want epoch 51, generation 1", cp)
	}
	f.checkConverged(t)
}

// A wake-up that finds the lease held is answered busy: "the holder will see
// the new head". The holder loaded the head when it started, so it must look
// again before it lets go, or records committed meanwhile wait for the next
// timer tick.
func TestWakeUpAnsweredBusyIsDrainedByTheHolder(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	f := newFixture(t, 300)
	f.sink.mu.Lock()
	f.sink.pause, f.sink.entered = make(chan struct{}), make(chan struct{})
	pause, entered := f.sink.pause, f.sink.entered
	f.sink.mu.Unlock()
	done := make(chan engine.DrainResult, 1)
	go func() {
		res, err := f.d.Drain(ctx, f.req(300))
		if err != nil {
			res.Error = err.Error()
		}
		done <- res
	}()
	<-entered // the holder is slow inside its first batch

	f.appendRecords(t, ctx, 200)
	if res, err := f.d.Drain(ctx, f.req(500)); err != nil || res.Outcome != engine.OutcomeBusy {
		t.Fatalf("wake-up during the drain = %+v, %v; want busy", res, err)
	}
	f.sink.mu.Lock()
	f.sink.pause, f.sink.entered = nil, nil
	f.sink.mu.Unlock()
	close(pause)

	res := <-done
	if res.Outcome != engine.OutcomeDrained || res.To != 500 || res.Head != 500 {
		t.Fatalf("holder = %+v; want drained to the new head 500", res)
	}
	if cp := f.checkpoint(t); cp.Seq != 500 {
		t.Fatalf("checkpoint %d, want 500 without any further wake-up", cp.Seq)
	}
	f.checkConverged(t)
	// It got there by itself: nothing is left for a wake-up to do.
	msgs, err := f.st.Dequeue(ctx, f.d.Queue, 32, time.Minute)
	if err != nil && !errors.Is(err, azstore.ErrNotFound) || len(msgs) != 0 {
		t.Fatalf("queue = %v, %v; want no wake-up", msgs, err)
	}
}

// closingSink runs onClose once when the drain closes it: after the drain's
// last look at the head and before it releases the lease.
type closingSink struct {
	*memSink
	once    sync.Once
	onClose func()
}

func (s *closingSink) Close() error {
	s.once.Do(s.onClose)
	return s.memSink.Close()
}

// The narrowest window: records are committed and their wake-up is answered
// busy after the holder's last look at the head but before it releases the
// lease. The holder looks again after releasing and wakes the destination.
func TestWakeUpAnsweredBusyAfterTheHoldersLastLook(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	f := newFixture(t, 300)
	var busy engine.DrainResult
	cs := &closingSink{memSink: f.sink}
	cs.onClose = func() {
		f.appendRecords(t, ctx, 200)
		var err error
		if busy, err = f.d.Drain(ctx, f.req(500)); err != nil {
			t.Error(err)
		}
	}
	f.d.Open = func(context.Context, *config.Pipeline, *config.Destination) (sink.Sink, error) { return cs, nil }
	res, err := f.d.Drain(ctx, f.req(300))
	if err != nil || res.Outcome != engine.OutcomeDrained || res.To != 300 {
		t.Fatalf("holder = %+v, %v; want drained to 300", res, err)
	}
	if busy.Outcome != engine.OutcomeBusy {
		t.Fatalf("wake-up while the holder closed its sink = %+v; want busy (else this test proves nothing)", busy)
	}
	msgs, err := f.st.Dequeue(ctx, f.d.Queue, 32, time.Minute)
	if err != nil || len(msgs) != 1 {
		t.Fatalf("queue = %v, %v; want one wake-up from the holder", msgs, err)
	}
	var w engine.WakeUp
	if err := azstore.DecodeMessage(msgs[0].Text, &w); err != nil || w != (engine.WakeUp{Pipeline: "orders", Destination: "warehouse", Head: 500}) {
		t.Fatalf("wake-up = %+v, %v", w, err)
	}
	if res, err := f.d.Drain(ctx, f.req(w.Head)); err != nil || res.Outcome != engine.OutcomeDrained || res.To != 500 {
		t.Fatalf("drain of the wake-up = %+v, %v", res, err)
	}
	f.checkConverged(t)
}

// destStatus is the destination's entry of the status JSON (what `sluice
// status --json` and the status function answer).
func (f *fixture) destStatus(t *testing.T) map[string]any {
	t.Helper()
	return f.destStatusAt(t, time.Now())
}

// stallOf reads a destination status entry: its state, and its stall's
// count and reason (ok is false when it has no stall).
func stallOf(ds map[string]any) (state string, count float64, reason string, ok bool) {
	stalled, ok := ds["stalled"].(map[string]any)
	if ok {
		count, _ = stalled["count"].(float64)
		reason = fmt.Sprint(stalled["reason"])
	}
	state, _ = ds["state"].(string)
	return state, count, reason, ok
}

// destStatusAt is destStatus as status would answer it at now.
func (f *fixture) destStatusAt(t *testing.T, now time.Time) map[string]any {
	t.Helper()
	ss, err := engine.Status(context.Background(), f.st, &config.Config{Pipelines: []config.Pipeline{*f.p}}, "", now)
	if err != nil {
		t.Fatal(err)
	}
	b, err := json.Marshal(ss)
	if err != nil {
		t.Fatal(err)
	}
	var out []struct{ Destinations []map[string]any }
	if err := json.Unmarshal(b, &out); err != nil {
		t.Fatal(err)
	}
	return out[0].Destinations[0]
}

// A destination that refuses every drain as stale (it holds a newer epoch
// and cannot say which) never moves; status says so, and why, instead of
// ok with a lag that does not move.
func TestStatusShowsADestinationThatRefusesEveryDrain(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	f := newFixture(t, 300)
	f.sink.epoch = 1000
	for i := range 3 {
		if res, err := f.d.Drain(ctx, f.req(300)); err != nil || res.Outcome != engine.OutcomeRewound || res.Applied != 0 {
			t.Fatalf("drain %d = %+v, %v; want refused (rewound, nothing applied)", i, res, err)
		}
	}
	ds := f.destStatus(t)
	if state, n, why, ok := stallOf(ds); state != "stuck" || !ok || n != 3 || !strings.Contains(why, "stale epoch") {
		t.Fatalf("status = %v; want stuck after 3 refusals, with the reason", ds)
	}
	// The destination accepts again: the next drain moves the checkpoint,
	// which ends the stall.
	f.sink.mu.Lock()
	f.sink.epoch = 0
	f.sink.mu.Unlock()
	if res, err := f.d.Drain(ctx, f.req(300)); err != nil || res.Outcome != engine.OutcomeDrained {
		t.Fatalf("drain = %+v, %v", res, err)
	}
	if ds := f.destStatus(t); ds["state"] != "ok" || ds["stalled"] != nil {
		t.Fatalf("status after progress = %v; want ok", ds)
	}
}

// Wake-ups answered busy while the holder never moves the checkpoint (a
// hung drain renewing its lease) show too, once the checkpoint stood still
// for well over a lease duration, without the busy wake-ups ever writing
// the checkpoint (the holder would take that for a rewind).
func TestStatusShowsADestinationAlwaysBusy(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	f := newFixture(t, 300)
	lease, err := f.st.AcquireLease(ctx, "orders/lock/warehouse", 60*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	before := f.checkpoint(t)
	for i := range 3 {
		if res, err := f.d.Drain(ctx, f.req(300)); err != nil || res.Outcome != engine.OutcomeBusy {
			t.Fatalf("drain %d = %+v, %v; want busy", i, res, err)
		}
	}
	if after := f.checkpoint(t); fmt.Sprint(after) != fmt.Sprint(before) {
		t.Fatalf("busy wake-ups wrote the checkpoint: %+v, was %+v", after, before)
	}
	if ds := f.destStatus(t); ds["state"] != "ok" {
		t.Fatalf("status = %v; want ok right after 3 busy answers (a slow batch looks the same)", ds)
	}
	ds := f.destStatusAt(t, time.Now().Add(engine.StuckFor+time.Minute))
	if state, n, why, ok := stallOf(ds); state != "stuck" || !ok || n != 3 || !strings.Contains(why, "busy") {
		t.Fatalf("status = %v; want stuck once the busy answers lasted over StuckFor, with the reason", ds)
	}
	if err := lease.Release(ctx); err != nil {
		t.Fatal(err)
	}
	if res, err := f.d.Drain(ctx, f.req(300)); err != nil || res.Outcome != engine.OutcomeDrained {
		t.Fatalf("drain = %+v, %v", res, err)
	}
	if ds := f.destStatus(t); ds["state"] != "ok" || ds["stalled"] != nil {
		t.Fatalf("status after progress = %v; want ok", ds)
	}
}
