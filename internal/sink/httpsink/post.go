package httpsink

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/sluicehq/sluice/internal/changelog"
)

const (
	contentType = "application/cloudevents-batch+json"
	// maxWait caps one wait between attempts: a receiver asking for more
	// (Retry-After: 3600) fails the Apply now, so the drain ends cleanly
	// and the engine comes back later instead of holding a lease idle.
	maxWait = 5 * time.Minute
	// reasonBytes is how much of a refusal's body is kept as its reason.
	reasonBytes = 512
	// drainBytes is how much of an answer is read so that its connection
	// can be reused; a longer body costs a new connection, not memory.
	drainBytes = 64 << 10
)

// result is what a POST that got a final answer came to.
type result struct {
	ok     bool   // 2xx: delivered
	status int    // when !ok: 400, 422 or 413, and the POST is to be split
	reason string // when !ok: the receiver's reason, for a RecordError
}

// answer is one attempt's outcome.
type answer struct {
	status     int
	reason     string // "<status> <text>[: <start of body>]"
	retryAfter string
	location   string
	err        error // no answer: network error or timeout
	timedOut   bool
}

// post sends one POST of recs until it gets a final answer: retrying
// transient failures with the same body and Idempotency-Key (only the
// signature timestamp changes), honouring Retry-After. It returns an error
// only for destination-wide failures.
func (s *Sink) post(ctx context.Context, a *apply, recs []changelog.Record) (result, error) {
	body := a.enc.appendBatch(make([]byte, 0, a.enc.size(recs)), recs)
	first, last := recs[0].Seq, recs[len(recs)-1].Seq
	key := a.keyHead + strconv.FormatInt(first, 10) + "-" + strconv.FormatInt(last, 10)
	where := func() string {
		return fmt.Sprintf("http destination %s: POST of seq %d-%d to %s", a.name, first, last, s.target)
	}

	for attempt := 1; ; attempt++ {
		ans := s.once(ctx, body, key)
		if err := ctx.Err(); err != nil {
			// The caller gave up (or another POST of this Apply failed):
			// whatever the answer, the batch is retried as a whole.
			return result{}, fmt.Errorf("%s: %w", where(), err)
		}
		var problem string // a transient failure, to retry
		switch st := ans.status; {
		case ans.err != nil:
			if isCertError(ans.err) {
				return result{}, fmt.Errorf("%s: %v: check the receiver's TLS certificate; the destination is halted and retried later", where(), ans.err)
			}
			problem = "no answer: " + ans.err.Error()
			if ans.timedOut {
				problem = fmt.Sprintf("no answer within %v (timeout)", s.cfg.Timeout)
			}
		case st >= 200 && st < 300:
			return result{ok: true}, nil
		case st == http.StatusBadRequest, st == http.StatusUnprocessableEntity:
			return result{status: st, reason: ans.reason}, nil
		case st == http.StatusRequestEntityTooLarge:
			reason := ans.reason
			if len(recs) == 1 {
				reason = fmt.Sprintf("%s: the event alone (%d bytes) is larger than the receiver accepts", ans.reason, len(body))
			}
			return result{status: st, reason: reason}, nil
		case st == http.StatusRequestTimeout, st == http.StatusTooManyRequests, st >= 500:
			problem = ans.reason
		default:
			return result{}, fmt.Errorf("%s: %s", where(), halted(ans, s.target))
		}

		if attempt >= s.cfg.MaxAttempts {
			return result{}, fmt.Errorf("%s: still failing after %d attempts (last: %s); the batch is retried later", where(), attempt, problem)
		}
		wait, asked := parseRetryAfter(ans.retryAfter, s.now())
		if !asked {
			wait = backoff(attempt)
		}
		if wait > maxWait || beyondDeadline(ctx, wait) {
			who := "the next attempt would be"
			if asked {
				who = "the receiver asked to retry"
			}
			return result{}, fmt.Errorf("%s: %s, and %s after %v, longer than this drain can wait; the batch is retried later",
				where(), problem, who, wait.Round(time.Second))
		}
		s.log.Warn("http destination: retrying POST", "destination", a.name, "first_seq", first, "last_seq", last,
			"attempt", attempt, "problem", problem, "wait", wait, "retry_after", asked)
		if err := s.sleep(ctx, wait); err != nil {
			return result{}, fmt.Errorf("%s: %s; gave up waiting to retry: %w", where(), problem, err)
		}
	}
}

// once makes one attempt, bounded by Timeout, and reads at most the start
// of the answer's body.
func (s *Sink) once(ctx context.Context, body []byte, key string) answer {
	actx, cancel := context.WithTimeout(ctx, s.cfg.Timeout)
	defer cancel()
	// A bytes.Reader body gives the request GetBody, so the transport may
	// re-send it on a dead keep-alive connection; the Idempotency-Key
	// header is what lets it treat a POST as safe to re-send.
	req, err := http.NewRequestWithContext(actx, http.MethodPost, s.url, bytes.NewReader(body))
	if err != nil {
		return answer{err: errors.New("cannot build the request: check url")}
	}
	h := make(http.Header, len(s.headers)+6)
	for k, v := range s.headers {
		h[k] = v
	}
	h["User-Agent"] = s.userAgent
	h["Content-Type"] = s.contentType
	h["Idempotency-Key"] = []string{key}
	if len(s.secret) > 0 {
		// A fresh timestamp per attempt: receivers reject old ones, and a
		// retry may come minutes after the first attempt.
		ts := strconv.FormatInt(s.now().Unix(), 10)
		h["X-Sluice-Timestamp"] = []string{ts}
		h["X-Sluice-Signature"] = []string{sign(s.secret, ts, body)}
	}
	req.Header = h
	if s.host != "" {
		req.Host = s.host
	}

	resp, err := s.client.Do(req)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err // url.Error repeats the full URL, which may hold a token
		}
		return answer{err: err, timedOut: errors.Is(actx.Err(), context.DeadlineExceeded)}
	}
	defer resp.Body.Close()
	ans := answer{status: resp.StatusCode, retryAfter: resp.Header.Get("Retry-After"), location: resp.Header.Get("Location")}
	if resp.StatusCode < 200 || resp.StatusCode >= 300 {
		start, _ := io.ReadAll(io.LimitReader(resp.Body, reasonBytes))
		ans.reason = reason(resp, start)
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, drainBytes))
	return ans
}

// sign is the X-Sluice-Signature value: sha256=<hex HMAC-SHA256 of
// "<timestamp>.<body>">, as in Stripe's scheme, so the timestamp cannot be
// swapped without breaking the signature.
func sign(secret []byte, ts string, body []byte) string {
	m := hmac.New(sha256.New, secret)
	m.Write([]byte(ts))
	m.Write([]byte{'.'})
	m.Write(body)
	var sum [sha256.Size]byte
	return "sha256=" + hex.EncodeToString(m.Sum(sum[:0]))
}

// reason is "<status> <text>" and the start of the body, on one line and
// trimmed, e.g. `400 Bad Request: {"error":"Title too long"}`.
func reason(resp *http.Response, start []byte) string {
	r := strconv.Itoa(resp.StatusCode)
	if t := http.StatusText(resp.StatusCode); t != "" {
		r += " " + t
	}
	text := strings.Join(strings.Fields(strings.ToValidUTF8(string(start), "\uFFFD")), " ")
	if text == "" {
		return r
	}
	const maxRunes = 200
	if utf8.RuneCountInString(text) > maxRunes {
		text = string([]rune(text)[:maxRunes]) + "…"
	}
	return r + ": " + text
}

// halted is the message for an answer that says the destination itself is
// wrong; no retry inside this Apply can fix it, and no record is to blame.
func halted(ans answer, target string) string {
	var hint string
	switch st := ans.status; {
	case st >= 300 && st < 400:
		to := "another address"
		if u, err := url.Parse(ans.location); err == nil && ans.location != "" {
			if base, err := url.Parse(target); err == nil {
				to = hostOf(base.ResolveReference(u)) + "/…"
			}
		}
		hint = "it redirects to " + to + " and sluice never follows redirects: set url to the final address"
	case st == http.StatusUnauthorized:
		hint = "check the secret or the receiver's auth"
	case st == http.StatusForbidden:
		hint = "the receiver refuses sluice: check its auth or allow-list"
	case st == http.StatusNotFound, st == http.StatusGone:
		hint = "nothing answers at url: check the url"
	case st == http.StatusMethodNotAllowed:
		hint = "the endpoint does not accept POST: check the url"
	case st == http.StatusUnsupportedMediaType:
		hint = "the receiver does not accept " + contentType
	default:
		hint = "the receiver refuses these requests"
	}
	return fmt.Sprintf("receiver answered %s: %s; the destination is halted and retried later", ans.reason, hint)
}

func isCertError(err error) bool {
	var (
		cv *tls.CertificateVerificationError
		ua x509.UnknownAuthorityError
		hn x509.HostnameError
		ci x509.CertificateInvalidError
	)
	return errors.As(err, &cv) || errors.As(err, &ua) || errors.As(err, &hn) || errors.As(err, &ci)
}

// parseRetryAfter reads Retry-After as seconds (fractions allowed) or an
// HTTP date relative to now. A date in the past means "now".
func parseRetryAfter(v string, now time.Time) (time.Duration, bool) {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0, false
	}
	if secs, err := strconv.ParseFloat(v, 64); err == nil {
		if secs < 0 || math.IsNaN(secs) {
			return 0, false
		}
		secs = min(secs, 1e9) // a Duration holds ~292 years; this is "too long" anyway
		return time.Duration(secs * float64(time.Second)), true
	}
	if t, err := http.ParseTime(v); err == nil {
		return max(t.Sub(now), 0), true
	}
	return 0, false
}

// backoff is the wait before attempt+1 when the receiver named none:
// exponential from 500ms, capped at 30s, with jitter so that many drains
// failing together do not come back together.
func backoff(attempt int) time.Duration {
	d := 500 * time.Millisecond << min(attempt-1, 6)
	d = min(d, 30*time.Second)
	return d/2 + rand.N(d/2+1)
}

// beyondDeadline reports whether waiting d would pass ctx's deadline.
func beyondDeadline(ctx context.Context, d time.Duration) bool {
	dl, ok := ctx.Deadline()
	return ok && time.Until(dl) < d
}
