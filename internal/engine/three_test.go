package engine_test

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/messaging/azservicebus"

	"github.com/sluicehq/sluice/internal/config"
	"github.com/sluicehq/sluice/internal/engine"
	"github.com/sluicehq/sluice/internal/sink"
	"github.com/sluicehq/sluice/internal/sink/httpsink"
	"github.com/sluicehq/sluice/internal/sink/servicebus"
	"github.com/sluicehq/sluice/internal/testenv"
)

// TestThreeDestinationsOneFailing: SQLite, Service Bus and an HTTP receiver
// that fails for a long while drain one pipeline. The failing one never
// delays the other two, and once it recovers everything reaches it.
func TestThreeDestinationsOneFailing(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	sbConn, sbQueue := testenv.ServiceBus(t)

	var failing atomic.Bool
	failing.Store(true)
	var mu sync.Mutex
	received := map[int64]int{} // seq -> times
	ids := map[int64]string{}
	hook := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		if failing.Load() {
			http.Error(w, "down for maintenance", http.StatusServiceUnavailable)
			return
		}
		var events []struct {
			ID        string `json:"id"`
			SluiceSeq string `json:"sluiceseq"`
		}
		if err := json.Unmarshal(body, &events); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		mu.Lock()
		for _, e := range events {
			seq, _ := strconv.ParseInt(e.SluiceSeq, 10, 64)
			received[seq]++
			if prev, ok := ids[seq]; ok && prev != e.ID {
				t.Errorf("seq %d repeated with another id: %s then %s", seq, prev, e.ID)
			}
			ids[seq] = e.ID
		}
		mu.Unlock()
		w.WriteHeader(http.StatusNoContent)
	}))
	defer hook.Close()

	lite := "file:" + t.TempDir() + "/orders.db"
	f := newSQLFixture(t, 2000, 300,
		sqlDest("lite", config.DriverSQLite, lite),
		config.Destination{Name: "bus", Type: config.DestServiceBus, ConnectionString: config.Secret(sbConn), Entity: sbQueue, BatchSize: 500, OnError: config.OnErrorDeadletter},
		config.Destination{Name: "hook", Type: config.DestHTTP, URL: hook.URL, BatchSize: 100, Timeout: 5 * time.Second, MaxInFlight: 1, OnError: config.OnErrorDeadletter},
	)
	d := f.drainer()
	d.Open = func(ctx context.Context, p *config.Pipeline, dd *config.Destination) (sink.Sink, error) {
		switch dd.Type {
		case config.DestServiceBus:
			return servicebus.Open(ctx, servicebus.Config{ConnectionString: dd.ConnectionString.Reveal(), Entity: dd.Entity, BatchSize: dd.BatchSize})
		case config.DestHTTP:
			return httpsink.Open(httpsink.Config{URL: dd.URL, BatchSize: dd.BatchSize, Timeout: dd.Timeout, MaxInFlight: 1, MaxAttempts: 2})
		}
		return openSQL(ctx, p, dd)
	}

	// The HTTP drain keeps retrying its first batch for as long as its budget
	// lasts; the other two run at the same time.
	hookDone := make(chan error, 1)
	go func() {
		req := f.req(2)
		req.Deadline = time.Now().Add(40 * time.Second)
		_, err := d.Drain(ctx, req)
		hookDone <- err
	}()
	for i := range 2 {
		res, err := d.Drain(ctx, f.req(i))
		if err != nil || res.Outcome != engine.OutcomeDrained || res.To != 2000 {
			t.Fatalf("%s = %+v, %v", f.p.Destinations[i].Name, res, err)
		}
	}
	select {
	case err := <-hookDone:
		t.Fatalf("the failing HTTP drain ended (%v) before the others finished", err)
	default:
	}
	f.checkTable(t, config.DriverSQLite, lite)
	// Service Bus got every record once, as the change record JSON.
	client, err := azservicebus.NewClientFromConnectionString(sbConn, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close(ctx)
	recv, err := client.NewReceiverForQueue(sbQueue, &azservicebus.ReceiverOptions{ReceiveMode: azservicebus.ReceiveModeReceiveAndDelete})
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for len(seen) < 2000 {
		rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		msgs, err := recv.ReceiveMessages(rctx, 1000, nil)
		cancel()
		if len(msgs) == 0 {
			if err != nil && !errors.Is(err, context.DeadlineExceeded) {
				t.Fatal(err)
			}
			break
		}
		for _, m := range msgs {
			seen[m.MessageID] = true
		}
	}
	if len(seen) != 2000 || !seen["orders-1"] || !seen["orders-2000"] {
		t.Fatalf("Service Bus received %d distinct messages, want 2000", len(seen))
	}
	// The HTTP drain fails cleanly (the host would retry), having delivered nothing.
	if err := <-hookDone; err == nil {
		t.Fatal("the HTTP drain succeeded against a failing receiver")
	}
	if cp := f.checkpointOf(t, "hook"); cp.Seq != 0 || cp.LastError == "" {
		t.Fatalf("hook checkpoint = %+v", cp)
	}
	// The receiver recovers: a later wake-up delivers everything, in order.
	failing.Store(false)
	res, err := d.Drain(ctx, f.req(2))
	if err != nil || res.Outcome != engine.OutcomeDrained || res.To != 2000 {
		t.Fatalf("hook after recovery = %+v, %v", res, err)
	}
	mu.Lock()
	defer mu.Unlock()
	for seq := int64(1); seq <= 2000; seq++ {
		if received[seq] == 0 {
			t.Fatalf("seq %d never reached the receiver", seq)
		}
	}
}
