package devhost

import (
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Schedule is a parsed NCRONTAB expression (§6.1): six fields
// {second} {minute} {hour} {day} {month} {day-of-week}, evaluated in UTC.
// Like NCrontab (what the timer extension uses), five fields mean second 0,
// and a restricted day and day-of-week must both match (AND, unlike Vixie
// cron's OR).
type Schedule struct {
	expr                           string
	sec, min, hour, day, mon, wday uint64 // bit i set: value i allowed
}

// searchYears bounds Next: "0 0 0 29 2 *" fires once in four years, and
// "0 0 0 30 2 *" never (ParseSchedule refuses it).
const searchYears = 9

type fieldSpec struct {
	name   string
	lo, hi int
	names  []string // names[i] is value lo+i
}

var (
	monthNames = []string{"JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"}
	dayNames   = []string{"SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"}
	fieldSpecs = []fieldSpec{
		{name: "second", lo: 0, hi: 59},
		{name: "minute", lo: 0, hi: 59},
		{name: "hour", lo: 0, hi: 23},
		{name: "day", lo: 1, hi: 31},
		{name: "month", lo: 1, hi: 12, names: monthNames},
		{name: "day-of-week", lo: 0, hi: 6, names: dayNames},
	}
)

// ParseSchedule parses an NCRONTAB expression. Each field takes "*", a
// value, a list "a,b", a range "a-b", and steps "*/n", "a-b/n" or "a/n";
// months and days of the week may be named (JAN, Mon, ...).
func ParseSchedule(expr string) (*Schedule, error) {
	fields := strings.Fields(expr)
	if len(fields) == 5 {
		fields = append([]string{"0"}, fields...)
	}
	if len(fields) != 6 {
		return nil, fmt.Errorf("schedule %q: want six fields {second} {minute} {hour} {day} {month} {day-of-week}, such as \"0 */5 * * * *\"", expr)
	}
	s := &Schedule{expr: strings.Join(fields, " ")}
	dst := []*uint64{&s.sec, &s.min, &s.hour, &s.day, &s.mon, &s.wday}
	for i, f := range fields {
		bits, err := parseField(f, fieldSpecs[i])
		if err != nil {
			return nil, fmt.Errorf("schedule %q: %s field %q: %w", expr, fieldSpecs[i].name, f, err)
		}
		*dst[i] = bits
	}
	if s.Next(time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC)).IsZero() {
		return nil, fmt.Errorf("schedule %q never occurs (no such day in any month)", expr)
	}
	return s, nil
}

// String is the expression in its six-field form.
func (s *Schedule) String() string { return s.expr }

func parseField(f string, spec fieldSpec) (uint64, error) {
	var bits uint64
	for part := range strings.SplitSeq(f, ",") {
		if part == "" {
			return 0, fmt.Errorf("empty list item")
		}
		rng, stepText, hasStep := strings.Cut(part, "/")
		step := 1
		if hasStep {
			n, err := strconv.Atoi(stepText)
			if err != nil || n < 1 {
				return 0, fmt.Errorf("step %q is not a positive number", stepText)
			}
			step = n
		}
		var a, b int
		switch {
		case rng == "*":
			a, b = spec.lo, spec.hi
		case strings.Contains(rng, "-"):
			x, y, _ := strings.Cut(rng, "-")
			var err error
			if a, err = valueOf(x, spec); err != nil {
				return 0, err
			}
			if b, err = valueOf(y, spec); err != nil {
				return 0, err
			}
			if a > b {
				return 0, fmt.Errorf("range %q runs backwards", rng)
			}
		default:
			var err error
			if a, err = valueOf(rng, spec); err != nil {
				return 0, err
			}
			b = a
			if hasStep {
				b = spec.hi // "a/n": from a to the end, every n
			}
		}
		for v := a; v <= b; v += step {
			bits |= 1 << uint(v)
		}
	}
	return bits, nil
}

func valueOf(t string, spec fieldSpec) (int, error) {
	if n, err := strconv.Atoi(t); err == nil {
		if n < spec.lo || n > spec.hi {
			return 0, fmt.Errorf("%d is outside %d-%d", n, spec.lo, spec.hi)
		}
		return n, nil
	}
	if len(t) >= 3 {
		for i, name := range spec.names {
			if strings.EqualFold(t[:3], name) {
				return spec.lo + i, nil
			}
		}
	}
	if spec.names != nil {
		return 0, fmt.Errorf("%q is not a number in %d-%d or a name such as %s", t, spec.lo, spec.hi, spec.names[0])
	}
	return 0, fmt.Errorf("%q is not a number in %d-%d", t, spec.lo, spec.hi)
}

func has(bits uint64, v int) bool { return bits&(1<<uint(v)) != 0 }

// Next is the first occurrence strictly after t, in UTC; zero if there is
// none within searchYears.
func (s *Schedule) Next(t time.Time) time.Time {
	t = t.UTC().Truncate(time.Second).Add(time.Second)
	limit := t.Year() + searchYears
	for t.Year() <= limit {
		switch {
		case !has(s.mon, int(t.Month())):
			t = time.Date(t.Year(), t.Month()+1, 1, 0, 0, 0, 0, time.UTC)
		case !has(s.day, t.Day()) || !has(s.wday, int(t.Weekday())):
			t = time.Date(t.Year(), t.Month(), t.Day()+1, 0, 0, 0, 0, time.UTC)
		case !has(s.hour, t.Hour()):
			t = time.Date(t.Year(), t.Month(), t.Day(), t.Hour()+1, 0, 0, 0, time.UTC)
		case !has(s.min, t.Minute()):
			t = time.Date(t.Year(), t.Month(), t.Day(), t.Hour(), t.Minute()+1, 0, 0, time.UTC)
		case !has(s.sec, t.Second()):
			t = t.Add(time.Second)
		default:
			return t
		}
	}
	return time.Time{}
}
