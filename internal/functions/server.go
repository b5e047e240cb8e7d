package functions

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"runtime/debug"
	"strings"
	"sync"
	"time"

	"github.com/go-chi/chi/v5"

	"github.com/sluicehq/sluice/internal/azstore"
	"github.com/sluicehq/sluice/internal/config"
	"github.com/sluicehq/sluice/internal/engine"
)

// Reader runs one read pass over every pipeline (the timer's work, DESIGN
// §4 Read). Its result is summarised in the invocation's Logs.
type Reader interface {
	ReadAll(ctx context.Context) (any, error)
}

// ReaderFunc adapts a function to Reader.
type ReaderFunc func(ctx context.Context) (any, error)

// ReadAll calls f.
func (f ReaderFunc) ReadAll(ctx context.Context) (any, error) { return f(ctx) }

// DrainFunc drains one destination; (*engine.Drainer).Drain fits.
type DrainFunc func(ctx context.Context, req engine.DrainRequest) (engine.DrainResult, error)

// ReplayFunc rewinds one destination. Nil in Deps means engine.Replay on
// Deps.Store.
type ReplayFunc func(ctx context.Context, req engine.ReplayRequest) (engine.ReplayResult, error)

// StatusFunc reports the pipelines (all when only is ""). Nil in Deps means
// engine.Status on Deps.Store.
type StatusFunc func(ctx context.Context, only string) ([]engine.PipelineStatus, error)

// StoreFunc returns the storage, opening it on first use; see OpenOnce.
type StoreFunc func(ctx context.Context) (*azstore.Store, error)

// OpenOnce makes open lazy and shared: the first successful call's store is
// kept and every later call gets it; a failed open is tried again on the
// next call. Opening storage touches the network, so the handler must not
// wait for it before it listens (§3 readiness).
func OpenOnce(open StoreFunc) StoreFunc {
	var (
		mu sync.Mutex
		st *azstore.Store
	)
	return func(ctx context.Context) (*azstore.Store, error) {
		mu.Lock()
		defer mu.Unlock()
		if st != nil {
			return st, nil
		}
		s, err := open(ctx)
		if err != nil {
			return nil, err
		}
		st = s
		return st, nil
	}
}

// Deps is what the handler needs. Config and Drain are required for write,
// Reader for read, Store (or Replay and Status) for replay and status; a
// missing one fails only the functions that need it.
type Deps struct {
	Config *config.Config
	Store  StoreFunc
	Reader Reader
	Drain  DrainFunc
	Replay ReplayFunc
	Status StatusFunc
	// Now is the clock for deadlines and audit entries; default time.Now.
	Now func() time.Time
	// Logger gets one line per invocation; default JSON on stdout (stderr
	// lines are logged by the host as errors, §2.3).
	Logger *slog.Logger
	// FunctionTimeout is host.json functionTimeout (0: DefaultFunctionTimeout,
	// Unbounded: no limit).
	FunctionTimeout time.Duration
	// MaxDequeueCount is host.json extensions.queues.maxDequeueCount
	// (0: DefaultMaxDequeueCount).
	MaxDequeueCount int
}

// maxBody bounds an invocation body: queue messages are at most 64 KiB and
// replay bodies are tiny; the envelope adds little (§8).
const maxBody = 4 << 20

// handoverMargin is how long before the host's functionTimeout a drain
// must have handed over (DESIGN §4 Write 3).
const handoverMargin = 60 * time.Second

type server struct {
	d Deps
}

// NewHandler returns the custom handler: GET / for readiness and
// POST /<FunctionName> for read, write, replay and status (§1: forwarding
// is off, so every function gets the JSON payload at its name). It is safe
// for concurrent invocations.
func NewHandler(deps Deps) http.Handler {
	if deps.Now == nil {
		deps.Now = time.Now
	}
	if deps.Logger == nil {
		deps.Logger = slog.New(slog.NewJSONHandler(os.Stdout, nil))
	}
	if deps.FunctionTimeout == 0 {
		deps.FunctionTimeout = DefaultFunctionTimeout
	}
	if deps.MaxDequeueCount <= 0 {
		deps.MaxDequeueCount = DefaultMaxDequeueCount
	}
	s := &server{d: deps}
	r := chi.NewRouter()
	// §3: the host polls GET / until anything answers.
	r.Get("/", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, `{"status":"ready"}`)
	})
	r.Post("/read", s.function("read", false, s.read))
	r.Post("/write", s.function("write", false, s.write))
	r.Post("/replay", s.function("replay", true, s.replay))
	r.Post("/status", s.function("status", true, s.status))
	r.NotFound(func(w http.ResponseWriter, r *http.Request) {
		writeReply(w, http.StatusNotFound, Response{Logs: []string{"no function at " + r.URL.Path}})
	})
	r.MethodNotAllowed(func(w http.ResponseWriter, r *http.Request) {
		writeReply(w, http.StatusMethodNotAllowed, Response{Logs: []string{r.Method + " not allowed at " + r.URL.Path + ": the host POSTs invocations"}})
	})
	return r
}

// outcome is what one invocation came to.
type outcome struct {
	status  int // to the host
	outputs map[string]any
	logs    []string
	result  string // a word for the log line: drained, unknown, retry, ...
	attrs   []slog.Attr
	err     error
}

type invokeFunc func(ctx context.Context, inv Invocation, start time.Time) outcome

// function wraps a function's body: it reads and decodes the invocation,
// bounds it by the function timeout, turns a panic into a failure, answers
// the host (§5) and writes the invocation's one log line.
func (s *server) function(name string, isHTTP bool, fn invokeFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		began := time.Now()
		start := s.d.Now()
		ctx := r.Context()
		if s.d.FunctionTimeout > 0 {
			var cancel context.CancelFunc
			ctx, cancel = context.WithTimeout(ctx, s.d.FunctionTimeout)
			defer cancel()
		}
		out := s.run(ctx, name, isHTTP, r, start, fn)
		if err := checkOutputs(out.outputs); err != nil {
			out = outcome{status: http.StatusInternalServerError, result: "bad-output", err: err}
		}
		logs := out.logs
		if res, ok := out.outputs[ResponseOutput].(HTTPResponse); ok && len(logs) == 0 {
			logs = []string{fmt.Sprintf("%s: %d %s", name, res.StatusCode, truncate(res.Body, 500))}
		}
		if out.status >= 300 && out.err != nil && len(logs) == 0 {
			logs = []string{name + ": " + out.err.Error()}
		}
		writeReply(w, out.status, Response{Outputs: out.outputs, Logs: logs})
		s.logInvocation(name, r.Header.Get("X-Azure-Functions-InvocationId"), began, out)
	}
}

func (s *server) run(ctx context.Context, name string, isHTTP bool, r *http.Request, start time.Time, fn invokeFunc) (out outcome) {
	defer func() {
		if p := recover(); p != nil {
			err := fmt.Errorf("panic: %v\n%s", p, debug.Stack())
			out = outcome{status: http.StatusInternalServerError, result: "panic", err: err}
			if isHTTP {
				out = httpOutcome(http.StatusInternalServerError, map[string]string{"error": "internal error"}, "panic")
				out.err = err
			}
		}
	}()
	body, err := io.ReadAll(http.MaxBytesReader(nil, r.Body, maxBody))
	var inv Invocation
	if err == nil {
		inv, err = DecodeInvocation(body)
	}
	if err != nil {
		err = fmt.Errorf("%s: read the invocation: %w", name, err)
		if isHTTP {
			return httpError(http.StatusBadRequest, err.Error(), "bad-request")
		}
		return outcome{status: http.StatusInternalServerError, result: "bad-invocation", err: err}
	}
	return fn(ctx, inv, start)
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}

// writeReply answers the host (§5): always application/json, always a full
// {"Outputs","Logs","ReturnValue"} object, never an empty body.
func writeReply(w http.ResponseWriter, status int, r Response) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_, _ = w.Write(encodeResponse(r))
}

func (s *server) logInvocation(name, id string, began time.Time, out outcome) {
	level := slog.LevelInfo
	attrs := []slog.Attr{
		slog.String("function", name),
		slog.String("invocationId", id),
		slog.Int64("durationMs", time.Since(began).Milliseconds()),
		slog.Int("status", out.status),
		slog.String("outcome", out.result),
	}
	if res, ok := out.outputs[ResponseOutput].(HTTPResponse); ok {
		attrs = append(attrs, slog.Int("httpStatus", res.StatusCode))
		if res.StatusCode >= 500 {
			level = slog.LevelError
		} else if res.StatusCode >= 400 {
			level = slog.LevelWarn
		}
	}
	if out.status >= 500 {
		level = slog.LevelError
	}
	attrs = append(attrs, out.attrs...)
	if out.err != nil {
		attrs = append(attrs, slog.String("error", out.err.Error()))
		level = max(level, slog.LevelWarn)
	}
	s.d.Logger.LogAttrs(context.Background(), level, "invocation", attrs...)
}

// drainDeadline is when a drain must have handed over: the invocation's
// start plus functionTimeout minus a minute (DESIGN §4 Write 3), but never
// less than half the timeout, so a short timeout still leaves room to work.
// Zero (no deadline) when the timeout is unbounded.
func (s *server) drainDeadline(start time.Time) time.Time {
	ft := s.d.FunctionTimeout
	if ft <= 0 {
		return time.Time{}
	}
	return start.Add(max(ft-handoverMargin, ft/2))
}

// ---- read (§7.1) ----

func (s *server) read(ctx context.Context, inv Invocation, _ time.Time) outcome {
	var attrs []slog.Attr
	ti, err := DecodeTimer(inv, TimerBinding)
	if err != nil {
		// The timer's payload carries nothing the read pass needs.
		attrs = append(attrs, slog.String("timerDecode", err.Error()))
	}
	attrs = append(attrs, slog.Bool("pastDue", ti.IsPastDue))
	if s.d.Reader == nil {
		return outcome{status: http.StatusInternalServerError, result: "not-wired", attrs: attrs,
			err: errors.New("read: no read pass is wired into this handler")}
	}
	res, err := s.d.Reader.ReadAll(ctx)
	if err != nil {
		// §7.1: a failed timer run is not retried; 500 makes the host log it.
		return outcome{status: http.StatusInternalServerError, result: "failed", attrs: attrs,
			logs: []string{"read failed: " + err.Error()}, err: err}
	}
	return outcome{status: http.StatusOK, result: "done", attrs: attrs, logs: []string{"read: " + summary(res)}}
}

// summary renders a result as one JSON line for Logs.
func summary(v any) string {
	if v == nil {
		return "done"
	}
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Sprint(v)
	}
	return string(b)
}

// ---- write (§7.2, DESIGN §4 Write) ----

func (s *server) write(ctx context.Context, inv Invocation, start time.Time) outcome {
	msg, err := DecodeQueue(inv, QueueBinding)
	if err != nil {
		// Fail: the host retries, then moves the message to sluice-write-poison,
		// which so holds only messages that could not be read (DESIGN §4 Write 4).
		return outcome{status: http.StatusInternalServerError, result: "unreadable", err: err}
	}
	attrs := []slog.Attr{slog.String("messageId", msg.ID), slog.Int64("dequeueCount", msg.DequeueCount)}
	wu, err := DecodeWakeUp(msg.Text)
	if err != nil {
		return outcome{status: http.StatusInternalServerError, result: "unreadable", attrs: attrs, err: err}
	}
	attrs = append(attrs, slog.String("pipeline", wu.Pipeline), slog.String("destination", wu.Destination), slog.Int64("head", wu.Head))
	if s.d.Config == nil {
		return outcome{status: http.StatusInternalServerError, result: "not-wired", attrs: attrs, err: errors.New("write: no configuration loaded")}
	}
	p, err := s.d.Config.Pipeline(wu.Pipeline)
	var d *config.Destination
	if err == nil {
		d, err = p.Destination(wu.Destination)
	}
	if err != nil {
		// Complete it: retrying cannot make an unknown destination known, and
		// the poison queue is for unreadable messages only.
		return outcome{status: http.StatusOK, result: "unknown", attrs: attrs, err: err,
			logs: []string{fmt.Sprintf("write %s/%s: skipped: %v", wu.Pipeline, wu.Destination, err)}}
	}
	if s.d.Drain == nil {
		return outcome{status: http.StatusInternalServerError, result: "not-wired", attrs: attrs, err: errors.New("write: no drain is wired into this handler")}
	}
	last := msg.DequeueCount >= int64(s.d.MaxDequeueCount)
	attrs = append(attrs, slog.Bool("lastAttempt", last))
	res, err := s.d.Drain(ctx, engine.DrainRequest{
		Pipeline:    p,
		Destination: d,
		Head:        wu.Head,
		Deadline:    s.drainDeadline(start),
		LastAttempt: last, // DESIGN §4 Write 4
	})
	attrs = append(attrs, slog.Int64("from", res.From), slog.Int64("to", res.To), slog.Int64("applied", res.Applied), slog.Int64("deadLettered", res.DeadLettered))
	if err != nil {
		// The host releases the message and retries it (§7.2).
		return outcome{status: http.StatusInternalServerError, result: "retry", attrs: attrs, err: err,
			logs: []string{fmt.Sprintf("write %s/%s failed: %v", wu.Pipeline, wu.Destination, err)}}
	}
	if res.Error != "" {
		attrs = append(attrs, slog.String("drainError", res.Error))
	}
	return outcome{status: http.StatusOK, result: string(res.Outcome), attrs: attrs,
		logs: []string{fmt.Sprintf("write %s/%s: %s", wu.Pipeline, wu.Destination, summary(res))}}
}

// ---- replay (§7.3, DESIGN §3.5) ----

// httpOutcome answers an HTTP function: 200 to the host, the caller's
// status and JSON body in Outputs.res (§7.3).
func httpOutcome(status int, v any, result string) outcome {
	return outcome{status: http.StatusOK, result: result, outputs: map[string]any{ResponseOutput: JSONResponse(status, v)}}
}

// httpError answers an HTTP function with {"error": msg}; msg is logged too.
func httpError(status int, msg, result string) outcome {
	return outcome{status: http.StatusOK, result: result, outputs: map[string]any{ResponseOutput: ErrorResponse(status, msg)},
		err: errors.New(msg)}
}

// replayBody is the replay function's request body (DESIGN §3.5).
type replayBody struct {
	From    *string  `json:"from"`
	FromSeq *flexInt `json:"fromSeq"`
	DryRun  flexBool `json:"dryRun"`
}

// parseReplayBody reads {"from":"RFC3339"} or {"fromSeq":N} with an
// optional "dryRun". Unknown keys are refused: a misspelt "dryRun" must not
// turn a dry run into a real rewind.
func parseReplayBody(body []byte) (from time.Time, fromSeq int64, dryRun bool, err error) {
	var b replayBody
	if t := bytes.TrimSpace(body); len(t) > 0 && string(t) != "null" {
		dec := json.NewDecoder(bytes.NewReader(t))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&b); err != nil {
			return from, 0, false, fmt.Errorf(`body must be {"from":"RFC3339"} or {"fromSeq":N}, optionally with "dryRun":true: %v`, err)
		}
		if dec.More() {
			return from, 0, false, errors.New("body holds more than one JSON value")
		}
	}
	switch {
	case b.From != nil && b.FromSeq != nil:
		return from, 0, false, errors.New(`give one of "from" and "fromSeq", not both`)
	case b.From == nil && b.FromSeq == nil:
		return from, 0, false, errors.New(`give "from" (an RFC 3339 time) or "fromSeq" (a sequence number)`)
	case b.From != nil:
		from, err = time.Parse(time.RFC3339Nano, *b.From)
		if err != nil {
			return from, 0, false, fmt.Errorf(`"from" %q is not an RFC 3339 time such as 2026-11-25T08:00:00Z`, *b.From)
		}
	default:
		fromSeq = int64(*b.FromSeq)
		if fromSeq < 1 {
			return from, 0, false, fmt.Errorf(`"fromSeq" %d must be 1 or more`, fromSeq)
		}
	}
	return from, fromSeq, bool(b.DryRun), nil
}

func (s *server) replay(ctx context.Context, inv Invocation, start time.Time) outcome {
	req, err := DecodeHTTP(inv, RequestBinding)
	if err != nil {
		return httpError(http.StatusBadRequest, err.Error(), "bad-request")
	}
	pn, dn := req.Param("pipeline"), req.Param("destination")
	attrs := []slog.Attr{slog.String("pipeline", pn), slog.String("destination", dn)}
	with := func(o outcome) outcome { o.attrs = append(attrs, o.attrs...); return o }
	if pn == "" || dn == "" {
		return with(httpError(http.StatusBadRequest, "the route is /api/replay/{pipeline}/{destination}", "bad-request"))
	}
	if s.d.Config == nil {
		return with(httpError(http.StatusInternalServerError, "no configuration loaded", "not-wired"))
	}
	p, err := s.d.Config.Pipeline(pn)
	var d *config.Destination
	if err == nil {
		d, err = p.Destination(dn)
	}
	if err != nil {
		return with(httpError(http.StatusNotFound, err.Error(), "unknown"))
	}
	from, fromSeq, dryRun, err := parseReplayBody(req.Body)
	if err != nil {
		return with(httpError(http.StatusBadRequest, err.Error(), "bad-request"))
	}
	by := req.Caller()
	attrs = append(attrs, slog.String("by", by), slog.Bool("dryRun", dryRun))
	replay := s.d.Replay
	if replay == nil {
		replay = func(ctx context.Context, r engine.ReplayRequest) (engine.ReplayResult, error) {
			st, err := s.store(ctx)
			if err != nil {
				return engine.ReplayResult{}, err
			}
			return engine.Replay(ctx, st, r, start)
		}
	}
	res, err := replay(ctx, engine.ReplayRequest{Pipeline: p, Destination: d, From: from, FromSeq: fromSeq, DryRun: dryRun, By: by})
	attrs = append(attrs, slog.Int64("fromSeq", res.FromSeq), slog.Int64("toSeq", res.ToSeq), slog.Int64("records", res.Records))
	switch {
	case errors.Is(err, engine.ErrBadRequest):
		return with(httpError(http.StatusBadRequest, err.Error(), "bad-request"))
	case err != nil && res != (engine.ReplayResult{}):
		// Rewound, but the wake-up was not enqueued: the rewind stands and
		// the next read tick wakes the writer, so report success with the
		// reason rather than invite a second rewind.
		o := with(httpOutcome(http.StatusOK, replayAnswer{ReplayResult: res, Warning: err.Error()}, "rewound"))
		o.err = err
		return o
	case err != nil:
		return with(httpError(http.StatusInternalServerError, err.Error(), "failed"))
	}
	result := "rewound"
	if dryRun {
		result = "dry-run"
	}
	return with(httpOutcome(http.StatusOK, replayAnswer{ReplayResult: res}, result))
}

// replayAnswer is the replay function's JSON: {fromSeq, toSeq, records,
// dryRun, generation} and, when the rewind stands but something after it
// failed, a warning.
type replayAnswer struct {
	engine.ReplayResult
	Warning string `json:"warning,omitempty"`
}

func (s *server) store(ctx context.Context) (*azstore.Store, error) {
	if s.d.Store == nil {
		return nil, errors.New("no storage is wired into this handler")
	}
	return s.d.Store(ctx)
}

// ---- status (DESIGN §3.5) ----

func (s *server) status(ctx context.Context, inv Invocation, start time.Time) outcome {
	req, err := DecodeHTTP(inv, RequestBinding)
	if err != nil {
		return httpError(http.StatusBadRequest, err.Error(), "bad-request")
	}
	only := strings.TrimSpace(req.Param("pipeline"))
	attrs := []slog.Attr{slog.String("pipeline", only)}
	with := func(o outcome) outcome { o.attrs = append(attrs, o.attrs...); return o }
	if s.d.Config == nil {
		return with(httpError(http.StatusInternalServerError, "no configuration loaded", "not-wired"))
	}
	if only != "" {
		if _, err := s.d.Config.Pipeline(only); err != nil {
			return with(httpError(http.StatusNotFound, err.Error(), "unknown"))
		}
	}
	status := s.d.Status
	if status == nil {
		status = func(ctx context.Context, only string) ([]engine.PipelineStatus, error) {
			st, err := s.store(ctx)
			if err != nil {
				return nil, err
			}
			return engine.Status(ctx, st, s.d.Config, only, start)
		}
	}
	ps, err := status(ctx, only)
	if err != nil {
		return with(httpError(http.StatusInternalServerError, err.Error(), "failed"))
	}
	if ps == nil {
		ps = []engine.PipelineStatus{}
	}
	// The same document as `sluice status --json`.
	return with(httpOutcome(http.StatusOK, map[string]any{"pipelines": ps}, "done"))
}
