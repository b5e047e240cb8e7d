package main

import (
	"testing"
	"time"
)

// TestPlan: both profiles carry every kind of fault, in the phase, in
// order, and the same seed draws the same schedule.
func TestPlan(t *testing.T) {
	for _, tc := range []struct {
		short bool
		phase time.Duration
		items int
	}{{true, 100 * time.Second, 10000}, {false, 8 * time.Minute, 20000}} {
		p := makePlan(42, tc.short, tc.phase)
		if p.items != tc.items {
			t.Errorf("short=%v: %d items, want %d", tc.short, p.items, tc.items)
		}
		kinds := map[string]int{}
		for i, e := range p.events {
			kinds[e.Kind]++
			if e.At < 0 || e.At > tc.phase {
				t.Errorf("short=%v: %s at %v, outside the %v phase", tc.short, e, e.At, tc.phase)
			}
			if i > 0 && e.At < p.events[i-1].At {
				t.Errorf("short=%v: events out of order at %d", tc.short, i)
			}
			if e.Kind == evReplay && (e.Frac <= 0 || e.Frac >= 1) {
				t.Errorf("short=%v: replay from %v of the head", tc.short, e.Frac)
			}
		}
		for _, k := range []string{evKill, evPGStop, evPGStart, evRecv500, evRecv429, evRecvOK, evAzurite,
			evExpire, evQuietExpire, evThrottle, evDuplicates, evGarbage, evBurst, evReplay} {
			if kinds[k] == 0 {
				t.Errorf("short=%v: no %s event", tc.short, k)
			}
		}
		if kinds[evKill] < p.minKills {
			t.Errorf("short=%v: %d kills planned, fewer than the %d the checks want", tc.short, kinds[evKill], p.minKills)
		}
		again := makePlan(42, tc.short, tc.phase)
		for i := range p.events {
			if again.events[i] != p.events[i] {
				t.Fatalf("short=%v: seed 42 drew %v, then %v", tc.short, p.events[i], again.events[i])
			}
		}
	}
}
