// Package httpsink is the HTTP webhook destination: it POSTs change records
// as CloudEvents 1.0 batches, signed with HMAC-SHA256, exactly as DESIGN §3.4
// says, and classifies every answer as delivered, bad records, or a broken
// destination.
//
// It must never follow a redirect (a 3xx is the destination's failure), never
// report a destination-wide failure (auth, 404, outage) as per-record
// rejections — that would dead-letter good data — and never let the secret
// reach a log or an error.
package httpsink

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/sluicehq/sluice/internal/config"
)

// Defaults applied by Open.
const (
	DefaultBatchSize   = config.DefaultHTTPBatchSize
	DefaultTimeout     = config.DefaultHTTPTimeout
	DefaultMaxInFlight = config.DefaultHTTPMaxInFlight
	DefaultMaxAttempts = 5
)

// Config says where and how to POST.
type Config struct {
	// URL is the receiver's endpoint (http or https).
	URL string
	// BatchSize is the most events in one POST; 0 means 100.
	BatchSize int
	// Timeout bounds one POST attempt, answer included; 0 means 30s.
	Timeout time.Duration
	// MaxInFlight is how many POSTs of one Apply may be in flight at once;
	// 0 means 1 (strict seq order). More allows reordering between POSTs.
	MaxInFlight int
	// Secret signs every request (X-Sluice-Signature); empty: unsigned.
	// Callers pass config.Secret.Reveal(); the sink never prints it.
	Secret string
	// Headers are added to every request. Content-Type, Content-Length,
	// Idempotency-Key and X-Sluice-* are sluice's and may not be set here.
	Headers map[string]string
	// Client sends the requests; nil means a client of the sink's own with
	// keep-alive reuse. Whatever the client, redirects are never followed:
	// the sink uses a copy whose CheckRedirect stops at the first answer.
	Client *http.Client
	// Logger receives retries, splits and rejected records; nil discards.
	Logger *slog.Logger
	// Now is the clock for signature timestamps and Retry-After dates; nil
	// means time.Now.
	Now func() time.Time

	// MaxAttempts bounds the attempts of one POST on transient failures
	// (408, 429, 5xx, network, timeout); 0 means 5. When they run out Apply
	// fails and the engine retries the batch later.
	MaxAttempts int
	// Sleep waits between attempts; nil waits on a timer. It must return
	// ctx's error when ctx ends first. Tests inject it to avoid waiting.
	Sleep func(ctx context.Context, d time.Duration) error
	// Version goes into User-Agent "sluice/<version>"; empty means "dev".
	Version string
}

// Sink POSTs batches to one receiver. It is safe for concurrent use, but the
// engine drives one Apply at a time per destination, which is what keeps
// seq order with MaxInFlight 1.
type Sink struct {
	cfg     Config
	url     string // the full URL: only ever used to send, never printed
	target  string // scheme://host: what messages show (paths may hold tokens)
	client  *http.Client
	headers http.Header // user headers, canonical, without Host
	host    string      // a user Host header: the request's Host
	// header values shared read-only by every request (saves allocations)
	userAgent   []string
	contentType []string
	secret      []byte
	log         *slog.Logger
	now         func() time.Time
	sleep       func(ctx context.Context, d time.Duration) error
}

// Open checks cfg and prepares the client. It does no network I/O: an
// unreachable receiver shows up as the first Apply's error.
func Open(cfg Config) (*Sink, error) {
	u, err := url.Parse(cfg.URL)
	switch {
	case cfg.URL == "":
		return nil, errors.New("open http destination: url is required")
	case err != nil:
		// url.Parse quotes the whole URL, which may hold a token: keep it out.
		return nil, errors.New("open http destination: url is not a valid URL")
	case u.Scheme != "http" && u.Scheme != "https":
		return nil, fmt.Errorf("open http destination: url scheme %q is not http or https", u.Scheme)
	case u.Host == "":
		return nil, errors.New("open http destination: url has no host")
	case cfg.BatchSize < 0:
		return nil, fmt.Errorf("open http destination %s: batch_size %d must be positive", hostOf(u), cfg.BatchSize)
	case cfg.Timeout < 0:
		return nil, fmt.Errorf("open http destination %s: timeout %v must be positive", hostOf(u), cfg.Timeout)
	case cfg.MaxInFlight < 0:
		return nil, fmt.Errorf("open http destination %s: max_in_flight %d must be positive", hostOf(u), cfg.MaxInFlight)
	case cfg.MaxAttempts < 0:
		return nil, fmt.Errorf("open http destination %s: max attempts %d must be positive", hostOf(u), cfg.MaxAttempts)
	}
	cfg.BatchSize = cmp.Or(cfg.BatchSize, DefaultBatchSize)
	cfg.Timeout = cmp.Or(cfg.Timeout, DefaultTimeout)
	cfg.MaxInFlight = cmp.Or(cfg.MaxInFlight, DefaultMaxInFlight)
	cfg.MaxAttempts = cmp.Or(cfg.MaxAttempts, DefaultMaxAttempts)

	s := &Sink{
		cfg:         cfg,
		url:         cfg.URL,
		target:      hostOf(u),
		headers:     make(http.Header, len(cfg.Headers)),
		userAgent:   []string{"sluice/" + cmp.Or(cfg.Version, "dev")},
		contentType: []string{contentType},
		secret:      []byte(cfg.Secret),
		log:         cfg.Logger,
		now:         cfg.Now,
		sleep:       cfg.Sleep,
	}
	for name, value := range cfg.Headers {
		if err := checkHeader(name, value); err != nil {
			return nil, fmt.Errorf("open http destination %s: %w", s.target, err)
		}
		if http.CanonicalHeaderKey(name) == "Host" {
			s.host = value // Go sends req.Host, never a Host header
			continue
		}
		s.headers.Set(name, value)
	}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	if s.now == nil {
		s.now = time.Now
	}
	if s.sleep == nil {
		s.sleep = sleep
	}
	if cfg.Client != nil {
		c := *cfg.Client // a copy: the caller's client keeps its own redirect policy
		s.client = &c
	} else {
		s.client = &http.Client{Transport: newTransport(cfg.MaxInFlight)}
	}
	// Never follow a redirect: the POST would be re-sent (or turned into a
	// GET) to an address nobody configured, possibly with the signature.
	s.client.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	return s, nil
}

// newTransport is a transport for one receiver: connections are kept alive
// and reused across POSTs, with enough idle slots for MaxInFlight, and the
// answer's headers are bounded.
func newTransport(inFlight int) *http.Transport {
	return &http.Transport{
		Proxy:                  http.ProxyFromEnvironment,
		DialContext:            (&net.Dialer{Timeout: 30 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		ForceAttemptHTTP2:      true,
		MaxIdleConns:           max(16, inFlight+1),
		MaxIdleConnsPerHost:    inFlight + 1,
		IdleConnTimeout:        90 * time.Second,
		TLSHandshakeTimeout:    10 * time.Second,
		ExpectContinueTimeout:  time.Second,
		MaxResponseHeaderBytes: 64 << 10,
	}
}

// Close releases the client's idle connections (a caller's Client too: its
// connections to this receiver are idle once the sink is done). In-flight
// Applies are not interrupted.
func (s *Sink) Close() error {
	s.client.CloseIdleConnections()
	return nil
}

func checkHeader(name, value string) error {
	if name == "" || strings.IndexFunc(name, func(r rune) bool { return !isTokenChar(r) }) >= 0 {
		return fmt.Errorf("header name %q is not a valid HTTP header name", name)
	}
	// Headers sluice sets itself: a user value would break the contract or
	// the signature.
	switch h := http.CanonicalHeaderKey(name); h {
	case "Content-Type", "Content-Length", "Idempotency-Key", "X-Sluice-Timestamp", "X-Sluice-Signature":
		return fmt.Errorf("header %s is set by sluice and may not be configured", h)
	}
	if strings.ContainsAny(value, "\r\n\x00") {
		// The value is not quoted: it may be a credential.
		return fmt.Errorf("header %s: value holds a line break or NUL", name)
	}
	return nil
}

// isTokenChar reports whether r may appear in a header name (RFC 9110 token).
func isTokenChar(r rune) bool {
	switch {
	case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9':
		return true
	}
	return strings.ContainsRune("!#$%&'*+-.^_`|~", r)
}

// hostOf is what errors and logs show of a URL: scheme and host only, since
// webhook paths and queries often carry a token (Slack, Teams, Zapier).
func hostOf(u *url.URL) string {
	return u.Scheme + "://" + u.Host
}

func sleep(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
