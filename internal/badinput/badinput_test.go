package badinput_test

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"reflect"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	_ "modernc.org/sqlite"

	"github.com/sluicehq/sluice/internal/azstore"
	"github.com/sluicehq/sluice/internal/changelog"
	"github.com/sluicehq/sluice/internal/checkpoint"
	"github.com/sluicehq/sluice/internal/config"
	"github.com/sluicehq/sluice/internal/engine"
	"github.com/sluicehq/sluice/internal/functions"
	"github.com/sluicehq/sluice/internal/sink"
	"github.com/sluicehq/sluice/internal/sink/sqlsink"
	"github.com/sluicehq/sluice/internal/source/sharepoint"
	"github.com/sluicehq/sluice/internal/testenv"
)

// ---- pipelines files ----

const goodConfig = `pipelines:
  - name: orders
    source:
      type: sharepoint
      site: contoso.sharepoint.com:/sites/ops
      list: Orders
    destinations:
      - name: lite
        type: sql
        driver: sqlite
        dsn: ${SQL_DSN}
        table: orders
`

// edit replaces the one occurrence of old in goodConfig.
func edit(t *testing.T, old, new string) string {
	t.Helper()
	if strings.Count(goodConfig, old) != 1 {
		t.Fatalf("%q is not in the good config exactly once", old)
	}
	return strings.Replace(goodConfig, old, new, 1)
}

// billionLaughs nests nine lists of nine aliases nine levels deep: 9^9
// strings if anything expanded it.
func billionLaughs() string {
	var b strings.Builder
	b.WriteString(`a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]` + "\n")
	prev := "a"
	for _, n := range strings.Split("bcdefghi", "") {
		fmt.Fprintf(&b, "%s: &%s [%s]\n", n, n, strings.TrimSuffix(strings.Repeat("*"+prev+",", 9), ","))
		prev = n
	}
	b.WriteString("pipelines: *i\n")
	return b.String()
}

// garbage is n deterministic random bytes.
func garbage(n int) string {
	r := rand.New(rand.NewPCG(1, 2))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return string(b)
}

// TestMalformedPipelinesFiles: every malformed file is refused by Parse
// with an error naming the file, the line and (where the YAML parsed) the
// key, quickly and within bounded memory. Parse has no stored data to
// change: it is a pure function of the bytes and the environment.
func TestMalformedPipelinesFiles(t *testing.T) {
	env := func(k string) (string, bool) {
		if k == "SQL_DSN" {
			return "file:/tmp/x.db", true
		}
		return "", false
	}
	cases := []struct {
		name string
		data string
		line int    // the line the error must name
		key  string // the key path it must name ("" for a YAML syntax error: no key is known)
		msg  string // what it must say
	}{
		{"unknown key", edit(t, "driver: sqlite", "drver: sqlite"), 10, "pipelines[0].destinations[0].drver", `unknown key (did you mean "driver"?)`},
		{"tab indentation", edit(t, "        table: orders", "\ttable: orders"), 12, "", "found a tab character that violates indentation"},
		{"duplicate key", edit(t, "        table: orders\n", "        table: orders\n        table: others\n"), 13, "pipelines[0].destinations[0].table", "duplicate key (first at line 12)"},
		{"wrong type: list for a string", edit(t, "list: Orders", "list: [Orders, Other]"), 6, "pipelines[0].source.list", "expected a string, got a list"},
		{"wrong type: batch_size not an integer", edit(t, "        table: orders\n", "        table: orders\n        batch_size: lots\n"), 13, "pipelines[0].destinations[0].batch_size", `expected an integer, got "lots"`},
		{"wrong type: pipelines a mapping", "pipelines:\n  orders: {}\n", 1, "pipelines", "expected a list, got a mapping"},
		{"missing env var", edit(t, "${SQL_DSN}", "${ORDERS_DSN}"), 11, "pipelines[0].destinations[0].dsn", "environment variable ORDERS_DSN is not set"},
		{"10 MB of garbage", garbage(10 << 20), 1, "", "invalid YAML"},
		{"invalid UTF-8", edit(t, "list: Orders", "list: Ord\xff\xfeers"), 6, "", "invalid YAML"},
		{"billion laughs", billionLaughs(), 8, "pipelines[0]", "expected a mapping, got a list"},
		{"alias cycle", "a: &a [*a]\npipelines: *a\n", 1, "pipelines[0]", "expected a mapping"},
		{"two documents", goodConfig + "---\n" + goodConfig, 13, "", "more than one YAML document"},
		{"bad pipeline name", edit(t, "name: orders", "name: Orders_2026"), 2, "pipelines[0].name", "not a valid pipeline name"},
		{"missing source", edit(t, "    source:\n      type: sharepoint\n      site: contoso.sharepoint.com:/sites/ops\n      list: Orders\n", ""), 2, "pipelines[0].source", "required"},
		{"secret-looking value in a bad key is not echoed", edit(t, "dsn: ${SQL_DSN}", "dsn: ${SQL_DSN}\n        password: hunter2"), 12, "pipelines[0].destinations[0].password", "unknown key"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var before, after runtime.MemStats
			runtime.GC()
			runtime.ReadMemStats(&before)
			start := time.Now()
			cfg, err := config.Parse("pipelines.yaml", []byte(c.data), env)
			took := time.Since(start)
			runtime.ReadMemStats(&after)
			if err == nil {
				t.Fatalf("accepted: %+v", cfg)
			}
			if cfg != nil {
				t.Fatalf("a config came back with the error %v", err)
			}
			if took > 5*time.Second {
				t.Errorf("took %s", took)
			}
			if alloc := after.TotalAlloc - before.TotalAlloc; alloc > 512<<20 {
				t.Errorf("allocated %d MB", alloc>>20)
			}
			var list config.Errors
			if !errors.As(err, &list) || len(list) == 0 {
				t.Fatalf("error %T is not a config.Errors: %v", err, err)
			}
			if len(err.Error()) > 4096 {
				t.Errorf("message of %d bytes; want a readable one", len(err.Error()))
			}
			if strings.Contains(err.Error(), "hunter2") || strings.Contains(err.Error(), "file:/tmp/x.db") {
				t.Errorf("the message quotes a secret value: %v", err)
			}
			for _, e := range list {
				if e.File != "pipelines.yaml" || !strings.HasPrefix(e.Error(), "pipelines.yaml:") {
					t.Errorf("problem without the file: %v", e)
				}
				line := e.Line
				if line == c.line && e.Path == c.key && strings.Contains(e.Msg, c.msg) {
					return
				}
			}
			t.Fatalf("want pipelines.yaml:%d: %s: ...%s..., got:\n%v", c.line, c.key, c.msg, err)
		})
	}
}

// ---- shared fixture: a real handler over Azurite with one sqlite destination ----

type fixture struct {
	t     *testing.T
	ctx   context.Context
	st    *azstore.Store
	queue string
	cfg   *config.Config
	db    string
	srv   *httptest.Server
	n     int // records appended so far
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	ctx := context.Background()
	f := &fixture{t: t, ctx: ctx, st: testenv.Store(t), queue: testenv.UniqueName("bad"), db: filepath.Join(t.TempDir(), "orders.db")}
	if err := f.st.EnsureQueue(ctx, f.queue); err != nil {
		t.Fatal(err)
	}
	var err error
	f.cfg, err = config.Parse("badinput.yaml", []byte(goodConfig), func(k string) (string, bool) { return "file:" + f.db, k == "SQL_DSN" })
	if err != nil {
		t.Fatal(err)
	}
	openSink := func(ctx context.Context, p *config.Pipeline, d *config.Destination) (sink.Sink, error) {
		return sqlsink.Open(ctx, sqlsink.Config{Driver: d.Driver, DSN: d.DSN.Reveal(), Table: d.Table, Pipeline: p.Name, Destination: d.Name})
	}
	h := functions.NewHandler(functions.Deps{
		Config: f.cfg,
		Store:  func(context.Context) (*azstore.Store, error) { return f.st, nil },
		Drain: func(ctx context.Context, req engine.DrainRequest) (engine.DrainResult, error) {
			return (&engine.Drainer{Store: f.st, Queue: f.queue, Open: openSink}).Drain(ctx, req)
		},
		Replay: func(ctx context.Context, req engine.ReplayRequest) (engine.ReplayResult, error) {
			req.Queue = f.queue
			return engine.Replay(ctx, f.st, req, time.Now())
		},
		Logger:          slog.New(slog.DiscardHandler),
		FunctionTimeout: 5 * time.Minute,
	})
	f.srv = httptest.NewServer(h)
	t.Cleanup(f.srv.Close)
	return f
}

// appendRecords commits n upserts to the orders log.
func (f *fixture) appendRecords(n int) {
	f.t.Helper()
	lg := changelog.New(f.st, "orders", changelog.Options{})
	state, err := lg.LoadState(f.ctx)
	if err != nil {
		f.t.Fatal(err)
	}
	a, err := lg.NewAppender(f.ctx, state)
	if err != nil {
		f.t.Fatal(err)
	}
	for range n {
		f.n++
		r := changelog.Record{Op: changelog.OpUpsert, Key: strconv.Itoa(f.n), Source: changelog.Source{Site: "s", List: "l"},
			Fields: json.RawMessage(fmt.Sprintf(`{"Title":"item %d"}`, f.n))}
		if err := a.Add(f.ctx, &r); err != nil {
			f.t.Fatal(err)
		}
	}
	if err := a.Commit(f.ctx, nil); err != nil {
		f.t.Fatal(err)
	}
}

// reply is the host-facing answer of one invocation.
type reply struct {
	status  int
	Outputs map[string]json.RawMessage
	Logs    []string
}

// res is an HTTP function's Outputs.res.
type res struct {
	StatusCode int               `json:"statusCode"`
	Headers    map[string]string `json:"headers"`
	Body       string            `json:"body"`
}

func (f *fixture) post(fn, body string) reply {
	f.t.Helper()
	resp, err := http.Post(f.srv.URL+"/"+fn, "application/json", strings.NewReader(body))
	if err != nil {
		f.t.Fatal(err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
		f.t.Fatalf("%s: Content-Type %q: %s", fn, ct, data)
	}
	r := reply{status: resp.StatusCode}
	if err := json.Unmarshal(data, &r); err != nil || r.Outputs == nil || r.Logs == nil {
		f.t.Fatalf("%s: reply is not the host's shape: %v: %s", fn, err, data)
	}
	return r
}

// writeInvocation wraps a queue message's text as the host sends it: the
// text JSON-encoded twice, DequeueCount a string (reference §4, §7.2).
func writeInvocation(text string) string {
	once, _ := json.Marshal(text)
	twice, _ := json.Marshal(string(once))
	return `{"Data":{"msg":` + string(twice) + `},"Metadata":{"DequeueCount":"1","Id":"\"6a1f0c3e-0000-4000-8000-000000000001\"","PopReceipt":"\"AgAAAAMAAAAAAAAA\""}}`
}

// replayInvocation is an HTTP trigger payload for POST /api/replay/...;
// body "" leaves Body out, as the host does for an empty request.
func replayInvocation(params map[string]string, body string) string {
	p, _ := json.Marshal(params)
	b := ""
	if body != "" {
		enc, _ := json.Marshal(body)
		b = `,"Body":` + string(enc)
	}
	return `{"Data":{"req":{"Url":"http://localhost:7071/api/replay","Method":"POST","Query":{},` +
		`"Headers":{"Content-Type":["application/json"]},"Params":` + string(p) + b + `}},"Metadata":{}}`
}

// snapshot is everything a malformed input must leave alone.
type snapshot struct {
	Head        int64
	Cursor      string
	Segments    []string // name and ETag of every blob under the log prefix
	Records     []string // the committed records, as written
	Checkpoints map[string][3]int64
	Rows        int // rows in the sqlite table (-1: no table yet)
	Queued      int // wake-ups waiting in the test's queue
}

func takeSnapshot(t *testing.T, ctx context.Context, st *azstore.Store, pipeline string, dests []string, db, queue string) snapshot {
	t.Helper()
	lg := changelog.New(st, pipeline, changelog.Options{})
	state, err := lg.LoadState(ctx)
	if err != nil {
		t.Fatal(err)
	}
	s := snapshot{Head: state.Head.Seq, Cursor: state.Source.Cursor, Checkpoints: map[string][3]int64{}, Rows: -1}
	if err := st.List(ctx, pipeline+"/log/", func(b azstore.BlobInfo) error {
		s.Segments = append(s.Segments, fmt.Sprintf("%s@%s", b.Name, b.ETag))
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	sc := lg.Scan(ctx, 1, state.Head.Seq)
	for sc.Next() {
		line, err := changelog.AppendLine(nil, sc.Record())
		if err != nil {
			t.Fatal(err)
		}
		s.Records = append(s.Records, string(line))
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	sc.Close()
	if int64(len(s.Records)) != state.Head.Seq {
		t.Fatalf("scanned %d records, head %d", len(s.Records), state.Head.Seq)
	}
	for _, d := range dests {
		cp, err := checkpoint.Load(ctx, st, pipeline, d)
		if err != nil {
			t.Fatal(err)
		}
		s.Checkpoints[d] = [3]int64{cp.Seq, cp.Generation, cp.Epoch}
	}
	if db != "" {
		conn, err := sql.Open("sqlite", db)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		var n int
		if conn.QueryRow(`SELECT count(*) FROM orders`).Scan(&n) == nil {
			s.Rows = n
		}
	}
	if queue != "" {
		// Peek by receiving with a short visibility; the test never
		// consumes wake-ups otherwise, so counting hides nothing it needs.
		msgs, err := st.Dequeue(ctx, queue, 32, time.Second)
		if err != nil {
			t.Fatal(err)
		}
		s.Queued = len(msgs)
		for _, m := range msgs {
			if err := st.DeleteMessage(ctx, queue, m); err != nil {
				t.Fatal(err)
			}
		}
	}
	return s
}

func (f *fixture) snapshot() snapshot {
	f.t.Helper()
	return takeSnapshot(f.t, f.ctx, f.st, "orders", []string{"lite"}, f.db, f.queue)
}

func sameSnapshot(t *testing.T, before, after snapshot) {
	t.Helper()
	if !reflect.DeepEqual(before, after) {
		t.Fatalf("stored data changed:\nbefore %+v\nafter  %+v", before, after)
	}
}

// ---- queue messages ----

// TestMalformedQueueMessages posts malformed write invocations to the real
// handler with a real Drainer over Azurite. Unreadable messages answer 500
// (the host retries, then poisons them); readable ones naming something not
// configured answer 200 (completed: a retry cannot help). Either way nothing
// is drained although the destination is behind: checkpoint, log, table and
// queue stay as they were.
func TestMalformedQueueMessages(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	f.appendRecords(3)
	if r := f.post("write", writeInvocation(`{"pipeline":"orders","destination":"lite","head":3}`)); r.status != 200 {
		t.Fatalf("setup drain: %d %v", r.status, r.Logs)
	}
	f.appendRecords(2) // the destination is now behind: a drain would move it
	base := f.snapshot()
	if base.Checkpoints["lite"][0] != 3 || base.Head != 5 || base.Rows != 3 {
		t.Fatalf("setup: %+v", base)
	}

	cases := []struct {
		name   string
		text   string
		status int
		log    string // what Logs must say
	}{
		{"not base64 nor JSON", "%%% not base64 %%%", 500, "queue message is not a JSON object"},
		{"not JSON", "wake up orders/lite please", 500, "queue message is not a JSON object"},
		{"base64 of garbage", "/w8AAP8=", 500, "queue message is not a JSON object"},
		{"JSON array", `[{"pipeline":"orders","destination":"lite","head":5}]`, 500, "queue message is not a JSON object"},
		{"missing pipeline", `{"destination":"lite","head":5}`, 500, "lacks pipeline or destination"},
		{"empty destination", `{"pipeline":"orders","destination":"","head":5}`, 500, "lacks pipeline or destination"},
		{"head negative", `{"pipeline":"orders","destination":"lite","head":-1}`, 500, "head -1 is negative"},
		{"huge head", `{"pipeline":"orders","destination":"lite","head":99999999999999999999}`, 500, `not an integer: "99999999999999999999"`},
		{"head a fraction", `{"pipeline":"orders","destination":"lite","head":4.5}`, 500, `not an integer: "4.5"`},
		{"nested garbage", `{"pipeline":{"orders":[["lite"]]},"destination":[{"head":{}}],"head":[5]}`, 500, "is not a wake-up"},
		{"70 KB of garbage", strings.Repeat("\x01garbage", 70<<10/8), 500, "queue message is not a JSON object"},
		{"unknown pipeline", `{"pipeline":"invoices","destination":"lite","head":5}`, 200, `pipeline "invoices": not found in badinput.yaml (pipelines: orders)`},
		{"unknown destination", `{"pipeline":"orders","destination":"warehouse","head":5}`, 200, `destination "warehouse": not found in pipeline "orders" (destinations: lite)`},
		{"70 KB pipeline name", `{"pipeline":"` + strings.Repeat("o", 70<<10) + `","destination":"lite","head":5}`, 200, "not found in badinput.yaml"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := f.post("write", writeInvocation(c.text))
			if r.status != c.status {
				t.Errorf("host status %d, want %d (logs %v)", r.status, c.status, r.Logs)
			}
			if logs := strings.Join(r.Logs, "\n"); !strings.Contains(logs, c.log) {
				t.Errorf("logs %.300q do not say %q", logs, c.log)
			}
			if len(r.Outputs) != 0 {
				t.Errorf("outputs %v", r.Outputs)
			}
			sameSnapshot(t, base, f.snapshot())
		})
	}
	t.Run("missing message", func(t *testing.T) {
		r := f.post("write", `{"Data":{},"Metadata":{"DequeueCount":"1"}}`)
		if r.status != 500 || !strings.Contains(strings.Join(r.Logs, "\n"), `queue binding "msg" is missing`) {
			t.Errorf("reply %d %v", r.status, r.Logs)
		}
		sameSnapshot(t, base, f.snapshot())
	})

	// Control: a good message does move it, so the checks above can see a change.
	if r := f.post("write", writeInvocation(`{"pipeline":"orders","destination":"lite","head":5}`)); r.status != 200 {
		t.Fatalf("good wake-up: %d %v", r.status, r.Logs)
	}
	if s := f.snapshot(); s.Checkpoints["lite"][0] != 5 || s.Rows != 5 {
		t.Fatalf("a good wake-up did not drain: %+v", s)
	}
}

// ---- replay requests ----

// TestMalformedReplayRequests posts malformed replay requests through the
// handler: each answers the host 200 with a 4xx in Outputs.res whose JSON
// {"error": ...} names the problem, and the checkpoint (seq, generation,
// epoch) and everything else stay as they were.
func TestMalformedReplayRequests(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	f.appendRecords(5)
	if r := f.post("write", writeInvocation(`{"pipeline":"orders","destination":"lite","head":5}`)); r.status != 200 {
		t.Fatalf("setup drain: %d %v", r.status, r.Logs)
	}
	base := f.snapshot()
	if cp := base.Checkpoints["lite"]; cp[0] != 5 || cp[1] != 0 || cp[2] < 1 {
		t.Fatalf("setup checkpoint %v", cp)
	}

	ok := map[string]string{"pipeline": "orders", "destination": "lite"}
	cases := []struct {
		name   string
		params map[string]string
		body   string
		status int
		err    string // what {"error"} must say
	}{
		{"both from and fromSeq", ok, `{"from":"2026-11-25T08:00:00Z","fromSeq":2}`, 400, `give one of "from" and "fromSeq", not both`},
		{"neither", ok, `{"dryRun":true}`, 400, `give "from" (an RFC 3339 time) or "fromSeq"`},
		{"empty body", ok, ``, 400, `give "from" (an RFC 3339 time) or "fromSeq"`},
		{"from not RFC 3339", ok, `{"from":"25/11/2026 08:00"}`, 400, `"from" "25/11/2026 08:00" is not an RFC 3339 time`},
		{"from a number", ok, `{"from":1764057600}`, 400, `cannot unmarshal number into Go struct field replayBody.from`},
		{"fromSeq negative", ok, `{"fromSeq":-3}`, 400, `"fromSeq" -3 must be 1 or more`},
		{"fromSeq zero", ok, `{"fromSeq":0}`, 400, `"fromSeq" 0 must be 1 or more`},
		{"fromSeq a word", ok, `{"fromSeq":"three"}`, 400, `not an integer: "three"`},
		{"fromSeq a fraction", ok, `{"fromSeq":2.5}`, 400, `not an integer: "2.5"`},
		{"fromSeq overflows", ok, `{"fromSeq":1e30}`, 400, `not an integer: "1e30"`},
		{"unknown key (misspelt dryRun)", ok, `{"fromSeq":2,"dry_run":true}`, 400, `unknown field "dry_run"`},
		{"dryRun not a boolean", ok, `{"fromSeq":2,"dryRun":"perhaps"}`, 400, `not a boolean: "perhaps"`},
		{"body not JSON", ok, `rewind orders to seq 2`, 400, `body must be {"from":"RFC3339"} or {"fromSeq":N}`},
		{"body a JSON array", ok, `[{"fromSeq":2}]`, 400, `cannot unmarshal array`},
		{"two JSON values", ok, `{"fromSeq":2}{"fromSeq":3}`, 400, "body holds more than one JSON value"},
		{"unknown pipeline", map[string]string{"pipeline": "invoices", "destination": "lite"}, `{"fromSeq":2}`, 404, `pipeline "invoices": not found`},
		{"unknown destination", map[string]string{"pipeline": "orders", "destination": "warehouse"}, `{"fromSeq":2}`, 404, `destination "warehouse": not found in pipeline "orders"`},
		{"no destination param", map[string]string{"pipeline": "orders"}, `{"fromSeq":2}`, 400, "the route is /api/replay/{pipeline}/{destination}"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := f.post("replay", replayInvocation(c.params, c.body))
			if r.status != 200 {
				t.Fatalf("host status %d, want 200 for an HTTP function (logs %v)", r.status, r.Logs)
			}
			var out res
			if err := json.Unmarshal(r.Outputs["res"], &out); err != nil {
				t.Fatalf("Outputs.res %s: %v", r.Outputs["res"], err)
			}
			var body struct {
				Error string `json:"error"`
			}
			if err := json.Unmarshal([]byte(out.Body), &body); err != nil || out.Headers["Content-Type"] != "application/json" {
				t.Fatalf("res body %q (%v), headers %v", out.Body, err, out.Headers)
			}
			if out.StatusCode != c.status || !strings.Contains(body.Error, c.err) {
				t.Errorf("res %d %q, want %d with an error saying %q", out.StatusCode, body.Error, c.status, c.err)
			}
			sameSnapshot(t, base, f.snapshot())
		})
	}

	// Control: a good replay does move it.
	r := f.post("replay", replayInvocation(ok, `{"fromSeq":3}`))
	var out res
	_ = json.Unmarshal(r.Outputs["res"], &out)
	if s := f.snapshot(); out.StatusCode != 200 || s.Checkpoints["lite"][0] != 2 || s.Checkpoints["lite"][1] != 1 {
		t.Fatalf("a good replay answered %d %s and left %+v", out.StatusCode, out.Body, s)
	}
}

// ---- Graph pages ----

const (
	siteID = "contoso.sharepoint.com,11111111-1111-4111-8111-111111111111,22222222-2222-4222-8222-222222222222"
	listID = "33333333-3333-4333-8333-333333333333"
)

// graph is a Graph stand-in: it resolves the site and list, serves a good
// first round, and then answers the stored deltaLink with bad.
type graph struct {
	srv *httptest.Server
	mu  sync.Mutex
	bad func(w http.ResponseWriter, base string)
}

func newGraph(t *testing.T) *graph {
	g := &graph{}
	g.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "Bearer tok" {
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		base := "http://" + r.Host + "/v1.0/sites/" + siteID + "/lists/" + listID + "/items/delta"
		w.Header().Set("Content-Type", "application/json")
		switch {
		case strings.HasSuffix(r.URL.Path, "/items/delta") && r.URL.Query().Get("token") == "":
			fmt.Fprintf(w, `{"@odata.context":"x","value":[`+
				`{"id":"1","eTag":"\"a,1\"","lastModifiedDateTime":"2026-11-25T07:00:00Z","fields":{"@odata.etag":"\"a,1\"","Title":"one"}},`+
				`{"id":"2","eTag":"\"b,1\"","lastModifiedDateTime":"2026-11-25T07:00:00Z","fields":{"Title":"two","Amount":2.5}},`+
				`{"id":"3","eTag":"\"c,1\"","lastModifiedDateTime":"2026-11-25T07:00:00Z","fields":{"Title":"three"}}],`+
				`"@odata.deltaLink":%q}`, base+"?token=t1")
		case strings.HasSuffix(r.URL.Path, "/items/delta"):
			g.mu.Lock()
			bad := g.bad
			g.mu.Unlock()
			bad(w, base)
		case strings.HasSuffix(r.URL.Path, "/lists/"+listID):
			fmt.Fprintf(w, `{"id":%q,"displayName":"Orders","name":"Orders"}`, listID)
		case strings.Contains(r.URL.Path, "/sites/") && !strings.Contains(r.URL.Path, "/lists"):
			fmt.Fprintf(w, `{"id":%q}`, siteID)
		default:
			w.WriteHeader(http.StatusNotFound)
			io.WriteString(w, `{"error":{"code":"itemNotFound","message":"no"}}`)
		}
	}))
	t.Cleanup(g.srv.Close)
	return g
}

// TestMalformedGraphPages serves malformed delta pages to the read pass
// (engine.Reader with the real Graph client, bearer auth). After a good
// first round, each bad answer to the stored deltaLink fails the pass with
// an error naming the problem, and leaves the head, the cursor, the
// segments and the records as they were.
func TestMalformedGraphPages(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	st := testenv.Store(t)
	g := newGraph(t)
	cfg, err := config.Parse("graph.yaml", []byte(fmt.Sprintf(`pipelines:
  - name: orders
    source:
      type: sharepoint
      site: %s
      list: %s
      graph_url: %s/v1.0
      auth: {type: bearer, token: tok}
`, siteID, listID, g.srv.URL)), nil)
	if err != nil {
		t.Fatal(err)
	}
	p := &cfg.Pipelines[0]
	var maxPage int64
	reader := &engine.Reader{Store: st, Queue: testenv.UniqueName("bad"), Open: func(p *config.Pipeline) (engine.Source, error) {
		return sharepoint.New(sharepoint.Options{GraphURL: p.Source.GraphURL, Auth: p.Source.Auth, MaxPageBytes: maxPage,
			Sleep: func(context.Context, time.Duration) error { return nil }})
	}}
	if res, err := reader.ReadPipeline(ctx, p); err != nil || res.Head != 3 {
		t.Fatalf("first round: %+v, %v", res, err)
	}
	base := takeSnapshot(t, ctx, st, "orders", nil, "", "")
	if base.Head != 3 || !strings.HasSuffix(base.Cursor, "?token=t1") {
		t.Fatalf("setup: %+v", base)
	}

	page := func(body string) func(http.ResponseWriter, string) {
		return func(w http.ResponseWriter, base string) { io.WriteString(w, strings.ReplaceAll(body, "BASE", base)) }
	}
	item := `{"id":"4","eTag":"\"d,1\"","fields":{"Title":"four"}}`
	huge := func(declare bool) func(http.ResponseWriter, string) {
		return func(w http.ResponseWriter, base string) {
			const size = 70 << 20
			if declare {
				w.Header().Set("Content-Length", strconv.Itoa(size))
			}
			io.WriteString(w, `{"value":[`)
			chunk := []byte(strings.Repeat(item+",", 1000))
			for n := 10; n < size-len(chunk); n += len(chunk) {
				if _, err := w.Write(chunk); err != nil {
					return // the client gave up, as it should
				}
			}
		}
	}
	cases := []struct {
		name    string
		serve   func(http.ResponseWriter, string)
		maxPage int64
		err     string
	}{
		{"malformed JSON", page(`{"value":[` + item + `,],"@odata.deltaLink":"BASE?token=t2"}`), 0, "malformed Graph page from http://"},
		{"HTML instead of JSON", page(`<html><body>Service Unavailable</body></html>`), 0, "malformed Graph page"},
		{"value not an array", page(`{"value":` + item + `,"@odata.deltaLink":"BASE?token=t2"}`), 0, `value: want "[", found "{"`},
		{"no value at all", page(`{"@odata.deltaLink":"BASE?token=t2"}`), 0, "has no value array"},
		{"item without id", page(`{"value":[{"eTag":"\"d,1\"","fields":{"Title":"four"}}],"@odata.deltaLink":"BASE?token=t2"}`), 0, "item 0 of value: item has no id"},
		{"item id an object", page(`{"value":[` + item + `,{"id":{"v":5}}],"@odata.deltaLink":"BASE?token=t2"}`), 0, "item 1 of value: item id is not a string"},
		{"fields not an object", page(`{"value":[{"id":"4","fields":["Title","four"]}],"@odata.deltaLink":"BASE?token=t2"}`), 0, "item 0 of value: item 4: fields is not an object"},
		{"nextLink to another host", page(`{"value":[` + item + `],"@odata.nextLink":"https://graph.evil.example/v1.0/sites/x/lists/y/items/delta?token=steal"}`), 0, "points to another host"},
		{"neither nextLink nor deltaLink", page(`{"value":[` + item + `]}`), 0, "neither @odata.nextLink nor @odata.deltaLink"},
		{"both links", page(`{"value":[],"@odata.nextLink":"BASE?token=n","@odata.deltaLink":"BASE?token=d"}`), 0, "has both @odata.nextLink and @odata.deltaLink"},
		{"deltaLink with a javascript: scheme", page(`{"value":[` + item + `],"@odata.deltaLink":"javascript:alert(document.cookie)"}`), 0, "Graph link javascript:"},
		{"relative nextLink", page(`{"value":[` + item + `],"@odata.nextLink":"/v1.0/sites/x/items/delta?token=n"}`), 0, "is not an absolute URL"},
		{"data after the page", page(`{"value":[],"@odata.deltaLink":"BASE?token=t2"}{"value":[]}`), 0, "data after the page object"},
		{"70 MB body declared", huge(true), 0, "more than the limit of 67108864 (MaxPageBytes)"},
		{"70 MB body streamed over a 1 MB limit", huge(false), 1 << 20, "larger than the limit of 1048576 bytes (MaxPageBytes)"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			g.mu.Lock()
			g.bad = c.serve
			g.mu.Unlock()
			maxPage = c.maxPage
			res, err := reader.ReadPipeline(ctx, p)
			if err == nil {
				t.Fatalf("read accepted the page: %+v", res)
			}
			if !strings.Contains(err.Error(), c.err) || !strings.Contains(err.Error(), "read pipeline orders") {
				t.Errorf("error %q does not say %q", err, c.err)
			}
			if strings.Contains(err.Error(), "token=") {
				t.Errorf("error leaks a link's query: %v", err)
			}
			if res.Records != 0 || res.Head != 3 {
				t.Errorf("result %+v", res)
			}
			sameSnapshot(t, base, takeSnapshot(t, ctx, st, "orders", nil, "", ""))
		})
	}

	// Control: a good page does move the head.
	g.bad = page(`{"value":[` + item + `],"@odata.deltaLink":"BASE?token=t2"}`)
	if res, err := reader.ReadPipeline(ctx, p); err != nil || res.Head != 4 {
		t.Fatalf("good page: %+v, %v", res, err)
	}
}
