package sharepoint

import (
	"context"
	"math"
	"math/rand/v2"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"
)

// gate is the Client-wide "not before" time. SharePoint counts throttled
// requests against the budget and asks apps to pause ALL requests on a 429
// or 503, "especially important in multi-threaded scenarios" (reference
// §1.2 scan guidance, §3.1), so a throttle seen by one goroutine holds back
// every other request of the Client, not just its own retry.
type gate struct {
	mu        sync.Mutex
	notBefore time.Time
}

func (g *gate) get() time.Time {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.notBefore
}

// raise moves notBefore later, never earlier: two goroutines throttled at
// once must not shorten each other's pause.
func (g *gate) raise(t time.Time) time.Time {
	g.mu.Lock()
	defer g.mu.Unlock()
	if t.After(g.notBefore) {
		g.notBefore = t
	}
	return g.notBefore
}

// ThrottledUntil returns the time before which this Client sends no request
// (zero or in the past when it is not throttled). The engine stores it as
// throttledUntil.
func (c *Client) ThrottledUntil() time.Time { return c.gate.get() }

// SetNotBefore seeds the pause, e.g. from a throttledUntil saved by an
// earlier pass, so that a new process honours it too. It never shortens a
// pause already in force.
func (c *Client) SetNotBefore(t time.Time) { c.gate.raise(t) }

// waitTurn blocks until the Client-wide pause is over. A pause that would
// outlast ctx's deadline or MaxThrottleWait returns a *ThrottledError at
// once instead of sleeping into a timeout.
//
// It loops because another goroutine may extend the pause while we sleep;
// it remembers the pause it slept for rather than re-reading the clock, so
// an injected Sleep need not move an injected Now.
func (c *Client) waitTurn(ctx context.Context) error {
	var slept time.Time
	for {
		nb := c.gate.get()
		if !nb.After(slept) {
			return nil
		}
		d := nb.Sub(c.now())
		if d <= 0 {
			return nil
		}
		if d > c.maxThrottleWait || outlastsDeadline(ctx, d) {
			return &ThrottledError{Until: nb}
		}
		if err := c.sleep(ctx, d); err != nil {
			return err
		}
		slept = nb
	}
}

// outlastsDeadline reports whether waiting d would end after ctx's deadline.
// The deadline is real time, so it is compared with a duration and not with
// the (injectable) clock.
func outlastsDeadline(ctx context.Context, d time.Duration) bool {
	deadline, ok := ctx.Deadline()
	return ok && d >= time.Until(deadline)
}

// retryAfter parses Retry-After as Graph and SharePoint send it (reference
// §3.1, §3.2, §3.4): integer seconds ("31", "3360"), fractional seconds
// ("2.128", which azcore cannot parse) or an HTTP date. ok is false when the
// header is absent or unreadable; the caller then backs off exponentially
// as Graph recommends.
func retryAfter(h http.Header, now time.Time) (time.Duration, bool) {
	v := strings.TrimSpace(h.Get("Retry-After"))
	if v == "" {
		return 0, false
	}
	if secs, err := strconv.ParseFloat(v, 64); err == nil {
		if secs != secs || secs < 0 || secs > 1e6 { // NaN, negative, absurd
			return 0, false
		}
		// Round up so that "waited ≥ Retry-After" holds at nanosecond precision.
		return time.Duration(math.Ceil(secs * float64(time.Second))), true
	}
	if t, err := http.ParseTime(v); err == nil {
		return max(t.Sub(now), 0), true
	}
	return 0, false
}

// Backoff bounds for throttles without Retry-After and for transient errors.
const (
	backoffBase = time.Second
	backoffMax  = 60 * time.Second
)

// backoff returns the wait before attempt n (1, 2, ...): base·2^(n-1) capped
// at backoffMax, with "equal jitter" (between half and all of it) so that
// many clients do not retry in lockstep.
func backoff(n int) time.Duration {
	d := backoffBase
	for i := 1; i < n && d < backoffMax; i++ {
		d *= 2
	}
	d = min(d, backoffMax)
	half := d / 2
	return half + rand.N(half+1)
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
