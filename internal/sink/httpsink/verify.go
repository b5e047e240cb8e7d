package httpsink

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// VerifySignature is the receiver's side of the signature the sink sends
// (README, "Verifying sluice's webhook signature"): the hex HMAC-SHA256 of
// "<X-Sluice-Timestamp>.<body>" keyed by secret, and a timestamp no more than
// maxAge from now. The sluice tools that receive webhooks use it; the sink's
// own tests check signatures with an independent copy.
func VerifySignature(secret []byte, h http.Header, body []byte, now time.Time, maxAge time.Duration) error {
	ts := h.Get("X-Sluice-Timestamp")
	sig, ok := strings.CutPrefix(h.Get("X-Sluice-Signature"), "sha256=")
	if ts == "" || !ok {
		return errors.New("missing signature headers")
	}
	sec, err := strconv.ParseInt(ts, 10, 64)
	if err != nil {
		return fmt.Errorf("bad timestamp %q", ts)
	}
	if age := now.Sub(time.Unix(sec, 0)); age > maxAge || age < -maxAge {
		return fmt.Errorf("timestamp too old or in the future (%v)", age)
	}
	got, err := hex.DecodeString(sig)
	if err != nil {
		return errors.New("bad signature encoding")
	}
	mac := hmac.New(sha256.New, secret)
	mac.Write([]byte(ts + "."))
	mac.Write(body)
	if !hmac.Equal(got, mac.Sum(nil)) {
		return errors.New("signature mismatch")
	}
	return nil
}
