package sharepoint

import (
	"context"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sluicehq/sluice/internal/config"
)

const testToken = "test-token-abc123"

// refHost is the Graph root used in the reference's JSON examples; tests
// replace it with the test server's URL.
const refHost = "https://graph.microsoft.com/v1.0"

// clock is an injected clock: Sleep records the wait and moves Now forward,
// so no test ever sleeps for real.
type clock struct {
	mu    sync.Mutex
	t     time.Time
	waits []time.Duration
	// onSleep, when set, runs before Sleep returns (outside the lock).
	onSleep func(ctx context.Context, d time.Duration)
}

func newClock() *clock {
	return &clock{t: time.Date(2026, 11, 25, 8, 0, 0, 0, time.UTC)}
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) Sleep(ctx context.Context, d time.Duration) error {
	c.mu.Lock()
	c.waits = append(c.waits, d)
	hook := c.onSleep
	c.mu.Unlock()
	if hook != nil {
		hook(ctx, d)
	}
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
	return ctx.Err()
}

func (c *clock) Waits() []time.Duration {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]time.Duration(nil), c.waits...)
}

// env is a test server with a Client pointed at it.
type env struct {
	srv    *httptest.Server
	client *Client
	clock  *clock
	graph  string // srv.URL + "/v1.0"
}

type envOpt func(*Options)

// newEnv starts h on a TLS server (tls) or a plain one, and a bearer Client
// using the server's own http.Client (which trusts its certificate).
func newEnv(t *testing.T, tls bool, h http.HandlerFunc, opts ...envOpt) *env {
	t.Helper()
	var srv *httptest.Server
	if tls {
		srv = httptest.NewTLSServer(h)
	} else {
		srv = httptest.NewServer(h)
	}
	t.Cleanup(srv.Close)
	clk := newClock()
	o := Options{
		GraphURL:   srv.URL + "/v1.0/",
		Auth:       config.Auth{Type: config.AuthBearer, Token: testToken},
		HTTPClient: srv.Client(),
		Version:    "1.2.3",
		Now:        clk.Now,
		Sleep:      clk.Sleep,
	}
	for _, f := range opts {
		f(&o)
	}
	c, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	return &env{srv: srv, client: c, clock: clk, graph: srv.URL + "/v1.0"}
}

// fix rewrites the reference's Graph host to the test server's.
func (e *env) fix(body string) string { return strings.ReplaceAll(body, refHost, e.graph) }

// modes runs f for a TLS and a plain server.
func modes(t *testing.T, f func(t *testing.T, tls bool)) {
	for _, tls := range []bool{true, false} {
		name := "plain"
		if tls {
			name = "tls"
		}
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			f(t, tls)
		})
	}
}

func writeJSON(w http.ResponseWriter, status int, body string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_, _ = w.Write([]byte(body))
}

// deltaPage is a minimal valid final page whose deltaLink points at graph.
func deltaPage(graph, value string) string {
	return `{"value":[` + value + `],"@odata.deltaLink":"` + graph + `/sites/s/lists/l/items/delta?token=next"}`
}

func bearer() config.Auth { return config.Auth{Type: config.AuthBearer, Token: testToken} }

func writeFile(path, s string) error { return os.WriteFile(path, []byte(s), 0o600) }
