package functions_test

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/sluicehq/sluice/internal/azstore"
	"github.com/sluicehq/sluice/internal/changelog"
	"github.com/sluicehq/sluice/internal/config"
	"github.com/sluicehq/sluice/internal/engine"
	"github.com/sluicehq/sluice/internal/functions"
	"github.com/sluicehq/sluice/internal/sink"
	"github.com/sluicehq/sluice/internal/testenv"
)

type nopSink struct{}

func (nopSink) Apply(context.Context, sink.Batch) error { return nil }
func (nopSink) Close() error                            { return nil }

// BenchmarkWriteInvocation measures what one write invocation costs sluice
// itself against Azurite, with a destination that does nothing: "idle" is a
// wake-up the checkpoint has already passed (one blob read); "one-record"
// takes the lease, bumps the epoch, reads the head, scans one segment,
// advances the checkpoint and releases the lease.
func BenchmarkWriteInvocation(b *testing.B) {
	ctx := context.Background()
	st := testenv.Store(b)
	cfg, err := config.Parse("b.yaml", []byte(`pipelines:
  - name: orders
    source: {type: sharepoint, site: "x.sharepoint.com:/sites/a", list: L, auth: {type: bearer, token: t}}
    destinations:
      - {name: nop, type: http, url: "https://example.com/"}
`), nil)
	if err != nil {
		b.Fatal(err)
	}
	queue := testenv.UniqueName("q")
	h := functions.NewHandler(functions.Deps{
		Config: cfg,
		Store:  func(context.Context) (*azstore.Store, error) { return st, nil },
		Drain: func(ctx context.Context, req engine.DrainRequest) (engine.DrainResult, error) {
			return (&engine.Drainer{Store: st, Queue: queue,
				Open: func(context.Context, *config.Pipeline, *config.Destination) (sink.Sink, error) { return nopSink{}, nil }}).Drain(ctx, req)
		},
		FunctionTimeout: 10 * time.Minute,
		Logger:          slog.New(slog.DiscardHandler),
	})
	srv := httptest.NewServer(h)
	defer srv.Close()
	lg := changelog.New(st, "orders", changelog.Options{})
	appendOne := func() int64 {
		s, _ := lg.LoadState(ctx)
		a, err := lg.NewAppender(ctx, s)
		if err != nil {
			b.Fatal(err)
		}
		if err := a.Add(ctx, &changelog.Record{Op: changelog.OpUpsert, Key: "1", Fields: json.RawMessage(`{"A":1}`)}); err != nil {
			b.Fatal(err)
		}
		if err := a.Commit(ctx, nil); err != nil {
			b.Fatal(err)
		}
		return a.Head().Seq
	}
	invoke := func(head int64) {
		msg, _ := json.Marshal(fmt.Sprintf(`{"pipeline":"orders","destination":"nop","head":%d}`, head))
		resp, err := http.Post(srv.URL+"/write", "application/json",
			strings.NewReader(fmt.Sprintf(`{"Data":{"msg":%s},"Metadata":{"DequeueCount":"1"}}`, msg)))
		if err != nil {
			b.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 200 {
			b.Fatalf("write answered %d", resp.StatusCode)
		}
	}
	head := appendOne()
	invoke(head)
	b.Run("idle", func(b *testing.B) {
		for range b.N {
			invoke(head)
		}
	})
	b.Run("one-record", func(b *testing.B) {
		for range b.N {
			b.StopTimer()
			head = appendOne()
			b.StartTimer()
			invoke(head)
		}
	})
}
