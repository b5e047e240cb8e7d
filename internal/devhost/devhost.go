// Package devhost is a local stand-in for the Azure Functions host (what
// `sluice run` runs, DESIGN §5): it reads host.json and */function.json and
// drives the custom handler's routes with the host's exact payloads — timer
// schedules, queue polling with dequeue count and poison queue, /api routes.
// It must never send the handler a payload the real host would not send,
// delete a queue message whose invocation did not succeed, or serve HTTP
// routes beyond loopback without a function key.
//
// Section numbers (§) in comments refer to
// reference/azure-functions-custom-handler.md.
package devhost

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/sluicehq/sluice/internal/azstore"
	"github.com/sluicehq/sluice/internal/functions"
)

// Defaults of Options.
const (
	DefaultAddr  = "127.0.0.1:7071" // what Core Tools listens on (§10)
	DefaultGrace = 30 * time.Second
	// KeyEnv holds the function key HTTP routes with authLevel function or
	// admin require (§9).
	KeyEnv = "SLUICE_FUNCTION_KEY"
	// HostVersion is what the invocation headers report (§3).
	HostVersion = "4.0.0-sluice-devhost"
)

// Options configure a Host. AppDir, Handler and (for timers and queues)
// Store are required; the rest have defaults.
type Options struct {
	// AppDir holds host.json and one folder per function with its
	// function.json — at the top (the deployed layout, §1) or under
	// functions/ (this repository's layout).
	AppDir string
	// Handler is the custom handler (functions.NewHandler); it is served on
	// a private loopback port and called over HTTP, as the host does (§3).
	Handler http.Handler
	// Store keeps timer schedule status and leases, and holds the queues.
	Store *azstore.Store
	// Addr is where the HTTP routes listen; default DefaultAddr.
	Addr string
	// Listener, when set, is used instead of listening on Addr (tests).
	Listener net.Listener
	// LookupEnv resolves %Setting% and KeyEnv; default os.LookupEnv.
	LookupEnv func(string) (string, bool)
	// Logger gets one line per invocation; default text on stdout.
	Logger *slog.Logger
	// Now is the clock timers follow; default time.Now.
	Now func() time.Time
	// Grace is how long in-flight invocations may run after Run's context
	// ends before they are cancelled; default DefaultGrace.
	Grace time.Duration

	// MinPollInterval is the queue poll's shortest backoff (§2.4: 100 ms).
	MinPollInterval time.Duration
	// MessageVisibility is how long a dequeued message stays hidden while
	// it is processed; it is renewed at half that (§2.4: 10 min).
	MessageVisibility time.Duration
	// LeaseRetry is how often a host that does not hold a timer's lease
	// tries to take it; default 15 s.
	LeaseRetry time.Duration
	// ClockCheck bounds each wait for a timer occurrence, so a clock that
	// jumps (Now in tests) is noticed; default 1 s.
	ClockCheck time.Duration
}

// Host plays the Functions host's part for one app directory.
type Host struct {
	opts     Options
	settings functions.HostSettings
	log      *slog.Logger
	now      func() time.Time
	key      string // SLUICE_FUNCTION_KEY; "" with an open loopback listener
	funcs    []*function
	timers   []*timerTrigger
	queues   []*queueTrigger
	routes   []*httpRoute

	client  *http.Client
	baseURL string // the handler's private loopback address

	// invCtx is the context of invocations: it outlives Run's context by
	// the grace period.
	invCtx    context.Context
	cancelInv context.CancelFunc
	inflight  sync.WaitGroup

	mu   sync.Mutex
	addr string // where the HTTP routes listen, once Run has bound it
}

// function is one function folder.
type function struct {
	Name     string
	Bindings []binding
}

// binding is one entry of function.json "bindings" (§6).
type binding struct {
	Name         string   `json:"name"`
	Type         string   `json:"type"`
	Direction    string   `json:"direction"`
	DataType     string   `json:"dataType"`
	Schedule     string   `json:"schedule"`
	RunOnStartup bool     `json:"runOnStartup"`
	UseMonitor   *bool    `json:"useMonitor"`
	QueueName    string   `json:"queueName"`
	Connection   string   `json:"connection"`
	AuthLevel    string   `json:"authLevel"`
	Methods      []string `json:"methods"`
	Route        string   `json:"route"`
}

type functionFile struct {
	Disabled json.RawMessage `json:"disabled"`
	Bindings []binding       `json:"bindings"`
}

// New reads the app directory and checks everything it can before Run:
// schedules and their %settings%, queue names, routes, and that HTTP routes
// are not offered beyond loopback without a key.
func New(opts Options) (*Host, error) {
	if opts.Handler == nil {
		return nil, errors.New("devhost: no handler to drive")
	}
	if opts.AppDir == "" {
		opts.AppDir = "."
	}
	if opts.Addr == "" {
		opts.Addr = DefaultAddr
	}
	if opts.LookupEnv == nil {
		opts.LookupEnv = os.LookupEnv
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.NewTextHandler(os.Stdout, nil))
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.Grace <= 0 {
		opts.Grace = DefaultGrace
	}
	if opts.MinPollInterval <= 0 {
		opts.MinPollInterval = 100 * time.Millisecond
	}
	if opts.MessageVisibility <= 0 {
		opts.MessageVisibility = 10 * time.Minute
	}
	if opts.LeaseRetry <= 0 {
		opts.LeaseRetry = 15 * time.Second
	}
	if opts.ClockCheck <= 0 {
		opts.ClockCheck = time.Second
	}
	h := &Host{opts: opts, log: opts.Logger, now: opts.Now}

	hostPath := filepath.Join(opts.AppDir, "host.json")
	settings, err := functions.LoadHostSettings(hostPath)
	if err != nil {
		return nil, fmt.Errorf("devhost: %w", err)
	}
	if settings.Queues.NewBatchThreshold <= 0 {
		// §2.4: (batchSize/2) × processor count.
		settings.Queues.NewBatchThreshold = max(1, settings.Queues.BatchSize/2*runtime.NumCPU())
	}
	h.settings = settings
	if forwarding(hostPath) {
		h.log.Warn("devhost: host.json enables HTTP forwarding; this host always sends the JSON payload (§2.2)")
	}

	if h.funcs, err = loadFunctions(opts.AppDir); err != nil {
		return nil, err
	}
	for _, fn := range h.funcs {
		if err := h.addFunction(fn); err != nil {
			return nil, err
		}
	}
	if (len(h.timers) > 0 || len(h.queues) > 0) && opts.Store == nil {
		return nil, errors.New("devhost: timer and queue triggers need storage (AzureWebJobsStorage)")
	}
	sortRoutes(h.routes)

	key, _ := opts.LookupEnv(KeyEnv)
	h.key = strings.TrimSpace(key)
	addr := opts.Addr
	if opts.Listener != nil {
		addr = opts.Listener.Addr().String()
	}
	if h.key == "" && !isLoopback(addr) {
		return nil, fmt.Errorf("devhost: refusing to serve HTTP functions on %s without a function key: set %s, or bind to 127.0.0.1", addr, KeyEnv)
	}
	return h, nil
}

// loadFunctions finds */function.json under dir, else functions/*/function.json.
func loadFunctions(dir string) ([]*function, error) {
	var paths []string
	for _, pattern := range []string{"*/function.json", "functions/*/function.json"} {
		found, err := filepath.Glob(filepath.Join(dir, pattern))
		if err != nil {
			return nil, err
		}
		if len(found) > 0 {
			paths = found
			break
		}
	}
	if len(paths) == 0 {
		return nil, fmt.Errorf("devhost: no */function.json or functions/*/function.json under %s: point --app at the folder with host.json", dir)
	}
	sort.Strings(paths)
	var out []*function
	for _, p := range paths {
		data, err := os.ReadFile(p)
		if err != nil {
			return nil, fmt.Errorf("devhost: %w", err)
		}
		var ff functionFile
		if err := json.Unmarshal(data, &ff); err != nil {
			return nil, fmt.Errorf("devhost: %s is not valid JSON: %w", p, err)
		}
		if d := strings.Trim(strings.ToLower(string(ff.Disabled)), `" `); d == "true" {
			continue
		}
		out = append(out, &function{Name: filepath.Base(filepath.Dir(p)), Bindings: ff.Bindings})
	}
	return out, nil
}

// forwarding reports whether host.json turns on raw HTTP forwarding or
// proxying, which this host does not do.
func forwarding(path string) bool {
	data, err := os.ReadFile(path)
	if err != nil {
		return false
	}
	var w struct {
		CustomHandler struct {
			Forward bool `json:"enableForwardingHttpRequest"`
			Proxy   bool `json:"enableProxyingHttpRequest"`
		} `json:"customHandler"`
	}
	_ = json.Unmarshal(data, &w)
	return w.CustomHandler.Forward || w.CustomHandler.Proxy
}

func (h *Host) addFunction(fn *function) error {
	var triggers int
	for _, b := range fn.Bindings {
		if !strings.EqualFold(b.Direction, "in") {
			if !strings.EqualFold(b.Type, "http") {
				h.log.Warn("devhost: output binding not written by this host", "function", fn.Name, "binding", b.Name, "type", b.Type)
			}
			continue
		}
		switch strings.ToLower(b.Type) {
		case "timertrigger":
			t, err := h.newTimer(fn, b)
			if err != nil {
				return err
			}
			h.timers = append(h.timers, t)
		case "queuetrigger":
			q, err := h.newQueue(fn, b)
			if err != nil {
				return err
			}
			h.queues = append(h.queues, q)
		case "httptrigger":
			r, err := h.newRoute(fn, b)
			if err != nil {
				return err
			}
			h.routes = append(h.routes, r)
		default:
			if strings.HasSuffix(strings.ToLower(b.Type), "trigger") {
				return fmt.Errorf("devhost: function %s: trigger type %q is not supported (timerTrigger, queueTrigger, httpTrigger are)", fn.Name, b.Type)
			}
			return fmt.Errorf("devhost: function %s: input binding %q of type %q is not supported", fn.Name, b.Name, b.Type)
		}
		triggers++
	}
	if triggers != 1 {
		return fmt.Errorf("devhost: function %s: want exactly one trigger binding, found %d", fn.Name, triggers)
	}
	return nil
}

var settingRef = regexp.MustCompile(`%([^%\s]+)%`)

// expand replaces %Setting% references with app settings, as the host's
// binding expressions do (§6.1, §6.2).
func (h *Host) expand(what, s string) (string, error) {
	var missing []string
	out := settingRef.ReplaceAllStringFunc(s, func(m string) string {
		name := m[1 : len(m)-1]
		v, ok := h.opts.LookupEnv(name)
		if !ok || v == "" {
			missing = append(missing, name)
		}
		return v
	})
	if len(missing) > 0 {
		return "", fmt.Errorf("%s %q: app setting %s is not set: set it in the environment or local.settings.json", what, s, strings.Join(missing, ", "))
	}
	return out, nil
}

// Addr is where the HTTP routes listen; empty until Run has bound it.
func (h *Host) Addr() string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.addr
}

// Run serves the handler, the timers, the queue listeners and the HTTP
// routes until ctx ends; then it stops polling and firing, lets in-flight
// invocations finish for the grace period, cancels the rest (their queue
// messages are released, not deleted) and returns nil.
func (h *Host) Run(ctx context.Context) error {
	// The handler, on a private loopback port (§3).
	hln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return fmt.Errorf("devhost: listen for the handler: %w", err)
	}
	h.invCtx, h.cancelInv = context.WithCancel(context.WithoutCancel(ctx))
	defer h.cancelInv()
	handlerSrv := &http.Server{Handler: h.opts.Handler, ReadHeaderTimeout: 10 * time.Second,
		ErrorLog: slog.NewLogLogger(h.log.Handler(), slog.LevelWarn)}
	go func() { _ = handlerSrv.Serve(hln) }()
	defer handlerSrv.Close()
	h.baseURL = "http://" + hln.Addr().String()
	h.client = &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64, DisableCompression: true}}
	defer h.client.CloseIdleConnections()

	// The public HTTP routes.
	ln := h.opts.Listener
	if ln == nil {
		if ln, err = net.Listen("tcp", h.opts.Addr); err != nil {
			return fmt.Errorf("devhost: listen on %s: %w", h.opts.Addr, err)
		}
	}
	h.mu.Lock()
	h.addr = ln.Addr().String()
	h.mu.Unlock()
	front := &http.Server{Handler: http.HandlerFunc(h.serveHTTP), ReadHeaderTimeout: 10 * time.Second,
		ErrorLog: slog.NewLogLogger(h.log.Handler(), slog.LevelWarn)}
	frontErr := make(chan error, 1)
	go func() { frontErr <- front.Serve(ln) }()

	h.logStartup()

	var loops sync.WaitGroup
	for _, t := range h.timers {
		loops.Go(func() { t.run(ctx) })
	}
	for _, q := range h.queues {
		loops.Go(func() { q.run(ctx) })
	}

	var runErr error
	select {
	case <-ctx.Done():
	case err := <-frontErr:
		runErr = fmt.Errorf("devhost: serve on %s: %w", h.Addr(), err)
	}
	h.log.Info("devhost stopping: no new invocations; waiting for running ones", "grace", h.opts.Grace.String())

	// Stop accepting; running HTTP invocations finish within the grace.
	shutdownDone := make(chan struct{})
	go func() {
		sctx, cancel := context.WithTimeout(context.Background(), h.opts.Grace)
		defer cancel()
		_ = front.Shutdown(sctx)
		close(shutdownDone)
	}()
	// Timers and pollers stop at once; the invocations they started run on.
	allDone := make(chan struct{})
	go func() {
		loops.Wait()
		h.inflight.Wait()
		<-shutdownDone
		close(allDone)
	}()
	grace := time.NewTimer(h.opts.Grace)
	defer grace.Stop()
	select {
	case <-allDone:
	case <-grace.C:
		h.log.Warn("devhost: invocations still running after the grace period; cancelling them (their queue messages are released, not deleted)")
		h.cancelInv()
		select {
		case <-allDone:
		case <-time.After(30 * time.Second):
			h.log.Error("devhost: invocations did not end after cancellation; exiting anyway")
		}
	}
	_ = front.Close()
	h.log.Info("devhost stopped")
	return runErr
}

func (h *Host) logStartup() {
	var fns []string
	for _, t := range h.timers {
		fns = append(fns, fmt.Sprintf("%s: timerTrigger %q", t.fn, t.sched))
	}
	for _, q := range h.queues {
		fns = append(fns, fmt.Sprintf("%s: queueTrigger %s", q.fn, q.queue))
	}
	for _, r := range h.routes {
		fns = append(fns, fmt.Sprintf("%s: httpTrigger [%s] http://%s%s (auth %s)", r.fn, strings.Join(r.methodList(), ","), h.Addr(), r.template, r.authLevel))
	}
	auth := "function key required"
	if h.key == "" {
		auth = "open (loopback, no " + KeyEnv + ")"
	}
	h.log.Info("devhost started", "addr", h.Addr(), "functions", fns, "httpAuth", auth,
		"batchSize", h.settings.Queues.BatchSize, "maxDequeueCount", h.settings.Queues.MaxDequeueCount,
		"maxPollingInterval", h.settings.Queues.MaxPollingInterval.String())
}

// ---- invoking the handler (§3, §4, §5) ----

// reply is the handler's answer to an invocation.
type reply struct {
	Status      int
	Outputs     map[string]json.RawMessage
	Logs        []string
	ReturnValue json.RawMessage
}

// invoke POSTs payload to /<function> as the host does (§3 headers, §4
// body) and judges the answer as the host does (§5): 2xx, a JSON content
// type and a parseable body, or the invocation failed.
func (h *Host) invoke(ctx context.Context, fn string, payload any) (reply, error) {
	body, err := marshal(payload)
	if err != nil {
		return reply{}, fmt.Errorf("encode the %s payload: %w", fn, err)
	}
	if t := h.settings.FunctionTimeout; t > 0 {
		// The host's HttpClient timeout is functionTimeout + 1 min (§2.3).
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, t+time.Minute)
		defer cancel()
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, h.baseURL+"/"+fn, bytes.NewReader(body))
	if err != nil {
		return reply{}, err
	}
	req.Header.Set("Content-Type", "application/json; charset=utf-8")
	req.Header.Set("X-Azure-Functions-InvocationId", newGUID())
	req.Header.Set("X-Azure-Functions-HostVersion", HostVersion)
	req.Header.Set("User-Agent", "Azure-Functions-Host/"+HostVersion)
	resp, err := h.client.Do(req)
	if err != nil {
		return reply{}, fmt.Errorf("call handler /%s: %w", fn, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	r := reply{Status: resp.StatusCode}
	if err != nil {
		return r, fmt.Errorf("read handler /%s answer: %w", fn, err)
	}
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return r, fmt.Errorf("handler answered %d: %s", resp.StatusCode, clip(data, 300))
	}
	if ct := resp.Header.Get("Content-Type"); !strings.Contains(strings.ToLower(ct), "json") {
		return r, fmt.Errorf("handler answered %d with Content-Type %q, not application/json (§5: the host fails the invocation)", resp.StatusCode, ct)
	}
	var w struct {
		Outputs     map[string]json.RawMessage `json:"Outputs"`
		Logs        []string                   `json:"Logs"`
		ReturnValue json.RawMessage            `json:"ReturnValue"`
	}
	t := bytes.TrimSpace(data)
	if len(t) == 0 || string(t) == "null" {
		return r, fmt.Errorf("handler answered %d with an empty body (§5: the real host would never complete this invocation)", resp.StatusCode)
	}
	if err := json.Unmarshal(t, &w); err != nil {
		return r, fmt.Errorf("handler answered %d with a body that is not {\"Outputs\",\"Logs\",\"ReturnValue\"}: %v", resp.StatusCode, err)
	}
	r.Outputs, r.Logs, r.ReturnValue = w.Outputs, w.Logs, w.ReturnValue
	return r, nil
}

// logInvocation writes the one console line of an invocation.
func (h *Host) logInvocation(fn, trigger string, began time.Time, outcome string, r reply, err error, attrs ...slog.Attr) {
	level := slog.LevelInfo
	all := []slog.Attr{
		slog.String("function", fn),
		slog.String("trigger", trigger),
		slog.Int64("durationMs", time.Since(began).Milliseconds()),
		slog.String("outcome", outcome),
	}
	if r.Status != 0 {
		all = append(all, slog.Int("status", r.Status))
	}
	all = append(all, attrs...)
	if len(r.Logs) > 0 {
		all = append(all, slog.Any("logs", r.Logs))
	}
	if err != nil {
		all = append(all, slog.String("error", err.Error()))
		level = slog.LevelWarn
	}
	h.log.LogAttrs(context.Background(), level, "invocation", all...)
}

// sys is Metadata.sys (§4).
type sys struct {
	MethodName string `json:"MethodName"`
	UtcNow     string `json:"UtcNow"`
	RandGuid   string `json:"RandGuid"`
}

func (h *Host) sys(fn string) sys {
	return sys{MethodName: fn, UtcNow: h.now().UTC().Format("2006-01-02T15:04:05.0000000Z"), RandGuid: newGUID()}
}

// dotnetTime formats t as the host serializes a DateTimeOffset (§4, §7):
// "2025-06-01T10:00:00.0061234+00:00", trailing zero digits dropped.
func dotnetTime(t time.Time) string {
	if t.IsZero() {
		return "0001-01-01T00:00:00+00:00"
	}
	return t.UTC().Format("2006-01-02T15:04:05.9999999-07:00")
}

// marshal encodes v as the host's Newtonsoft does: no HTML escaping.
func marshal(v any) ([]byte, error) {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return nil, err
	}
	return bytes.TrimRight(b.Bytes(), "\n"), nil
}

// hostString is a .NET string as the host puts it in Data or Metadata:
// JsonConvert.SerializeObject(s), which the body's serialization encodes
// once more (§4: "doubly encoded").
func hostString(s string) string {
	b, _ := marshal(s)
	return string(b)
}

// newGUID returns a random (version 4) GUID.
func newGUID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	x := hex.EncodeToString(b[:])
	return x[0:8] + "-" + x[8:12] + "-" + x[12:16] + "-" + x[16:20] + "-" + x[20:]
}

func clip(b []byte, n int) string {
	s := strings.TrimSpace(string(b))
	if len(s) > n {
		return s[:n] + "…"
	}
	return s
}

// isLoopback reports whether addr (host:port) only accepts local
// connections; an empty host or 0.0.0.0 means every interface.
func isLoopback(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		host = addr
	}
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(strings.Trim(host, "[]"))
	return ip != nil && ip.IsLoopback()
}

// sleep waits d or until ctx ends; false when ctx ended.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
