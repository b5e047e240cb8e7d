// Package graphsim is a faithful local simulator of the Microsoft Graph v1.0
// endpoints sluice reads SharePoint lists through: site and list resolution
// and list-item delta (reference/sharepoint-graph-delta.md §1, §3, §6, §7).
// It owns the simulated lists' state and their change logs; it must never
// offer a convenience a real Graph lacks, because sluice is accepted against
// other implementations too.
//
// Use it in-process as an http.Handler (sim implements ServeHTTP, mounted so
// that Graph's base URL is <server>/v1.0), or as a process via cmd/graphsim:
//
//	sim := graphsim.New(graphsim.Options{Token: "t"})
//	orders := sim.AddList("contoso.sharepoint.com", "/sites/ops", "Orders")
//	orders.Populate(1000, 1)
//	srv := httptest.NewTLSServer(sim)
//	graphURL := srv.URL + "/v1.0"
//
// Adversarial behaviour is off by default and switched on per list with
// Knobs (duplicates, shuffling, short and empty pages, changes mid-round,
// Graph's per-page latency), and per request with Inject (throttling,
// server errors, malformed pages, foreign links).
package graphsim

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Options configure a Sim. The zero value is usable.
type Options struct {
	// Token is the bearer token requests must carry. Empty accepts any
	// non-empty bearer token (the Authorization header is still required).
	Token string
	// Clock tells the time: item timestamps, tombstone retention, token
	// lifetime, the RU budget window. nil means the real clock.
	Clock Clock
	// TombstoneRetention is how long a delete is reported after it happened.
	// Tokens older than a purged tombstone get 410. Default 60 days, the
	// SharePoint change-log default (reference §1.1).
	TombstoneRetention time.Duration
	// TokenLifetime, when positive, makes tokens and nextLinks older than this
	// answer 410. Microsoft publishes no lifetime (reference §1.1).
	TokenLifetime time.Duration
	// DefaultPageSize is the page size without $top (default 200); MaxPageSize
	// caps $top (default 1000). Both are guesses: Graph documents neither.
	DefaultPageSize, MaxPageSize int
	// RUPerMinute, when positive, is the app's resource-unit budget per
	// minute (reference §3.1): over it, requests get 429 with Retry-After;
	// from 80% of it on, responses carry RateLimit-* headers.
	RUPerMinute int
	// Logger receives one debug line per request; nil discards.
	Logger *slog.Logger
}

// Clock is the simulator's source of time.
type Clock interface{ Now() time.Time }

// Sim is a simulated Microsoft Graph. It is an http.Handler serving
// /v1.0/...; see AdminHandler for the /_sim/ control endpoints.
type Sim struct {
	opts   Options
	log    *slog.Logger
	salt   uint64
	nextID atomic.Uint64 // for GUIDs of sites and lists

	tokenSerial atomic.Uint64 // serial of the last delta token or nextLink issued
	reqSerial   atomic.Uint64

	mu       sync.Mutex
	token    string
	sites    []*site
	faults   []Fault
	stats    Stats
	ruWindow time.Time // start of the current RU budget minute
	ruUsed   int
}

type site struct {
	id       string // "hostname,site-guid,web-guid"
	hostname string
	path     string // server-relative, e.g. "/sites/ops"
	siteGUID string
	webGUID  string
	created  time.Time
	denied   bool
	lists    []*List
}

// New returns a simulator with no sites.
func New(opts Options) *Sim {
	if opts.Clock == nil {
		opts.Clock = realClock{}
	}
	if opts.TombstoneRetention <= 0 {
		opts.TombstoneRetention = 60 * 24 * time.Hour
	}
	if opts.DefaultPageSize <= 0 {
		opts.DefaultPageSize = 200
	}
	if opts.MaxPageSize <= 0 {
		opts.MaxPageSize = 1000
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &Sim{opts: opts, log: log, token: opts.Token, salt: 0x5eed}
	s.stats.UserAgents = map[string]int64{}
	return s
}

func (s *Sim) now() time.Time { return s.opts.Clock.Now() }

// AddList adds a list to the site at hostname and server-relative path
// (created on first use), and returns it. Adding a display name that
// already exists on the site returns the existing list.
func (s *Sim) AddList(hostname, sitePath, displayName string) *List {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.siteByPathLocked(hostname, sitePath)
	if st == nil {
		n := s.nextID.Add(1)
		st = &site{
			hostname: strings.ToLower(hostname),
			path:     normPath(sitePath),
			siteGUID: guid(mix(s.salt, n), mix(n, 1)),
			webGUID:  guid(mix(s.salt, n), mix(n, 2)),
			created:  s.now().Add(-400 * 24 * time.Hour).Truncate(time.Second),
		}
		st.id = st.hostname + "," + st.siteGUID + "," + st.webGUID
		s.sites = append(s.sites, st)
	}
	for _, l := range st.lists {
		if strings.EqualFold(l.name, displayName) {
			return l
		}
	}
	n := s.nextID.Add(1)
	l := &List{
		sim:     s,
		site:    st,
		id:      guid(mix(s.salt, n), mix(n, 3)),
		name:    displayName,
		urlName: strings.ReplaceAll(displayName, " ", ""),
		salt:    mix(s.salt, n),
	}
	l.rng = newRand(l.salt)
	l.webURLPrefix = `"` + st.webURL() + "/Lists/" + l.urlName + "/"
	l.parentRef = `{"id":"0","siteId":"` + st.siteGUID + `"}`
	st.lists = append(st.lists, l)
	return l
}

// Lists returns every list, in the order they were added.
func (s *Sim) Lists() []*List {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []*List
	for _, st := range s.sites {
		out = append(out, st.lists...)
	}
	return out
}

// FindList returns the list named by site (a composite site id or
// "hostname:/path") and list (its id or display name).
func (s *Sim) FindList(siteRef, list string) (*List, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.siteByRefLocked(siteRef)
	if st == nil {
		return nil, false
	}
	l := st.list(list)
	return l, l != nil
}

// DenySite makes every request under the site (a composite site id or
// "hostname:/path") answer 403 accessDenied, as Graph does when the app has
// no Sites.Selected grant for it (reference §7.8); deny=false lifts it.
func (s *Sim) DenySite(siteRef string, deny bool) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.siteByRefLocked(siteRef)
	if st == nil {
		return fmt.Errorf("graphsim: no site %q", siteRef)
	}
	st.denied = deny
	return nil
}

// SetToken changes the bearer token requests must carry; requests with the
// old one then get 401 (an expired token). Empty accepts any token.
func (s *Sim) SetToken(token string) {
	s.mu.Lock()
	s.token = token
	s.mu.Unlock()
}

// ExpireTokens expires every delta token and nextLink issued so far, on
// every list (see List.ExpireTokens).
func (s *Sim) ExpireTokens() {
	for _, l := range s.Lists() {
		l.ExpireTokens()
	}
}

func (s *Sim) siteByPathLocked(hostname, path string) *site {
	hostname, path = strings.ToLower(hostname), normPath(path)
	for _, st := range s.sites {
		if st.hostname == hostname && strings.EqualFold(st.path, path) {
			return st
		}
	}
	return nil
}

func (s *Sim) siteByIDLocked(id string) *site {
	for _, st := range s.sites {
		if strings.EqualFold(st.id, id) {
			return st
		}
	}
	return nil
}

func (s *Sim) siteByRefLocked(ref string) *site {
	if host, path, ok := strings.Cut(ref, ":"); ok {
		return s.siteByPathLocked(host, path)
	}
	return s.siteByIDLocked(ref)
}

func (st *site) list(ref string) *List {
	for _, l := range st.lists {
		if strings.EqualFold(l.id, ref) {
			return l
		}
	}
	for _, l := range st.lists {
		if strings.EqualFold(l.name, ref) {
			return l
		}
	}
	return nil
}

func (st *site) webURL() string { return "https://" + st.hostname + st.path }

func normPath(p string) string {
	p = strings.TrimRight(p, "/")
	if p != "" && !strings.HasPrefix(p, "/") {
		p = "/" + p
	}
	return p
}

// Stats counts what the simulator served. Resource units follow reference
// §1.6: 1 for a delta request with a token and for single-item reads, 2 for
// a delta request without a token and for collection reads; throttled
// requests count too, as SharePoint counts them (§3.1).
type Stats struct {
	Requests      int64 // Graph requests, including refused ones (not /_sim/)
	DeltaRequests int64 // requests to .../items/delta
	Pages         int64 // delta pages answered 200
	Items         int64 // entries in those pages (duplicates and tombstones included)
	ResourceUnits int64
	Throttled     int64 // 429 and 503 answers
	Unauthorized  int64 // 401 answers
	Forbidden     int64 // 403 answers
	Gone          int64 // 410 answers
	// UserAgents counts requests by User-Agent header value.
	UserAgents map[string]int64
}

// Stats returns a copy of the counters.
func (s *Sim) Stats() Stats {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.stats
	st.UserAgents = make(map[string]int64, len(s.stats.UserAgents))
	for k, v := range s.stats.UserAgents {
		st.UserAgents[k] = v
	}
	return st
}

// ResetStats zeroes the counters.
func (s *Sim) ResetStats() {
	s.mu.Lock()
	s.stats = Stats{UserAgents: map[string]int64{}}
	s.mu.Unlock()
}

func (s *Sim) count(f func(*Stats)) {
	s.mu.Lock()
	f(&s.stats)
	s.mu.Unlock()
}

// route is a parsed Graph request path.
type route struct {
	site     *site
	siteRef  string // as the client wrote it, for 404 messages
	sub      []string
	delta    bool
	ruCost   int
	hasToken bool
}

// ServeHTTP serves Graph requests under /v1.0/.
func (s *Sim) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	reqID := s.requestID()
	w.Header().Set("request-id", reqID)
	if c := r.Header.Get("client-request-id"); c != "" {
		w.Header().Set("client-request-id", c)
	} else {
		w.Header().Set("client-request-id", reqID)
	}
	s.log.Debug("graph request", "method", r.Method, "url", r.URL.String())

	rt, perr := s.parseRoute(r)
	s.count(func(st *Stats) {
		st.Requests++
		st.UserAgents[r.Header.Get("User-Agent")]++
		if rt.delta {
			st.DeltaRequests++
		}
		st.ResourceUnits += int64(rt.ruCost)
	})

	// Authentication comes before everything else, as in Graph.
	if !s.authorized(w, r) {
		return
	}
	if s.overBudget(w, r, rt.ruCost) {
		return
	}
	if s.applyFault(w, r, rt, faultBeforeServing) {
		return
	}
	if perr != nil {
		s.writeError(w, r, perr.status, perr.code, perr.msg, nil)
		return
	}
	if r.Method != http.MethodGet {
		s.writeError(w, r, http.StatusMethodNotAllowed, "BadRequest", "Unsupported request method "+r.Method+" for this resource.", nil)
		return
	}
	s.mu.Lock()
	denied := rt.site.denied
	s.mu.Unlock()
	if denied {
		s.count(func(st *Stats) { st.Forbidden++ })
		s.writeError(w, r, http.StatusForbidden, "accessDenied", "Access denied", nil)
		return
	}
	s.serveSite(w, r, rt)
}

type routeError struct {
	status    int
	code, msg string
}

// parseRoute resolves /v1.0/sites/{hostname}:/{path}[:/...] and
// /v1.0/sites/{site-id}[/...]. It also classifies the request's RU cost.
func (s *Sim) parseRoute(r *http.Request) (route, *routeError) {
	rt := route{ruCost: 1}
	p, ok := strings.CutPrefix(r.URL.Path, "/v1.0/")
	if !ok {
		return rt, &routeError{http.StatusNotFound, "BadRequest", "Invalid version: " + strings.Trim(r.URL.Path, "/")}
	}
	rest, ok := strings.CutPrefix(p, "sites/")
	if !ok {
		return rt, &routeError{http.StatusBadRequest, "BadRequest", "Resource not found for the segment '" + strings.SplitN(p, "/", 2)[0] + "'."}
	}
	var sub string
	slash := strings.IndexByte(rest, '/')
	colon := strings.IndexByte(rest, ':')
	s.mu.Lock()
	defer s.mu.Unlock()
	if colon >= 0 && (slash < 0 || colon < slash) {
		// sites/{hostname}:/{server-relative-path}[:/{sub}]
		host, path := rest[:colon], rest[colon+1:]
		if i := strings.IndexByte(path, ':'); i >= 0 {
			path, sub = path[:i], path[i+1:]
		}
		rt.siteRef = host + ":" + path
		rt.site = s.siteByPathLocked(host, path)
	} else {
		id := rest
		if slash >= 0 {
			id, sub = rest[:slash], rest[slash:]
		}
		rt.siteRef = id
		rt.site = s.siteByIDLocked(id)
	}
	sub = strings.Trim(sub, "/")
	if sub != "" {
		rt.sub = strings.Split(sub, "/")
	}
	n := len(rt.sub)
	switch {
	case n == 1 && rt.sub[0] == "lists":
		rt.ruCost = 2
	case n == 4 && rt.sub[0] == "lists" && rt.sub[2] == "items" && rt.sub[3] == "delta":
		rt.delta = true
		rt.hasToken = r.URL.Query().Has("token")
		if !rt.hasToken {
			rt.ruCost = 2
		}
	}
	if rt.site == nil {
		return rt, &routeError{http.StatusNotFound, "itemNotFound", "Requested site could not be found"}
	}
	return rt, nil
}

// authorized checks the bearer token and answers 401 when it is missing or
// wrong, with the WWW-Authenticate header Graph sends (reference §7.8).
func (s *Sim) authorized(w http.ResponseWriter, r *http.Request) bool {
	s.mu.Lock()
	want := s.token
	s.mu.Unlock()
	got, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	got = strings.TrimSpace(got)
	msg := ""
	switch {
	case !ok || got == "":
		msg = "Access token is empty."
	case want != "" && got != want:
		msg = "Lifetime validation failed, the token is expired."
	default:
		return true
	}
	s.count(func(st *Stats) { st.Unauthorized++ })
	w.Header().Set("WWW-Authenticate", `Bearer realm="", authorization_uri="https://login.microsoftonline.com/common/oauth2/authorize", client_id="00000003-0000-0000-c000-000000000000"`)
	s.writeError(w, r, http.StatusUnauthorized, "InvalidAuthenticationToken", msg, nil)
	return false
}

// overBudget enforces Options.RUPerMinute with a fixed one-minute window.
func (s *Sim) overBudget(w http.ResponseWriter, r *http.Request, cost int) bool {
	limit := s.opts.RUPerMinute
	if limit <= 0 {
		return false
	}
	now := s.now()
	s.mu.Lock()
	if s.ruWindow.IsZero() || now.Sub(s.ruWindow) >= time.Minute || now.Before(s.ruWindow) {
		s.ruWindow, s.ruUsed = now, 0
	}
	s.ruUsed += cost // throttled requests count against the budget too (§3.1)
	used := s.ruUsed
	reset := int((time.Minute - now.Sub(s.ruWindow) + time.Second - 1) / time.Second)
	s.mu.Unlock()
	if used*5 >= limit*4 {
		w.Header().Set("RateLimit-Limit", strconv.Itoa(limit))
		w.Header().Set("RateLimit-Remaining", strconv.Itoa(max(0, limit-used)))
		w.Header().Set("RateLimit-Reset", strconv.Itoa(reset))
	}
	if used <= limit {
		return false
	}
	s.writeThrottle(w, r, http.StatusTooManyRequests, strconv.Itoa(reset))
	return true
}

func (s *Sim) requestID() string {
	n := s.reqSerial.Add(1)
	return guid(mix(s.salt, n), n)
}

// graphError is Graph's error body, {"error": {...}} (reference §1.7 D, §3.2).
type graphError struct {
	Code       string      `json:"code"`
	Message    string      `json:"message,omitempty"`
	InnerError *innerError `json:"innerError,omitempty"`
}

type innerError struct {
	Code            string      `json:"code,omitempty"`
	Message         string      `json:"message,omitempty"`
	InnerError      *innerError `json:"innerError,omitempty"`
	Date            string      `json:"date,omitempty"`
	RequestID       string      `json:"request-id,omitempty"`
	ClientRequestID string      `json:"client-request-id,omitempty"`
}

// writeError writes a Graph error. inner, when given, is the innerError to
// complete with date and request ids.
func (s *Sim) writeError(w http.ResponseWriter, r *http.Request, status int, code, msg string, inner *innerError) {
	if inner == nil {
		inner = &innerError{}
	}
	inner.Date = s.now().UTC().Format("2006-01-02T15:04:05")
	inner.RequestID = w.Header().Get("request-id")
	inner.ClientRequestID = w.Header().Get("client-request-id")
	body, _ := json.Marshal(map[string]graphError{"error": {Code: code, Message: msg, InnerError: inner}})
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(status)
	w.Write(body)
	s.log.Debug("graph error", "status", status, "code", code, "url", r.URL.String())
}
