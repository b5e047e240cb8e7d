package functions_test

// Contract tests: the exact payload shapes of
// reference/azure-functions-custom-handler.md (§7.1-§7.3), posted to a real
// HTTP server running NewHandler, and every reply checked against what the
// host accepts (§5).

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sluicehq/sluice/internal/config"
	"github.com/sluicehq/sluice/internal/engine"
	"github.com/sluicehq/sluice/internal/functions"
)

var t0 = time.Date(2026, 11, 25, 8, 0, 0, 0, time.UTC)

// Secrets the fixtures carry; they must never reach a log or a reply.
const (
	secretKey  = "k3y-SECRET-do-not-log=="
	secretCode = "c0de-SECRET-do-not-log"
)

// ---- fixtures, copied from the reference and given sluice's names ----

// §7.1, binding renamed myTimer → timer (functions/read/function.json).
const timerWithStatus = `{
  "Data": {
    "timer": {
      "Schedule": { "AdjustForDST": true },
      "ScheduleStatus": {
        "Last": "2025-06-01T09:55:00.0061234+00:00",
        "Next": "2025-06-01T10:00:00+00:00",
        "LastUpdated": "2025-06-01T09:55:00.0061234+00:00"
      },
      "IsPastDue": false
    }
  },
  "Metadata": {
    "sys": { "MethodName": "read", "UtcNow": "2025-06-01T10:00:00.0123456Z", "RandGuid": "8d6c0a0e-5d5f-4b0e-8f0e-3a1c2b4d5e6f" }
  }
}`

// §7.1: ScheduleStatus is null when useMonitor is false.
const timerNullStatus = `{"Data":{"timer":{"Schedule":{"AdjustForDST":true},"ScheduleStatus":null,"IsPastDue":false}},
 "Metadata":{"sys":{"MethodName":"read","UtcNow":"2025-06-01T10:00:00.0123456Z","RandGuid":"8d6c0a0e-5d5f-4b0e-8f0e-3a1c2b4d5e6f"}}}`

// §7.1: the first-ever run, past due after downtime.
const timerFirstRunPastDue = `{"Data":{"timer":{"Schedule":{"AdjustForDST":true},"ScheduleStatus":{"Last":"0001-01-01T00:00:00+00:00","Next":"2025-06-01T10:00:00","LastUpdated":"0001-01-01T00:00:00+00:00"},"IsPastDue":true}},"Metadata":{}}`

// §7.1 manual run: POST /admin/functions/read {"input":""}.
const timerManual = `{"Data":{"timer":""},"Metadata":{}}`

// queueInvocation is §7.2's payload: msg is the message text JSON-encoded
// twice, DequeueCount a string, Id and PopReceipt quoted twice, and the
// message body's top-level keys copied into Metadata.
func queueInvocation(msgValue, dequeueCount string) string {
	return `{
  "Data": {
    "msg": ` + msgValue + `
  },
  "Metadata": {
    "DequeueCount": ` + dequeueCount + `,
    "ExpirationTime": "2025-06-08T10:00:00+00:00",
    "Id": "\"5b1c6f5e-9a4e-4f0e-9f8e-2a3a1f0e1c11\"",
    "InsertionTime": "2025-06-01T10:00:00+00:00",
    "NextVisibleTime": "2025-06-01T10:10:00+00:00",
    "PopReceipt": "\"AgAAAAMAAAAAAAAAAgtnj8x+1QE=\"",
    "pipeline": "\"contracts\"",
    "destination": "\"warehouse\"",
    "sys": { "MethodName": "write", "UtcNow": "2025-06-01T10:00:00.1234567Z", "RandGuid": "8d6c0a0e-5d5f-4b0e-8f0e-3a1c2b4d5e6f" }
  }
}`
}

// doubleEncoded is what the host does to a string (§4): SerializeObject,
// then serialized again on the wire.
func doubleEncoded(s string) string {
	once, _ := json.Marshal(s)
	twice, _ := json.Marshal(string(once))
	return string(twice)
}

func singleEncoded(s string) string {
	once, _ := json.Marshal(s)
	return string(once)
}

const wakeUp = `{"pipeline":"contracts","destination":"warehouse","head":42}`

// httpInvocation is §7.3's payload for a route with params; body is the
// raw JSON value of Body ("" leaves it out, as the host does for an empty
// request).
func httpInvocation(url string, params map[string]string, body string) string {
	p, _ := json.Marshal(params)
	bodyField := ""
	if body != "" {
		bodyField = `,
      "Body": ` + body
	}
	return `{
  "Data": {
    "req": {
      "Url": "` + url + `?code=` + secretCode + `",
      "Method": "POST",
      "Query": { "code": "` + secretCode + `" },
      "Headers": {
        "Content-Type": ["application/json"],
        "x-functions-key": ["` + secretKey + `"],
        "Host": ["myapp.azurewebsites.net"]
      },
      "Params": ` + string(p) + `,
      "Identities": [
        {
          "AuthenticationType": "WebJobsAuthLevel",
          "IsAuthenticated": true,
          "Actor": null, "BootstrapContext": null, "Label": null, "Name": null,
          "NameClaimType": "http://schemas.xmlsoap.org/ws/2005/05/identity/claims/name",
          "RoleClaimType": "http://schemas.microsoft.com/ws/2008/06/identity/claims/role",
          "Claims": [
            { "Type": "http://schemas.microsoft.com/2017/07/functions/claims/authlevel", "Value": "Function", "ValueType": "http://www.w3.org/2001/XMLSchema#string", "Issuer": "LOCAL AUTHORITY", "OriginalIssuer": "LOCAL AUTHORITY", "Properties": {} },
            { "Type": "http://schemas.microsoft.com/2017/07/functions/claims/invoke", "Value": "true", "...": "..." },
            { "Type": "http://schemas.microsoft.com/2017/07/functions/claims/keyid", "Value": "default", "...": "..." }
          ]
        }
      ]` + bodyField + `
    }
  },
  "Metadata": { "code": "\"` + secretCode + `\"", "sys": { "MethodName": "replay", "UtcNow": "2025-06-01T10:00:00.1234567Z", "RandGuid": "x" } }
}`
}

const replayURL = "https://myapp.azurewebsites.net/api/replay/contracts/warehouse"

func replayInvocation(body string) string {
	return httpInvocation(replayURL, map[string]string{"pipeline": "contracts", "destination": "warehouse"}, body)
}

// ---- fakes ----

type fakes struct {
	mu      sync.Mutex
	drains  []engine.DrainRequest
	replays []engine.ReplayRequest
	status  []string
	reads   int
	discard bool // record nothing (fuzzing)

	drainErr  error
	readErr   error
	replayErr error
	replayRes engine.ReplayResult
}

func (f *fakes) deps(logs io.Writer) functions.Deps {
	cfg := &config.Config{File: "sluice.yaml", Pipelines: []config.Pipeline{
		{Name: "contracts", Destinations: []config.Destination{{Name: "warehouse", Type: "sql"}, {Name: "hook", Type: "http"}}},
		{Name: "orders", Destinations: []config.Destination{{Name: "bus", Type: "servicebus"}}},
	}}
	return functions.Deps{
		Config: cfg,
		Reader: functions.ReaderFunc(func(ctx context.Context) (any, error) {
			f.mu.Lock()
			defer f.mu.Unlock()
			f.reads++
			if f.readErr != nil {
				return nil, f.readErr
			}
			return map[string]int{"pipelines": 2, "records": 7}, nil
		}),
		Drain: func(ctx context.Context, req engine.DrainRequest) (engine.DrainResult, error) {
			f.mu.Lock()
			defer f.mu.Unlock()
			if !f.discard {
				f.drains = append(f.drains, req)
			}
			if f.drainErr != nil {
				return engine.DrainResult{}, f.drainErr
			}
			return engine.DrainResult{Outcome: engine.OutcomeDrained, From: 10, To: req.Head, Head: req.Head, Applied: req.Head - 10}, nil
		},
		Replay: func(ctx context.Context, req engine.ReplayRequest) (engine.ReplayResult, error) {
			f.mu.Lock()
			defer f.mu.Unlock()
			if !f.discard {
				f.replays = append(f.replays, req)
			}
			if f.replayErr != nil {
				return f.replayRes, f.replayErr
			}
			return engine.ReplayResult{FromSeq: 5, ToSeq: 42, Records: 38, DryRun: req.DryRun, Generation: 1}, nil
		},
		Status: func(ctx context.Context, only string) ([]engine.PipelineStatus, error) {
			f.mu.Lock()
			defer f.mu.Unlock()
			if !f.discard {
				f.status = append(f.status, only)
			}
			var out []engine.PipelineStatus
			for _, name := range []string{"contracts", "orders"} {
				if only == "" || only == name {
					out = append(out, engine.PipelineStatus{Name: name, Destinations: []engine.DestinationStatus{}})
				}
			}
			return out, nil
		},
		Now:             func() time.Time { return t0 },
		Logger:          slog.New(slog.NewJSONHandler(logs, nil)),
		FunctionTimeout: 10 * time.Minute,
		MaxDequeueCount: 5,
	}
}

// syncBuffer is a log sink safe for concurrent invocations.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// ---- the host's view of a reply ----

type reply struct {
	status      int
	contentType string
	raw         []byte
	outputs     map[string]json.RawMessage
	logs        []string
	res         *resOutput // Outputs.res, if any
	resBody     map[string]any
}

type resOutput struct {
	StatusCode int               `json:"statusCode"`
	Headers    map[string]string `json:"headers"`
	Body       string            `json:"body"`
}

func post(t *testing.T, url, path, body string) reply {
	t.Helper()
	r, err := do(url, path, body)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// do posts one invocation the way the host does and checks the reply's
// shape; it is safe to call from any goroutine.
func do(url, path, body string) (reply, error) {
	req, err := http.NewRequest(http.MethodPost, url+path, strings.NewReader(body))
	if err != nil {
		return reply{}, err
	}
	// §3: the headers the host sends with every invocation.
	req.Header.Set("Content-Type", "application/json; charset=utf-8")
	req.Header.Set("X-Azure-Functions-InvocationId", "inv-"+strings.TrimPrefix(path, "/"))
	req.Header.Set("X-Azure-Functions-HostVersion", "4.1037.0")
	req.Header.Set("User-Agent", "Azure-Functions-Host/4.1037.0")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return reply{}, err
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		return reply{}, err
	}
	r := reply{status: resp.StatusCode, contentType: resp.Header.Get("Content-Type"), raw: raw}
	return r, checkShape(&r)
}

// dotNetBase64 is the host's Convert.FromBase64String acceptance test (§5):
// whitespace ignored, length a multiple of 4, standard alphabet with padding;
// "" decodes to zero bytes.
func dotNetBase64(s string) bool {
	s = strings.NewReplacer(" ", "", "\t", "", "\r", "", "\n", "").Replace(s)
	if len(s)%4 != 0 {
		return false
	}
	_, err := base64.StdEncoding.DecodeString(s)
	return err == nil
}

// checkShape checks what the host needs of every reply (§5) and fills in
// the parsed parts of r.
func checkShape(r *reply) error {
	if !strings.HasPrefix(r.contentType, "application/json") {
		return fmt.Errorf("Content-Type %q, want application/json (the host fails the invocation otherwise)", r.contentType)
	}
	if len(bytes.TrimSpace(r.raw)) == 0 {
		return errors.New("empty reply body (the host may never complete the invocation, §5)")
	}
	var top map[string]json.RawMessage
	if err := json.Unmarshal(r.raw, &top); err != nil {
		return fmt.Errorf("reply is not a JSON object: %v: %s", err, r.raw)
	}
	for _, k := range []string{"Outputs", "Logs", "ReturnValue"} {
		if _, ok := top[k]; !ok {
			return fmt.Errorf("reply lacks %q: %s", k, r.raw)
		}
	}
	if err := json.Unmarshal(top["Outputs"], &r.outputs); err != nil || r.outputs == nil {
		return fmt.Errorf("outputs is not an object: %s", top["Outputs"])
	}
	if err := json.Unmarshal(top["Logs"], &r.logs); err != nil || r.logs == nil {
		return fmt.Errorf("logs is not an array of strings: %s", top["Logs"])
	}
	if string(top["ReturnValue"]) != "null" {
		return fmt.Errorf("ReturnValue = %s, want null", top["ReturnValue"])
	}
	for name, v := range r.outputs {
		if name == "res" {
			continue
		}
		// §5 base64 gotcha: a non-http text output that is valid base64 is
		// decoded by the host before the binding sees it.
		var s string
		if json.Unmarshal(v, &s) == nil && dotNetBase64(s) {
			return fmt.Errorf("output %q = %q is valid base64: the host would decode it", name, s)
		}
	}
	if v, ok := r.outputs["res"]; ok {
		r.res = new(resOutput)
		if err := json.Unmarshal(v, r.res); err != nil {
			return fmt.Errorf("outputs.res is not {statusCode, headers, body} (§7.3): %v: %s", err, v)
		}
		if r.res.Headers["Content-Type"] != "application/json" {
			return fmt.Errorf("outputs.res.headers = %v, want Content-Type application/json", r.res.Headers)
		}
		if err := json.Unmarshal([]byte(r.res.Body), &r.resBody); err != nil {
			return fmt.Errorf("outputs.res.body is not a JSON object text: %v: %q", err, r.res.Body)
		}
	}
	return nil
}

func newServer(t *testing.T, f *fakes) (string, *syncBuffer) {
	t.Helper()
	logs := &syncBuffer{}
	srv := httptest.NewServer(functions.NewHandler(f.deps(logs)))
	t.Cleanup(srv.Close)
	return srv.URL, logs
}

// ---- the tests ----

func TestReadiness(t *testing.T) {
	url, _ := newServer(t, &fakes{})
	resp, err := http.Get(url + "/")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 || !strings.HasPrefix(resp.Header.Get("Content-Type"), "application/json") || !json.Valid(body) {
		t.Fatalf("GET / = %d %q %s", resp.StatusCode, resp.Header.Get("Content-Type"), body)
	}
}

func TestRead(t *testing.T) {
	for _, tc := range []struct {
		name    string
		payload string
		readErr error
		want    int
	}{
		{"schedule status", timerWithStatus, nil, 200},
		{"null schedule status", timerNullStatus, nil, 200},
		{"first run, past due", timerFirstRunPastDue, nil, 200},
		{"manual run", timerManual, nil, 200},
		{"no timer binding", `{"Data":{},"Metadata":{}}`, nil, 200},
		{"read pass fails", timerWithStatus, errors.New("graph answered 503"), 500},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := &fakes{readErr: tc.readErr}
			url, _ := newServer(t, f)
			r := post(t, url, "/read", tc.payload)
			if r.status != tc.want {
				t.Fatalf("status %d, want %d: %s", r.status, tc.want, r.raw)
			}
			if f.reads != 1 {
				t.Fatalf("read pass ran %d times, want 1", f.reads)
			}
			if len(r.logs) == 0 {
				t.Fatal("no log line")
			}
			if tc.want == 200 && !strings.Contains(r.logs[0], `"records":7`) {
				t.Fatalf("Logs %q lack the read summary", r.logs)
			}
			if tc.want == 500 && !strings.Contains(r.logs[0], "503") {
				t.Fatalf("Logs %q lack the error", r.logs)
			}
		})
	}
}

func TestWrite(t *testing.T) {
	b64 := base64.StdEncoding.EncodeToString([]byte(wakeUp))
	for _, tc := range []struct {
		name     string
		payload  string
		drainErr error
		want     int
		drained  bool // the drain was called
		head     int64
		last     bool
	}{
		{"double-encoded message, DequeueCount string", queueInvocation(doubleEncoded(wakeUp), `"1"`), nil, 200, true, 42, false},
		{"single-encoded message, DequeueCount number", queueInvocation(singleEncoded(wakeUp), `2`), nil, 200, true, 42, false},
		{"base64 text, not decoded by the host", queueInvocation(doubleEncoded(b64), `"1"`), nil, 200, true, 42, false},
		{"base64 text, single-encoded", queueInvocation(singleEncoded(b64), `"1"`), nil, 200, true, 42, false},
		{"raw JSON object", queueInvocation(wakeUp, `"1"`), nil, 200, true, 42, false},
		{"no head, extra keys", queueInvocation(doubleEncoded(`{"destination":"warehouse","pipeline":"contracts","reason":"replay","v":2}`), `"1"`), nil, 200, true, 0, false},
		{"head as a string", queueInvocation(doubleEncoded(`{"pipeline":"contracts","destination":"warehouse","head":"42"}`), `"1"`), nil, 200, true, 42, false},
		{"last attempt, DequeueCount \"5\"", queueInvocation(doubleEncoded(wakeUp), `"5"`), nil, 200, true, 42, true},
		{"last attempt, DequeueCount quoted twice", queueInvocation(doubleEncoded(wakeUp), `"\"5\""`), nil, 200, true, 42, true},
		{"last attempt, DequeueCount 5", queueInvocation(doubleEncoded(wakeUp), `5`), nil, 200, true, 42, true},
		{"past the last attempt", queueInvocation(doubleEncoded(wakeUp), `"6"`), nil, 200, true, 42, true},
		{"not yet the last attempt", queueInvocation(doubleEncoded(wakeUp), `"4"`), nil, 200, true, 42, false},
		{"unknown pipeline completes", queueInvocation(doubleEncoded(`{"pipeline":"gone","destination":"warehouse","head":3}`), `"1"`), nil, 200, false, 0, false},
		{"unknown destination completes", queueInvocation(doubleEncoded(`{"pipeline":"contracts","destination":"gone"}`), `"1"`), nil, 200, false, 0, false},
		{"transient drain error retries", queueInvocation(doubleEncoded(wakeUp), `"2"`), errors.New("sql: connection refused"), 500, true, 42, false},
		{"unreadable message fails (poison after retries)", queueInvocation(doubleEncoded(`hello`), `"1"`), nil, 500, false, 0, false},
		{"message without destination fails", queueInvocation(doubleEncoded(`{"pipeline":"contracts"}`), `"1"`), nil, 500, false, 0, false},
		{"no msg binding fails", `{"Data":{},"Metadata":{"DequeueCount":"1"}}`, nil, 500, false, 0, false},
		{"not an invocation fails", `not json`, nil, 500, false, 0, false},
		{"empty body fails", ``, nil, 500, false, 0, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := &fakes{drainErr: tc.drainErr}
			url, logs := newServer(t, f)
			r := post(t, url, "/write", tc.payload)
			if r.status != tc.want {
				t.Fatalf("status %d, want %d: %s", r.status, tc.want, r.raw)
			}
			if len(r.outputs) != 0 {
				t.Fatalf("write has no output bindings, got %s", r.raw)
			}
			if got := len(f.drains); got != map[bool]int{true: 1, false: 0}[tc.drained] {
				t.Fatalf("drain called %d times, drained=%v", got, tc.drained)
			}
			if tc.want == 500 && len(r.logs) == 0 {
				t.Fatal("a failure should carry its reason in Logs")
			}
			if !tc.drained {
				if tc.want == 200 && !strings.Contains(logs.String(), `"outcome":"unknown"`) {
					t.Fatalf("unknown destination not logged: %s", logs)
				}
				return
			}
			req := f.drains[0]
			if req.Pipeline.Name != "contracts" || req.Destination.Name != "warehouse" || req.Head != tc.head || req.LastAttempt != tc.last {
				t.Fatalf("drain request %s/%s head %d last %v, want contracts/warehouse head %d last %v",
					req.Pipeline.Name, req.Destination.Name, req.Head, req.LastAttempt, tc.head, tc.last)
			}
			// DESIGN §4 Write 3: start + functionTimeout − 60 s.
			if want := t0.Add(9 * time.Minute); !req.Deadline.Equal(want) {
				t.Fatalf("deadline %v, want %v", req.Deadline, want)
			}
			if tc.want == 200 && !strings.Contains(strings.Join(r.logs, "\n"), `"outcome":"drained"`) {
				t.Fatalf("Logs %q lack the drain result", r.logs)
			}
		})
	}
}

func TestReplay(t *testing.T) {
	type exp struct {
		status int    // in Outputs.res
		errHas string // in the {"error"} body
	}
	for _, tc := range []struct {
		name      string
		payload   string
		replayErr error
		replayRes engine.ReplayResult
		want      exp
		check     func(t *testing.T, req engine.ReplayRequest, body map[string]any)
	}{
		{name: "fromSeq", payload: replayInvocation(singleEncoded(`{"fromSeq":5}`)), want: exp{status: 200},
			check: func(t *testing.T, req engine.ReplayRequest, body map[string]any) {
				if req.FromSeq != 5 || !req.From.IsZero() || req.DryRun || req.By != "http:key/default" {
					t.Fatalf("replay request %+v", req)
				}
				for _, k := range []string{"fromSeq", "toSeq", "records", "dryRun"} {
					if _, ok := body[k]; !ok {
						t.Fatalf("answer %v lacks %q (DESIGN §3.5)", body, k)
					}
				}
				if body["fromSeq"] != 5.0 || body["toSeq"] != 42.0 || body["records"] != 38.0 || body["dryRun"] != false {
					t.Fatalf("answer %v", body)
				}
			}},
		{name: "from time, dry run", payload: replayInvocation(singleEncoded(`{"from":"2026-11-25T07:00:00+01:00","dryRun":true}`)), want: exp{status: 200},
			check: func(t *testing.T, req engine.ReplayRequest, body map[string]any) {
				if !req.From.Equal(time.Date(2026, 11, 25, 6, 0, 0, 0, time.UTC)) || req.FromSeq != 0 || !req.DryRun {
					t.Fatalf("replay request %+v", req)
				}
				if body["dryRun"] != true {
					t.Fatalf("answer %v", body)
				}
			}},
		{name: "double-encoded body", payload: replayInvocation(doubleEncoded(`{"fromSeq":7}`)), want: exp{status: 200},
			check: func(t *testing.T, req engine.ReplayRequest, _ map[string]any) {
				if req.FromSeq != 7 {
					t.Fatalf("replay request %+v", req)
				}
			}},
		{name: "body as a raw object", payload: replayInvocation(`{"fromSeq":"8"}`), want: exp{status: 200},
			check: func(t *testing.T, req engine.ReplayRequest, _ map[string]any) {
				if req.FromSeq != 8 {
					t.Fatalf("replay request %+v", req)
				}
			}},
		{name: "body absent", payload: replayInvocation(""), want: exp{400, `"from"`}},
		{name: "body null", payload: replayInvocation("null"), want: exp{400, `"from"`}},
		{name: "body empty object", payload: replayInvocation(singleEncoded(`{}`)), want: exp{400, `"fromSeq"`}},
		{name: "both from and fromSeq", payload: replayInvocation(singleEncoded(`{"from":"2026-11-25T07:00:00Z","fromSeq":3}`)), want: exp{400, "not both"}},
		{name: "unparseable time", payload: replayInvocation(singleEncoded(`{"from":"yesterday"}`)), want: exp{400, "RFC 3339"}},
		{name: "date without time", payload: replayInvocation(singleEncoded(`{"from":"2026-11-25"}`)), want: exp{400, "RFC 3339"}},
		{name: "fromSeq zero", payload: replayInvocation(singleEncoded(`{"fromSeq":0}`)), want: exp{400, "1 or more"}},
		{name: "fromSeq not a number", payload: replayInvocation(singleEncoded(`{"fromSeq":"ten"}`)), want: exp{400, "body must be"}},
		{name: "malformed body", payload: replayInvocation(singleEncoded(`{"fromSeq":`)), want: exp{400, "body must be"}},
		{name: "misspelt key", payload: replayInvocation(singleEncoded(`{"fromSeq":3,"dry_run":true}`)), want: exp{400, "dry_run"}},
		{name: "unknown pipeline", payload: httpInvocation(replayURL, map[string]string{"pipeline": "nope", "destination": "warehouse"}, singleEncoded(`{"fromSeq":1}`)), want: exp{404, "nope"}},
		{name: "unknown destination", payload: httpInvocation(replayURL, map[string]string{"pipeline": "contracts", "destination": "nope"}, singleEncoded(`{"fromSeq":1}`)), want: exp{404, "nope"}},
		{name: "no route params", payload: httpInvocation(replayURL, nil, singleEncoded(`{"fromSeq":1}`)), want: exp{400, "route"}},
		{name: "engine refuses", payload: replayInvocation(singleEncoded(`{"fromSeq":1}`)), replayErr: fmt.Errorf("%w: fromSeq past the head", engine.ErrBadRequest), want: exp{400, "past the head"}},
		{name: "storage down", payload: replayInvocation(singleEncoded(`{"fromSeq":1}`)), replayErr: errors.New("storage: connection reset"), want: exp{500, "connection reset"}},
		{name: "rewound but wake-up lost", payload: replayInvocation(singleEncoded(`{"fromSeq":1}`)),
			replayErr: errors.New("rewound, but the wake-up could not be enqueued"), replayRes: engine.ReplayResult{FromSeq: 1, ToSeq: 9, Records: 9, Generation: 2},
			want: exp{status: 200}, check: func(t *testing.T, _ engine.ReplayRequest, body map[string]any) {
				if body["records"] != 9.0 || !strings.Contains(fmt.Sprint(body["warning"]), "wake-up") {
					t.Fatalf("answer %v", body)
				}
			}},
		{name: "not an invocation", payload: `{"Data":`, want: exp{400, "invocation"}},
		{name: "no req binding", payload: `{"Data":{},"Metadata":{}}`, want: exp{400, "req"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := &fakes{replayErr: tc.replayErr, replayRes: tc.replayRes}
			url, logs := newServer(t, f)
			r := post(t, url, "/replay", tc.payload)
			// §7.3: an HTTP function always answers the host 200.
			if r.status != 200 {
				t.Fatalf("host status %d, want 200: %s", r.status, r.raw)
			}
			if r.res == nil {
				t.Fatalf("no Outputs.res: %s", r.raw)
			}
			if r.res.StatusCode != tc.want.status {
				t.Fatalf("res.statusCode %d, want %d: %s", r.res.StatusCode, tc.want.status, r.res.Body)
			}
			if tc.want.status >= 400 {
				msg, _ := r.resBody["error"].(string)
				if msg == "" || !strings.Contains(msg, tc.want.errHas) {
					t.Fatalf("error body %s, want an \"error\" containing %q", r.res.Body, tc.want.errHas)
				}
			}
			if tc.check != nil {
				if len(f.replays) != 1 {
					t.Fatalf("replay called %d times", len(f.replays))
				}
				tc.check(t, f.replays[0], r.resBody)
			}
			if tc.want.status == 400 && tc.replayErr == nil && len(f.replays) != 0 {
				t.Fatal("a bad request reached the engine")
			}
			assertNoSecrets(t, logs.String(), string(r.raw))
		})
	}
}

func TestStatus(t *testing.T) {
	statusURL := "https://myapp.azurewebsites.net/api/status"
	for _, tc := range []struct {
		name    string
		payload string
		want    int
		names   []string
	}{
		{"all pipelines", httpInvocation(statusURL, map[string]string{}, ""), 200, []string{"contracts", "orders"}},
		{"no Params at all", `{"Data":{"req":{"Url":"` + statusURL + `","Method":"GET","Query":{},"Headers":{"Host":["x"]}}},"Metadata":{}}`, 200, []string{"contracts", "orders"}},
		{"one pipeline", httpInvocation(statusURL+"/orders", map[string]string{"pipeline": "orders"}, ""), 200, []string{"orders"}},
		{"unknown pipeline", httpInvocation(statusURL+"/nope", map[string]string{"pipeline": "nope"}, ""), 404, nil},
		// Hosts before late 2020 sent Query and Identities as JSON strings (§7.3).
		{"old host: Query and Identities as strings", `{"Data":{"req":{"Url":"` + statusURL + `/orders","Method":"GET","Query":"{}","Headers":{"Host":"x"},"Params":{"pipeline":"orders"},"Identities":"[]"}},"Metadata":{}}`, 200, []string{"orders"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := &fakes{}
			url, logs := newServer(t, f)
			r := post(t, url, "/status", tc.payload)
			if r.status != 200 || r.res == nil {
				t.Fatalf("host status %d, want 200 with Outputs.res: %s", r.status, r.raw)
			}
			if r.res.StatusCode != tc.want {
				t.Fatalf("res.statusCode %d, want %d: %s", r.res.StatusCode, tc.want, r.res.Body)
			}
			if tc.want != 200 {
				if _, ok := r.resBody["error"].(string); !ok {
					t.Fatalf("error body %s", r.res.Body)
				}
				return
			}
			var doc struct {
				Pipelines []engine.PipelineStatus `json:"pipelines"`
			}
			if err := json.Unmarshal([]byte(r.res.Body), &doc); err != nil {
				t.Fatal(err)
			}
			var names []string
			for _, p := range doc.Pipelines {
				names = append(names, p.Name)
			}
			if fmt.Sprint(names) != fmt.Sprint(tc.names) {
				t.Fatalf("pipelines %v, want %v", names, tc.names)
			}
			assertNoSecrets(t, logs.String(), string(r.raw))
		})
	}
}

func assertNoSecrets(t *testing.T, texts ...string) {
	t.Helper()
	for _, s := range texts {
		for _, secret := range []string{secretKey, secretCode} {
			if strings.Contains(s, secret) {
				t.Fatalf("a function key leaked: %s", s)
			}
		}
	}
}

// TestInvocationLog checks the one structured line per invocation.
func TestInvocationLog(t *testing.T) {
	f := &fakes{}
	url, logs := newServer(t, f)
	post(t, url, "/write", queueInvocation(doubleEncoded(wakeUp), `"1"`))
	post(t, url, "/replay", replayInvocation(singleEncoded(`{"fromSeq":5}`)))
	post(t, url, "/read", timerNullStatus)
	lines := strings.Split(strings.TrimSpace(logs.String()), "\n")
	if len(lines) != 3 {
		t.Fatalf("%d log lines, want one per invocation:\n%s", len(lines), logs)
	}
	for i, fn := range []string{"write", "replay", "read"} {
		var l map[string]any
		if err := json.Unmarshal([]byte(lines[i]), &l); err != nil {
			t.Fatalf("log line is not JSON: %s", lines[i])
		}
		if l["function"] != fn || l["invocationId"] != "inv-"+fn || l["durationMs"] == nil || l["outcome"] == nil || l["status"] != 200.0 {
			t.Fatalf("log line %s", lines[i])
		}
	}
	assertNoSecrets(t, logs.String())
}

// TestConcurrentInvocations runs writes, replays and status calls at once
// (go test -race finds shared state).
func TestConcurrentInvocations(t *testing.T) {
	f := &fakes{}
	url, _ := newServer(t, f)
	var wg sync.WaitGroup
	for i := range 60 {
		wg.Go(func() {
			var (
				r   reply
				err error
				ok  bool
			)
			switch i % 3 {
			case 0:
				r, err = do(url, "/write", queueInvocation(doubleEncoded(wakeUp), fmt.Sprintf(`"%d"`, i%6)))
				ok = r.status == 200
			case 1:
				r, err = do(url, "/replay", replayInvocation(singleEncoded(`{"fromSeq":5}`)))
				ok = r.res != nil && r.res.StatusCode == 200
			default:
				r, err = do(url, "/status", httpInvocation("x", map[string]string{"pipeline": "orders"}, ""))
				ok = r.res != nil && r.res.StatusCode == 200
			}
			if err != nil || !ok {
				t.Errorf("invocation %d: %v: %s", i, err, r.raw)
			}
		})
	}
	wg.Wait()
	if len(f.drains) != 20 || len(f.replays) != 20 || len(f.status) != 20 {
		t.Fatalf("drains %d replays %d status %d, want 20 each", len(f.drains), len(f.replays), len(f.status))
	}
}

// TestUnknownPath: the host only calls real functions, but any other path
// still answers JSON.
func TestUnknownPath(t *testing.T) {
	url, _ := newServer(t, &fakes{})
	r := post(t, url, "/Write", "{}") // routes are case-sensitive (§1)
	if r.status != http.StatusNotFound {
		t.Fatalf("status %d", r.status)
	}
}

// FuzzDecodeInvocation feeds arbitrary bodies to the decoders and to every
// function: nothing may panic, and every reply keeps the §5 shape.
func FuzzDecodeInvocation(f *testing.F) {
	for _, s := range []string{
		timerWithStatus, timerNullStatus, timerFirstRunPastDue, timerManual,
		queueInvocation(doubleEncoded(wakeUp), `"1"`),
		queueInvocation(singleEncoded(wakeUp), `5`),
		queueInvocation(doubleEncoded(base64.StdEncoding.EncodeToString([]byte(wakeUp))), `"\"5\""`),
		queueInvocation(wakeUp, `null`),
		replayInvocation(singleEncoded(`{"fromSeq":5,"dryRun":true}`)),
		replayInvocation(doubleEncoded(`{"from":"2026-11-25T07:00:00Z"}`)),
		replayInvocation(""),
		`{"Data":{"req":{"Query":"{\"a\":[\"1\",2,null]}","Headers":{"A":"b","C":[1,true]},"Params":[],"Body":12,"Identities":"[{\"Name\":\"x\"}]"}}}`,
		`{"Data":{"msg":"\"\\\"\\\"\""},"Metadata":{"DequeueCount":"1e400"}}`,
		`{"Data":null}`, `[]`, `"x"`, ``, `{"Data":{"timer":"{\"IsPastDue\":\"true\"}"}}`,
	} {
		f.Add([]byte(s))
	}
	fk := &fakes{discard: true}
	h := functions.NewHandler(fk.deps(io.Discard))
	f.Fuzz(func(t *testing.T, body []byte) {
		inv, err := functions.DecodeInvocation(body)
		if err == nil {
			_, _ = functions.DecodeTimer(inv, functions.TimerBinding)
			if m, err := functions.DecodeQueue(inv, functions.QueueBinding); err == nil {
				_, _ = functions.DecodeWakeUp(m.Text)
			}
			if r, err := functions.DecodeHTTP(inv, functions.RequestBinding); err == nil {
				_ = r.Caller()
				_ = r.Param("pipeline")
			}
		}
		for _, path := range []string{"/read", "/write", "/replay", "/status"} {
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, httptest.NewRequest(http.MethodPost, path, bytes.NewReader(body)))
			if ct := rec.Header().Get("Content-Type"); ct != "application/json" {
				t.Fatalf("%s: Content-Type %q", path, ct)
			}
			var resp struct {
				Outputs map[string]json.RawMessage
				Logs    []string
			}
			if err := json.Unmarshal(rec.Body.Bytes(), &resp); err != nil || resp.Outputs == nil || resp.Logs == nil {
				t.Fatalf("%s: reply %s", path, rec.Body.Bytes())
			}
			if (path == "/replay" || path == "/status") && rec.Code != 200 {
				t.Fatalf("%s: host status %d", path, rec.Code)
			}
			if rec.Code != 200 && rec.Code != 500 {
				t.Fatalf("%s: host status %d", path, rec.Code)
			}
		}
	})
}
