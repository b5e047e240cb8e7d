package httpsink_test

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sluicehq/sluice/internal/changelog"
	"github.com/sluicehq/sluice/internal/sink/sinktest"
)

// receiver is a webhook receiver written from DESIGN §3.4 alone, not from
// the sink's code: it verifies signatures, parses CloudEvents batches, checks
// every event against the contract and folds them by key (highest sluiceseq
// wins). Tests script its answers per request.
type receiver struct {
	t           testing.TB
	srv         *httptest.Server
	secret      string
	pipeline    string
	destination string
	now         func() time.Time // the receiver's clock for signature freshness

	mu        sync.Mutex
	requests  []*request // every request, in arrival order
	accepted  []int64    // seqs of events in answered-2xx POSTs, in arrival order
	state     map[string]sinktest.Observed
	breakMode string // "", "503", "hangup", or a status code to answer everything with
	// respond, when set, may answer request n (0-based) itself; nil means
	// the default handling.
	respond func(n int, req *request) *response
	// rejectStatus is the answer to a batch holding an event whose
	// data.Title is "REJECT-ME" (default 400).
	rejectStatus      int
	inFlight, maxSeen int
	// gate, when set, holds requests until gateN are in flight at once
	// (proof of concurrency without timing).
	gate  chan struct{}
	gateN int
	stop  chan struct{} // closed at cleanup: releases hung handlers
}

// request is what the receiver saw.
type request struct {
	Header http.Header
	Body   []byte
	Events []event
	Seqs   []int64
}

func (r *request) key() string { return r.Header.Get("Idempotency-Key") }

type event struct {
	SpecVersion     string          `json:"specversion"`
	ID              string          `json:"id"`
	Source          string          `json:"source"`
	Type            string          `json:"type"`
	Subject         string          `json:"subject"`
	Time            string          `json:"time"`
	DataContentType string          `json:"datacontenttype"`
	Data            json.RawMessage `json:"data"`
	SluiceSeq       string          `json:"sluiceseq"`
	SluiceGen       string          `json:"sluicegen"`
}

type response struct {
	status int
	header map[string]string
	body   string
	hang   bool // wait until the client gives up
	hangup bool // close the connection without an answer
}

func newReceiver(t testing.TB, secret string) *receiver {
	rv := &receiver{t: t, secret: secret, pipeline: "orders", destination: "hook", state: map[string]sinktest.Observed{},
		rejectStatus: http.StatusBadRequest, stop: make(chan struct{}), now: time.Now}
	rv.srv = httptest.NewServer(rv)
	t.Cleanup(func() {
		close(rv.stop)
		rv.srv.Close()
	})
	return rv
}

func (rv *receiver) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(r.Body)
	if err != nil {
		return
	}
	req := &request{Header: r.Header.Clone(), Body: body}

	rv.mu.Lock()
	n := len(rv.requests)
	rv.requests = append(rv.requests, req)
	rv.inFlight++
	rv.maxSeen = max(rv.maxSeen, rv.inFlight)
	gate, mode, respond := rv.gate, rv.breakMode, rv.respond
	if gate != nil && rv.inFlight == rv.gateN {
		close(gate)
		rv.gate = nil
	}
	rv.mu.Unlock()
	defer func() {
		rv.mu.Lock()
		rv.inFlight--
		rv.mu.Unlock()
	}()
	if gate != nil {
		select {
		case <-gate:
		case <-r.Context().Done():
			return
		}
	}

	switch mode {
	case "":
	case "503":
		http.Error(w, "down for maintenance", http.StatusServiceUnavailable)
		return
	case "hangup":
		hangup(w)
		return
	default:
		code, _ := strconv.Atoi(mode)
		http.Error(w, "configured to fail", code)
		return
	}

	// What any receiver checks first: the request is a signed batch.
	if r.Method != http.MethodPost {
		http.Error(w, "POST only", http.StatusMethodNotAllowed)
		return
	}
	if ct := r.Header.Get("Content-Type"); ct != "application/cloudevents-batch+json" {
		rv.t.Errorf("Content-Type %q", ct)
	}
	if rv.secret != "" {
		if err := verifySignature([]byte(rv.secret), r.Header, body, rv.now()); err != nil {
			rv.t.Errorf("signature: %v", err)
			http.Error(w, err.Error(), http.StatusUnauthorized)
			return
		}
	}
	if err := json.Unmarshal(body, &req.Events); err != nil {
		rv.t.Errorf("body is not a CloudEvents batch: %v\n%s", err, body)
		http.Error(w, "malformed batch", http.StatusBadRequest)
		return
	}
	for _, e := range req.Events {
		seq, _ := strconv.ParseInt(e.SluiceSeq, 10, 64)
		req.Seqs = append(req.Seqs, seq)
	}
	rv.checkContract(req)

	if respond != nil {
		if resp := respond(n, req); resp != nil {
			rv.answer(w, r, req, resp)
			return
		}
	}
	for _, e := range req.Events {
		var d struct{ Title string }
		if len(e.Data) > 0 {
			_ = json.Unmarshal(e.Data, &d)
		}
		if d.Title == "REJECT-ME" {
			// Nothing of a refused batch is applied.
			http.Error(w, fmt.Sprintf(`{"error": "event %s:   Title %q is not allowed"}`, e.ID, d.Title), rv.rejectStatus)
			return
		}
	}
	rv.apply(req)
	w.WriteHeader(http.StatusOK)
}

func (rv *receiver) answer(w http.ResponseWriter, r *http.Request, req *request, resp *response) {
	switch {
	case resp.hang:
		select {
		case <-r.Context().Done():
		case <-rv.stop:
		}
		return
	case resp.hangup:
		hangup(w)
		return
	}
	for k, v := range resp.header {
		w.Header().Set(k, v)
	}
	if resp.status >= 200 && resp.status < 300 {
		rv.apply(req)
	}
	w.WriteHeader(resp.status)
	_, _ = io.WriteString(w, resp.body)
}

func hangup(w http.ResponseWriter) {
	conn, _, err := w.(http.Hijacker).Hijack()
	if err == nil {
		conn.Close()
	}
}

// apply folds an accepted batch: per key, the highest sluiceseq wins.
func (rv *receiver) apply(req *request) {
	rv.mu.Lock()
	defer rv.mu.Unlock()
	for i, e := range req.Events {
		seq := req.Seqs[i]
		rv.accepted = append(rv.accepted, seq)
		if cur, ok := rv.state[e.Subject]; ok && cur.Seq >= seq {
			continue
		}
		o := sinktest.Observed{Seq: seq, Deleted: e.Type == "sluice.change.delete"}
		if !o.Deleted {
			o.Fields = map[string]any{}
			if err := json.Unmarshal(e.Data, &o.Fields); err != nil {
				rv.t.Errorf("event %s: data is not an object: %v", e.ID, err)
			}
		}
		rv.state[e.Subject] = o
	}
}

// checkContract checks each event against DESIGN §3.4.
func (rv *receiver) checkContract(req *request) {
	gen := ""
	for i, e := range req.Events {
		seq := req.Seqs[i]
		if gen == "" {
			gen = e.SluiceGen
		}
		wantID := rv.pipeline + "-" + e.SluiceSeq
		if e.SluiceGen != "0" {
			wantID += "." + e.SluiceGen
		}
		var errs []string
		check := func(ok bool, format string, args ...any) {
			if !ok {
				errs = append(errs, fmt.Sprintf(format, args...))
			}
		}
		check(seq > 0, "sluiceseq %q is not a positive integer", e.SluiceSeq)
		check(e.SluiceGen == gen, "sluicegen %q differs within one POST (%q)", e.SluiceGen, gen)
		check(e.SpecVersion == "1.0", "specversion %q", e.SpecVersion)
		check(e.ID == wantID, "id %q, want %q", e.ID, wantID)
		check(e.Source == "sluice/"+rv.pipeline, "source %q", e.Source)
		check(e.DataContentType == "application/json", "datacontenttype %q", e.DataContentType)
		_, err := time.Parse(changelog.TSFormat, e.Time)
		check(err == nil, "time %q is not UTC with milliseconds", e.Time)
		switch e.Type {
		case "sluice.change.upsert":
			check(len(e.Data) > 0 && e.Data[0] == '{', "upsert data %s is not an object", e.Data)
		case "sluice.change.delete":
			check(e.Data == nil, "delete carries data %s", e.Data)
		default:
			check(false, "type %q", e.Type)
		}
		if i > 0 {
			check(seq > req.Seqs[i-1], "seq %d after %d within one POST", seq, req.Seqs[i-1])
		}
		if len(errs) > 0 {
			rv.t.Errorf("event %d of POST %s: %s", i, req.key(), strings.Join(errs, "; "))
		}
	}
	if len(req.Seqs) > 0 {
		want := fmt.Sprintf("%s/%s/%s/%d-%d", rv.pipeline, rv.destination, gen, req.Seqs[0], req.Seqs[len(req.Seqs)-1])
		if req.key() != want {
			rv.t.Errorf("Idempotency-Key %q, want %q", req.key(), want)
		}
	}
}

func (rv *receiver) setBreak(mode string) {
	rv.mu.Lock()
	rv.breakMode = mode
	rv.mu.Unlock()
}

func (rv *receiver) snapshot() (reqs []*request, accepted []int64) {
	rv.mu.Lock()
	defer rv.mu.Unlock()
	return append([]*request(nil), rv.requests...), append([]int64(nil), rv.accepted...)
}

// checkRepeats fails t when two requests carry one Idempotency-Key with
// different bodies: a retry must repeat the very same POST.
func checkRepeats(t *testing.T, reqs []*request) {
	t.Helper()
	bodies := map[string][]byte{}
	for _, r := range reqs {
		if prev, ok := bodies[r.key()]; ok && !bytes.Equal(prev, r.Body) {
			t.Errorf("Idempotency-Key %s sent with two different bodies", r.key())
		}
		bodies[r.key()] = r.Body
	}
}

// verifySignature is how a receiver checks a request (the Go snippet of
// VERIFY.md, kept here so that it compiles and is tested): the signature
// over "<timestamp>.<body>" must match, and the timestamp must be recent.
func verifySignature(secret []byte, h http.Header, body []byte, now time.Time) error {
	ts := h.Get("X-Sluice-Timestamp")
	sig, ok := strings.CutPrefix(h.Get("X-Sluice-Signature"), "sha256=")
	if ts == "" || !ok {
		return errors.New("missing signature headers")
	}
	sec, err := strconv.ParseInt(ts, 10, 64)
	if err != nil {
		return errors.New("bad timestamp")
	}
	if age := now.Sub(time.Unix(sec, 0)); age > 5*time.Minute || age < -5*time.Minute {
		return fmt.Errorf("timestamp too old or in the future (%v)", age)
	}
	got, err := hex.DecodeString(sig)
	if err != nil {
		return errors.New("bad signature encoding")
	}
	mac := hmac.New(sha256.New, secret)
	mac.Write([]byte(ts + "."))
	mac.Write(body)
	if !hmac.Equal(got, mac.Sum(nil)) {
		return errors.New("signature mismatch")
	}
	return nil
}

// sleeps records the waits the sink asks for, without waiting.
type sleeps struct {
	mu sync.Mutex
	d  []time.Duration
}

func (s *sleeps) sleep(ctx context.Context, d time.Duration) error {
	s.mu.Lock()
	s.d = append(s.d, d)
	s.mu.Unlock()
	return ctx.Err()
}

func (s *sleeps) all() []time.Duration {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]time.Duration(nil), s.d...)
}
