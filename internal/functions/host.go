package functions

import (
	"encoding/json"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"
)

// Unbounded is HostSettings.FunctionTimeout for functionTimeout "-1"
// (no limit; not allowed on Consumption, §2.3).
const Unbounded time.Duration = -1

// Defaults of the host when host.json leaves a setting out (§2.3, §2.4).
const (
	// DefaultFunctionTimeout is the Consumption plan's default; Premium and
	// Dedicated default to 30 min, but the handler cannot tell the plan, so
	// it assumes the shorter one.
	DefaultFunctionTimeout = 5 * time.Minute
	DefaultMaxDequeueCount = 5
	DefaultBatchSize       = 16
	DefaultPollingInterval = time.Minute
	DefaultRoutePrefix     = "api"
	DefaultMessageEncoding = "base64"
)

// HostSettings are the parts of host.json the handler and the local host
// (internal/devhost) act on.
type HostSettings struct {
	// FunctionTimeout is how long an invocation may run; Unbounded for "-1".
	FunctionTimeout time.Duration
	RoutePrefix     string
	Queues          QueueSettings
}

// QueueSettings is host.json extensions.queues (§2.4).
type QueueSettings struct {
	MaxPollingInterval time.Duration
	VisibilityTimeout  time.Duration
	BatchSize          int
	// NewBatchThreshold 0 means the host's default, (BatchSize/2) × CPUs.
	NewBatchThreshold int
	MaxDequeueCount   int
	MessageEncoding   string // "base64" or "none"
}

// DefaultHostSettings is what the host assumes with an empty host.json.
func DefaultHostSettings() HostSettings {
	return HostSettings{
		FunctionTimeout: DefaultFunctionTimeout,
		RoutePrefix:     DefaultRoutePrefix,
		Queues: QueueSettings{
			MaxPollingInterval: DefaultPollingInterval,
			BatchSize:          DefaultBatchSize,
			MaxDequeueCount:    DefaultMaxDequeueCount,
			MessageEncoding:    DefaultMessageEncoding,
		},
	}
}

type wireHost struct {
	FunctionTimeout *json.RawMessage `json:"functionTimeout"`
	Extensions      struct {
		HTTP *struct {
			RoutePrefix *string `json:"routePrefix"`
		} `json:"http"`
		Queues *struct {
			MaxPollingInterval *json.RawMessage `json:"maxPollingInterval"`
			VisibilityTimeout  *json.RawMessage `json:"visibilityTimeout"`
			BatchSize          *flexInt         `json:"batchSize"`
			NewBatchThreshold  *flexInt         `json:"newBatchThreshold"`
			MaxDequeueCount    *flexInt         `json:"maxDequeueCount"`
			MessageEncoding    *string          `json:"messageEncoding"`
		} `json:"queues"`
	} `json:"extensions"`
}

// LoadHostSettings reads host.json at path; settings it leaves out keep the
// host's defaults (§2.3, §2.4). On error it still returns the defaults, so
// a caller may choose to run on them.
func LoadHostSettings(path string) (HostSettings, error) {
	hs := DefaultHostSettings()
	data, err := os.ReadFile(path)
	if err != nil {
		return hs, fmt.Errorf("read host settings: %w", err)
	}
	hs, err = ParseHostSettings(data)
	if err != nil {
		return DefaultHostSettings(), fmt.Errorf("%s: %w", path, err)
	}
	return hs, nil
}

// ParseHostSettings is LoadHostSettings on the file's content.
func ParseHostSettings(data []byte) (HostSettings, error) {
	hs := DefaultHostSettings()
	var w wireHost
	// Keys match case-insensitively, as the host's configuration does.
	if err := json.Unmarshal(data, &w); err != nil {
		return hs, fmt.Errorf("host.json is not valid JSON: %w", err)
	}
	if w.FunctionTimeout != nil && !isNull(*w.FunctionTimeout) {
		s := hostString(*w.FunctionTimeout)
		if strings.TrimSpace(s) == "-1" {
			hs.FunctionTimeout = Unbounded
		} else {
			d, err := ParseTimeSpan(s)
			if err != nil || d <= 0 {
				return hs, fmt.Errorf("functionTimeout %q: want a timespan such as \"00:10:00\", or \"-1\"", s)
			}
			hs.FunctionTimeout = d
		}
	}
	if h := w.Extensions.HTTP; h != nil && h.RoutePrefix != nil {
		hs.RoutePrefix = strings.Trim(*h.RoutePrefix, "/")
	}
	q := w.Extensions.Queues
	if q == nil {
		return hs, nil
	}
	var err error
	if q.MaxPollingInterval != nil {
		if hs.Queues.MaxPollingInterval, err = queueInterval(*q.MaxPollingInterval); err != nil {
			return hs, fmt.Errorf("extensions.queues.maxPollingInterval: %w", err)
		}
	}
	if q.VisibilityTimeout != nil {
		if hs.Queues.VisibilityTimeout, err = queueInterval(*q.VisibilityTimeout); err != nil {
			return hs, fmt.Errorf("extensions.queues.visibilityTimeout: %w", err)
		}
	}
	if q.BatchSize != nil {
		hs.Queues.BatchSize = int(*q.BatchSize)
		if hs.Queues.BatchSize < 1 || hs.Queues.BatchSize > 32 {
			return hs, fmt.Errorf("extensions.queues.batchSize %d: want 1..32", hs.Queues.BatchSize)
		}
	}
	if q.NewBatchThreshold != nil {
		hs.Queues.NewBatchThreshold = int(*q.NewBatchThreshold)
	}
	if q.MaxDequeueCount != nil {
		hs.Queues.MaxDequeueCount = int(*q.MaxDequeueCount)
		if hs.Queues.MaxDequeueCount < 1 {
			return hs, fmt.Errorf("extensions.queues.maxDequeueCount %d: want 1 or more", hs.Queues.MaxDequeueCount)
		}
	}
	if q.MessageEncoding != nil {
		switch e := strings.ToLower(*q.MessageEncoding); e {
		case "base64", "none":
			hs.Queues.MessageEncoding = e
		default:
			return hs, fmt.Errorf("extensions.queues.messageEncoding %q: want base64 or none", *q.MessageEncoding)
		}
	}
	return hs, nil
}

// queueInterval reads a queue interval: a timespan "hh:mm:ss", or (host.json
// v1) an integer of milliseconds (§2.4).
func queueInterval(raw json.RawMessage) (time.Duration, error) {
	t := strings.TrimSpace(string(raw))
	if n, err := strconv.ParseInt(t, 10, 64); err == nil {
		return time.Duration(n) * time.Millisecond, nil
	}
	return ParseTimeSpan(hostString(raw))
}

// ParseTimeSpan parses a .NET TimeSpan in its invariant forms:
// "[-][d.]hh:mm[:ss[.fffffff]]" and a bare day count "d".
func ParseTimeSpan(s string) (time.Duration, error) {
	s = strings.TrimSpace(s)
	bad := fmt.Errorf("not a timespan [d.]hh:mm[:ss[.fffffff]]: %q", s)
	neg := strings.HasPrefix(s, "-")
	s = strings.TrimPrefix(s, "-")
	if s == "" {
		return 0, bad
	}
	var days int64
	if !strings.Contains(s, ":") {
		n, err := strconv.ParseInt(s, 10, 32)
		if err != nil || n < 0 {
			return 0, bad
		}
		days, s = n, "0:0"
	} else if i := strings.IndexByte(s, '.'); i >= 0 && i < strings.IndexByte(s, ':') {
		n, err := strconv.ParseInt(s[:i], 10, 32)
		if err != nil || n < 0 {
			return 0, bad
		}
		days, s = n, s[i+1:]
	}
	parts := strings.Split(s, ":")
	if len(parts) < 2 || len(parts) > 3 {
		return 0, bad
	}
	num := func(p string, limit int64) (int64, bool) {
		if p == "" || len(p) > 2 {
			return 0, false
		}
		n, err := strconv.ParseInt(p, 10, 64)
		return n, err == nil && n >= 0 && n < limit
	}
	h, ok1 := num(parts[0], 24)
	m, ok2 := num(parts[1], 60)
	if !ok1 || !ok2 {
		return 0, bad
	}
	d := time.Duration(days)*24*time.Hour + time.Duration(h)*time.Hour + time.Duration(m)*time.Minute
	if len(parts) == 3 {
		sec, frac, _ := strings.Cut(parts[2], ".")
		n, ok := num(sec, 60)
		if !ok || len(frac) > 7 {
			return 0, bad
		}
		d += time.Duration(n) * time.Second
		if frac != "" {
			f, err := strconv.ParseInt(frac+strings.Repeat("0", 7-len(frac)), 10, 64)
			if err != nil || f < 0 {
				return 0, bad
			}
			d += time.Duration(f) * 100 // 100 ns ticks
		}
	}
	if neg {
		d = -d
	}
	return d, nil
}
