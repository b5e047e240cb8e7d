package sharepoint

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"

	"github.com/sluicehq/sluice/internal/config"
)

// Defaults of Options.
const (
	DefaultMaxPageBytes    = 64 << 20
	DefaultMaxThrottleWait = 10 * time.Minute
	DefaultMaxThrottles    = 8
)

// maxTransientAttempts bounds retries of network errors, 500/502/504 and
// broken bodies per request; they do not pause other requests.
const maxTransientAttempts = 4

// Options configure a Client. Only GraphURL is required.
type Options struct {
	// GraphURL is the Graph root, e.g. https://graph.microsoft.com/v1.0
	// (a trailing slash is removed). Every link the Client follows must have
	// its scheme and host.
	GraphURL string
	// Auth chooses the credential (DESIGN §3.2). Tokens from Entra ID are only
	// sent over https, or plain http to a loopback host (a local simulator).
	Auth config.Auth
	// Credential, when set, replaces Auth (tests, other azidentity credentials).
	Credential azcore.TokenCredential
	// HTTPClient nil: a client with timeouts, keep-alive, the system roots (and
	// SSL_CERT_FILE, as Go does) and TLS verification on.
	HTTPClient *http.Client
	// Version goes into User-Agent "NONISV|sluice|sluice/<version>" (reference §3.1).
	Version string
	Logger  *slog.Logger
	// Now and Sleep are injectable for tests; nil: the real clock.
	Now   func() time.Time
	Sleep func(ctx context.Context, d time.Duration) error
	// MaxPageBytes refuses a page body larger than this; default 64 MB.
	MaxPageBytes int64
	// MaxThrottleWait: a throttle asking for a longer pause ends the request
	// with a *ThrottledError instead of waiting; default 10 minutes
	// (SharePoint has sent Retry-After: 3360, reference §3.2).
	MaxThrottleWait time.Duration
	// MaxThrottles: consecutive 429/503 answers to one request before it
	// gives up with a *ThrottledError; default 8.
	MaxThrottles int
}

// Client reads SharePoint lists through Graph. It is safe for concurrent use;
// all its requests share one throttling pause.
type Client struct {
	bufs            sync.Pool // page bodies, reused between pages
	graph           *url.URL  // scheme+host every link must match
	graphURL        string    // without trailing slash
	hc              *http.Client
	tokens          *tokens
	userAgent       string
	log             *slog.Logger
	now             func() time.Time
	sleep           func(context.Context, time.Duration) error
	maxPageBytes    int64
	maxThrottleWait time.Duration
	maxThrottles    int

	gate  gate
	stats struct{ requests, throttles, pages, items atomic.Int64 }
}

// Stats counts the Client's work, for "resource units per 1,000 items"
// reporting (reference §1.6: a delta call with a token costs 1 RU, without 2).
type Stats struct {
	Requests  int64 // HTTP requests sent, including retries and throttled ones
	Throttles int64 // 429 and 503 answers
	Pages     int64 // delta pages returned by Page
	Items     int64 // items in those pages
}

// Stats returns the counters since New.
func (c *Client) Stats() Stats {
	return Stats{
		Requests:  c.stats.requests.Load(),
		Throttles: c.stats.throttles.Load(),
		Pages:     c.stats.pages.Load(),
		Items:     c.stats.items.Load(),
	}
}

// New checks o and builds the credential. It makes no request.
func New(o Options) (*Client, error) {
	graphURL := strings.TrimRight(o.GraphURL, "/")
	if graphURL == "" {
		graphURL = config.DefaultGraphURL
	}
	u, err := url.Parse(graphURL)
	if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
		return nil, fmt.Errorf("graph_url %q: want an absolute http(s) URL such as %s", graphURL, config.DefaultGraphURL)
	}
	if u.RawQuery != "" || u.Fragment != "" {
		return nil, fmt.Errorf("graph_url %q: must not have a query or fragment", graphURL)
	}
	t := &tokens{cred: o.Credential}
	if t.cred == nil {
		if t.cred, err = newCredential(o.Auth); err != nil {
			return nil, fmt.Errorf("sharepoint auth %s: %w", o.Auth.Type, err)
		}
		if t.cred == nil {
			t.static = o.Auth.Token.Reveal()
		}
	}
	// An access token is good for every Graph call of the app, whether
	// Entra issues it or it is given ready (bearer): never put it on the
	// wire in clear text, except to a simulator on this machine.
	if u.Scheme != "https" && !isLoopback(u.Hostname()) {
		return nil, fmt.Errorf("graph_url %q: access tokens are only sent over https (plain http is allowed for loopback simulators)", graphURL)
	}
	c := &Client{
		graph:           &url.URL{Scheme: u.Scheme, Host: u.Host},
		graphURL:        graphURL,
		tokens:          t,
		userAgent:       "NONISV|sluice|sluice/" + cmpOr(o.Version, "dev"),
		log:             o.Logger,
		now:             o.Now,
		sleep:           o.Sleep,
		maxPageBytes:    o.MaxPageBytes,
		maxThrottleWait: o.MaxThrottleWait,
		maxThrottles:    o.MaxThrottles,
	}
	if c.log == nil {
		c.log = slog.New(slog.DiscardHandler)
	}
	if c.now == nil {
		c.now = time.Now
	}
	if c.sleep == nil {
		c.sleep = sleepCtx
	}
	if c.maxPageBytes <= 0 {
		c.maxPageBytes = DefaultMaxPageBytes
	}
	if c.maxThrottleWait <= 0 {
		c.maxThrottleWait = DefaultMaxThrottleWait
	}
	if c.maxThrottles <= 0 {
		c.maxThrottles = DefaultMaxThrottles
	}
	if o.HTTPClient != nil {
		hc := *o.HTTPClient // a copy: our redirect rule must not change the caller's client
		c.hc = &hc
	} else {
		c.hc = defaultHTTPClient()
	}
	c.hc.CheckRedirect = c.checkRedirect
	return c, nil
}

func cmpOr(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

func isLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// defaultHTTPClient: Go's default transport (proxy from the environment,
// keep-alive, HTTP/2, system roots plus SSL_CERT_FILE) with bounded waits.
// The overall timeout is generous because a 64 MB page over a slow link is
// legitimate; ResponseHeaderTimeout catches a server that never answers.
func defaultHTTPClient() *http.Client {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.ResponseHeaderTimeout = 2 * time.Minute
	tr.MaxIdleConnsPerHost = 8
	return &http.Client{Transport: tr, Timeout: 10 * time.Minute}
}

// checkRedirect follows a redirect only to the Graph host: Go drops the
// Authorization header on cross-domain redirects, but we would rather not
// send the request there at all.
func (c *Client) checkRedirect(req *http.Request, via []*http.Request) error {
	if len(via) >= 5 {
		return errors.New("stopped after 5 redirects")
	}
	if !c.sameOrigin(req.URL) {
		return fmt.Errorf("%w to %s: not the Graph host %s", errForeignRedirect, redact(req.URL), c.graph.Host)
	}
	return nil
}

var errForeignRedirect = errors.New("refusing redirect")

func (c *Client) sameOrigin(u *url.URL) bool {
	return strings.EqualFold(u.Scheme, c.graph.Scheme) && strings.EqualFold(u.Host, c.graph.Host)
}

// checkLink parses a link Graph gave us (or the engine stored) and refuses it
// unless it is absolute and on the Graph host: a link to another host would
// receive our bearer token (reference §1.7: links are opaque absolute URLs).
func (c *Client) checkLink(link string) (*url.URL, error) {
	u, err := url.Parse(link)
	if err != nil {
		return nil, fmt.Errorf("Graph link is not a URL: %w", errors.Unwrap(err))
	}
	if !u.IsAbs() || u.Host == "" {
		return nil, fmt.Errorf("Graph link %s is not an absolute URL", redact(u))
	}
	if !c.sameOrigin(u) {
		return nil, fmt.Errorf("Graph link %s points to another host than %s://%s; refusing to follow it (it would receive the token)", redact(u), c.graph.Scheme, c.graph.Host)
	}
	return u, nil
}

// redact prints a URL without its query (delta tokens, skip tokens) and
// without user info: what is needed to know which request failed.
func redact(u *url.URL) string {
	if u == nil {
		return ""
	}
	s := u.Scheme + "://" + u.Host + u.EscapedPath()
	if u.RawQuery != "" {
		s += "?…"
	}
	return s
}

// request describes one logical GET for messages and retries.
type request struct {
	url     *url.URL
	subject string // "site X" / "site X, list Y", for 401/403/404 messages
	// notFound, when set, is the hint for a 404.
	notFound string
}

// errTransient marks a failure worth retrying (a body cut short by the
// network); the wrapped error is returned once the attempts run out.
type errTransient struct{ err error }

func (e errTransient) Error() string { return e.err.Error() }
func (e errTransient) Unwrap() error { return e.err }

// get sends a GET with auth, throttling and retries, and hands a 200 answer
// to handle (which must not close the body). It returns handle's error, a
// *ThrottledError, a *ResyncError, a *StatusError, or a transport error.
func (c *Client) get(ctx context.Context, r request, handle func(*http.Response) error) error {
	var (
		throttles, transient int
		retried401           bool
	)
	for {
		if err := c.waitTurn(ctx); err != nil {
			return err
		}
		tok, err := c.tokens.get(ctx, c.now())
		if err != nil {
			return err
		}
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, r.url.String(), nil)
		if err != nil {
			return fmt.Errorf("GET %s: %w", redact(r.url), err)
		}
		req.Header.Set("Authorization", "Bearer "+tok)
		req.Header.Set("Accept", "application/json")
		req.Header.Set("User-Agent", c.userAgent)

		c.stats.requests.Add(1)
		resp, err := c.hc.Do(req)
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			if resp != nil {
				resp.Body.Close()
			}
			if errors.Is(err, errForeignRedirect) {
				return fmt.Errorf("GET %s: %w", redact(r.url), unwrapURLError(err))
			}
			// *url.Error names the full URL; rebuild the message without the query.
			err = fmt.Errorf("GET %s: %w", redact(r.url), unwrapURLError(err))
			if transient++; transient >= maxTransientAttempts {
				return err
			}
			if werr := c.backoffWait(ctx, transient, err); werr != nil {
				return werr
			}
			continue
		}

		switch code := resp.StatusCode; {
		case code >= 200 && code < 300:
			err := handle(resp)
			drain(resp)
			var te errTransient
			if errors.As(err, &te) && ctx.Err() == nil {
				if transient++; transient < maxTransientAttempts {
					if werr := c.backoffWait(ctx, transient, te.err); werr != nil {
						return werr
					}
					continue
				}
				return te.err
			}
			if errors.As(err, &te) {
				return te.err // ctx ended mid-body
			}
			return err

		case code == http.StatusTooManyRequests || code == http.StatusServiceUnavailable:
			// Reference §3.1: both mean "slow down" and carry Retry-After;
			// without it Graph recommends exponential backoff.
			ge := readGraphError(resp)
			drain(resp)
			c.stats.throttles.Add(1)
			throttles++
			wait, ok := retryAfter(resp.Header, c.now())
			if !ok {
				wait = backoff(throttles)
			}
			until := c.gate.raise(c.now().Add(wait))
			c.log.Warn("graph throttled", "status", code, "code", ge.Code, "retryAfter", resp.Header.Get("Retry-After"),
				"wait", wait, "until", until, "url", redact(r.url), "attempt", throttles)
			if throttles >= c.maxThrottles {
				return &ThrottledError{Until: until}
			}
			continue // waitTurn sleeps, or gives up if the pause outlasts ctx

		case code == http.StatusInternalServerError || code == http.StatusBadGateway || code == http.StatusGatewayTimeout:
			serr := c.statusError(resp, r, readGraphError(resp))
			drain(resp)
			if transient++; transient >= maxTransientAttempts {
				return serr
			}
			if werr := c.backoffWait(ctx, transient, serr); werr != nil {
				return werr
			}
			continue

		case code == http.StatusUnauthorized:
			serr := c.statusError(resp, r, readGraphError(resp))
			drain(resp)
			// One retry with a fresh token: the cached one may have been
			// revoked early. Never more: a wrong secret stays wrong.
			if !retried401 && c.tokens.invalidate(tok) {
				retried401 = true
				continue
			}
			return serr

		case code == http.StatusGone:
			ge := readGraphError(resp)
			drain(resp)
			if slices.ContainsFunc(ge.codes(), isRetryLaterCode) { // "try again later", not a resync
				err := c.statusError(resp, r, ge)
				if transient++; transient >= maxTransientAttempts {
					return err
				}
				if werr := c.backoffWait(ctx, transient, err); werr != nil {
					return werr
				}
				continue
			}
			return &ResyncError{Location: c.resyncLocation(resp, r.url), Code: resyncCode(ge)}

		default:
			serr := c.statusError(resp, r, readGraphError(resp))
			drain(resp)
			return serr
		}
	}
}

// backoffWait sleeps before a transient retry unless that would outlast ctx.
func (c *Client) backoffWait(ctx context.Context, attempt int, cause error) error {
	d := backoff(attempt)
	if outlastsDeadline(ctx, d) {
		return cause
	}
	c.log.Debug("graph request failed, retrying", "err", cause, "wait", d, "attempt", attempt)
	return c.sleep(ctx, d)
}

// resyncLocation returns the 410's Location when it is a usable same-host
// link (resolved against the request URL if relative), else "": the engine
// then starts from DeltaURL (reference §1.4: following Location once failed).
func (c *Client) resyncLocation(resp *http.Response, base *url.URL) string {
	loc := resp.Header.Get("Location")
	if loc == "" {
		return ""
	}
	u, err := base.Parse(loc)
	if err != nil || !c.sameOrigin(u) {
		c.log.Warn("ignoring 410 Location not on the Graph host", "location", redactString(loc))
		return ""
	}
	return u.String()
}

func redactString(s string) string {
	u, err := url.Parse(s)
	if err != nil {
		return "(unparsable URL)"
	}
	return redact(u)
}

// statusError builds the error for a non-success answer, with the fix a user
// can apply for 401, 403 and 404.
func (c *Client) statusError(resp *http.Response, r request, ge graphError) *StatusError {
	e := &StatusError{
		StatusCode: resp.StatusCode,
		Code:       ge.Code,
		Message:    ge.Message,
		RequestID:  resp.Header.Get("request-id"),
		URL:        redact(r.url),
		Subject:    r.subject,
	}
	switch resp.StatusCode {
	case http.StatusUnauthorized:
		e.Hint = "the token is missing, expired or not valid for Microsoft Graph (scope " + GraphScope +
			"): check tenant_id, client_id and the secret or certificate, or the managed identity"
	case http.StatusForbidden:
		e.Hint = "grant the app Sites.Read.All or a Sites.Selected read role on the site"
	case http.StatusNotFound:
		e.Hint = r.notFound
	}
	return e
}

func unwrapURLError(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err
	}
	return err
}

// drain lets the connection be reused; a huge unread body is not worth it.
func drain(resp *http.Response) {
	_, _ = io.CopyN(io.Discard, resp.Body, 64<<10)
	resp.Body.Close()
}
