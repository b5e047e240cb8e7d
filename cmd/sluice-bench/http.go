package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"
)

const (
	httpBatchSize = 500
	// keepBodies is how many POST bodies the receiver keeps for the baseline.
	keepBodies = 40
)

// receiver is a webhook receiver that only reads bodies and counts the
// CloudEvents in them. It keeps the first bodies it receives, so that the
// baseline can post exactly what sluice posted.
type receiver struct {
	events atomic.Int64
	posts  atomic.Int64
	pool   sync.Pool

	mu     sync.Mutex
	bodies [][]byte
	keep   bool
}

var specversion = []byte(`"specversion"`)

func (r *receiver) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	buf, _ := r.pool.Get().(*bytes.Buffer)
	if buf == nil {
		buf = new(bytes.Buffer)
	}
	buf.Reset()
	if _, err := buf.ReadFrom(req.Body); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	r.events.Add(int64(bytes.Count(buf.Bytes(), specversion)))
	r.posts.Add(1)
	r.mu.Lock()
	if r.keep && len(r.bodies) < keepBodies {
		r.bodies = append(r.bodies, bytes.Clone(buf.Bytes()))
	}
	r.mu.Unlock()
	r.pool.Put(buf)
	w.WriteHeader(http.StatusNoContent)
}

// drainHTTP drains the log into the receiver (in this process) through the
// real httpsink in a child process, then measures the baseline: a plain Go
// client posting sluice's own bodies to the same receiver, one at a time as
// the sink does with max_in_flight 1.
func (b *bench) drainHTTP(ctx context.Context) (Workload, error) {
	w := Workload{Records: b.log.head, Baseline: "plain-go-client-same-bodies", Target: ">= 50k events/s"}
	rcv := &receiver{keep: true}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return w, err
	}
	srv := &http.Server{Handler: rcv, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	defer srv.Close()
	url := "http://" + ln.Addr().String() + "/hook"

	b.progressf("draining %d records to an HTTP receiver (httpsink, batch %d) in a child process", b.log.head, httpBatchSize)
	res, rss, err := b.startChild(ctx, wDrainHTTP, childSpec{Pipeline: benchPipeline, DestName: "hook", DestType: "http",
		URL: url, BatchSize: httpBatchSize})
	w.PeakRSSBytes = rss
	if err != nil {
		return w, err
	}
	w.Seconds = round(res.Seconds, 2)
	w.PeakDetail = res.Peak.String()
	w.RecordsPerSec = rate(res.Records, res.Seconds)
	b.progressf("  %s events/s, peak RSS %s", human(w.RecordsPerSec), mib(rss))
	got := rcv.events.Load()
	ok := got == b.log.head
	w.CheckOK = &ok
	w.Check = fmt.Sprintf("receiver counted %d events in %d POSTs for %d records", got, rcv.posts.Load(), b.log.head)
	w.TargetMet = ptr(w.RecordsPerSec >= 50_000 && ok)

	rcv.mu.Lock()
	bodies := rcv.bodies
	rcv.keep = false
	rcv.mu.Unlock()
	n, secs, err := postBodies(ctx, url, bodies, b.log.head)
	if err != nil {
		return w, fmt.Errorf("baseline: %w", err)
	}
	w.BaselineRecords = n
	w.BaselinePerSec = rate(n, secs)
	w.Ratio = ratio(w.RecordsPerSec, w.BaselinePerSec)
	b.progressf("  baseline: plain client posting the same bodies: %s events/s", human(w.BaselinePerSec))
	return w, nil
}

// postBodies posts bodies round-robin until at least n events went out, and
// returns the events posted and the seconds it took.
func postBodies(ctx context.Context, url string, bodies [][]byte, n int64) (int64, float64, error) {
	if len(bodies) == 0 {
		return 0, 0, fmt.Errorf("the receiver kept no bodies")
	}
	counts := make([]int64, len(bodies))
	for i, body := range bodies {
		counts[i] = int64(bytes.Count(body, specversion))
	}
	client := &http.Client{Timeout: 30 * time.Second}
	var sent int64
	start := time.Now()
	for i := 0; sent < n; i++ {
		k := i % len(bodies)
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(bodies[k]))
		if err != nil {
			return 0, 0, err
		}
		req.Header.Set("Content-Type", "application/cloudevents-batch+json")
		resp, err := client.Do(req)
		if err != nil {
			return 0, 0, err
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode/100 != 2 {
			return 0, 0, fmt.Errorf("receiver answered %s", resp.Status)
		}
		sent += counts[k]
	}
	return sent, time.Since(start).Seconds(), nil
}
