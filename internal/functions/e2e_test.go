package functions_test

import (
	"context"
	"database/sql"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	_ "modernc.org/sqlite"

	"github.com/sluicehq/sluice/internal/azstore"
	"github.com/sluicehq/sluice/internal/config"
	"github.com/sluicehq/sluice/internal/engine"
	"github.com/sluicehq/sluice/internal/functions"
	"github.com/sluicehq/sluice/internal/graphsim"
	"github.com/sluicehq/sluice/internal/sink"
	"github.com/sluicehq/sluice/internal/sink/sqlsink"
	"github.com/sluicehq/sluice/internal/source/sharepoint"
	"github.com/sluicehq/sluice/internal/testenv"
)

// TestThroughTheHandlerOnly drives the whole product with nothing but the
// host's payloads: a timer invocation reads, the queue messages it enqueued
// become write invocations, an HTTP replay rewinds, and status reports.
func TestThroughTheHandlerOnly(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	sim := graphsim.New(graphsim.Options{Token: "tok"})
	list := sim.AddList("contoso.sharepoint.com", "/sites/ops", "Orders")
	list.Populate(300, 3)
	gsrv := httptest.NewServer(sim)
	defer gsrv.Close()

	st := testenv.Store(t)
	queue := testenv.UniqueName("w")
	db := filepath.Join(t.TempDir(), "orders.db")
	cfg, err := config.Parse("e2e.yaml", []byte(fmt.Sprintf(`pipelines:
  - name: orders
    source:
      type: sharepoint
      site: contoso.sharepoint.com:/sites/ops
      list: Orders
      graph_url: %s/v1.0
      auth: {type: bearer, token: tok}
    destinations:
      - name: lite
        type: sql
        driver: sqlite
        dsn: file:%s
        table: orders
`, gsrv.URL, db)), nil)
	if err != nil {
		t.Fatal(err)
	}
	openSink := func(ctx context.Context, p *config.Pipeline, d *config.Destination) (sink.Sink, error) {
		return sqlsink.Open(ctx, sqlsink.Config{Driver: d.Driver, DSN: d.DSN.Reveal(), Table: d.Table, Pipeline: p.Name, Destination: d.Name})
	}
	h := functions.NewHandler(functions.Deps{
		Config: cfg,
		Store:  func(context.Context) (*azstore.Store, error) { return st, nil },
		Reader: functions.ReaderFunc(func(ctx context.Context) (any, error) {
			r := &engine.Reader{Store: st, Queue: queue, Open: func(p *config.Pipeline) (engine.Source, error) {
				return sharepoint.New(sharepoint.Options{GraphURL: p.Source.GraphURL, Auth: p.Source.Auth})
			}}
			return r.ReadAll(ctx, cfg, "")
		}),
		Drain: func(ctx context.Context, req engine.DrainRequest) (engine.DrainResult, error) {
			return (&engine.Drainer{Store: st, Queue: queue, Open: openSink}).Drain(ctx, req)
		},
		Replay: func(ctx context.Context, req engine.ReplayRequest) (engine.ReplayResult, error) {
			req.Queue = queue
			return engine.Replay(ctx, st, req, time.Now())
		},
		FunctionTimeout: 10 * time.Minute,
		Logger:          slog.New(slog.DiscardHandler),
	})
	srv := httptest.NewServer(h)
	defer srv.Close()

	post := func(fn, body string) map[string]any {
		t.Helper()
		resp, err := http.Post(srv.URL+"/"+fn, "application/json", strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		data, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "application/json" {
			t.Fatalf("%s: %d %s: %s", fn, resp.StatusCode, resp.Header.Get("Content-Type"), data)
		}
		var out map[string]any
		if err := json.Unmarshal(data, &out); err != nil {
			t.Fatalf("%s reply: %v: %s", fn, err, data)
		}
		return out
	}
	// drainQueue turns every queued wake-up into a write invocation, as the
	// host would: base64 decoded, then double-encoded, DequeueCount a string.
	drainQueue := func() int {
		t.Helper()
		n := 0
		for {
			msgs, err := st.Dequeue(ctx, queue, 32, time.Minute)
			if err != nil {
				t.Fatal(err)
			}
			if len(msgs) == 0 {
				return n
			}
			for _, m := range msgs {
				text, err := base64.StdEncoding.DecodeString(m.Text)
				if err != nil {
					t.Fatal(err)
				}
				inner, _ := json.Marshal(string(text))
				outer, _ := json.Marshal(string(inner))
				post("write", fmt.Sprintf(`{"Data":{"msg":%s},"Metadata":{"DequeueCount":"%d","Id":"\"%s\""}}`, outer, m.DequeueCount, m.ID))
				if err := st.DeleteMessage(ctx, queue, m); err != nil {
					t.Fatal(err)
				}
				n++
			}
		}
	}
	rows := func() int {
		conn, err := sql.Open("sqlite", db)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		var n int
		if err := conn.QueryRow(`SELECT count(*) FROM orders`).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}

	post("read", `{"Data":{"timer":{"Schedule":{"AdjustForDST":true},"ScheduleStatus":null,"IsPastDue":false}},"Metadata":{"sys":{"MethodName":"read"}}}`)
	if n := drainQueue(); n != 1 {
		t.Fatalf("the read enqueued %d wake-ups, want 1", n)
	}
	if got := rows(); got != 300 {
		t.Fatalf("%d rows after the first write, want 300", got)
	}

	reply := post("replay", `{"Data":{"req":{"Url":"http://localhost/api/replay/orders/lite","Method":"POST","Query":{},`+
		`"Headers":{"Content-Type":["application/json"]},"Params":{"pipeline":"orders","destination":"lite"},"Body":"{\"fromSeq\":101}"}},"Metadata":{}}`)
	res := reply["Outputs"].(map[string]any)["res"].(map[string]any)
	var answer engine.ReplayResult
	if err := json.Unmarshal([]byte(res["body"].(string)), &answer); err != nil || res["statusCode"].(float64) != 200 {
		t.Fatalf("replay res = %v (%v)", res, err)
	}
	if answer.FromSeq != 101 || answer.Records != 200 || answer.Generation != 1 {
		t.Fatalf("replay answer = %+v", answer)
	}
	if n := drainQueue(); n != 1 {
		t.Fatalf("the replay enqueued %d wake-ups, want 1", n)
	}
	if got := rows(); got != 300 {
		t.Fatalf("%d rows after the replay, want 300", got)
	}

	reply = post("status", `{"Data":{"req":{"Url":"http://localhost/api/status","Method":"GET","Query":{},"Headers":{},"Params":{}}},"Metadata":{}}`)
	res = reply["Outputs"].(map[string]any)["res"].(map[string]any)
	var status struct {
		Pipelines []engine.PipelineStatus `json:"pipelines"`
	}
	if err := json.Unmarshal([]byte(res["body"].(string)), &status); err != nil {
		t.Fatal(err)
	}
	d := status.Pipelines[0].Destinations[0]
	if status.Pipelines[0].Head.Seq != 300 || d.Checkpoint != 300 || d.LagRecords != 0 || d.LagSeconds != 0 || d.Generation != 1 {
		t.Fatalf("status = %+v", status.Pipelines[0])
	}
}
