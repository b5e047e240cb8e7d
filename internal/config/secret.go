package config

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"strconv"
)

// redacted is what a non-empty Secret shows everywhere except Reveal.
const redacted = "[redacted]"

// Secret is a configuration value that must never reach a log, an error
// message or a status page: passwords, tokens, DSNs, connection strings.
//
// Every way of printing it (fmt with any verb, slog, encoding/json,
// encoding.TextMarshaler users such as YAML encoders) shows "[redacted]",
// or "" when it is empty so that "not set" stays visible. Only Reveal
// returns the real value; call it at the one place that hands the value to
// an SDK or driver.
type Secret string

// Reveal returns the real value. Never log or wrap its result.
func (s Secret) Reveal() string { return string(s) }

// String returns "[redacted]", or "" when the secret is empty.
func (s Secret) String() string {
	if s == "" {
		return ""
	}
	return redacted
}

// GoString keeps %#v from printing the value.
func (s Secret) GoString() string { return "config.Secret(" + strconv.Quote(s.String()) + ")" }

// Format implements fmt.Formatter so that every verb, including ones that are
// not valid for strings (%d, %x on nested structs), prints the redacted form.
func (s Secret) Format(f fmt.State, verb rune) {
	switch {
	case verb == 'v' && f.Flag('#'):
		fmt.Fprint(f, s.GoString())
	case verb == 'q':
		fmt.Fprint(f, strconv.Quote(s.String()))
	default:
		fmt.Fprint(f, s.String())
	}
}

// LogValue implements slog.LogValuer.
func (s Secret) LogValue() slog.Value { return slog.StringValue(s.String()) }

// MarshalJSON implements json.Marshaler.
func (s Secret) MarshalJSON() ([]byte, error) { return json.Marshal(s.String()) }

// MarshalText implements encoding.TextMarshaler, which YAML and other encoders
// fall back to.
func (s Secret) MarshalText() ([]byte, error) { return []byte(s.String()), nil }
