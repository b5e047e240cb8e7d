package devhost

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/sluicehq/sluice/internal/azstore"
)

// call is one invocation the stub handler received.
type call struct {
	Function string
	Header   http.Header
	Body     []byte
}

// payload decodes the body into a generic map.
func (c call) payload(t *testing.T) map[string]any {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(c.Body, &m); err != nil {
		t.Fatalf("payload is not JSON: %v: %s", err, c.Body)
	}
	return m
}

// stub is a custom handler that records every invocation and answers with
// respond (default: 200 and an empty Outputs).
type stub struct {
	mu      sync.Mutex
	calls   []call
	respond func(c call, w http.ResponseWriter, r *http.Request)
	notify  chan call
}

func newStub() *stub { return &stub{notify: make(chan call, 1000)} }

func (s *stub) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	c := call{Function: r.URL.Path[1:], Header: r.Header.Clone(), Body: body}
	s.mu.Lock()
	s.calls = append(s.calls, c)
	respond := s.respond
	s.mu.Unlock()
	s.notify <- c
	if respond != nil {
		respond(c, w, r)
		return
	}
	answer(w, 200, `{"Outputs":{},"Logs":["ok"],"ReturnValue":null}`)
}

func answer(w http.ResponseWriter, status int, body string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_, _ = io.WriteString(w, body)
}

func (s *stub) count() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.calls)
}

func (s *stub) all() []call {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]call(nil), s.calls...)
}

// next waits for the next invocation.
func (s *stub) next(t *testing.T, within time.Duration) call {
	t.Helper()
	select {
	case c := <-s.notify:
		return c
	case <-time.After(within):
		t.Fatalf("no invocation within %s", within)
		return call{}
	}
}

// writeApp writes host.json and one folder per function into a temp dir.
func writeApp(t *testing.T, hostJSON string, fns map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "host.json"), []byte(hostJSON), 0o644); err != nil {
		t.Fatal(err)
	}
	for name, fj := range fns {
		if err := os.MkdirAll(filepath.Join(dir, name), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, name, "function.json"), []byte(fj), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// running is a Host started by start.
type running struct {
	h      *Host
	cancel context.CancelFunc
	done   chan error
	once   sync.Once
}

// stop cancels the host and waits for Run to return.
func (r *running) stop(t *testing.T) {
	t.Helper()
	r.once.Do(func() {
		r.cancel()
		select {
		case err := <-r.done:
			if err != nil {
				t.Errorf("Run: %v", err)
			}
		case <-time.After(60 * time.Second):
			t.Error("Run did not return after cancel")
		}
	})
}

// start builds a host with test defaults and runs it until the test ends.
func start(t *testing.T, opts Options) *running {
	t.Helper()
	if opts.Addr == "" {
		opts.Addr = "127.0.0.1:0"
	}
	if opts.LookupEnv == nil {
		opts.LookupEnv = func(string) (string, bool) { return "", false }
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.NewTextHandler(testWriter{t}, nil))
	}
	if opts.MinPollInterval == 0 {
		opts.MinPollInterval = 20 * time.Millisecond
	}
	if opts.LeaseRetry == 0 {
		opts.LeaseRetry = 100 * time.Millisecond
	}
	if opts.ClockCheck == 0 {
		opts.ClockCheck = 50 * time.Millisecond
	}
	h, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &running{h: h, cancel: cancel, done: make(chan error, 1)}
	go func() { r.done <- h.Run(ctx) }()
	deadline := time.Now().Add(10 * time.Second)
	for h.Addr() == "" {
		if time.Now().After(deadline) {
			t.Fatal("host never listened")
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Cleanup(func() { r.stop(t) })
	return r
}

// testWriter sends log lines to t.Log.
type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(string(p[:len(p)-1]))
	return len(p), nil
}

// sameContainer opens a second store on st's container, as a second
// process on the same storage account would.
func sameContainer(t *testing.T, st *azstore.Store, settings azstore.Settings) *azstore.Store {
	t.Helper()
	other, err := azstore.Open(context.Background(), settings, st.Container(), azstore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	return other
}

// get walks a decoded payload by keys.
func get(t *testing.T, v any, keys ...string) any {
	t.Helper()
	for _, k := range keys {
		m, ok := v.(map[string]any)
		if !ok {
			t.Fatalf("at %q: not an object: %#v", k, v)
		}
		if v, ok = m[k]; !ok {
			t.Fatalf("key %q missing in %v", k, m)
		}
	}
	return v
}
