package httpsink_test

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sluicehq/sluice/internal/changelog"
	"github.com/sluicehq/sluice/internal/sink"
	"github.com/sluicehq/sluice/internal/sink/httpsink"
	"github.com/sluicehq/sluice/internal/sink/sinktest"
)

// ---- conformance ----

// harness runs the conformance suite against a receiver that folds events
// by key. Epoch is not something an HTTP receiver stores, so no Epochs.
type harness struct {
	batchSize, maxInFlight int
	breakMode              string // how Break breaks the receiver: "503" or "hangup"
}

func (h harness) Capabilities() sinktest.Capabilities {
	return sinktest.Capabilities{Transient: true, Permanent: true, Parallel: true}
}

func (h harness) NewDestination(t *testing.T) sinktest.Destination {
	rv := newReceiver(t, "conformance-secret")
	rv.pipeline, rv.destination = "conformance", "dest"
	return &dest{h: h, rv: rv}
}

type dest struct {
	h  harness
	rv *receiver
}

func (d *dest) NewSink(t *testing.T) sink.Sink {
	var sl sleeps
	s, err := httpsink.Open(httpsink.Config{
		URL: d.rv.srv.URL + "/hooks/conformance", BatchSize: d.h.batchSize, MaxInFlight: d.h.maxInFlight,
		Secret: "conformance-secret", MaxAttempts: 3, Sleep: sl.sleep,
	})
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	return s
}

func (d *dest) State(t *testing.T) map[string]sinktest.Observed {
	d.rv.mu.Lock()
	defer d.rv.mu.Unlock()
	out := make(map[string]sinktest.Observed, len(d.rv.state))
	for k, v := range d.rv.state {
		out[k] = v
	}
	return out
}

func (d *dest) Break(t *testing.T) { d.rv.setBreak(d.h.breakMode) }
func (d *dest) Heal(t *testing.T)  { d.rv.setBreak("") }

// BadRecord is an upsert whose Title the receiver refuses with 400.
func (d *dest) BadRecord(seq int64, key string) changelog.Record {
	f, _ := json.Marshal(map[string]any{"id": key, "Title": "REJECT-ME"})
	return changelog.Record{Seq: seq, Op: changelog.OpUpsert, Key: key, Fields: f}
}

func TestConformance(t *testing.T) {
	t.Parallel()
	for _, h := range []harness{
		{batchSize: 16, maxInFlight: 1, breakMode: "503"},
		{batchSize: 50, maxInFlight: 4, breakMode: "hangup"},
	} {
		t.Run(fmt.Sprintf("batch%d/inflight%d/%s", h.batchSize, h.maxInFlight, h.breakMode), func(t *testing.T) {
			t.Parallel()
			sinktest.Run(t, h)
		})
	}
}

// ---- helpers ----

var t0 = time.Date(2026, 11, 25, 8, 0, 1, 123_000_000, time.UTC)

// upserts makes n upserts with seqs from, from+1, ... over keys k<seq>.
func upserts(from int64, n int) []changelog.Record {
	recs := make([]changelog.Record, n)
	for i := range recs {
		seq := from + int64(i)
		key := fmt.Sprintf("k%d", seq)
		recs[i] = changelog.Record{Seq: seq, TS: t0.Add(time.Duration(seq) * time.Millisecond), Op: changelog.OpUpsert, Key: key,
			Fields: json.RawMessage(fmt.Sprintf(`{"id":%q,"Title":"PO-%d","Amount":%d.5}`, key, seq, seq))}
	}
	return recs
}

func seqs(recs []changelog.Record) []int64 {
	out := make([]int64, len(recs))
	for i, r := range recs {
		out[i] = r.Seq
	}
	return out
}

func open(t *testing.T, cfg httpsink.Config) *httpsink.Sink {
	t.Helper()
	s, err := httpsink.Open(cfg)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func batchOf(gen int64, recs []changelog.Record) sink.Batch {
	return sink.Batch{Pipeline: "orders", Destination: "hook", Generation: gen, Epoch: gen + 1, Records: recs}
}

func applyCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// ---- transient failures ----

func TestTransientThenDelivered(t *testing.T) {
	t.Parallel()
	rv := newReceiver(t, "s3cret")
	rv.respond = func(n int, _ *request) *response {
		switch n {
		case 0, 1:
			return &response{status: http.StatusInternalServerError, body: "oops"}
		case 2:
			return &response{status: http.StatusTooManyRequests, header: map[string]string{"Retry-After": "2"}}
		}
		return nil
	}
	var sl sleeps
	s := open(t, httpsink.Config{URL: rv.srv.URL, BatchSize: 10, Secret: "s3cret", Sleep: sl.sleep})
	recs := upserts(1, 35)
	if err := s.Apply(applyCtx(t), batchOf(2, recs)); err != nil {
		t.Fatalf("Apply: %v", err)
	}
	reqs, accepted := rv.snapshot()
	if !slices.Equal(accepted, seqs(recs)) {
		t.Fatalf("events arrived as %v, want each once in seq order %v", accepted, seqs(recs))
	}
	if len(reqs) != 7 {
		t.Errorf("%d requests, want 4 POSTs + 3 retries", len(reqs))
	}
	checkRepeats(t, reqs)
	for _, r := range reqs[:4] {
		if r.key() != "orders/hook/2/1-10" {
			t.Errorf("retried POST has Idempotency-Key %q, want orders/hook/2/1-10", r.key())
		}
	}
	got := sl.all()
	if len(got) != 3 {
		t.Fatalf("waits %v, want 3", got)
	}
	for i, d := range got[:2] {
		if d <= 0 {
			t.Errorf("backoff %d after a 500 is %v, want > 0", i, d)
		}
	}
	if got[2] < 2*time.Second {
		t.Errorf("wait after 429 with Retry-After: 2 is %v, want >= 2s", got[2])
	}
}

func TestRetryAfter(t *testing.T) {
	t.Parallel()
	now := time.Date(2026, 11, 25, 8, 0, 0, 0, time.UTC)
	tests := []struct {
		name, value string
		min, max    time.Duration
	}{
		{"seconds", "7", 7 * time.Second, 7 * time.Second},
		{"fractional seconds", "1.5", 1500 * time.Millisecond, 1500 * time.Millisecond},
		{"HTTP date", now.Add(3 * time.Second).Format(http.TimeFormat), 3 * time.Second, 3 * time.Second},
		{"HTTP date in the past", now.Add(-time.Hour).Format(http.TimeFormat), 0, 0},
		{"absent: backoff with jitter", "", 250 * time.Millisecond, 500 * time.Millisecond},
		{"unparseable: backoff", "soon", 250 * time.Millisecond, 500 * time.Millisecond},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			rv := newReceiver(t, "")
			rv.respond = func(n int, _ *request) *response {
				if n == 0 {
					return &response{status: http.StatusServiceUnavailable, header: map[string]string{"Retry-After": tc.value}}
				}
				return nil
			}
			var sl sleeps
			s := open(t, httpsink.Config{URL: rv.srv.URL, Sleep: sl.sleep, Now: func() time.Time { return now }})
			if err := s.Apply(applyCtx(t), batchOf(0, upserts(1, 3))); err != nil {
				t.Fatalf("Apply: %v", err)
			}
			got := sl.all()
			if len(got) != 1 || got[0] < tc.min || got[0] > tc.max {
				t.Fatalf("waits %v, want one in [%v, %v]", got, tc.min, tc.max)
			}
		})
	}
}

func TestRetriesExhausted(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name     string
		resp     response
		attempts int
		want     string
	}{
		{"always 503", response{status: 503, body: "maintenance"}, 3, "still failing after 3 attempts (last: 503 Service Unavailable: maintenance)"},
		{"always 408", response{status: 408}, 3, "after 3 attempts (last: 408 Request Timeout)"},
		{"connection closed", response{hangup: true}, 3, "after 3 attempts"},
		{"Retry-After too long", response{status: 429, header: map[string]string{"Retry-After": "3600"}}, 1, "asked to retry after 1h0m0s, longer than this drain can wait"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			rv := newReceiver(t, "")
			rv.respond = func(int, *request) *response { return &tc.resp }
			var sl sleeps
			s := open(t, httpsink.Config{URL: rv.srv.URL, BatchSize: 5, MaxAttempts: 3, Sleep: sl.sleep})
			err := s.Apply(applyCtx(t), batchOf(0, upserts(1, 12)))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Apply: %v, want an error containing %q", err, tc.want)
			}
			if _, ok := sink.AsRecordErrors(err); ok {
				t.Fatalf("an unreachable receiver was reported as bad records: %v", err)
			}
			reqs, _ := rv.snapshot()
			// The first POST only: later POSTs of the batch are not sent.
			// (A closed keep-alive connection may make the transport re-send
			// once by itself; it is the same body with the same key.)
			if len(reqs) < tc.attempts {
				t.Errorf("%d requests, want %d", len(reqs), tc.attempts)
			}
			for _, r := range reqs {
				if r.key() != "orders/hook/0/1-5" {
					t.Errorf("request with key %s: a later POST was sent after the first failed", r.key())
				}
			}
			checkRepeats(t, reqs)
		})
	}
}

func TestTimeoutRetried(t *testing.T) {
	t.Parallel()
	rv := newReceiver(t, "")
	rv.respond = func(n int, _ *request) *response {
		if n == 0 {
			return &response{hang: true}
		}
		return nil
	}
	var sl sleeps
	s := open(t, httpsink.Config{URL: rv.srv.URL, Timeout: 100 * time.Millisecond, Sleep: sl.sleep})
	recs := upserts(1, 4)
	if err := s.Apply(applyCtx(t), batchOf(0, recs)); err != nil {
		t.Fatalf("Apply: %v", err)
	}
	reqs, accepted := rv.snapshot()
	if len(reqs) != 2 || reqs[0].key() != reqs[1].key() {
		t.Fatalf("%d requests, want the hung one and one retry of the same POST", len(reqs))
	}
	checkRepeats(t, reqs)
	if !slices.Equal(accepted, seqs(recs)) {
		t.Fatalf("accepted %v", accepted)
	}
}

func TestStopsAtFirstFailure(t *testing.T) {
	t.Parallel()
	rv := newReceiver(t, "")
	rv.respond = func(n int, req *request) *response {
		if req.Seqs[0] == 11 {
			return &response{status: 502}
		}
		return nil
	}
	var sl sleeps
	s := open(t, httpsink.Config{URL: rv.srv.URL, BatchSize: 10, MaxAttempts: 2, Sleep: sl.sleep})
	err := s.Apply(applyCtx(t), batchOf(0, upserts(1, 40)))
	if err == nil || !strings.Contains(err.Error(), "seq 11-20") {
		t.Fatalf("Apply: %v, want an error naming the POST of seq 11-20", err)
	}
	reqs, accepted := rv.snapshot()
	if !slices.Equal(accepted, seqs(upserts(1, 10))) {
		t.Errorf("accepted %v, want seq 1..10 only", accepted)
	}
	for _, r := range reqs {
		if r.Seqs[0] > 11 {
			t.Errorf("POST %s was sent after an earlier POST failed", r.key())
		}
	}
}

// ---- per-record rejections ----

func TestBadRecordIsolated(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name      string
		status    int
		batchSize int
		bad       []int64
	}{
		{"400, one POST", 400, 100, []int64{23}},
		{"422, one POST", 422, 100, []int64{23}},
		{"400, several POSTs, first and last", 400, 16, []int64{1, 40}},
		{"400, neighbours", 400, 100, []int64{7, 8, 31}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			rv := newReceiver(t, "")
			rv.rejectStatus = tc.status
			s := open(t, httpsink.Config{URL: rv.srv.URL, BatchSize: tc.batchSize})
			recs := upserts(1, 40)
			var good []int64
			for i := range recs {
				if slices.Contains(tc.bad, recs[i].Seq) {
					recs[i].Fields = json.RawMessage(`{"id":"x","Title":"REJECT-ME"}`)
				} else {
					good = append(good, recs[i].Seq)
				}
			}
			err := s.Apply(applyCtx(t), batchOf(0, recs))
			re, ok := sink.AsRecordErrors(err)
			if !ok {
				t.Fatalf("Apply: %v, want *sink.RecordErrors", err)
			}
			var got []int64
			for _, f := range re.Failed {
				got = append(got, f.Seq)
				wantReason := fmt.Sprintf(`%d %s: {"error": "event orders-%d: Title "REJECT-ME" is not allowed"}`, tc.status, http.StatusText(tc.status), f.Seq)
				if f.Reason != wantReason {
					t.Errorf("reason %q, want the receiver's, trimmed: %q", f.Reason, wantReason)
				}
				if f.Key != fmt.Sprintf("k%d", f.Seq) {
					t.Errorf("rejected seq %d with key %q", f.Seq, f.Key)
				}
			}
			if !slices.Equal(got, tc.bad) {
				t.Fatalf("rejected %v, want exactly %v", got, tc.bad)
			}
			reqs, accepted := rv.snapshot()
			if !slices.Equal(accepted, good) {
				t.Fatalf("delivered %v, want every good record once in order %v", accepted, good)
			}
			checkRepeats(t, reqs)
		})
	}
}

func TestTooLarge(t *testing.T) {
	t.Parallel()
	const limit = 8 // events per POST the receiver takes
	rv := newReceiver(t, "")
	rv.respond = func(_ int, req *request) *response {
		if len(req.Events) > limit || len(req.Body) > 4000 {
			return &response{status: http.StatusRequestEntityTooLarge, body: "too big"}
		}
		return nil
	}
	s := open(t, httpsink.Config{URL: rv.srv.URL, BatchSize: 100})
	recs := upserts(1, 30)
	recs[12].Fields = json.RawMessage(`{"id":"k13","Body":"` + strings.Repeat("x", 5000) + `"}`)
	err := s.Apply(applyCtx(t), batchOf(0, recs))
	re, ok := sink.AsRecordErrors(err)
	if !ok || len(re.Failed) != 1 || re.Failed[0].Seq != 13 {
		t.Fatalf("Apply: %v, want only seq 13 (too large alone) rejected", err)
	}
	if r := re.Failed[0].Reason; !strings.HasPrefix(r, "413 Request Entity Too Large: too big: the event alone (") {
		t.Errorf("reason %q", r)
	}
	_, accepted := rv.snapshot()
	want := slices.DeleteFunc(seqs(recs), func(s int64) bool { return s == 13 })
	if !slices.Equal(accepted, want) {
		t.Fatalf("delivered %v, want %v", accepted, want)
	}
}

func TestInvalidFieldsNotSent(t *testing.T) {
	t.Parallel()
	rv := newReceiver(t, "")
	s := open(t, httpsink.Config{URL: rv.srv.URL})
	recs := upserts(1, 5)
	recs[1].Fields = json.RawMessage(`{"id":"k2","Title":`)
	recs[3].Fields = json.RawMessage(`["not","an","object"]`)
	err := s.Apply(applyCtx(t), batchOf(0, recs))
	re, ok := sink.AsRecordErrors(err)
	if !ok || len(re.Failed) != 2 || re.Failed[0].Seq != 2 || re.Failed[1].Seq != 4 {
		t.Fatalf("Apply: %v, want seq 2 and 4 rejected", err)
	}
	if _, accepted := rv.snapshot(); !slices.Equal(accepted, []int64{1, 3, 5}) {
		t.Fatalf("delivered %v", accepted)
	}
}

// ---- a broken destination ----

func TestDestinationBroken(t *testing.T) {
	t.Parallel()
	tests := []struct {
		status int
		want   string
	}{
		{401, "receiver answered 401 Unauthorized: configured to fail: check the secret or the receiver's auth; the destination is halted and retried later"},
		{403, "403 Forbidden"},
		{404, "404 Not Found: configured to fail: nothing answers at url"},
		{405, "405 Method Not Allowed"},
		{409, "409 Conflict"},
		{410, "410 Gone"},
		{415, "415 Unsupported Media Type"},
		{418, "418 I'm a teapot"},
	}
	for _, tc := range tests {
		t.Run(fmt.Sprint(tc.status), func(t *testing.T) {
			t.Parallel()
			rv := newReceiver(t, "")
			rv.setBreak(fmt.Sprint(tc.status))
			var logs bytes.Buffer
			var sl sleeps
			s := open(t, httpsink.Config{URL: rv.srv.URL + "/hooks/T0KEN-IN-PATH", BatchSize: 10, Sleep: sl.sleep,
				Logger: slog.New(slog.NewTextHandler(&logs, nil))})
			recs := upserts(1, 30)
			err := s.Apply(applyCtx(t), batchOf(0, recs))
			if err == nil {
				t.Fatal("Apply succeeded against a broken receiver")
			}
			if _, ok := sink.AsRecordErrors(err); ok {
				t.Fatalf("a broken destination was reported as bad records (would dead-letter good data): %v", err)
			}
			if !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), "halted") {
				t.Fatalf("error %q, want it to contain %q and say the destination is halted", err, tc.want)
			}
			if strings.Contains(err.Error()+logs.String(), "T0KEN") {
				t.Errorf("the URL's path (which may hold a token) leaked: %v", err)
			}
			if reqs, _ := rv.snapshot(); len(reqs) != 1 || len(sl.all()) != 0 {
				t.Errorf("%d requests and waits %v: a broken destination is neither retried nor sent later POSTs", len(reqs), sl.all())
			}
			// The receiver is fixed: a later Apply delivers everything.
			rv.setBreak("")
			if err := s.Apply(applyCtx(t), batchOf(0, recs)); err != nil {
				t.Fatalf("Apply after the receiver healed: %v", err)
			}
			if _, accepted := rv.snapshot(); !slices.Equal(accepted, seqs(recs)) {
				t.Fatalf("delivered %v", accepted)
			}
		})
	}
}

func TestRedirectNotFollowed(t *testing.T) {
	t.Parallel()
	for _, status := range []int{301, 302, 303, 307, 308} {
		for _, own := range []bool{true, false} {
			t.Run(fmt.Sprintf("%d/own client %v", status, own), func(t *testing.T) {
				t.Parallel()
				var otherHits atomic.Int64
				other := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
					otherHits.Add(1)
				}))
				t.Cleanup(other.Close)
				rv := newReceiver(t, "sig")
				rv.respond = func(int, *request) *response {
					return &response{status: status, header: map[string]string{"Location": other.URL + "/elsewhere?token=x"}}
				}
				cfg := httpsink.Config{URL: rv.srv.URL, Secret: "sig"}
				if !own {
					cfg.Client = &http.Client{} // its nil CheckRedirect would follow
				}
				s := open(t, cfg)
				err := s.Apply(applyCtx(t), batchOf(0, upserts(1, 3)))
				if err == nil || !strings.Contains(err.Error(), fmt.Sprint(status)) || !strings.Contains(err.Error(), "never follows redirects") {
					t.Fatalf("Apply: %v, want a destination-wide error naming %d and the redirect", err, status)
				}
				if _, ok := sink.AsRecordErrors(err); ok {
					t.Fatalf("redirect reported as bad records: %v", err)
				}
				if otherHits.Load() != 0 {
					t.Fatalf("the redirect target was hit %d times", otherHits.Load())
				}
				if cfg.Client != nil && cfg.Client.CheckRedirect != nil {
					t.Error("Open changed the caller's client")
				}
			})
		}
	}
}

// ---- concurrency ----

func TestMaxInFlight(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name     string
		break401 int64 // the first seq of a POST answered 401
		bad      int64 // a record the receiver rejects
	}{
		{"all delivered", 0, 0},
		{"one bad record", 0, 17},
		{"one POST unauthorized", 21, 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			const inFlight = 4
			rv := newReceiver(t, "")
			// The first 4 POSTs are held until all 4 are in flight at once:
			// a sink that sent them one at a time would never get past the gate.
			rv.gate, rv.gateN = make(chan struct{}), inFlight
			rv.respond = func(_ int, req *request) *response {
				if req.Seqs[0] == tc.break401 {
					return &response{status: http.StatusUnauthorized}
				}
				return nil
			}
			s := open(t, httpsink.Config{URL: rv.srv.URL, BatchSize: 5, MaxInFlight: inFlight})
			recs := upserts(1, 60)
			if tc.bad != 0 {
				recs[tc.bad-1].Fields = json.RawMessage(`{"Title":"REJECT-ME"}`)
			}
			err := s.Apply(applyCtx(t), batchOf(0, recs))
			reqs, accepted := rv.snapshot()
			rv.mu.Lock()
			maxSeen := rv.maxSeen
			rv.mu.Unlock()
			if maxSeen != inFlight {
				t.Errorf("at most %d POSTs in flight, want exactly %d", maxSeen, inFlight)
			}
			checkRepeats(t, reqs)
			switch {
			case tc.break401 != 0:
				if err == nil || !strings.Contains(err.Error(), "401") {
					t.Fatalf("Apply: %v, want the 401", err)
				}
				if _, ok := sink.AsRecordErrors(err); ok {
					t.Fatalf("401 reported as bad records: %v", err)
				}
				// How many later POSTs were already under way when the
				// 401 came back depends on scheduling; with one POST in
				// flight (TestStopsAtFirstFailure) none is sent.
				t.Logf("%d of 12 POSTs sent", len(reqs))
			case tc.bad != 0:
				re, ok := sink.AsRecordErrors(err)
				if !ok || len(re.Failed) != 1 || re.Failed[0].Seq != tc.bad {
					t.Fatalf("Apply: %v, want exactly seq %d rejected", err, tc.bad)
				}
				slices.Sort(accepted)
				if want := slices.DeleteFunc(seqs(recs), func(s int64) bool { return s == tc.bad }); !slices.Equal(accepted, want) {
					t.Fatalf("delivered %v", accepted)
				}
			default:
				if err != nil {
					t.Fatalf("Apply: %v", err)
				}
				slices.Sort(accepted)
				if !slices.Equal(accepted, seqs(recs)) {
					t.Fatalf("delivered %v", accepted)
				}
			}
		})
	}
}

func TestCancelledContext(t *testing.T) {
	t.Parallel()
	rv := newReceiver(t, "")
	s := open(t, httpsink.Config{URL: rv.srv.URL})
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	err := s.Apply(ctx, batchOf(0, upserts(1, 5)))
	if err == nil {
		t.Fatal("Apply with a cancelled context succeeded")
	}
	if _, ok := sink.AsRecordErrors(err); ok {
		t.Fatalf("cancelled Apply reported bad records: %v", err)
	}
	if reqs, _ := rv.snapshot(); len(reqs) != 0 {
		t.Fatalf("%d requests sent with a cancelled context", len(reqs))
	}
}

// ---- the wire format ----

// TestEventsAndSignature checks the contract of DESIGN §3.4 from the raw
// request, independently of the sink's code: the HMAC is recomputed with
// crypto/hmac and every event is checked field by field.
func TestEventsAndSignature(t *testing.T) {
	t.Parallel()
	now := time.Now().Truncate(time.Second)
	zone := time.FixedZone("CEST", 2*3600)
	recs := []changelog.Record{
		{Seq: 41, TS: time.Date(2026, 11, 25, 10, 0, 1, 123_456_789, zone), Op: changelog.OpUpsert, Key: "17",
			Fields: json.RawMessage(`{"id":"17","Title":"PO-1001","Amount":1234.5,"Tags":["a","b"],"Link":{"Url":"https://x"}}`)},
		{Seq: 42, TS: time.Date(2026, 11, 25, 8, 0, 1, 0, time.UTC), Op: changelog.OpDelete, Key: "3"},
		{Seq: 43, TS: time.Date(2026, 11, 25, 8, 0, 2, 5_000_000, time.UTC), Op: changelog.OpDelete, Key: "4",
			Fields: json.RawMessage(`{"id":"4"}`)}, // a delete never carries data, even with fields
		{Seq: 44, TS: time.Date(2026, 11, 25, 8, 0, 3, 0, time.UTC), Op: changelog.OpUpsert, Key: "we\"ird\n\\ key ✓\xff"},
	}
	tests := []struct {
		name    string
		gen     int64
		secret  string
		headers map[string]string
	}{
		{"generation 0, signed", 0, "whsec_test", map[string]string{"X-Team": "legal"}},
		{"generation 3, unsigned", 3, "", nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			rv := newReceiver(t, tc.secret)
			rv.now = func() time.Time { return now }
			s := open(t, httpsink.Config{URL: rv.srv.URL, Secret: tc.secret, Headers: tc.headers, Version: "1.2.3",
				Now: func() time.Time { return now }})
			if err := s.Apply(applyCtx(t), batchOf(tc.gen, recs)); err != nil {
				t.Fatalf("Apply: %v", err)
			}
			reqs, _ := rv.snapshot()
			if len(reqs) != 1 {
				t.Fatalf("%d requests, want 1", len(reqs))
			}
			req := reqs[0]
			h := req.Header
			wantHeaders := map[string]string{
				"Content-Type":    "application/cloudevents-batch+json",
				"Idempotency-Key": fmt.Sprintf("orders/hook/%d/41-44", tc.gen),
				"User-Agent":      "sluice/1.2.3",
			}
			for k, v := range tc.headers {
				wantHeaders[k] = v
			}
			for k, v := range wantHeaders {
				if h.Get(k) != v {
					t.Errorf("header %s = %q, want %q", k, h.Get(k), v)
				}
			}

			// The signature, recomputed here from the raw body.
			if tc.secret == "" {
				if h.Get("X-Sluice-Signature") != "" || h.Get("X-Sluice-Timestamp") != "" {
					t.Error("unsigned destination sent signature headers")
				}
			} else {
				ts := h.Get("X-Sluice-Timestamp")
				if ts != fmt.Sprint(now.Unix()) {
					t.Errorf("X-Sluice-Timestamp %q, want Unix seconds %d", ts, now.Unix())
				}
				mac := hmac.New(sha256.New, []byte(tc.secret))
				mac.Write([]byte(ts))
				mac.Write([]byte("."))
				mac.Write(req.Body)
				want := "sha256=" + hex.EncodeToString(mac.Sum(nil))
				if got := h.Get("X-Sluice-Signature"); got != want {
					t.Errorf("X-Sluice-Signature %q, want %q", got, want)
				}
				if err := verifySignature([]byte(tc.secret), h, req.Body, now.Add(4*time.Minute)); err != nil {
					t.Errorf("VERIFY.md check refuses a fresh request: %v", err)
				}
				if err := verifySignature([]byte(tc.secret), h, req.Body, now.Add(6*time.Minute)); err == nil {
					t.Error("VERIFY.md check accepts a 6-minute-old request")
				}
				tampered := bytes.Replace(req.Body, []byte("PO-1001"), []byte("PO-1002"), 1)
				if err := verifySignature([]byte(tc.secret), h, tampered, now); err == nil {
					t.Error("VERIFY.md check accepts a tampered body")
				}
			}

			// The events, field by field, from the raw JSON.
			var events []map[string]json.RawMessage
			if err := json.Unmarshal(req.Body, &events); err != nil {
				t.Fatalf("body is not a JSON array of objects: %v\n%s", err, req.Body)
			}
			suffix := ""
			if tc.gen != 0 {
				suffix = fmt.Sprintf(".%d", tc.gen)
			}
			gen := fmt.Sprintf("%q", fmt.Sprint(tc.gen))
			want := []map[string]string{
				{"id": `"orders-41` + suffix + `"`, "type": `"sluice.change.upsert"`, "subject": `"17"`,
					"time": `"2026-11-25T08:00:01.123Z"`, "sluiceseq": `"41"`,
					"data": `{"id":"17","Title":"PO-1001","Amount":1234.5,"Tags":["a","b"],"Link":{"Url":"https://x"}}`},
				{"id": `"orders-42` + suffix + `"`, "type": `"sluice.change.delete"`, "subject": `"3"`,
					"time": `"2026-11-25T08:00:01.000Z"`, "sluiceseq": `"42"`},
				{"id": `"orders-43` + suffix + `"`, "type": `"sluice.change.delete"`, "subject": `"4"`,
					"time": `"2026-11-25T08:00:02.005Z"`, "sluiceseq": `"43"`},
				{"id": `"orders-44` + suffix + `"`, "type": `"sluice.change.upsert"`, "subject": `"we\"ird\n\\ key ✓\ufffd"`,
					"time": `"2026-11-25T08:00:03.000Z"`, "sluiceseq": `"44"`, "data": `{}`},
			}
			if len(events) != len(want) {
				t.Fatalf("%d events, want %d", len(events), len(want))
			}
			for i, w := range want {
				w["specversion"] = `"1.0"`
				w["source"] = `"sluice/orders"`
				w["datacontenttype"] = `"application/json"`
				w["sluicegen"] = gen
				got := map[string]string{}
				for k, v := range events[i] {
					got[k] = string(v)
				}
				for k := range got {
					if _, ok := w[k]; !ok {
						t.Errorf("event %d: unexpected attribute %s = %s", i, k, got[k])
					}
				}
				for k, v := range w {
					g, ok := got[k]
					if k == "subject" && ok {
						// compare decoded: escaping may differ (\n vs \u000a)
						var gs, ws string
						_ = json.Unmarshal([]byte(g), &gs)
						_ = json.Unmarshal([]byte(v), &ws)
						g, v = gs, ws
					}
					if !ok || g != v {
						t.Errorf("event %d: %s = %s, want %s", i, k, got[k], v)
					}
				}
			}
		})
	}
}

func TestOpenErrors(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		cfg  httpsink.Config
		want string
	}{
		{"no url", httpsink.Config{}, "url is required"},
		{"bad scheme", httpsink.Config{URL: "ftp://x/y"}, `scheme "ftp"`},
		{"no host", httpsink.Config{URL: "https:///path"}, "no host"},
		{"unparseable, with a token", httpsink.Config{URL: "https://h/%zz?token=T0KEN"}, "not a valid URL"},
		{"negative batch", httpsink.Config{URL: "https://h", BatchSize: -1}, "batch_size"},
		{"negative timeout", httpsink.Config{URL: "https://h", Timeout: -time.Second}, "timeout"},
		{"negative in flight", httpsink.Config{URL: "https://h", MaxInFlight: -2}, "max_in_flight"},
		{"reserved header", httpsink.Config{URL: "https://h", Headers: map[string]string{"idempotency-key": "x"}}, "Idempotency-Key is set by sluice"},
		{"signature header", httpsink.Config{URL: "https://h", Headers: map[string]string{"X-Sluice-Signature": "x"}}, "set by sluice"},
		{"bad header name", httpsink.Config{URL: "https://h", Headers: map[string]string{"X Team": "x"}}, "not a valid HTTP header name"},
		{"header value with newline", httpsink.Config{URL: "https://h", Headers: map[string]string{"Authorization": "Bearer T0KEN\r\nX: y"}}, "line break"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			_, err := httpsink.Open(tc.cfg)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Open: %v, want an error containing %q", err, tc.want)
			}
			if strings.Contains(err.Error(), "T0KEN") {
				t.Errorf("error leaks a token: %v", err)
			}
		})
	}
}

func TestHostHeader(t *testing.T) {
	t.Parallel()
	var host atomic.Value
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { host.Store(r.Host) }))
	t.Cleanup(srv.Close)
	s := open(t, httpsink.Config{URL: srv.URL, Headers: map[string]string{"host": "hooks.example.com"}})
	if err := s.Apply(applyCtx(t), batchOf(0, upserts(1, 1))); err != nil {
		t.Fatalf("Apply: %v", err)
	}
	if host.Load() != "hooks.example.com" {
		t.Fatalf("Host %v, want the configured one", host.Load())
	}
}

// ---- throughput ----

// BenchmarkHTTPSink POSTs signed batches of 500 events to a local receiver
// that only counts what it reads.
func BenchmarkHTTPSink(b *testing.B) {
	var received atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n, _ := io.Copy(io.Discard, r.Body)
		received.Add(n)
	}))
	defer srv.Close()
	s, err := httpsink.Open(httpsink.Config{URL: srv.URL, BatchSize: 500, Secret: "bench-secret"})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	recs := make([]changelog.Record, 500)
	for i := range recs {
		seq := int64(i + 1)
		key := fmt.Sprint(seq)
		op := changelog.OpUpsert
		var fields json.RawMessage
		if i%20 == 19 {
			op = changelog.OpDelete
		} else {
			fields = json.RawMessage(fmt.Sprintf(`{"id":%q,"Title":"PO-%d","Status":"Shipped","Amount":%d.25,"Done":true,`+
				`"Tags":["a","t%d"],"Link":{"Url":"https://example.com/%d","Description":"doc"},"Modified":"2026-11-25T07:59:58Z"}`,
				key, seq, seq*7, seq%5, seq))
		}
		recs[i] = changelog.Record{Seq: seq, TS: t0.Add(time.Duration(i) * time.Millisecond), Op: op, Key: key, Fields: fields}
	}
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		if err := s.Apply(ctx, batchOf(1, recs)); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N*len(recs))/b.Elapsed().Seconds(), "events/s")
	b.ReportMetric(float64(received.Load())/float64(b.N*len(recs)), "B/event")
}
