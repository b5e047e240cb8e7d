package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/sluicehq/sluice/internal/sink/httpsink"
)

// Receiver modes.
const (
	recvOK       = "ok"
	recvFail500  = "500"
	recvThrottle = "429"
)

// receiver is the HTTP destination of every pipeline, each at url/<pipeline>:
// it records every event it accepts (every delivery, repeats included) and
// can be told to fail.
type receiver struct {
	secret []byte
	srv    *http.Server
	url    string

	mu         sync.Mutex
	mode       string
	retryAfter string
	got        map[string]*received // by pipeline
	posts      int64
	answered   map[int]int64 // status → count
	bad        []string      // protocol violations (signature, body, headers)
}

// received is what one pipeline's hook delivered.
type received struct {
	bySeq  map[int64][]delivery // every delivery of every seq
	events int64
}

// delivery is one event as received.
type delivery struct {
	ID, Type, Subject, Gen string
}

type cloudEvent struct {
	SpecVersion string          `json:"specversion"`
	ID          string          `json:"id"`
	Source      string          `json:"source"`
	Type        string          `json:"type"`
	Subject     string          `json:"subject"`
	Time        string          `json:"time"`
	SluiceSeq   string          `json:"sluiceseq"`
	SluiceGen   string          `json:"sluicegen"`
	Data        json.RawMessage `json:"data"`
}

func startReceiver(secret string) (*receiver, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	r := &receiver{secret: []byte(secret), mode: recvOK, got: map[string]*received{}, answered: map[int]int64{}}
	for _, p := range pipelines {
		r.got[p.name] = &received{bySeq: map[int64][]delivery{}}
	}
	r.srv = &http.Server{Handler: http.HandlerFunc(r.serve), ReadHeaderTimeout: 10 * time.Second}
	r.url = "http://" + ln.Addr().String() + "/hook"
	go func() { _ = r.srv.Serve(ln) }()
	return r, nil
}

func (r *receiver) close() { _ = r.srv.Close() }

func (r *receiver) setMode(mode, retryAfter string) {
	r.mu.Lock()
	r.mode, r.retryAfter = mode, retryAfter
	r.mu.Unlock()
}

func (r *receiver) violation(format string, args ...any) {
	if len(r.bad) < 50 {
		r.bad = append(r.bad, fmt.Sprintf(format, args...))
	}
}

func (r *receiver) serve(w http.ResponseWriter, req *http.Request) {
	body, err := io.ReadAll(io.LimitReader(req.Body, 64<<20))
	r.mu.Lock()
	defer r.mu.Unlock()
	r.posts++
	answer := func(status int) {
		r.answered[status]++
		w.WriteHeader(status)
	}
	if err != nil {
		answer(http.StatusBadRequest)
		return
	}
	switch r.mode {
	case recvFail500:
		answer(http.StatusInternalServerError)
		return
	case recvThrottle:
		w.Header().Set("Retry-After", r.retryAfter)
		answer(http.StatusTooManyRequests)
		return
	}
	pipeline, _ := strings.CutPrefix(req.URL.Path, "/hook/")
	got := r.got[pipeline]
	if req.Method != http.MethodPost || got == nil {
		r.violation("%s %s", req.Method, req.URL.Path)
		answer(http.StatusNotFound)
		return
	}
	if ct := req.Header.Get("Content-Type"); !strings.HasPrefix(ct, "application/cloudevents-batch+json") {
		r.violation("Content-Type %q", ct)
	}
	if err := httpsink.VerifySignature(r.secret, req.Header, body, time.Now(), 5*time.Minute); err != nil {
		// A bad signature is a bug in sluice; accept nothing from it.
		r.violation("signature: %v", err)
		answer(http.StatusUnauthorized)
		return
	}
	var events []cloudEvent
	if err := json.Unmarshal(body, &events); err != nil || len(events) == 0 {
		r.violation("body is not a non-empty CloudEvents batch: %v", err)
		answer(http.StatusBadRequest)
		return
	}
	// Idempotency-Key: <pipeline>/<destination>/<g>/<firstSeq>-<lastSeq>.
	first, last := events[0].SluiceSeq, events[len(events)-1].SluiceSeq
	if ik := req.Header.Get("Idempotency-Key"); !strings.HasSuffix(ik, "/"+first+"-"+last) {
		r.violation("Idempotency-Key %q for seqs %s..%s", ik, first, last)
	}
	for _, e := range events {
		seq, err := strconv.ParseInt(e.SluiceSeq, 10, 64)
		if err != nil || seq <= 0 {
			r.violation("event %q: sluiceseq %q", e.ID, e.SluiceSeq)
			continue
		}
		if e.SpecVersion != "1.0" || e.Source != "sluice/"+pipeline {
			r.violation("event %q at %s: specversion %q source %q", e.ID, req.URL.Path, e.SpecVersion, e.Source)
		}
		got.bySeq[seq] = append(got.bySeq[seq], delivery{ID: e.ID, Type: e.Type, Subject: e.Subject, Gen: e.SluiceGen})
		got.events++
	}
	answer(http.StatusNoContent)
}

// recvStats is a copy of what the receiver recorded.
type recvStats struct {
	got      map[string]received // by pipeline
	posts    int64
	answered map[int]int64
	bad      []string
}

func (r *receiver) stats() recvStats {
	r.mu.Lock()
	defer r.mu.Unlock()
	st := recvStats{got: map[string]received{}, posts: r.posts, answered: map[int]int64{}, bad: append([]string(nil), r.bad...)}
	for p, g := range r.got {
		c := received{bySeq: make(map[int64][]delivery, len(g.bySeq)), events: g.events}
		for k, v := range g.bySeq {
			c.bySeq[k] = append([]delivery(nil), v...)
		}
		st.got[p] = c
	}
	for k, v := range r.answered {
		st.answered[k] = v
	}
	return st
}
