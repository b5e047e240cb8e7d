package checkpoint_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/sluicehq/sluice/internal/checkpoint"
	"github.com/sluicehq/sluice/internal/testenv"
)

func TestCheckpointCompareAndSwap(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	st := testenv.Store(t)
	cp, err := checkpoint.Load(ctx, st, "orders", "warehouse")
	if err != nil || cp.Seq != 0 || cp.Generation != 0 || cp.Epoch != 0 {
		t.Fatalf("fresh checkpoint = %+v, %v", cp, err)
	}
	cp.Epoch = 1
	if err := checkpoint.Save(ctx, st, "orders", "warehouse", cp); err != nil {
		t.Fatal(err)
	}
	// A drain and a replay both load it; the replay saves first and wins.
	drain, _ := checkpoint.Load(ctx, st, "orders", "warehouse")
	replay, _ := checkpoint.Load(ctx, st, "orders", "warehouse")
	replay.Generation++
	replay.Epoch++
	if err := checkpoint.Save(ctx, st, "orders", "warehouse", replay); err != nil {
		t.Fatal(err)
	}
	drain.Seq = 100
	if err := checkpoint.Save(ctx, st, "orders", "warehouse", drain); !errors.Is(err, checkpoint.ErrConflict) {
		t.Fatalf("stale drain save: %v, want ErrConflict", err)
	}
	got, _ := checkpoint.Load(ctx, st, "orders", "warehouse")
	if got.Seq != 0 || got.Generation != 1 || got.Epoch != 2 {
		t.Fatalf("checkpoint = %+v, want the replay's", got)
	}
	// Two first writers: create-only, one wins.
	a, _ := checkpoint.Load(ctx, st, "orders", "hook")
	b, _ := checkpoint.Load(ctx, st, "orders", "hook")
	if err := checkpoint.Save(ctx, st, "orders", "hook", a); err != nil {
		t.Fatal(err)
	}
	if err := checkpoint.Save(ctx, st, "orders", "hook", b); !errors.Is(err, checkpoint.ErrConflict) {
		t.Fatalf("second first save: %v, want ErrConflict", err)
	}
}

func TestStallsCountWhileTheCheckpointStays(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	st := testenv.Store(t)
	if s, err := checkpoint.LoadStalls(ctx, st, "orders", "warehouse"); err != nil || s.Count != 0 {
		t.Fatalf("fresh stalls = %+v, %v", s, err)
	}
	t0 := time.Date(2026, 11, 25, 8, 0, 0, 0, time.UTC)
	for i := range 3 {
		if err := checkpoint.NoteStall(ctx, st, "orders", "warehouse", &checkpoint.Checkpoint{Seq: 5}, "busy", true, t0.Add(time.Duration(i)*time.Minute)); err != nil {
			t.Fatal(err)
		}
	}
	s, err := checkpoint.LoadStalls(ctx, st, "orders", "warehouse")
	if err != nil || s.Seq != 5 || s.Count != 3 || s.Busy != 3 || s.Reason != "busy" || !s.Since.Equal(t0) || !s.Last.Equal(t0.Add(2*time.Minute)) {
		t.Fatalf("stalls = %+v, %v; want 3 at seq 5", s, err)
	}
	// The checkpoint moved: the run starts over.
	if err := checkpoint.NoteStall(ctx, st, "orders", "warehouse", &checkpoint.Checkpoint{Seq: 9}, "rewound", false, t0.Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	if s, err := checkpoint.LoadStalls(ctx, st, "orders", "warehouse"); err != nil || s.Seq != 9 || s.Count != 1 || s.Busy != 0 || s.Reason != "rewound" || !s.Since.Equal(t0.Add(time.Hour)) {
		t.Fatalf("stalls = %+v, %v; want a new run at seq 9", s, err)
	}
	// A replay back to the same seq is a new generation: a new run too.
	if err := checkpoint.NoteStall(ctx, st, "orders", "warehouse", &checkpoint.Checkpoint{Seq: 9, Generation: 1}, "busy", true, t0.Add(2*time.Hour)); err != nil {
		t.Fatal(err)
	}
	if s, err := checkpoint.LoadStalls(ctx, st, "orders", "warehouse"); err != nil || s.Seq != 9 || s.Generation != 1 || s.Count != 1 || s.Busy != 1 || !s.Since.Equal(t0.Add(2*time.Hour)) {
		t.Fatalf("stalls = %+v, %v; want a new run at seq 9, generation 1", s, err)
	}
}
