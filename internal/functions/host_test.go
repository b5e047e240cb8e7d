package functions

import (
	"errors"
	"io/fs"
	"path/filepath"
	"testing"
	"time"
)

func TestLoadHostSettingsOfTheRepo(t *testing.T) {
	hs, err := LoadHostSettings(filepath.Join("..", "..", "host.json"))
	if err != nil {
		t.Fatal(err)
	}
	want := HostSettings{FunctionTimeout: 10 * time.Minute, RoutePrefix: "api", Queues: QueueSettings{
		MaxPollingInterval: 2 * time.Second, VisibilityTimeout: 30 * time.Second, BatchSize: 8,
		NewBatchThreshold: 4, MaxDequeueCount: 5, MessageEncoding: "base64"}}
	if hs != want {
		t.Fatalf("host.json = %+v, want %+v", hs, want)
	}
}

func TestLoadHostSettingsMissing(t *testing.T) {
	hs, err := LoadHostSettings(filepath.Join(t.TempDir(), "host.json"))
	if !errors.Is(err, fs.ErrNotExist) || hs != DefaultHostSettings() {
		t.Fatalf("%+v, %v", hs, err)
	}
}

func TestParseHostSettings(t *testing.T) {
	def := DefaultHostSettings()
	for _, tc := range []struct {
		json string
		ok   bool
		want func(*HostSettings)
	}{
		{`{}`, true, nil},
		{`{"version":"2.0"}`, true, nil},
		{`{"functionTimeout":"-1"}`, true, func(h *HostSettings) { h.FunctionTimeout = Unbounded }},
		{`{"functionTimeout":"01:30:00"}`, true, func(h *HostSettings) { h.FunctionTimeout = 90 * time.Minute }},
		{`{"FunctionTimeout":"00:00:30"}`, true, func(h *HostSettings) { h.FunctionTimeout = 30 * time.Second }},
		{`{"functionTimeout":null}`, true, nil},
		{`{"extensions":{"queues":{"maxDequeueCount":"3"}}}`, true, func(h *HostSettings) { h.Queues.MaxDequeueCount = 3 }},
		{`{"extensions":{"queues":{"maxPollingInterval":2000}}}`, true, func(h *HostSettings) { h.Queues.MaxPollingInterval = 2 * time.Second }},
		{`{"extensions":{"queues":{"messageEncoding":"None"}}}`, true, func(h *HostSettings) { h.Queues.MessageEncoding = "none" }},
		{`{"extensions":{"http":{"routePrefix":"/x/"}}}`, true, func(h *HostSettings) { h.RoutePrefix = "x" }},
		{`{"extensions":{"http":{"routePrefix":""}}}`, true, func(h *HostSettings) { h.RoutePrefix = "" }},
		{`{"functionTimeout":"ten minutes"}`, false, nil},
		{`{"functionTimeout":"00:00:00"}`, false, nil},
		{`{"functionTimeout":"-00:05:00"}`, false, nil},
		{`{"extensions":{"queues":{"maxDequeueCount":0}}}`, false, nil},
		{`{"extensions":{"queues":{"batchSize":64}}}`, false, nil},
		{`{"extensions":{"queues":{"messageEncoding":"utf8"}}}`, false, nil},
		{`{"extensions":{"queues":{"visibilityTimeout":"soon"}}}`, false, nil},
		{`not json`, false, nil},
	} {
		got, err := ParseHostSettings([]byte(tc.json))
		if (err == nil) != tc.ok {
			t.Errorf("%s: err %v", tc.json, err)
			continue
		}
		if !tc.ok {
			continue
		}
		want := def
		if tc.want != nil {
			tc.want(&want)
		}
		if got != want {
			t.Errorf("%s: %+v, want %+v", tc.json, got, want)
		}
	}
}

func TestParseTimeSpan(t *testing.T) {
	for _, tc := range []struct {
		s    string
		want time.Duration
		ok   bool
	}{
		{"00:05:00", 5 * time.Minute, true},
		{"00:10:00", 10 * time.Minute, true},
		{"23:59:59", 24*time.Hour - time.Second, true},
		{"1.02:03:04", 26*time.Hour + 3*time.Minute + 4*time.Second, true},
		{"00:00:01.5", 1500 * time.Millisecond, true},
		{"00:00:00.0000001", 100 * time.Nanosecond, true},
		{"00:05", 5 * time.Minute, true},
		{"2", 48 * time.Hour, true},
		{"-00:01:00", -time.Minute, true},
		{"24:00:00", 0, false},
		{"00:60:00", 0, false},
		{"00:00:00.12345678", 0, false},
		{"5m", 0, false},
		{"", 0, false},
		{"1:2:3:4", 0, false},
		{"x.00:01:00", 0, false},
	} {
		got, err := ParseTimeSpan(tc.s)
		if (err == nil) != tc.ok || got != tc.want {
			t.Errorf("ParseTimeSpan(%q) = %v, %v; want %v ok=%v", tc.s, got, err, tc.want, tc.ok)
		}
	}
}

func TestDrainDeadline(t *testing.T) {
	start := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		timeout time.Duration
		want    time.Duration // after start; 0: no deadline
	}{
		{10 * time.Minute, 9 * time.Minute}, // DESIGN §4 Write 3
		{5 * time.Minute, 4 * time.Minute},
		{90 * time.Second, 45 * time.Second}, // never less than half
		{Unbounded, 0},
	} {
		s := &server{d: Deps{FunctionTimeout: tc.timeout}}
		got := s.drainDeadline(start)
		if (tc.want == 0 && !got.IsZero()) || (tc.want != 0 && !got.Equal(start.Add(tc.want))) {
			t.Errorf("timeout %v: deadline %v, want start+%v", tc.timeout, got, tc.want)
		}
	}
}
