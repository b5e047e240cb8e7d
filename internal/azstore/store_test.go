package azstore_test

import (
	"context"
	"encoding/base64"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sluicehq/sluice/internal/azstore"
	"github.com/sluicehq/sluice/internal/testenv"
)

func TestDocsCompareAndSwap(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	st := testenv.Store(t)
	type doc struct{ N int }

	var got doc
	if _, err := st.ReadDoc(ctx, "p/state.json", &got); !errors.Is(err, azstore.ErrNotFound) {
		t.Fatalf("read missing doc: %v, want ErrNotFound", err)
	}
	e1, err := st.WriteDoc(ctx, "p/state.json", doc{1}, "")
	if err != nil {
		t.Fatal(err)
	}
	// Create-only on an existing blob: Azure says 409, some paths 412; one error.
	if _, err := st.WriteDoc(ctx, "p/state.json", doc{2}, ""); !errors.Is(err, azstore.ErrConflict) {
		t.Fatalf("second create: %v, want ErrConflict", err)
	}
	e2, err := st.WriteDoc(ctx, "p/state.json", doc{3}, e1)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.WriteDoc(ctx, "p/state.json", doc{4}, e1); !errors.Is(err, azstore.ErrConflict) {
		t.Fatalf("write with stale etag: %v, want ErrConflict", err)
	}
	etag, err := st.ReadDoc(ctx, "p/state.json", &got)
	if err != nil || got.N != 3 || etag != e2 {
		t.Fatalf("read = %v %v %v, want N=3 etag %v", got, etag, err, e2)
	}
	if err := st.Delete(ctx, "p/state.json", e1); !errors.Is(err, azstore.ErrConflict) {
		t.Fatalf("delete with stale etag: %v, want ErrConflict", err)
	}
	if err := st.Delete(ctx, "p/state.json", e2); err != nil {
		t.Fatal(err)
	}
	if err := st.Delete(ctx, "p/state.json", ""); !errors.Is(err, azstore.ErrNotFound) {
		t.Fatalf("delete missing: %v, want ErrNotFound", err)
	}
}

func TestConcurrentCompareAndSwapOneWins(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	st := testenv.Store(t)
	e, err := st.WriteDoc(ctx, "d.json", map[string]int{"v": 0}, "")
	if err != nil {
		t.Fatal(err)
	}
	var wins, conflicts atomic.Int32
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := st.WriteDoc(ctx, "d.json", map[string]int{"v": i + 1}, e)
			switch {
			case err == nil:
				wins.Add(1)
			case errors.Is(err, azstore.ErrConflict):
				conflicts.Add(1)
			default:
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	if wins.Load() != 1 || conflicts.Load() != 7 {
		t.Fatalf("wins=%d conflicts=%d, want 1 and 7", wins.Load(), conflicts.Load())
	}
}

func TestLeases(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	st := testenv.Store(t)

	l1, err := st.AcquireLease(ctx, "p/lock/read", 15*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.AcquireLease(ctx, "p/lock/read", 15*time.Second); !errors.Is(err, azstore.ErrLeaseHeld) {
		t.Fatalf("second acquire: %v, want ErrLeaseHeld", err)
	}
	// Renewal keeps the lease past its first expiry.
	lost := make(chan error, 1)
	stop := l1.Keep(ctx, func(err error) { lost <- err })
	time.Sleep(17 * time.Second)
	if _, err := st.AcquireLease(ctx, "p/lock/read", 15*time.Second); !errors.Is(err, azstore.ErrLeaseHeld) {
		t.Fatalf("acquire while renewed: %v, want ErrLeaseHeld", err)
	}
	stop()
	select {
	case err := <-lost:
		t.Fatalf("renewal failed: %v", err)
	default:
	}
	// Without renewal the lease expires and frees the blob.
	time.Sleep(16 * time.Second)
	l2, err := st.AcquireLease(ctx, "p/lock/read", 15*time.Second)
	if err != nil {
		t.Fatalf("acquire after expiry: %v", err)
	}
	if err := l1.Renew(ctx); !errors.Is(err, azstore.ErrLeaseLost) {
		t.Fatalf("renew of an expired, retaken lease: %v, want ErrLeaseLost", err)
	}
	if err := l2.Release(ctx); err != nil {
		t.Fatal(err)
	}
	l3, err := st.AcquireLease(ctx, "p/lock/read", 60*time.Second)
	if err != nil {
		t.Fatalf("acquire after release: %v", err)
	}
	_ = l3.Release(ctx)
}

func TestQueueMessagesAreBase64JSON(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	st := testenv.Store(t)
	q := testenv.UniqueName("q")
	type wake struct {
		Pipeline    string `json:"pipeline"`
		Destination string `json:"destination"`
		Head        int64  `json:"head"`
	}
	in := wake{"orders", "warehouse", 42}
	if err := st.Enqueue(ctx, q, in); err != nil {
		t.Fatal(err)
	}
	msgs, err := st.Dequeue(ctx, q, 32, 30*time.Second)
	if err != nil || len(msgs) != 1 {
		t.Fatalf("dequeue = %v, %v; want 1 message", msgs, err)
	}
	raw, err := base64.StdEncoding.DecodeString(msgs[0].Text)
	if err != nil {
		t.Fatalf("message text %q is not base64: %v", msgs[0].Text, err)
	}
	if string(raw) != `{"pipeline":"orders","destination":"warehouse","head":42}` {
		t.Fatalf("message JSON = %s", raw)
	}
	var out wake
	if err := azstore.DecodeMessage(msgs[0].Text, &out); err != nil || out != in {
		t.Fatalf("decode = %+v, %v; want %+v", out, err, in)
	}
	if msgs[0].DequeueCount != 1 {
		t.Fatalf("dequeue count = %d, want 1", msgs[0].DequeueCount)
	}
	if err := st.DeleteMessage(ctx, q, msgs[0]); err != nil {
		t.Fatal(err)
	}
	if err := azstore.DecodeMessage("not base64!", &out); err == nil {
		t.Fatal("undecodable message accepted")
	}
}
