package checkpoint_test

import (
	"context"
	"errors"
	"testing"

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
