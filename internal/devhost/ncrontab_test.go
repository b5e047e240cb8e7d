package devhost

import (
	"strings"
	"testing"
	"time"
)

func TestParseScheduleInvalid(t *testing.T) {
	for _, tc := range []struct{ expr, want string }{
		{"", "six fields"},
		{"* * * *", "six fields"},
		{"* * * * * * *", "six fields"},
		{"60 * * * * *", "second field"},
		{"* 60 * * * *", "minute field"},
		{"* * 24 * * *", "hour field"},
		{"* * * 0 * *", "day field"},
		{"* * * 32 * *", "day field"},
		{"* * * * 13 * ", "month field"},
		{"* * * * * 7", "day-of-week field"},
		{"*/0 * * * * *", "step"},
		{"*/x * * * * *", "step"},
		{"5-1 * * * * *", "backwards"},
		{"1,,2 * * * * *", "empty"},
		{"* * * * FOO *", "month field"},
		{"0 0 0 30 2 *", "never occurs"},
		{"%SLUICE_READ_SCHEDULE% * * * * *", "second field"},
	} {
		_, err := ParseSchedule(tc.expr)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("ParseSchedule(%q) = %v, want an error about %q", tc.expr, err, tc.want)
		}
	}
}

func TestScheduleNext(t *testing.T) {
	at := func(s string) time.Time {
		v, err := time.Parse(time.RFC3339Nano, s)
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	for _, tc := range []struct{ expr, from, want string }{
		{"0 */5 * * * *", "2025-06-01T09:55:00Z", "2025-06-01T10:00:00Z"},
		{"0 */5 * * * *", "2025-06-01T09:57:13.5Z", "2025-06-01T10:00:00Z"},
		{"*/10 * * * * *", "2025-06-01T09:55:05Z", "2025-06-01T09:55:10Z"},
		{"* * * * * *", "2025-06-01T09:55:05.9Z", "2025-06-01T09:55:06Z"},
		{"0 0 * * * *", "2025-12-31T23:30:00Z", "2026-01-01T00:00:00Z"},        // year edge
		{"0 0 0 31 * *", "2025-04-15T00:00:00Z", "2025-05-31T00:00:00Z"},       // skips 30-day April
		{"0 0 0 29 2 *", "2025-03-01T00:00:00Z", "2028-02-29T00:00:00Z"},       // leap day
		{"0 0 0 1 * *", "2025-01-31T12:00:00Z", "2025-02-01T00:00:00Z"},        // month edge
		{"0 30 9 * * MON-FRI", "2025-06-06T10:00:00Z", "2025-06-09T09:30:00Z"}, // Fri → Mon
		{"0 30 9 * * 1-5", "2025-06-06T09:00:00Z", "2025-06-06T09:30:00Z"},
		{"0 0 12 * * SUN", "2025-06-01T12:00:00Z", "2025-06-08T12:00:00Z"}, // strictly after
		{"0 0 0 13 * FRI", "2025-01-01T00:00:00Z", "2025-06-13T00:00:00Z"}, // day AND weekday
		{"0 0 0 1 jan,jul *", "2025-02-01T00:00:00Z", "2025-07-01T00:00:00Z"},
		{"0 0 8-18/4 * * *", "2025-06-01T12:00:00Z", "2025-06-01T16:00:00Z"},
		{"0 0 8-18/4 * * *", "2025-06-01T16:00:00Z", "2025-06-02T08:00:00Z"},
		{"15/20 * * * * *", "2025-06-01T00:00:36Z", "2025-06-01T00:00:55Z"},
		{"0,30 1,2 3 * * *", "2025-06-01T03:01:30Z", "2025-06-01T03:02:00Z"},
		{"*/5 * * * *", "2025-06-01T09:57:00Z", "2025-06-01T10:00:00Z"}, // five fields: second 0
		{"0 0 0 * DEC *", "2025-06-01T00:00:00Z", "2025-12-01T00:00:00Z"},
		{"0 0 0 1 1 *", "2025-06-01T00:00:00+02:00", "2026-01-01T00:00:00Z"}, // UTC
	} {
		s, err := ParseSchedule(tc.expr)
		if err != nil {
			t.Errorf("ParseSchedule(%q): %v", tc.expr, err)
			continue
		}
		if got := s.Next(at(tc.from)); !got.Equal(at(tc.want)) || got.Location() != time.UTC {
			t.Errorf("%q.Next(%s) = %s, want %s", tc.expr, tc.from, got, tc.want)
		}
	}
}
