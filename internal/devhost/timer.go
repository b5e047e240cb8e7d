package devhost

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/sluicehq/sluice/internal/azstore"
)

// timerLease is the singleton lease's period (§7.1: 60 s, renewed).
const timerLease = 60 * time.Second

// timerTrigger runs one timerTrigger binding (§6.1, §7.1).
type timerTrigger struct {
	h            *Host
	fn, binding  string
	sched        *Schedule
	useMonitor   bool
	runOnStartup bool
	statusName   string // schedule status doc
	lockName     string // singleton lease blob
	startedOnce  bool
}

// timerStatus is the schedule monitor's record (§7.1 ScheduleStatus):
// Last is the last occurrence fired, Next the one due after it. It is
// advanced by compare-and-swap before an occurrence is invoked, so each
// occurrence is fired once even across a lease handover.
type timerStatus struct {
	Last        time.Time `json:"Last"`
	Next        time.Time `json:"Next"`
	LastUpdated time.Time `json:"LastUpdated"`
}

func (h *Host) newTimer(fn *function, b binding) (*timerTrigger, error) {
	expr, err := h.expand("schedule", b.Schedule)
	if err != nil {
		return nil, fmt.Errorf("devhost: function %s: %w", fn.Name, err)
	}
	sched, err := ParseSchedule(expr)
	if err != nil {
		return nil, fmt.Errorf("devhost: function %s: %w (a TimeSpan schedule is not supported)", fn.Name, err)
	}
	// §6.1: the monitor defaults to on, but not for schedules that fire
	// more often than once a minute.
	monitor := true
	if b.UseMonitor != nil {
		monitor = *b.UseMonitor
	} else {
		a := sched.Next(time.Date(2001, 1, 1, 0, 0, 0, 0, time.UTC))
		monitor = sched.Next(a).Sub(a) >= time.Minute
	}
	return &timerTrigger{h: h, fn: fn.Name, binding: b.Name, sched: sched, useMonitor: monitor,
		runOnStartup: b.RunOnStartup,
		statusName:   "devhost/timers/" + fn.Name + ".json",
		lockName:     "devhost/timers/" + fn.Name + ".lock"}, nil
}

// run takes the timer's singleton lease (§7.1: one instance app-wide
// fires) and fires occurrences while it holds it; without it, it retries
// every LeaseRetry.
func (t *timerTrigger) run(ctx context.Context) {
	log := t.h.log.With("function", t.fn, "trigger", "timer")
	for ctx.Err() == nil {
		l, err := t.h.opts.Store.AcquireLease(ctx, t.lockName, timerLease)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			if !errors.Is(err, azstore.ErrLeaseHeld) {
				log.Warn("timer lease unavailable; retrying", "error", err.Error())
			}
			sleep(ctx, t.h.opts.LeaseRetry)
			continue
		}
		log.Info("timer listener started", "schedule", t.sched.String(), "useMonitor", t.useMonitor)
		lctx, cancel := context.WithCancel(ctx)
		stop := l.Keep(lctx, func(err error) {
			log.Warn("timer lease lost; another host may fire now", "error", err.Error())
			cancel()
		})
		if err := t.lead(lctx); err != nil && lctx.Err() == nil {
			log.Error("timer listener failed; retrying", "error", err.Error())
			sleep(lctx, t.h.opts.LeaseRetry)
		}
		stop()
		cancel()
		rctx, rcancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		err = l.Release(rctx)
		if err != nil {
			log.Warn("release timer lease; another host takes over when it expires", "error", err.Error())
		}
		rcancel()
	}
}

// lead fires occurrences until ctx ends; the caller holds the lease.
func (t *timerTrigger) lead(ctx context.Context) error {
	st, err := t.loadStatus(ctx)
	if err != nil {
		return err
	}
	if t.runOnStartup && !t.startedOnce {
		// §6.1 runOnStartup: once when the listener starts; not an occurrence.
		t.startedOnce = true
		t.invoke(time.Time{}, t.payloadStatus(st, st.Next), false)
	}
	var occ time.Time
	now := t.h.now()
	if t.useMonitor && !st.Next.IsZero() && !st.Next.After(now) {
		// §7.1: a Next in the past at start is a missed occurrence: fire it
		// once, past due, however many were missed.
		if _, err := t.fire(ctx, st.Next, true); err != nil {
			return err
		}
	}
	for ctx.Err() == nil {
		if st, err = t.loadStatus(ctx); err != nil {
			return err
		}
		occ = st.Next
		if now = t.h.now(); occ.IsZero() || occ.Before(now.Add(-time.Second)) {
			// An invocation that outran the next occurrence skips it (§7.1:
			// "a long run can delay or skip the next occurrence").
			occ = t.sched.Next(now)
		}
		if !t.sleepUntil(ctx, occ) {
			return nil
		}
		if _, err := t.fire(ctx, occ, false); err != nil {
			return err
		}
	}
	return nil
}

// loadStatus reads the schedule status, creating it on the first run with
// Last 0001-01-01 and Next the coming occurrence (§7.1).
func (t *timerTrigger) loadStatus(ctx context.Context) (timerStatus, error) {
	for range 3 {
		var st timerStatus
		_, err := t.h.opts.Store.ReadDoc(ctx, t.statusName, &st)
		if err == nil {
			return st, nil
		}
		if !errors.Is(err, azstore.ErrNotFound) {
			return st, fmt.Errorf("read timer status %s: %w", t.statusName, err)
		}
		st = timerStatus{Next: t.sched.Next(t.h.now())}
		if _, err = t.h.opts.Store.WriteDoc(ctx, t.statusName, st, ""); err == nil {
			return st, nil
		} else if !errors.Is(err, azstore.ErrConflict) {
			return st, fmt.Errorf("create timer status %s: %w", t.statusName, err)
		}
	}
	return timerStatus{}, fmt.Errorf("timer status %s keeps changing under us", t.statusName)
}

// fire claims occurrence occ by compare-and-swap on the status (Last moves
// to occ) and then invokes the function; an occurrence already claimed —
// by this host or another — is not fired again.
func (t *timerTrigger) fire(ctx context.Context, occ time.Time, pastDue bool) (bool, error) {
	for range 5 {
		var before timerStatus
		etag, err := t.h.opts.Store.ReadDoc(ctx, t.statusName, &before)
		if err != nil && !errors.Is(err, azstore.ErrNotFound) {
			return false, fmt.Errorf("read timer status %s: %w", t.statusName, err)
		}
		if !before.Last.IsZero() && !before.Last.Before(occ) {
			return false, nil // fired already
		}
		now := t.h.now()
		after := timerStatus{Last: occ, Next: t.sched.Next(later(now, occ)), LastUpdated: now}
		if _, err := t.h.opts.Store.WriteDoc(ctx, t.statusName, after, etag); err != nil {
			if errors.Is(err, azstore.ErrConflict) {
				continue // someone else moved it: look again
			}
			return false, fmt.Errorf("write timer status %s: %w", t.statusName, err)
		}
		t.invoke(occ, t.payloadStatus(before, occ), pastDue)
		return true, nil
	}
	return false, fmt.Errorf("timer status %s keeps changing under us", t.statusName)
}

// payloadStatus is the ScheduleStatus the function sees: the status before
// this run, with Next the occurrence firing now (§7.1); nil without the
// monitor.
func (t *timerTrigger) payloadStatus(st timerStatus, occ time.Time) *wireScheduleStatus {
	if !t.useMonitor {
		return nil
	}
	if !occ.IsZero() {
		st.Next = occ
	}
	return &wireScheduleStatus{Last: dotnetTime(st.Last), Next: dotnetTime(st.Next), LastUpdated: dotnetTime(st.LastUpdated)}
}

// Timer payload (§7.1): TimerInfo as a real object, not double-encoded.
type wireScheduleStatus struct {
	Last        string `json:"Last"`
	Next        string `json:"Next"`
	LastUpdated string `json:"LastUpdated"`
}

type wireTimerInfo struct {
	Schedule struct {
		AdjustForDST bool `json:"AdjustForDST"`
	} `json:"Schedule"`
	ScheduleStatus *wireScheduleStatus `json:"ScheduleStatus"`
	IsPastDue      bool                `json:"IsPastDue"`
}

type timerPayload struct {
	Data     map[string]wireTimerInfo `json:"Data"`
	Metadata struct {
		Sys sys `json:"sys"`
	} `json:"Metadata"`
}

func (t *timerTrigger) payload(status *wireScheduleStatus, pastDue bool) timerPayload {
	info := wireTimerInfo{ScheduleStatus: status, IsPastDue: pastDue}
	info.Schedule.AdjustForDST = true // a CronSchedule (§7.1)
	p := timerPayload{Data: map[string]wireTimerInfo{t.binding: info}}
	p.Metadata.Sys = t.h.sys(t.fn)
	return p
}

// invoke runs one timer invocation. A failure is logged and not retried
// (§7.1: the next occurrence is the retry).
func (t *timerTrigger) invoke(occ time.Time, status *wireScheduleStatus, pastDue bool) {
	t.h.inflight.Add(1)
	defer t.h.inflight.Done()
	began := time.Now()
	r, err := t.h.invoke(t.h.invCtx, t.fn, t.payload(status, pastDue))
	outcome := "succeeded"
	if err != nil {
		outcome = "failed"
	}
	attrs := []slog.Attr{slog.Bool("pastDue", pastDue)}
	if !occ.IsZero() {
		attrs = append(attrs, slog.Time("occurrence", occ))
	} else {
		attrs = append(attrs, slog.Bool("runOnStartup", true))
	}
	t.h.logInvocation(t.fn, "timer", began, outcome, r, err, attrs...)
}

// sleepUntil waits until the clock reaches at; false if ctx ended first.
func (t *timerTrigger) sleepUntil(ctx context.Context, at time.Time) bool {
	for {
		d := at.Sub(t.h.now())
		if d <= 0 {
			return true
		}
		if !sleep(ctx, min(d, t.h.opts.ClockCheck)) {
			return false
		}
	}
}

func later(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}
