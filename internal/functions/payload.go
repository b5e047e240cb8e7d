// Package functions is sluice's custom-handler HTTP surface (DESIGN §3.5):
// it decodes the Azure Functions host's invocation payloads, calls the
// engine, and answers in the only shape the host accepts.
// It must never answer the host with an empty or non-JSON body, a non-2xx
// status for an HTTP function, text output the host would base64-decode, or a
// log line holding a function key or another secret.
//
// Section numbers (§) in comments refer to
// reference/azure-functions-custom-handler.md.
package functions

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/sluicehq/sluice/internal/engine"
)

// Binding names from functions/*/function.json.
const (
	TimerBinding   = "timer" // functions/read
	QueueBinding   = "msg"   // functions/write
	RequestBinding = "req"   // functions/replay, functions/status
	ResponseOutput = "res"   // the http out binding of replay and status
)

// Invocation is the body the host POSTs to /<FunctionName> (§4):
// Data holds one value per input binding, Metadata the trigger's binding
// data. Values are kept raw because their encoding varies by type (§4 table).
type Invocation struct {
	Data     map[string]json.RawMessage `json:"Data"`
	Metadata map[string]json.RawMessage `json:"Metadata"`
}

// DecodeInvocation parses the host's request body. Keys match
// case-insensitively, as Newtonsoft does on the host's side (§5).
func DecodeInvocation(body []byte) (Invocation, error) {
	var inv Invocation
	body = bytes.TrimSpace(body)
	if len(body) == 0 {
		return inv, errors.New("invocation body is empty")
	}
	if err := json.Unmarshal(body, &inv); err != nil {
		return inv, fmt.Errorf("invocation body is not the host's {\"Data\",\"Metadata\"} object: %w", err)
	}
	return inv, nil
}

// data returns the input binding called name.
func (inv Invocation) data(name string) (json.RawMessage, bool) { return lookup(inv.Data, name) }

// meta returns the metadata value called name.
func (inv Invocation) meta(name string) (json.RawMessage, bool) { return lookup(inv.Metadata, name) }

func lookup(m map[string]json.RawMessage, name string) (json.RawMessage, bool) {
	if v, ok := m[name]; ok {
		return v, !isNull(v)
	}
	for k, v := range m {
		if strings.EqualFold(k, name) {
			return v, !isNull(v)
		}
	}
	return nil, false
}

func isNull(raw json.RawMessage) bool {
	t := bytes.TrimSpace(raw)
	return len(t) == 0 || string(t) == "null"
}

// hostString unwraps a string the host JSON-encoded twice (§4: a .NET string
// is SerializeObject'ed into the dictionary, then serialized again), and
// accepts a single encoding too. A value that is not a JSON string is
// returned as its raw text (a number, a bool). A few levels at most are
// undone, so a string that merely starts and ends with quotes survives.
func hostString(raw json.RawMessage) string {
	t := bytes.TrimSpace(raw)
	if len(t) == 0 || t[0] != '"' {
		return string(t)
	}
	var s string
	if json.Unmarshal(t, &s) != nil {
		return string(t)
	}
	for range 2 {
		if len(s) < 2 || s[0] != '"' || s[len(s)-1] != '"' {
			break
		}
		var inner string
		if json.Unmarshal([]byte(s), &inner) != nil {
			break
		}
		s = inner
	}
	return s
}

// metaString is a metadata string with any stray quotes trimmed (§4, §7.2:
// Id and PopReceipt arrive as "\"...\"").
func metaString(raw json.RawMessage) string {
	return strings.Trim(hostString(raw), `"`)
}

// flexInt accepts 4, "4" and "\"4\"" (§4: DequeueCount is a .NET long
// serialized to a string; the docs' samples show a number).
type flexInt int64

func (f *flexInt) UnmarshalJSON(b []byte) error {
	s := metaString(b)
	if s == "" || s == "null" {
		*f = 0
		return nil
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		// 5.0 and 5e0 are still numbers.
		fl, ferr := strconv.ParseFloat(s, 64)
		if ferr != nil || fl != float64(int64(fl)) {
			return fmt.Errorf("not an integer: %q", s)
		}
		n = int64(fl)
	}
	*f = flexInt(n)
	return nil
}

// flexBool accepts true and "true" (§4: a .NET bool may be string-encoded).
type flexBool bool

func (f *flexBool) UnmarshalJSON(b []byte) error {
	s := metaString(b)
	if s == "" || s == "null" {
		*f = false
		return nil
	}
	v, err := strconv.ParseBool(s)
	if err != nil {
		return fmt.Errorf("not a boolean: %q", s)
	}
	*f = flexBool(v)
	return nil
}

// hostTimeLayouts are what .NET DateTime and DateTimeOffset serialize to:
// RFC 3339 with or without a zone and with 0-7 fractional digits (§7.1).
// Go accepts any fraction after the seconds when parsing.
var hostTimeLayouts = []string{
	time.RFC3339,
	"2006-01-02T15:04:05Z0700",
	"2006-01-02T15:04:05",
	"2006-01-02 15:04:05Z07:00",
	"2006-01-02 15:04:05",
}

// parseHostTime parses a host timestamp leniently; a time without a zone
// is taken as UTC (the host's clock is UTC).
func parseHostTime(s string) (time.Time, error) {
	s = strings.TrimSpace(strings.Trim(s, `"`))
	for _, layout := range hostTimeLayouts {
		if t, err := time.Parse(layout, s); err == nil {
			return t, nil
		}
	}
	return time.Time{}, fmt.Errorf("not a timestamp: %q", s)
}

// flexTime is a host timestamp, single- or double-encoded; an unparseable
// one decodes to the zero time rather than failing the invocation.
type flexTime time.Time

func (f *flexTime) UnmarshalJSON(b []byte) error {
	t, err := parseHostTime(hostString(b))
	if err != nil {
		t = time.Time{}
	}
	*f = flexTime(t)
	return nil
}

// ---- timer (§7.1) ----

// TimerInfo is the timer trigger's Data value (§7.1): a real JSON object,
// not double-encoded. ScheduleStatus is nil when the host runs without a
// schedule monitor (useMonitor false).
type TimerInfo struct {
	AdjustForDST   bool
	ScheduleStatus *ScheduleStatus
	IsPastDue      bool
}

// ScheduleStatus is the schedule monitor's record (§7.1). On the first run
// Last and LastUpdated are 0001-01-01; Next is the occurrence firing now.
type ScheduleStatus struct {
	Last, Next, LastUpdated time.Time
}

type wireTimer struct {
	Schedule *struct {
		AdjustForDST flexBool `json:"AdjustForDST"`
	} `json:"Schedule"`
	ScheduleStatus *struct {
		Last        flexTime `json:"Last"`
		Next        flexTime `json:"Next"`
		LastUpdated flexTime `json:"LastUpdated"`
	} `json:"ScheduleStatus"`
	IsPastDue flexBool `json:"IsPastDue"`
}

// DecodeTimer reads the timer binding. A missing or null binding (a manual
// run through /admin/functions/read, §7.1) gives the zero TimerInfo.
// A string-encoded object is accepted too.
func DecodeTimer(inv Invocation, binding string) (TimerInfo, error) {
	raw, ok := inv.data(binding)
	if !ok {
		return TimerInfo{}, nil
	}
	obj := objectText(raw)
	if obj == nil {
		return TimerInfo{}, fmt.Errorf("timer binding %q is not an object: %.80s", binding, raw)
	}
	var w wireTimer
	if err := json.Unmarshal(obj, &w); err != nil {
		return TimerInfo{}, fmt.Errorf("timer binding %q: %w", binding, err)
	}
	ti := TimerInfo{IsPastDue: bool(w.IsPastDue)}
	if w.Schedule != nil {
		ti.AdjustForDST = bool(w.Schedule.AdjustForDST)
	}
	if s := w.ScheduleStatus; s != nil {
		ti.ScheduleStatus = &ScheduleStatus{Last: time.Time(s.Last), Next: time.Time(s.Next), LastUpdated: time.Time(s.LastUpdated)}
	}
	return ti, nil
}

// objectText returns the JSON object in raw, unwrapping string encodings;
// nil when there is none.
func objectText(raw json.RawMessage) []byte {
	t := bytes.TrimSpace(raw)
	if len(t) > 0 && t[0] == '"' {
		t = bytes.TrimSpace([]byte(hostString(t)))
	}
	if len(t) == 0 || t[0] != '{' || !json.Valid(t) {
		return nil
	}
	return t
}

// ---- queue (§7.2, §8) ----

// QueueMessage is the queue trigger's message and metadata (§7.2).
type QueueMessage struct {
	// Text is the message body after the host's encodings are undone.
	Text            []byte
	ID              string
	PopReceipt      string
	DequeueCount    int64
	InsertionTime   time.Time
	ExpirationTime  time.Time
	NextVisibleTime time.Time
}

type wireQueueMeta struct {
	DequeueCount    flexInt  `json:"DequeueCount"`
	InsertionTime   flexTime `json:"InsertionTime"`
	ExpirationTime  flexTime `json:"ExpirationTime"`
	NextVisibleTime flexTime `json:"NextVisibleTime"`
}

// DecodeQueue reads the queue binding and its metadata. The message text is
// accepted in every shape seen in the wild (§4, §7.2, §13.1):
//   - a string JSON-encoded twice (what the host sends; it has already
//     base64-decoded the storage message, messageEncoding base64, §8),
//   - a string encoded once,
//   - base64 text of a JSON object (a host with messageEncoding none, or a
//     producer that encoded twice),
//   - a raw JSON object.
//
// Only a missing message is an error here; whether the text is a wake-up is
// DecodeWakeUp's call. Metadata strings lose their stray quotes and
// DequeueCount is read from a number or a string (§4).
func DecodeQueue(inv Invocation, binding string) (QueueMessage, error) {
	raw, ok := inv.data(binding)
	if !ok {
		return QueueMessage{}, fmt.Errorf("queue binding %q is missing from Data", binding)
	}
	m := QueueMessage{Text: messageText(raw)}
	if v, ok := inv.meta("Id"); ok {
		m.ID = metaString(v)
	}
	if v, ok := inv.meta("PopReceipt"); ok {
		m.PopReceipt = metaString(v)
	}
	// Each key on its own, so one malformed value does not hide the others;
	// an unreadable one is left zero rather than failing a good message (a
	// DequeueCount of 0 only means "not known to be the last attempt").
	var w wireQueueMeta
	for key, dst := range map[string]json.Unmarshaler{
		"DequeueCount": &w.DequeueCount, "InsertionTime": &w.InsertionTime,
		"ExpirationTime": &w.ExpirationTime, "NextVisibleTime": &w.NextVisibleTime,
	} {
		if v, ok := inv.meta(key); ok {
			_ = dst.UnmarshalJSON(v)
		}
	}
	m.DequeueCount = int64(w.DequeueCount)
	m.InsertionTime = time.Time(w.InsertionTime)
	m.ExpirationTime = time.Time(w.ExpirationTime)
	m.NextVisibleTime = time.Time(w.NextVisibleTime)
	return m, nil
}

// messageText undoes the host's string encodings of a queue message.
func messageText(raw json.RawMessage) []byte {
	t := bytes.TrimSpace(raw)
	if len(t) == 0 {
		return nil
	}
	if t[0] != '"' {
		return t // a raw object (or anything else: DecodeWakeUp judges)
	}
	s := strings.TrimSpace(hostString(t))
	if strings.HasPrefix(s, "{") {
		return []byte(s)
	}
	// Base64 of a JSON object: the encoding was not undone on the way in.
	if dec, err := base64.StdEncoding.DecodeString(s); err == nil {
		if obj := objectText(dec); obj != nil {
			return obj
		}
	}
	return []byte(s)
}

type wireWakeUp struct {
	Pipeline    string  `json:"pipeline"`
	Destination string  `json:"destination"`
	Head        flexInt `json:"head"`
}

// DecodeWakeUp parses a write-queue message (DESIGN §3.5):
// {"pipeline":"P","destination":"D","head":N}, head optional, extra keys
// ignored.
func DecodeWakeUp(text []byte) (engine.WakeUp, error) {
	obj := objectText(text)
	if obj == nil {
		return engine.WakeUp{}, fmt.Errorf("queue message is not a JSON object: %.80q", text)
	}
	var w wireWakeUp
	if err := json.Unmarshal(obj, &w); err != nil {
		return engine.WakeUp{}, fmt.Errorf("queue message is not a wake-up {\"pipeline\",\"destination\",\"head\"}: %w", err)
	}
	if w.Pipeline == "" || w.Destination == "" {
		return engine.WakeUp{}, fmt.Errorf("queue message lacks pipeline or destination: %.200s", obj)
	}
	if w.Head < 0 {
		return engine.WakeUp{}, fmt.Errorf("queue message head %d is negative", w.Head)
	}
	return engine.WakeUp{Pipeline: w.Pipeline, Destination: w.Destination, Head: int64(w.Head)}, nil
}

// ---- HTTP (§7.3, §9) ----

// HTTPRequest is the HTTP trigger's Data value in JSON mode (§7.3).
type HTTPRequest struct {
	URL     string
	Method  string
	Query   map[string]string // repeated keys joined with ","
	Headers http.Header       // canonical keys
	Params  map[string]string // route parameters
	// Body is nil when the host sent none (it does only for Content-Length > 0).
	Body       []byte
	Identities []Identity
}

// Identity is one serialized ClaimsIdentity (§9).
type Identity struct {
	AuthenticationType string  `json:"AuthenticationType"`
	IsAuthenticated    bool    `json:"IsAuthenticated"`
	Name               string  `json:"Name"`
	Claims             []Claim `json:"Claims"`
}

// Claim is one claim of an Identity.
type Claim struct {
	Type  string `json:"Type"`
	Value string `json:"Value"`
}

// Claim types the host sets for key authentication (§9).
const (
	ClaimAuthLevel = "http://schemas.microsoft.com/2017/07/functions/claims/authlevel"
	ClaimKeyID     = "http://schemas.microsoft.com/2017/07/functions/claims/keyid"
)

// Param returns the route parameter name ("" when absent).
func (r HTTPRequest) Param(name string) string {
	if v, ok := r.Params[name]; ok {
		return v
	}
	for k, v := range r.Params {
		if strings.EqualFold(k, name) {
			return v
		}
	}
	return ""
}

// Caller names who called, for audit trails: the App Service
// authentication user when there is one, else the function key's name,
// else "http". It never returns a key itself.
func (r HTTPRequest) Caller() string {
	var keyID string
	for _, id := range r.Identities {
		if id.AuthenticationType != "WebJobsAuthLevel" && id.Name != "" {
			return "http:" + id.Name
		}
		for _, c := range id.Claims {
			if c.Type == ClaimKeyID && c.Value != "" && keyID == "" {
				keyID = c.Value
			}
		}
	}
	if keyID != "" {
		return "http:key/" + keyID
	}
	return "http"
}

type wireHTTP struct {
	URL        json.RawMessage `json:"Url"`
	Method     json.RawMessage `json:"Method"`
	Query      json.RawMessage `json:"Query"`
	Headers    json.RawMessage `json:"Headers"`
	Params     json.RawMessage `json:"Params"`
	Body       json.RawMessage `json:"Body"`
	Identities json.RawMessage `json:"Identities"`
}

// DecodeHTTP reads the HTTP trigger binding. Only a missing or non-object
// request is an error; every field is read as tolerantly as it can be:
//   - Query: an object of strings (§7.3), or the JSON string of one (hosts
//     before late 2020); array values are joined with ",".
//   - Headers: an object of string arrays (§7.3); a single string is one value.
//   - Params: like Query.
//   - Body: a string (§7.3 says not double-encoded; a double-encoded one is
//     unwrapped anyway), a raw JSON value, or absent/null.
//   - Identities: an array, or the JSON string of one (old hosts).
func DecodeHTTP(inv Invocation, binding string) (HTTPRequest, error) {
	raw, ok := inv.data(binding)
	if !ok {
		return HTTPRequest{}, fmt.Errorf("HTTP binding %q is missing from Data", binding)
	}
	obj := objectText(raw)
	if obj == nil {
		return HTTPRequest{}, fmt.Errorf("HTTP binding %q is not an object: %.80s", binding, raw)
	}
	var w wireHTTP
	if err := json.Unmarshal(obj, &w); err != nil {
		return HTTPRequest{}, fmt.Errorf("HTTP binding %q: %w", binding, err)
	}
	r := HTTPRequest{
		URL:    hostString(w.URL),
		Method: strings.ToUpper(hostString(w.Method)),
		Query:  stringMap(w.Query),
		Params: stringMap(w.Params),
	}
	if isNull(w.URL) {
		r.URL = ""
	}
	if isNull(w.Method) {
		r.Method = ""
	}
	r.Headers = http.Header{}
	for k, vs := range stringsMap(w.Headers) {
		for _, v := range vs {
			r.Headers.Add(k, v)
		}
	}
	if !isNull(w.Body) {
		t := bytes.TrimSpace(w.Body)
		if t[0] == '"' {
			r.Body = []byte(hostString(t))
		} else {
			r.Body = t
		}
	}
	if ids := objectsText(w.Identities); ids != nil {
		_ = json.Unmarshal(ids, &r.Identities) // best effort: identities only name the caller
	}
	return r, nil
}

// objectsText is objectText for a JSON array.
func objectsText(raw json.RawMessage) []byte {
	t := bytes.TrimSpace(raw)
	if len(t) > 0 && t[0] == '"' {
		t = bytes.TrimSpace([]byte(hostString(t)))
	}
	if len(t) == 0 || t[0] != '[' || !json.Valid(t) {
		return nil
	}
	return t
}

// stringsMap reads an object whose values are strings or arrays of
// scalars; anything unreadable is dropped.
func stringsMap(raw json.RawMessage) map[string][]string {
	obj := objectText(raw)
	if obj == nil {
		return nil
	}
	var m map[string]json.RawMessage
	if json.Unmarshal(obj, &m) != nil {
		return nil
	}
	out := make(map[string][]string, len(m))
	for k, v := range m {
		t := bytes.TrimSpace(v)
		switch {
		case isNull(t):
			out[k] = []string{""}
		case t[0] == '[':
			var items []json.RawMessage
			if json.Unmarshal(t, &items) != nil {
				continue
			}
			vs := make([]string, 0, len(items))
			for _, it := range items {
				if !isNull(it) {
					vs = append(vs, scalarText(it))
				}
			}
			out[k] = vs
		default:
			out[k] = []string{scalarText(t)}
		}
	}
	return out
}

// stringMap is stringsMap with repeated values joined by "," as the host
// joins repeated query keys (§7.3).
func stringMap(raw json.RawMessage) map[string]string {
	mm := stringsMap(raw)
	if mm == nil {
		return map[string]string{}
	}
	out := make(map[string]string, len(mm))
	for k, vs := range mm {
		out[k] = strings.Join(vs, ",")
	}
	return out
}

// scalarText is a JSON string's value (single encoding only: a query or
// header value is user data, not host-encoded) or another value's text.
func scalarText(raw json.RawMessage) string {
	t := bytes.TrimSpace(raw)
	if len(t) > 0 && t[0] == '"' {
		var s string
		if json.Unmarshal(t, &s) == nil {
			return s
		}
	}
	return string(t)
}

// ---- replies (§5, §7.3) ----

// Response is the body the handler answers the host with (§5). Outputs and
// Logs are never null on the wire; ReturnValue is always null (no function
// has a $return binding).
type Response struct {
	Outputs     map[string]any `json:"Outputs"`
	Logs        []string       `json:"Logs"`
	ReturnValue any            `json:"ReturnValue"`
}

// HTTPResponse is the value of an http output binding (§7.3): the host
// writes Body as-is with these headers and status to the caller.
type HTTPResponse struct {
	StatusCode int               `json:"statusCode"`
	Headers    map[string]string `json:"headers"`
	Body       string            `json:"body"`
}

// JSONResponse builds an http output whose body is the JSON of v. The
// body is a string, as §7.3 prefers: an object body would go out as
// indented text/plain.
func JSONResponse(status int, v any) HTTPResponse {
	body, err := json.Marshal(v)
	if err != nil {
		status = http.StatusInternalServerError
		body, _ = json.Marshal(map[string]string{"error": "encode response: " + err.Error()})
	}
	return HTTPResponse{StatusCode: status, Headers: map[string]string{"Content-Type": "application/json"}, Body: string(body)}
}

// ErrorResponse is JSONResponse of {"error": msg}.
func ErrorResponse(status int, msg string) HTTPResponse {
	return JSONResponse(status, map[string]string{"error": msg})
}

// isBase64Text reports whether the host's Convert.FromBase64String would
// accept s (§5 base64 gotcha): whitespace is ignored, the rest must be
// standard padded base64 — and "" decodes to zero bytes.
func isBase64Text(s string) bool {
	s = strings.Map(func(r rune) rune {
		if r == ' ' || r == '\t' || r == '\r' || r == '\n' {
			return -1
		}
		return r
	}, s)
	if len(s)%4 != 0 {
		return false
	}
	_, err := base64.StdEncoding.DecodeString(s)
	return err == nil
}

// checkOutputs refuses a non-http output the host would mangle (§5): for
// every output that is not an http response, a text value that is valid
// base64 reaches the binding as its decoded bytes.
func checkOutputs(outputs map[string]any) error {
	for name, v := range outputs {
		var texts []string
		switch v := v.(type) {
		case HTTPResponse, *HTTPResponse:
			continue
		case string:
			texts = []string{v}
		case []string:
			texts = v
		case json.RawMessage:
			var s string
			if json.Unmarshal(v, &s) == nil {
				texts = []string{s}
			}
		}
		for _, s := range texts {
			if isBase64Text(s) {
				return fmt.Errorf("output %q: text %.40q is valid base64 and the host would decode it; send a JSON object", name, s)
			}
		}
	}
	return nil
}

// encodeResponse marshals r with the §5 guarantees: Outputs an object,
// Logs an array.
func encodeResponse(r Response) []byte {
	if r.Outputs == nil {
		r.Outputs = map[string]any{}
	}
	if r.Logs == nil {
		r.Logs = []string{}
	}
	r.ReturnValue = nil
	b, err := json.Marshal(r)
	if err != nil {
		b, _ = json.Marshal(Response{Outputs: map[string]any{}, Logs: []string{"encode response: " + err.Error()}})
	}
	return b
}
