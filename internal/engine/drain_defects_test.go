package engine_test

import (
	"context"
	"encoding/json"
	"errors"
	"testing"
	"time"

	"github.com/sluicehq/sluice/internal/azstore"
	"github.com/sluicehq/sluice/internal/config"
	"github.com/sluicehq/sluice/internal/engine"
	"github.com/sluicehq/sluice/internal/sink"
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
