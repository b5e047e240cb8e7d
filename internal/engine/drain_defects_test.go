package engine_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/sluicehq/sluice/internal/azstore"
	"github.com/sluicehq/sluice/internal/config"
	"github.com/sluicehq/sluice/internal/engine"
	"github.com/sluicehq/sluice/internal/sink"
	"github.com/sluicehq/sluice/internal/testenv"
)

// breakState makes the pipeline's state document unreadable and returns a
// function that puts it back.
func (f *fixture) breakState(t *testing.T, ctx context.Context) (restore func()) {
	t.Helper()
	name := f.p.Name + "/state.json"
	var saved json.RawMessage
	etag, err := f.st.ReadDoc(ctx, name, &saved)
	if err != nil {
		t.Fatal(err)
	}
	if etag, err = f.st.WriteDoc(ctx, name, "not a state document", etag); err != nil {
		t.Fatal(err)
	}
	return func() {
		t.Helper()
		if _, err := f.st.WriteDoc(ctx, name, saved, etag); err != nil {
			t.Fatal(err)
		}
	}
}

// wakeUps takes every visible message off the fixture's queue.
func (f *fixture) wakeUps(t *testing.T, ctx context.Context) []engine.WakeUp {
	t.Helper()
	msgs, err := f.st.Dequeue(ctx, f.d.Queue, 32, time.Minute)
	if err != nil && !errors.Is(err, azstore.ErrNotFound) {
		t.Fatal(err)
	}
	var out []engine.WakeUp
	for _, m := range msgs {
		var w engine.WakeUp
		if err := azstore.DecodeMessage(m.Text, &w); err != nil {
			t.Fatal(err)
		}
		out = append(out, w)
	}
	return out
}

// The holder's look at the head after it released the lease fails: it does
// not know how far the head moved. Its wake-up must not carry the seq it
// drained to as the head — the next drain would complete that as idle
// (Write 1), and the records whose own wake-up was answered busy meanwhile
// would wait for the next timer tick.
func TestWakeUpAfterAFailedLookAtTheHead(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	f := newFixture(t, 300)
	var busy engine.DrainResult
	var restore func()
	cs := &closingSink{memSink: f.sink}
	cs.onClose = func() {
		// After the holder's last look before the release: records come,
		// their wake-up is answered busy, and the head becomes unreadable.
		f.appendRecords(t, ctx, 200)
		var err error
		if busy, err = f.d.Drain(ctx, f.req(500)); err != nil {
			t.Error(err)
		}
		restore = f.breakState(t, ctx)
	}
	f.d.Open = func(context.Context, *config.Pipeline, *config.Destination) (sink.Sink, error) { return cs, nil }
	res, err := f.d.Drain(ctx, f.req(300))
	if err != nil || res.Outcome != engine.OutcomeDrained || res.To != 300 {
		t.Fatalf("holder = %+v, %v; want drained to 300", res, err)
	}
	if busy.Outcome != engine.OutcomeBusy {
		t.Fatalf("wake-up while the holder closed its sink = %+v; want busy (else this test proves nothing)", busy)
	}
	restore()
	ws := f.wakeUps(t, ctx)
	if len(ws) != 1 {
		t.Fatalf("wake-ups = %+v; want one from the holder", ws)
	}
	if res, err := f.d.Drain(ctx, f.req(ws[0].Head)); err != nil || res.Outcome != engine.OutcomeDrained || res.To != 500 {
		t.Fatalf("drain of the holder's wake-up %+v = %+v, %v; want drained to 500", ws[0], res, err)
	}
	if ws[0].Head != 0 {
		t.Fatalf("wake-up = %+v; want head 0 (unknown: the next drain reads it)", ws[0])
	}
	f.checkConverged(t)
}

// failRelease is a storage transport whose lease releases never get through.
type failRelease struct{}

func (failRelease) Do(r *http.Request) (*http.Response, error) {
	// The SDK sets its headers without canonicalising their names.
	if r.Header.Get("x-ms-lease-action") == "release" || strings.Join(r.Header["x-ms-lease-action"], "") == "release" {
		return nil, errors.New("connection reset by peer (test: lease release)")
	}
	return http.DefaultClient.Do(r)
}

// A drain whose lease release fails leaves the lease held until it runs out
// (up to LeaseDuration after its last renewal). Wake-ups in that window are
// answered busy, and the holder's look at the head came before them: the
// holder must wake the destination again once the lease is free.
func TestWakeUpAfterAFailedLeaseRelease(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	f := newFixture(t, 300)
	st, err := azstore.Open(ctx, testenv.StorageSettings(t), f.st.Container(), azstore.Options{HTTPClient: failRelease{}})
	if err != nil {
		t.Fatal(err)
	}
	holder := *f.d
	holder.Store, holder.LeaseDuration = st, 15*time.Second
	f.d.LeaseDuration = 15 * time.Second
	res, err := holder.Drain(ctx, f.req(300))
	if err != nil || res.Outcome != engine.OutcomeDrained || res.To != 300 {
		t.Fatalf("holder = %+v, %v; want drained to 300", res, err)
	}
	released := time.Now()
	f.appendRecords(t, ctx, 200)
	if busy, err := f.d.Drain(ctx, f.req(500)); err != nil || busy.Outcome != engine.OutcomeBusy {
		t.Fatalf("wake-up after the failed release = %+v, %v; want busy (else this test proves nothing)", busy, err)
	}
	var ws []engine.WakeUp
	for time.Since(released) < 45*time.Second && len(ws) == 0 {
		time.Sleep(time.Second)
		ws = f.wakeUps(t, ctx)
	}
	if len(ws) != 1 {
		t.Fatalf("wake-ups within 45 s of the failed release = %+v; want one from the holder", ws)
	}
	if waited := time.Since(released); waited < 15*time.Second {
		t.Fatalf("the holder's wake-up came after %s, before its lease could run out", waited)
	}
	if res, err := f.d.Drain(ctx, f.req(ws[0].Head)); err != nil || res.Outcome != engine.OutcomeDrained || res.To != 500 {
		t.Fatalf("drain of the holder's wake-up %+v = %+v, %v; want drained to 500", ws[0], res, err)
	}
	f.checkConverged(t)
}

// growingSink commits more records to the log after each batch it applies,
// up to a limit: a list that changes as fast as it is drained.
type growingSink struct {
	*memSink
	f     *fixture
	t     *testing.T
	grows int
}

func (s *growingSink) Apply(ctx context.Context, b sink.Batch) error {
	if err := s.memSink.Apply(ctx, b); err != nil {
		return err
	}
	if s.grows > 0 {
		s.grows--
		s.f.appendRecords(s.t, ctx, 100)
	}
	return nil
}

// Without a deadline (sluice write, sluice replay) nothing but the head ends
// the drain's "look again and go on" loop: a head that keeps moving must not
// keep it going. It does one more pass past the head it started with and
// leaves the rest to its wake-up.
func TestDrainWithoutDeadlineEndsWhileTheHeadMoves(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	f := newFixture(t, 100)
	gs := &growingSink{memSink: f.sink, f: f, t: t, grows: 30}
	f.d.Open = func(context.Context, *config.Pipeline, *config.Destination) (sink.Sink, error) { return gs, nil }
	req := f.req(100)
	req.Deadline = time.Time{}
	res, err := f.d.Drain(ctx, req)
	if err != nil || res.To != 200 || res.Outcome != engine.OutcomeContinued {
		t.Fatalf("drain = %+v, %v; want continued at 200 (the head at the start, 100, and one more pass)", res, err)
	}
	ws := f.wakeUps(t, ctx)
	if len(ws) != 1 || ws[0].Head <= res.To {
		t.Fatalf("wake-ups = %+v; want one past %d", ws, res.To)
	}
}

// Busy answers say only that a drain holds the lease, which a healthy drain
// inside one slow batch does too: a few of them in a row are not stuck. A
// checkpoint that has not moved for well over a lease duration while
// wake-ups are answered busy is.
func TestStatusBusyDuringASlowBatchIsNotStuck(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	f := newFixture(t, 100)
	if res, err := f.d.Drain(ctx, f.req(100)); err != nil || res.Outcome != engine.OutcomeDrained {
		t.Fatalf("drain = %+v, %v", res, err)
	}
	f.appendRecords(t, ctx, 200)
	f.sink.mu.Lock()
	f.sink.pause, f.sink.entered = make(chan struct{}), make(chan struct{})
	pause, entered := f.sink.pause, f.sink.entered
	f.sink.mu.Unlock()
	done := make(chan error, 1)
	go func() {
		_, err := f.d.Drain(ctx, f.req(300))
		done <- err
	}()
	<-entered // the holder is inside a slow batch
	for i := range 3 {
		if res, err := f.d.Drain(ctx, f.req(300)); err != nil || res.Outcome != engine.OutcomeBusy {
			t.Fatalf("wake-up %d = %+v, %v; want busy", i, res, err)
		}
	}
	if ds := f.destStatus(t); ds["state"] != "ok" {
		t.Fatalf("status during a slow batch = %v; want ok", ds)
	}
	// The same, with the checkpoint still for three minutes: stuck, and why.
	ds := f.destStatusAt(t, time.Now().Add(3*time.Minute))
	if state, _, why, ok := stallOf(ds); state != "stuck" || !ok || !strings.Contains(why, "busy") {
		t.Fatalf("status three minutes later = %v; want stuck, busy", ds)
	}
	f.sink.mu.Lock()
	f.sink.pause, f.sink.entered = nil, nil
	f.sink.mu.Unlock()
	close(pause)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if ds := f.destStatusAt(t, time.Now().Add(3*time.Minute)); ds["state"] != "ok" || ds["stalled"] != nil {
		t.Fatalf("status after the slow batch = %v; want ok", ds)
	}
}

// Refusals count by number as before, but a checkpoint that advanced
// within the last lease durations is not stuck, whatever the count says.
func TestStatusRefusalsRightAfterProgressAreNotStuck(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	f := newFixture(t, 100)
	if res, err := f.d.Drain(ctx, f.req(100)); err != nil || res.Outcome != engine.OutcomeDrained {
		t.Fatalf("drain = %+v, %v", res, err)
	}
	f.appendRecords(t, ctx, 100)
	f.sink.mu.Lock()
	f.sink.epoch = 1000
	f.sink.mu.Unlock()
	for i := range 3 {
		if res, err := f.d.Drain(ctx, f.req(200)); err != nil || res.Outcome != engine.OutcomeRewound {
			t.Fatalf("drain %d = %+v, %v; want refused", i, res, err)
		}
	}
	if ds := f.destStatus(t); ds["state"] != "ok" {
		t.Fatalf("status right after progress = %v; want ok", ds)
	}
	ds := f.destStatusAt(t, time.Now().Add(3*time.Minute))
	if state, _, why, ok := stallOf(ds); state != "stuck" || !ok || !strings.Contains(why, "stale epoch") {
		t.Fatalf("status three minutes later = %v; want stuck, stale epoch", ds)
	}
}

// A stalls document status cannot read does not take the whole status
// down: that destination's state is unknown, and says why.
func TestStatusWithAnUnreadableStallsDocument(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	f := newFixture(t, 100)
	if _, err := f.st.WriteDoc(ctx, "orders/dest/warehouse.stalls.json", "not a stalls document", ""); err != nil {
		t.Fatal(err)
	}
	ds := f.destStatus(t)
	if ds["state"] != "unknown" || !strings.Contains(fmt.Sprint(ds["stateError"]), "stalls") || ds["lagRecords"] != 100.0 {
		t.Fatalf("status = %v; want state unknown with the reason, and the rest", ds)
	}
}

// A replay that puts the checkpoint back where an old run of busy answers
// was noted starts a new generation: the old run does not come back.
func TestStatusForgetsStallsOfAnEarlierGeneration(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	f := newFixture(t, 100)
	if res, err := f.d.Drain(ctx, f.req(100)); err != nil || res.Outcome != engine.OutcomeDrained {
		t.Fatalf("drain = %+v, %v", res, err)
	}
	f.appendRecords(t, ctx, 100)
	lease, err := f.st.AcquireLease(ctx, "orders/lock/warehouse", 15*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		if res, err := f.d.Drain(ctx, f.req(200)); err != nil || res.Outcome != engine.OutcomeBusy {
			t.Fatalf("wake-up %d = %+v, %v; want busy", i, res, err)
		}
	}
	if err := lease.Release(ctx); err != nil {
		t.Fatal(err)
	}
	if res, err := f.d.Drain(ctx, f.req(200)); err != nil || res.Outcome != engine.OutcomeDrained || res.To != 200 {
		t.Fatalf("drain = %+v, %v", res, err)
	}
	if _, err := engine.Replay(ctx, f.st, engine.ReplayRequest{Pipeline: f.p, Destination: f.dst, FromSeq: 101}, time.Now()); err != nil {
		t.Fatal(err)
	}
	for _, now := range []time.Time{time.Now(), time.Now().Add(3 * time.Minute)} {
		if ds := f.destStatusAt(t, now); ds["state"] != "ok" || ds["stalled"] != nil {
			t.Fatalf("status at %s after the replay = %v; want ok without the stall of generation 0", now, ds)
		}
	}
}
