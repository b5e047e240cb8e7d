package httpsink_test

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"net/http"
	"strconv"
	"testing"
	"time"

	"github.com/sluicehq/sluice/internal/sink/httpsink"
)

func TestVerifySignature(t *testing.T) {
	t.Parallel()
	now := time.Unix(1795939201, 0)
	body := []byte(`[{"id":"orders-1"}]`)
	sign := func(secret string, ts int64, b []byte) http.Header {
		mac := hmac.New(sha256.New, []byte(secret))
		mac.Write([]byte(strconv.FormatInt(ts, 10) + "."))
		mac.Write(b)
		h := http.Header{}
		h.Set("X-Sluice-Timestamp", strconv.FormatInt(ts, 10))
		h.Set("X-Sluice-Signature", "sha256="+hex.EncodeToString(mac.Sum(nil)))
		return h
	}
	tests := []struct {
		name string
		h    http.Header
		body []byte
		ok   bool
	}{
		{"fresh", sign("s3cret", now.Unix(), body), body, true},
		{"4 minutes old", sign("s3cret", now.Unix()-240, body), body, true},
		{"6 minutes old", sign("s3cret", now.Unix()-360, body), body, false},
		{"from the future", sign("s3cret", now.Unix()+360, body), body, false},
		{"wrong secret", sign("other", now.Unix(), body), body, false},
		{"tampered body", sign("s3cret", now.Unix(), body), []byte(`[{"id":"orders-2"}]`), false},
		{"no headers", http.Header{}, body, false},
	}
	for _, tc := range tests {
		err := httpsink.VerifySignature([]byte("s3cret"), tc.h, tc.body, now, 5*time.Minute)
		if (err == nil) != tc.ok {
			t.Errorf("%s: %v, want ok=%v", tc.name, err, tc.ok)
		}
	}
}
