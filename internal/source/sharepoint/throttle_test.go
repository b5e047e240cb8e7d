package sharepoint

import (
	"context"
	"errors"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func TestRetryAfterForms(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name     string
		status   int
		header   func(now time.Time) string
		min, max time.Duration
	}{
		{"429 integer", 429, func(time.Time) string { return "31" }, 31 * time.Second, 31 * time.Second},
		{"503 integer", 503, func(time.Time) string { return "120" }, 120 * time.Second, 120 * time.Second},
		{"429 fractional", 429, func(time.Time) string { return "2.128" }, 2128 * time.Millisecond, 2128*time.Millisecond + time.Microsecond},
		{"503 fractional", 503, func(time.Time) string { return " 0.5 " }, 500 * time.Millisecond, 500 * time.Millisecond},
		{"429 HTTP date", 429, func(now time.Time) string { return now.Add(90 * time.Second).Format(http.TimeFormat) }, 90 * time.Second, 90 * time.Second},
		{"503 HTTP date", 503, func(now time.Time) string { return now.Add(5 * time.Second).Format(http.TimeFormat) }, 5 * time.Second, 5 * time.Second},
		{"429 absent: backoff", 429, func(time.Time) string { return "" }, 500 * time.Millisecond, time.Second},
		{"503 absent: backoff", 503, func(time.Time) string { return "" }, 500 * time.Millisecond, time.Second},
		{"429 unreadable: backoff", 429, func(time.Time) string { return "soon" }, 500 * time.Millisecond, time.Second},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			var n atomic.Int32
			var e *env
			e = newEnv(t, true, func(w http.ResponseWriter, r *http.Request) {
				if n.Add(1) == 1 {
					if v := tt.header(e.clock.Now()); v != "" {
						w.Header().Set("Retry-After", v)
					}
					writeJSON(w, tt.status, `{"error":{"code":"activityLimitReached","message":"The request has been throttled","innerError":{"code":"throttledRequest"}}}`)
					return
				}
				writeJSON(w, 200, deltaPage(e.graph, `{"id":"1"}`))
			})
			start := e.clock.Now()
			p, err := e.client.Page(context.Background(), e.graph+"/sites/s/lists/l/items/delta")
			if err != nil {
				t.Fatal(err)
			}
			if len(p.Items) != 1 {
				t.Fatalf("items %v", p.Items)
			}
			waits := e.clock.Waits()
			if len(waits) != 1 || waits[0] < tt.min || waits[0] > tt.max {
				t.Errorf("waits = %v, want one in [%v, %v]", waits, tt.min, tt.max)
			}
			if got := e.client.ThrottledUntil().Sub(start); got < tt.min {
				t.Errorf("ThrottledUntil = start+%v, want ≥ %v", got, tt.min)
			}
			if st := e.client.Stats(); st.Requests != 2 || st.Throttles != 1 || st.Pages != 1 {
				t.Errorf("stats = %+v", st)
			}
		})
	}
}

func TestParseRetryAfter(t *testing.T) {
	t.Parallel()
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	tests := []struct {
		v    string
		want time.Duration
		ok   bool
	}{
		{"", 0, false},
		{"0", 0, true},
		{"3360", 3360 * time.Second, true},
		{"2.128", 2128 * time.Millisecond, true},
		{"-1", 0, false},
		{"NaN", 0, false},
		{now.Add(-time.Minute).Format(http.TimeFormat), 0, true}, // in the past: go now
		{"Thu, 01 Jan 2026 00:01:00 GMT", time.Minute, true},
		{"Thursday, 01-Jan-26 00:01:00 GMT", time.Minute, true}, // RFC 850, allowed by HTTP
		{"tomorrow", 0, false},
	}
	for _, tt := range tests {
		got, ok := retryAfter(http.Header{"Retry-After": {tt.v}}, now)
		if ok != tt.ok || (ok && (got < tt.want || got > tt.want+time.Microsecond)) {
			t.Errorf("retryAfter(%q) = %v, %v; want %v, %v", tt.v, got, ok, tt.want, tt.ok)
		}
	}
}

func TestBackoffBounds(t *testing.T) {
	t.Parallel()
	for n := 1; n <= 12; n++ {
		full := min(time.Second<<(n-1), 60*time.Second)
		for range 50 {
			if d := backoff(n); d < full/2 || d > full {
				t.Fatalf("backoff(%d) = %v, want in [%v, %v]", n, d, full/2, full)
			}
		}
	}
}

// A throttle seen by one goroutine pauses the requests of another
// (reference §3.1: "pause all further requests").
func TestThrottlePausesOtherGoroutines(t *testing.T) {
	t.Parallel()
	type ctxKey struct{}
	var (
		mu     sync.Mutex
		events []string
	)
	logEvent := func(s string) { mu.Lock(); events = append(events, s); mu.Unlock() }

	var n atomic.Int32
	var e *env
	e = newEnv(t, false, func(w http.ResponseWriter, r *http.Request) {
		who := r.URL.Query().Get("who")
		logEvent("server " + who)
		if n.Add(1) == 1 {
			w.Header().Set("Retry-After", "30")
			writeJSON(w, 429, `{"error":{"code":"TooManyRequests"}}`)
			return
		}
		writeJSON(w, 200, deltaPage(e.graph, ""))
	})
	aSleeping := make(chan struct{})
	releaseA := make(chan struct{})
	var bWait time.Duration
	e.clock.onSleep = func(ctx context.Context, d time.Duration) {
		who := ctx.Value(ctxKey{}).(string)
		logEvent("sleep " + who)
		if who == "A" {
			close(aSleeping)
			<-releaseA
		} else {
			bWait = d
		}
	}

	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		ctx := context.WithValue(context.Background(), ctxKey{}, "A")
		if _, err := e.client.Page(ctx, e.graph+"/d?who=A"); err != nil {
			t.Error(err)
		}
	}()
	<-aSleeping
	ctxB := context.WithValue(context.Background(), ctxKey{}, "B")
	if _, err := e.client.Page(ctxB, e.graph+"/d?who=B"); err != nil {
		t.Fatal(err)
	}
	close(releaseA)
	wg.Wait()

	want := []string{"server A", "sleep A", "sleep B", "server B", "server A"}
	if strings.Join(events, ", ") != strings.Join(want, ", ") {
		t.Errorf("events = %v, want %v", events, want)
	}
	if bWait < 30*time.Second {
		t.Errorf("B waited %v, want ≥ 30s", bWait)
	}
}

// A Retry-After past the context deadline ends the request at once with a
// ThrottledError (the engine saves throttledUntil and ends the pass).
func TestThrottleBeyondDeadline(t *testing.T) {
	t.Parallel()
	var n atomic.Int32
	var e *env
	e = newEnv(t, true, func(w http.ResponseWriter, r *http.Request) {
		n.Add(1)
		w.Header().Set("Retry-After", "120")
		writeJSON(w, 503, `{"error":{"code":"serviceNotAvailable"}}`)
	})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	start := e.clock.Now()
	_, err := e.client.Page(ctx, e.graph+"/d")
	var te *ThrottledError
	if !errors.As(err, &te) {
		t.Fatalf("err = %v, want *ThrottledError", err)
	}
	if !te.Until.Equal(start.Add(120*time.Second)) || !e.client.ThrottledUntil().Equal(te.Until) {
		t.Errorf("Until = %v, ThrottledUntil = %v, want %v", te.Until, e.client.ThrottledUntil(), start.Add(120*time.Second))
	}
	if w := e.clock.Waits(); len(w) != 0 {
		t.Errorf("slept %v", w)
	}
	// Another request in the same pause is not even sent.
	if _, err := e.client.Page(ctx, e.graph+"/d"); !errors.As(err, &te) || n.Load() != 1 {
		t.Errorf("second request: err %v, server saw %d requests", err, n.Load())
	}
}

// A Retry-After longer than MaxThrottleWait is not slept through even
// without a deadline.
func TestThrottleBeyondMaxWait(t *testing.T) {
	t.Parallel()
	e := newEnv(t, false, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Retry-After", "3360")
		writeJSON(w, 429, `{"error":{"code":"accessDenied","message":"Too Many Requests"}}`)
	})
	_, err := e.client.Page(context.Background(), e.graph+"/d")
	var te *ThrottledError
	if !errors.As(err, &te) || len(e.clock.Waits()) != 0 {
		t.Fatalf("err = %v, waits %v", err, e.clock.Waits())
	}
}

func TestThrottleLimitPerRequest(t *testing.T) {
	t.Parallel()
	e := newEnv(t, false, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Retry-After", "1")
		writeJSON(w, 429, `{}`)
	}, func(o *Options) { o.MaxThrottles = 5 })
	_, err := e.client.Page(context.Background(), e.graph+"/d")
	var te *ThrottledError
	if !errors.As(err, &te) {
		t.Fatalf("err = %v", err)
	}
	if st := e.client.Stats(); st.Requests != 5 || st.Throttles != 5 {
		t.Errorf("stats = %+v", st)
	}
	for _, w := range e.clock.Waits() {
		if w < time.Second {
			t.Errorf("waited %v < Retry-After", w)
		}
	}
}

// A saved throttledUntil is honoured before the first request.
func TestSetNotBefore(t *testing.T) {
	t.Parallel()
	var e *env
	e = newEnv(t, false, func(w http.ResponseWriter, r *http.Request) { writeJSON(w, 200, deltaPage(e.graph, "")) })
	until := e.clock.Now().Add(45 * time.Second)
	e.client.SetNotBefore(until)
	e.client.SetNotBefore(until.Add(-time.Hour)) // never shortens
	if !e.client.ThrottledUntil().Equal(until) {
		t.Fatalf("ThrottledUntil = %v", e.client.ThrottledUntil())
	}
	if _, err := e.client.Page(context.Background(), e.graph+"/d"); err != nil {
		t.Fatal(err)
	}
	if w := e.clock.Waits(); len(w) != 1 || w[0] != 45*time.Second {
		t.Errorf("waits = %v", w)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	e.client.SetNotBefore(e.clock.Now().Add(time.Hour))
	var te *ThrottledError
	if _, err := e.client.Page(ctx, e.graph+"/d"); !errors.As(err, &te) {
		t.Errorf("err = %v, want *ThrottledError", err)
	}
}

func TestTransientRetries(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		fail func(w http.ResponseWriter, r *http.Request)
	}{
		{"500", func(w http.ResponseWriter, r *http.Request) {
			writeJSON(w, 500, `{"error":{"code":"generalException"}}`)
		}},
		{"502", func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(502) }},
		{"504", func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(504) }},
		{"410 cannotSnapshotTree", func(w http.ResponseWriter, r *http.Request) {
			writeJSON(w, 410, `{"error":{"code":"resyncRequired","innerError":{"code":"cannotSnapshotTree"}}}`)
		}},
		{"connection dropped", func(w http.ResponseWriter, r *http.Request) {
			conn, _, _ := w.(http.Hijacker).Hijack()
			conn.Close()
		}},
		{"body cut short", func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Length", "1000")
			w.WriteHeader(200)
			_, _ = w.Write([]byte(`{"value":[{"id":"1"`))
			conn, _, _ := w.(http.Hijacker).Hijack()
			conn.Close()
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			var n atomic.Int32
			var e *env
			e = newEnv(t, false, func(w http.ResponseWriter, r *http.Request) {
				if n.Add(1) <= 2 {
					tt.fail(w, r)
					return
				}
				writeJSON(w, 200, deltaPage(e.graph, `{"id":"1"}`))
			})
			p, err := e.client.Page(context.Background(), e.graph+"/d")
			if err != nil {
				t.Fatal(err)
			}
			if len(p.Items) != 1 || n.Load() != 3 || len(e.clock.Waits()) != 2 {
				t.Errorf("items %d, requests %d, waits %v", len(p.Items), n.Load(), e.clock.Waits())
			}
			if e.client.ThrottledUntil().After(e.clock.Now()) {
				t.Error("a transient error paused the client")
			}
		})
	}
}

func TestTransientGivesUp(t *testing.T) {
	t.Parallel()
	var n atomic.Int32
	e := newEnv(t, false, func(w http.ResponseWriter, r *http.Request) {
		n.Add(1)
		writeJSON(w, 502, `{"error":{"code":"badGateway","message":"upstream"}}`)
	})
	_, err := e.client.Page(context.Background(), e.graph+"/sites/S/lists/L/items/delta?token=t")
	var se *StatusError
	if !errors.As(err, &se) || se.StatusCode != 502 || n.Load() != maxTransientAttempts {
		t.Fatalf("err = %v, requests %d", err, n.Load())
	}
	if !strings.Contains(err.Error(), "site S, list L") || strings.Contains(err.Error(), "token=t") {
		t.Errorf("message = %v", err)
	}
}

func TestNetworkErrorNamesURLWithoutQuery(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close() // nothing listens: connection refused
	clk := newClock()
	c, err := New(Options{GraphURL: "http://" + addr + "/v1.0", Auth: bearer(), Now: clk.Now, Sleep: clk.Sleep})
	if err != nil {
		t.Fatal(err)
	}
	_, err = c.Page(context.Background(), "http://"+addr+"/v1.0/d?token=secret")
	if err == nil || strings.Contains(err.Error(), "secret") || !strings.Contains(err.Error(), "/v1.0/d?…") {
		t.Fatalf("err = %v", err)
	}
	if c.Stats().Requests != maxTransientAttempts {
		t.Errorf("requests = %d", c.Stats().Requests)
	}
}

func TestContextCancelDuringThrottle(t *testing.T) {
	t.Parallel()
	e := newEnv(t, false, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Retry-After", "5")
		writeJSON(w, 429, `{}`)
	})
	ctx, cancel := context.WithCancel(context.Background())
	e.clock.onSleep = func(context.Context, time.Duration) { cancel() }
	if _, err := e.client.Page(ctx, e.graph+"/d"); !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v", err)
	}
}
