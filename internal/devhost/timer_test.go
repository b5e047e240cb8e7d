package devhost

import (
	"context"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sluicehq/sluice/internal/functions"
	"github.com/sluicehq/sluice/internal/testenv"
)

const timerHost = `{"version":"2.0","functionTimeout":"00:01:00"}`

func timerApp(t *testing.T, schedule string) string {
	return writeApp(t, timerHost, map[string]string{
		"read": `{"bindings":[{"name":"timer","type":"timerTrigger","direction":"in","schedule":"` + schedule + `","useMonitor":true}]}`,
	})
}

func TestTimerFiresOnScheduleWithTheHostsPayload(t *testing.T) {
	t.Parallel()
	st := testenv.Store(t)
	s := newStub()
	env := map[string]string{"SLUICE_READ_SCHEDULE": "*/1 * * * * *"}
	start(t, Options{AppDir: timerApp(t, "%SLUICE_READ_SCHEDULE%"), Handler: s, Store: st,
		LookupEnv: func(k string) (string, bool) { v, ok := env[k]; return v, ok }})

	first := s.next(t, 10*time.Second)
	second := s.next(t, 10*time.Second)
	if first.Function != "read" {
		t.Fatalf("invoked /%s, want /read", first.Function)
	}
	if ct := first.Header.Get("Content-Type"); ct != "application/json; charset=utf-8" {
		t.Errorf("Content-Type %q", ct)
	}
	if first.Header.Get("X-Azure-Functions-InvocationId") == "" || !strings.HasPrefix(first.Header.Get("User-Agent"), "Azure-Functions-Host/") {
		t.Errorf("host headers missing: %v", first.Header)
	}
	p := first.payload(t)
	if v := get(t, p, "Data", "timer", "Schedule", "AdjustForDST"); v != true {
		t.Errorf("AdjustForDST = %v", v)
	}
	if v := get(t, p, "Data", "timer", "IsPastDue"); v != false {
		t.Errorf("IsPastDue = %v", v)
	}
	// §7.1: first-ever run: Last is 0001-01-01; Next is the occurrence firing now.
	if v := get(t, p, "Data", "timer", "ScheduleStatus", "Last"); v != "0001-01-01T00:00:00+00:00" {
		t.Errorf("first Last = %v", v)
	}
	next1 := get(t, p, "Data", "timer", "ScheduleStatus", "Next").(string)
	if !strings.HasSuffix(next1, "+00:00") {
		t.Errorf("Next %q is not a DateTimeOffset", next1)
	}
	if v := get(t, p, "Metadata", "sys", "MethodName"); v != "read" {
		t.Errorf("sys.MethodName = %v", v)
	}
	// The second run's Last is the first run's occurrence.
	if v := get(t, second.payload(t), "Data", "timer", "ScheduleStatus", "Last"); v != next1 {
		t.Errorf("second Last = %v, want %v", v, next1)
	}
	// And the real handler's decoder reads it.
	inv, err := functions.DecodeInvocation(second.Body)
	if err != nil {
		t.Fatal(err)
	}
	ti, err := functions.DecodeTimer(inv, functions.TimerBinding)
	if err != nil || ti.ScheduleStatus == nil || ti.ScheduleStatus.Last.IsZero() || !ti.AdjustForDST {
		t.Fatalf("DecodeTimer = %+v, %v", ti, err)
	}
}

func TestTimerWithoutMonitorSendsNullScheduleStatus(t *testing.T) {
	t.Parallel()
	st := testenv.Store(t)
	s := newStub()
	dir := writeApp(t, timerHost, map[string]string{
		"tick": `{"bindings":[{"name":"t","type":"timerTrigger","direction":"in","schedule":"* * * * * *","useMonitor":false}]}`,
	})
	start(t, Options{AppDir: dir, Handler: s, Store: st})
	c := s.next(t, 10*time.Second)
	if !strings.Contains(string(c.Body), `"ScheduleStatus":null`) {
		t.Fatalf("want ScheduleStatus null: %s", c.Body)
	}
}

// fakeClock is a settable clock.
type fakeClock struct{ ns atomic.Int64 }

func (c *fakeClock) set(t time.Time)         { c.ns.Store(t.UnixNano()) }
func (c *fakeClock) now() time.Time          { return time.Unix(0, c.ns.Load()).UTC() }
func newClock(t time.Time) *fakeClock        { c := &fakeClock{}; c.set(t); return c }
func mustTime(s string) time.Time            { v, _ := time.Parse(time.RFC3339, s); return v }
func (c *fakeClock) advance(d time.Duration) { c.set(c.now().Add(d)) }

func TestTimerRestartAfterMissedOccurrencesFiresOncePastDue(t *testing.T) {
	t.Parallel()
	st := testenv.Store(t)
	dir := timerApp(t, "0 0 * * * *") // hourly
	clock := newClock(mustTime("2026-01-01T00:30:00Z"))

	// First run: records Next = 01:00, then stops before it.
	s1 := newStub()
	r1 := start(t, Options{AppDir: dir, Handler: s1, Store: st, Now: clock.now})
	deadline := time.Now().Add(10 * time.Second)
	for {
		var ts timerStatus
		if _, err := st.ReadDoc(context.Background(), "devhost/timers/read.json", &ts); err == nil {
			if !ts.Next.Equal(mustTime("2026-01-01T01:00:00Z")) {
				t.Fatalf("status Next = %s", ts.Next)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("no schedule status written")
		}
		time.Sleep(20 * time.Millisecond)
	}
	r1.stop(t)
	if n := s1.count(); n != 0 {
		t.Fatalf("first run fired %d times before its occurrence", n)
	}

	// Down for three occurrences (01:00, 02:00, 03:00); back at 03:10.
	clock.set(mustTime("2026-01-01T03:10:00Z"))
	s2 := newStub()
	r2 := start(t, Options{AppDir: dir, Handler: s2, Store: st, Now: clock.now})
	c := s2.next(t, 10*time.Second)
	p := c.payload(t)
	if v := get(t, p, "Data", "timer", "IsPastDue"); v != true {
		t.Errorf("IsPastDue = %v, want true", v)
	}
	if v := get(t, p, "Data", "timer", "ScheduleStatus", "Next"); v != "2026-01-01T01:00:00+00:00" {
		t.Errorf("ScheduleStatus.Next = %v, want the missed 01:00", v)
	}
	time.Sleep(500 * time.Millisecond)
	if n := s2.count(); n != 1 {
		t.Fatalf("restart fired %d times, want once", n)
	}
	// The next occurrence is on time and not past due.
	clock.set(mustTime("2026-01-01T04:00:00Z"))
	c = s2.next(t, 10*time.Second)
	p = c.payload(t)
	if get(t, p, "Data", "timer", "IsPastDue") != false || get(t, p, "Data", "timer", "ScheduleStatus", "Next") != "2026-01-01T04:00:00+00:00" {
		t.Errorf("04:00 run: %s", c.Body)
	}
	r2.stop(t)
	if n := s2.count(); n != 2 {
		t.Fatalf("fired %d times, want 2", n)
	}
}

func TestTimerTwoHostsFireEachOccurrenceOnce(t *testing.T) {
	t.Parallel()
	st := testenv.Store(t)
	other := sameContainer(t, st, testenv.StorageSettings(t))
	dir := timerApp(t, "* * * * * *")
	a, b := newStub(), newStub()
	ra := start(t, Options{AppDir: dir, Handler: a, Store: st})
	rb := start(t, Options{AppDir: dir, Handler: b, Store: other})
	time.Sleep(3500 * time.Millisecond)
	// Stop one; the other takes the lease over and carries on.
	leader, standby := ra, rb
	if a.count() == 0 {
		leader, standby = rb, ra
	}
	leader.stop(t)
	time.Sleep(3500 * time.Millisecond)
	standby.stop(t)

	seen := map[string]int{}
	for _, c := range append(a.all(), b.all()...) {
		seen[get(t, c.payload(t), "Data", "timer", "ScheduleStatus", "Next").(string)]++
	}
	for occ, n := range seen {
		if n != 1 {
			t.Errorf("occurrence %s fired %d times", occ, n)
		}
	}
	if a.count() == 0 || b.count() == 0 || len(seen) < 4 {
		t.Errorf("host A fired %d, host B %d, distinct occurrences %d: want both to have fired in turn", a.count(), b.count(), len(seen))
	}
}

// TestTimerFireClaimsAnOccurrenceOnce races two hosts on one occurrence
// without the lease: the compare-and-swap on the status lets one fire.
func TestTimerFireClaimsAnOccurrenceOnce(t *testing.T) {
	t.Parallel()
	st := testenv.Store(t)
	other := sameContainer(t, st, testenv.StorageSettings(t))
	dir := timerApp(t, "0 0 * * * *")
	s := newStub()
	srv := httptest.NewServer(s)
	defer srv.Close()
	occ := mustTime("2026-01-01T01:00:00Z")
	var fired atomic.Int32
	var wg sync.WaitGroup
	for i := range 6 {
		store := st
		if i%2 == 1 {
			store = other
		}
		h, err := New(Options{AppDir: dir, Handler: s, Store: store, Addr: "127.0.0.1:0"})
		if err != nil {
			t.Fatal(err)
		}
		h.baseURL, h.client, h.invCtx = srv.URL, srv.Client(), context.Background()
		wg.Go(func() {
			ok, err := h.timers[0].fire(context.Background(), occ, false)
			if err != nil {
				t.Error(err)
			}
			if ok {
				fired.Add(1)
			}
		})
	}
	wg.Wait()
	if fired.Load() != 1 || s.count() != 1 {
		t.Fatalf("fired %d times (%d invocations), want once", fired.Load(), s.count())
	}
}
