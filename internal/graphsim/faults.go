package graphsim

import (
	"math/rand/v2"
	"net/http"
	"sync"
	"time"
)

// Fault is a one-shot misbehaviour for the next Count matching requests.
// Faults are consumed in the order they were injected; a request takes the
// first fault whose Target matches it.
type Fault struct {
	// Status, when set, answers the request with this status instead of
	// serving it: 429 or 503 (throttling; see RetryAfter), 401, 403, or a
	// 5xx. Bodies are realistic Graph error bodies (reference §3.2).
	Status int `json:"status,omitempty"`
	// RetryAfter is the Retry-After header of a 429/503, verbatim: "2",
	// "2.128", an HTTP date (see RetryAfterDate), or "" to omit the header.
	RetryAfter string `json:"retryAfter,omitempty"`
	// Malformed answers a delta page 200 with its JSON body cut short.
	Malformed bool `json:"malformed,omitempty"`
	// ForeignLink makes a delta page's nextLink (or deltaLink) point at
	// another host, which a client must refuse to send its token to.
	ForeignLink bool `json:"foreignLink,omitempty"`
	// Count is how many requests the fault affects; 0 means 1.
	Count int `json:"count,omitempty"`
	// Target says which requests the fault applies to; default AnyRequest.
	Target Target `json:"target,omitempty"`
}

// Target selects the requests a Fault applies to.
type Target string

const (
	AnyRequest      Target = ""      // every Graph request
	DeltaRequests   Target = "delta" // requests to .../items/delta
	FullEnumeration Target = "full"  // delta requests without a token (a fresh round, or a 410's Location)
)

// ForeignHost is the host foreign links point at. The .invalid TLD never
// resolves, so a client that follows such a link fails rather than leaking.
const ForeignHost = "graphsim-foreign.invalid"

// Inject queues a fault.
func (s *Sim) Inject(f Fault) {
	if f.Count <= 0 {
		f.Count = 1
	}
	s.mu.Lock()
	s.faults = append(s.faults, f)
	s.mu.Unlock()
}

// Throttle answers the next n Graph requests with status (429 or 503) and
// the given Retry-After value ("" omits the header).
func (s *Sim) Throttle(n, status int, retryAfter string) {
	s.Inject(Fault{Status: status, RetryAfter: retryAfter, Count: n})
}

// ClearFaults drops every queued fault.
func (s *Sim) ClearFaults() {
	s.mu.Lock()
	s.faults = nil
	s.mu.Unlock()
}

// RetryAfterDate formats t as an HTTP-date Retry-After value.
func RetryAfterDate(t time.Time) string { return t.UTC().Format(http.TimeFormat) }

type faultStage int

const (
	faultBeforeServing faultStage = iota // Status faults
	faultOnPage                          // Malformed / ForeignLink faults
)

// takeFault consumes one use of the first queued fault matching the request
// and stage.
func (s *Sim) takeFault(rt route, stage faultStage) (Fault, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for i := range s.faults {
		f := &s.faults[i]
		if (stage == faultBeforeServing) != (f.Status != 0) {
			continue
		}
		switch f.Target {
		case DeltaRequests:
			if !rt.delta {
				continue
			}
		case FullEnumeration:
			if !rt.delta || rt.hasToken {
				continue
			}
		}
		out := *f
		f.Count--
		if f.Count <= 0 {
			s.faults = append(s.faults[:i], s.faults[i+1:]...)
		}
		return out, true
	}
	return Fault{}, false
}

// applyFault answers the request with a queued status fault, if any.
func (s *Sim) applyFault(w http.ResponseWriter, r *http.Request, rt route, stage faultStage) bool {
	f, ok := s.takeFault(rt, stage)
	if !ok {
		return false
	}
	switch f.Status {
	case http.StatusTooManyRequests, http.StatusServiceUnavailable:
		s.writeThrottle(w, r, f.Status, f.RetryAfter)
	case http.StatusUnauthorized:
		s.count(func(st *Stats) { st.Unauthorized++ })
		w.Header().Set("WWW-Authenticate", `Bearer realm="", authorization_uri="https://login.microsoftonline.com/common/oauth2/authorize", client_id="00000003-0000-0000-c000-000000000000"`)
		s.writeError(w, r, f.Status, "InvalidAuthenticationToken", "Lifetime validation failed, the token is expired.", nil)
	case http.StatusForbidden:
		s.count(func(st *Stats) { st.Forbidden++ })
		s.writeError(w, r, f.Status, "accessDenied", "Access denied", nil)
	default:
		code := "generalException"
		if f.Status == http.StatusGatewayTimeout {
			code = "timeout"
		}
		s.writeError(w, r, f.Status, code, "An unexpected error occurred.", nil)
	}
	return true
}

// writeThrottle answers 429 or 503, rotating through the bodies observed in
// the wild (reference §3.2): SharePoint's activityLimitReached chain, Graph's
// generic TooManyRequests, and the "application or user has been throttled"
// message.
func (s *Sim) writeThrottle(w http.ResponseWriter, r *http.Request, status int, retryAfter string) {
	if retryAfter != "" {
		w.Header().Set("Retry-After", retryAfter)
	}
	var n int64
	s.count(func(st *Stats) { st.Throttled++; n = st.Throttled })
	if status == http.StatusServiceUnavailable {
		s.writeError(w, r, status, "serviceNotAvailable", "The service is temporarily unavailable. Please retry later.", nil)
		return
	}
	switch n % 3 {
	case 1:
		s.writeError(w, r, status, "activityLimitReached", "The request has been throttled",
			&innerError{Code: "throttledRequest", InnerError: &innerError{Code: "quota"}})
	case 2:
		s.writeError(w, r, status, "TooManyRequests", "Please retry again later.",
			&innerError{Code: "429", Message: "Please retry after"})
	default:
		s.writeError(w, r, status, "activityLimitReached", "The application or user has been throttled.", nil)
	}
}

// Resync is the error a refused delta token is answered with: 410 Gone with
// a top-level code and, optionally, a nested innerError code.
type Resync struct {
	Code      string `json:"code"`
	InnerCode string `json:"innerCode,omitempty"`
}

// ResyncCodes are the 410 spellings of reference §1.4 and §7.6: the Graph
// list/drive delta docs' codes (top level, and nested under resyncRequired as
// in §1.7 D), the OneDrive error list's inner codes, the bare resyncRequired
// observed on a drive, and the spellings other Graph delta families use.
var ResyncCodes = []Resync{
	{Code: "resyncRequired", InnerCode: "resyncChangesApplyDifferences"}, // the default; §1.7 D
	{Code: "resyncRequired", InnerCode: "resyncChangesUploadDifferences"},
	{Code: "resyncChangesApplyDifferences"},
	{Code: "resyncChangesUploadDifferences"},
	{Code: "resyncRequired"}, // observed, innerError without a code
	{Code: "resyncRequired", InnerCode: "resyncApplyDifferences"},
	{Code: "resyncRequired", InnerCode: "resyncUploadDifferences"},
	{Code: "resyncRequired", InnerCode: "resyncRequired"},
	{Code: "syncStateNotFound"},
	{Code: "SyncStateNotFound"},
	{Code: "SyncStateInvalid"},
	{Code: "ResyncRequired"},
}

// ManualClock is a controllable Clock. The zero value runs with the real
// clock plus whatever Advance added; NewManualClock returns one that stands
// still until advanced.
type ManualClock struct {
	mu     sync.Mutex
	frozen bool
	at     time.Time
	offset time.Duration
}

// NewManualClock returns a clock frozen at t.
func NewManualClock(t time.Time) *ManualClock { return &ManualClock{frozen: true, at: t} }

// Now returns the clock's time.
func (c *ManualClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.frozen {
		return c.at
	}
	return time.Now().Add(c.offset)
}

// Advance moves the clock forward by d.
func (c *ManualClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.at = c.at.Add(d)
	c.offset += d
	c.mu.Unlock()
}

type realClock struct{}

func (realClock) Now() time.Time { return time.Now() }

func newRand(seed uint64) *rand.Rand { return rand.New(rand.NewPCG(seed, seed^0xda3e39cb94b95bdb)) }
