package sharepoint

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"
)

// ThrottledError says Graph asked us to wait (429/503 with or without
// Retry-After) longer than the caller can: past the context deadline, longer
// than Options.MaxThrottleWait, or too many times in a row. The engine saves
// Until as throttledUntil and ends the pass cleanly (DESIGN §4 Read).
type ThrottledError struct {
	Until time.Time // no request of this Client is sent before then
}

func (e *ThrottledError) Error() string {
	return "Graph is throttling this app: no request before " + e.Until.UTC().Format(time.RFC3339)
}

// ResyncError is a 410 Gone on a delta request: the token is no longer
// usable and a full round must start (reference §1.1, §1.3, §1.4).
// Location, when non-empty, is the absolute, same-host link Graph sent to
// start it; when it is empty or fails, start from DeltaURL.
type ResyncError struct {
	Location string
	Code     string // the most specific code found in the error chain, e.g. "resyncChangesApplyDifferences"
}

func (e *ResyncError) Error() string {
	code := e.Code
	if code == "" {
		code = "no code"
	}
	return "Graph answered 410 Gone (" + code + "): the delta token expired, a full round is needed"
}

// StatusError is any other non-success answer from Graph. Its message says
// what was asked, what Graph said and, for 401/403/404, what to do about it.
type StatusError struct {
	StatusCode int
	Code       string // Graph's error.code, e.g. "accessDenied"
	Message    string // Graph's error.message
	RequestID  string // request-id header, for Microsoft support
	URL        string // the request URL without its query
	Subject    string // "site X", "site X, list Y": what was being read
	Hint       string // how to fix it, when a user can
}

func (e *StatusError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "Graph answered %d", e.StatusCode)
	if e.Subject != "" {
		b.WriteString(" for " + e.Subject)
	}
	if e.Hint != "" {
		b.WriteString(": " + e.Hint)
	}
	if e.Code != "" || e.Message != "" {
		fmt.Fprintf(&b, " (%s", e.Code)
		if e.Message != "" {
			if e.Code != "" {
				b.WriteString(": ")
			}
			b.WriteString(truncate(e.Message, 300))
		}
		b.WriteString(")")
	}
	if e.URL != "" {
		b.WriteString(" [GET " + e.URL)
		if e.RequestID != "" {
			b.WriteString(" request-id " + e.RequestID)
		}
		b.WriteString("]")
	}
	return b.String()
}

// graphError is Graph's error body: {"error":{"code","message","innerError":{...}}}.
// encoding/json matches keys case-insensitively, so "innererror" (the
// OneDrive spelling, reference §1.4) decodes too.
type graphError struct {
	Code       string      `json:"code"`
	Message    string      `json:"message"`
	InnerError *graphError `json:"innerError"`
}

// codes returns the codes of the chain, outermost first.
func (g *graphError) codes() []string {
	var out []string
	for e, n := g, 0; e != nil && n < 16; e, n = e.InnerError, n+1 {
		if e.Code != "" {
			out = append(out, e.Code)
		}
	}
	return out
}

// readGraphError reads at most 64 KB of an error body. A body that is not
// Graph's error JSON yields an empty graphError: the status alone decides.
func readGraphError(resp *http.Response) graphError {
	var env struct {
		Error graphError `json:"error"`
	}
	data, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	_ = json.Unmarshal(data, &env)
	return env.Error
}

// resyncCodes are the 410 codes of reference §1.4 (and the brief's
// resyncChangesApplyDifferencesInsertOnly), lower-cased: Graph, OneDrive and
// other delta families spell them differently, and corso compares them
// case-insensitively. Any other code starting with "resync" is taken as a
// resync as well (isResyncCode).
var resyncCodes = map[string]bool{
	"resyncrequired":                          true,
	"resyncchangesapplydifferences":           true,
	"resyncchangesuploaddifferences":          true,
	"resyncchangesapplydifferencesinsertonly": true,
	"resyncapplydifferences":                  true,
	"resyncuploaddifferences":                 true,
	"syncstatenotfound":                       true,
	"syncstateinvalid":                        true,
}

func isResyncCode(code string) bool {
	c := strings.ToLower(code)
	return resyncCodes[c] || strings.HasPrefix(c, "resync")
}

// isRetryLaterCode: "Failed to get a consistent delta snapshot. Try again
// later." (OneDrive errors list, reference §1.4) is transient, not a resync.
func isRetryLaterCode(code string) bool { return strings.EqualFold(code, "cannotSnapshotTree") }

// resyncCode picks the most specific known code of the chain: the OneDrive
// doc says to walk inner errors and use the most specific code you know.
func resyncCode(g graphError) string {
	codes := g.codes()
	for i := len(codes) - 1; i >= 0; i-- {
		if isResyncCode(codes[i]) {
			return codes[i]
		}
	}
	if len(codes) > 0 {
		return codes[0]
	}
	return ""
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}
