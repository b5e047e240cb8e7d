package main

import (
	"fmt"
	"math/rand/v2"
	"sort"
	"time"
)

// Event kinds of the fault schedule.
const (
	evKill       = "kill"        // SIGKILL a sluice process; it is restarted after Delay
	evPGStop     = "pg-stop"     // PostgreSQL down (immediate shutdown)
	evPGStart    = "pg-start"    // and up again
	evRecv500    = "recv-500"    // the receiver answers 500
	evRecv429    = "recv-429"    // the receiver answers 429 with Retry-After
	evRecvOK     = "recv-ok"     // the receiver accepts again
	evAzurite    = "azurite"     // churn burst, then Azurite stopped for Delay and started with its data
	evExpire     = "expire"      // the simulator's delta tokens expire (410 on the next delta)
	evThrottle   = "throttle"    // Graph answers 429/503 with Retry-After
	evDuplicates = "duplicates"  // duplicate, stale and future wake-ups, out of order
	evGarbage    = "garbage"     // undecodable messages in the write queue
	evBurst      = "churn-burst" // many changes at once (long drains to kill)
	// evQuietExpire: churn held back, reads caught up (at most Delay),
	// tokens expired, the resync rounds of the big list left to run (at
	// most Wait) with only a couple of kills.
	evQuietExpire = "quiet-expire"
	evReplay      = "replay" // burst, then replay the replayed pipeline from Frac of its head
)

// Kill targets.
const (
	targetRunA    = "run-a"
	targetRunB    = "run-b"
	targetOneShot = "oneshot"
)

// event is one scheduled fault, at an offset from the start of the fault
// phase.
type event struct {
	At     time.Duration
	Kind   string
	Target string        // evKill
	Delay  time.Duration // evKill: restart delay; evAzurite: downtime; evQuietExpire: wait for first loads
	Wait   time.Duration // evQuietExpire: wait for the resync rounds
	N      int           // evThrottle: requests; evBurst, evReplay: edits
	Frac   float64       // evReplay: replay from this fraction of the head
	Status int           // evThrottle
	Retry  string        // evThrottle, evRecv429: Retry-After
	// Break (evKill): also break every lease of the pipeline and the
	// timer's right after the kill — what the killed process held expires
	// at once instead of after up to 60 s, and whatever a live process
	// held is lost under its feet (DESIGN §4: leases are not what keeps
	// data safe).
	Break bool
}

func (e event) String() string {
	switch e.Kind {
	case evKill:
		b := ""
		if e.Break {
			b = ", break leases"
		}
		return fmt.Sprintf("kill %s, restart after %v%s", e.Target, e.Delay.Round(10*time.Millisecond), b)
	case evAzurite:
		return fmt.Sprintf("restart Azurite (down %v)", e.Delay.Round(100*time.Millisecond))
	case evThrottle:
		return fmt.Sprintf("throttle Graph: %d × %d, Retry-After %q", e.N, e.Status, e.Retry)
	case evRecv429:
		return fmt.Sprintf("receiver answers 429, Retry-After %q", e.Retry)
	case evBurst:
		return fmt.Sprintf("churn burst of %d edits", e.N)
	case evQuietExpire:
		return fmt.Sprintf("quiet 410 (catch-up awaited up to %v, resync up to %v)", e.Delay, e.Wait)
	case evReplay:
		return fmt.Sprintf("burst of %d edits, then replay %s from %.0f%% of its head", e.N, replayed.name, 100*e.Frac)
	}
	return e.Kind
}

// plan is the whole fault schedule, derived from the seed alone.
type plan struct {
	phase      time.Duration // length of the fault phase
	items      int           // initial list size
	churnEvery time.Duration
	events     []event
	minKills   int
	pgOutage   time.Duration
	recvFail   time.Duration // 500 then 429, half each
}

// makePlan draws the schedule. Everything random in the suite's decisions
// comes from here or from streams seeded with the same seed, so a seed
// reproduces the same faults at the same offsets (what the OS does in
// between is, of course, not reproducible).
func makePlan(seed int64, short bool, phase time.Duration) plan {
	rng := rand.New(rand.NewPCG(uint64(seed), 0x5eed))
	at := func(lo, hi float64) time.Duration { // fraction of the phase
		f := lo + rng.Float64()*(hi-lo)
		return time.Duration(f * float64(phase))
	}
	sec := func(lo, hi float64) time.Duration {
		return time.Duration((lo + rng.Float64()*(hi-lo)) * float64(time.Second))
	}
	p := plan{phase: phase}
	var ev []event
	add := func(e event) { ev = append(ev, e) }

	// Kills: at sorted uniform moments, leaving the end of the phase quiet
	// so that leases of killed processes (60 s) run out before the final
	// passes.
	quietEnd := 45 * time.Second
	nKills := 55 + rng.IntN(10)
	p.minKills = 50
	if short {
		quietEnd = 28 * time.Second
		nKills = 12 + rng.IntN(4)
		p.minKills = 10
	}
	kStart, kEnd := 4*time.Second, phase-quietEnd
	for range nKills {
		t := kStart + time.Duration(rng.Int64N(int64(kEnd-kStart)))
		target := targetRunA
		switch x := rng.Float64(); {
		case x < 0.35:
			target = targetRunA
		case x < 0.7:
			target = targetRunB
		default:
			target = targetOneShot
		}
		add(event{At: t, Kind: evKill, Target: target, Delay: sec(0.2, 3), Break: rng.IntN(2) == 0})
	}

	// The list: big enough that a full round at Graph's pace (pages of
	// 0.3–1.5 s, about 500 items each) spans several commits (one every
	// 10 s). Quiet 410s wait for the reads to catch up (Delay) and for the
	// resync rounds (Wait); what would change the list meanwhile, and
	// kills past the first two, wait for them instead.
	if short {
		// In this order, so that the quiet 410 holds back as little as
		// possible: outages and Azurite first, the quiet 410, the replay.
		p.items, p.churnEvery = 10000, 400*time.Millisecond
		p.pgOutage, p.recvFail = 20*time.Second, 30*time.Second
		pg := at(0.08, 0.14)
		add(event{At: pg, Kind: evPGStop})
		add(event{At: pg + p.pgOutage, Kind: evPGStart})
		r := at(0.12, 0.18)
		add(event{At: r, Kind: evRecv500})
		add(event{At: r + p.recvFail/2, Kind: evRecv429, Retry: "2"})
		add(event{At: r + p.recvFail, Kind: evRecvOK})
		// Throttled early: backing off without a Retry-After takes up to
		// 30 s, which the quiet 410's resync cannot spare.
		t := at(0.08, 0.12)
		add(event{At: t, Kind: evThrottle, N: 12, Status: 429, Retry: "1"})
		add(event{At: t, Kind: evThrottle, N: 6, Status: 503, Retry: "1.5"})
		add(event{At: t, Kind: evThrottle, N: 3, Status: 429, Retry: ""})
		add(event{At: at(0.05, 0.10), Kind: evGarbage})
		add(event{At: at(0.12, 0.16), Kind: evBurst, N: 300})
		add(event{At: at(0.16, 0.22), Kind: evAzurite, Delay: 3 * time.Second})
		add(event{At: at(0.26, 0.30), Kind: evQuietExpire, Delay: 20 * time.Second, Wait: 45 * time.Second})
		add(event{At: at(0.72, 0.78), Kind: evReplay, N: 300, Frac: 0.2 + 0.6*rng.Float64()})
		add(event{At: at(0.85, 0.90), Kind: evExpire})
	} else {
		p.items, p.churnEvery = 20000, 500*time.Millisecond
		p.pgOutage, p.recvFail = 60*time.Second, 120*time.Second
		pg := at(0.08, 0.16)
		add(event{At: pg, Kind: evPGStop})
		add(event{At: pg + p.pgOutage, Kind: evPGStart})
		r := at(0.34, 0.40)
		add(event{At: r, Kind: evRecv500})
		add(event{At: r + p.recvFail/2, Kind: evRecv429, Retry: "3"})
		add(event{At: r + p.recvFail, Kind: evRecvOK})
		add(event{At: at(0.22, 0.30), Kind: evAzurite, Delay: sec(3, 8)})
		add(event{At: at(0.70, 0.78), Kind: evAzurite, Delay: sec(3, 8)})
		add(event{At: at(0.15, 0.20), Kind: evExpire})
		add(event{At: at(0.50, 0.56), Kind: evExpire})
		add(event{At: at(0.84, 0.88), Kind: evExpire})
		add(event{At: at(0.24, 0.27), Kind: evQuietExpire, Delay: 90 * time.Second, Wait: 150 * time.Second})
		add(event{At: at(0.60, 0.63), Kind: evQuietExpire, Delay: 60 * time.Second, Wait: 150 * time.Second})
		t := at(0.25, 0.30)
		add(event{At: t, Kind: evThrottle, N: 25, Status: 429, Retry: "1"})
		add(event{At: t, Kind: evThrottle, N: 10, Status: 503, Retry: "2.5"})
		t = at(0.60, 0.66)
		add(event{At: t, Kind: evThrottle, N: 5, Status: 429, Retry: ""})
		add(event{At: t, Kind: evThrottle, N: 3, Status: 429, Retry: "20"})
		add(event{At: t, Kind: evThrottle, N: 8, Status: 503, Retry: "0.5"})
		add(event{At: at(0.40, 0.45), Kind: evReplay, N: 400, Frac: 0.1 + 0.8*rng.Float64()})
		add(event{At: at(0.74, 0.80), Kind: evReplay, N: 400, Frac: 0.1 + 0.8*rng.Float64()})
		add(event{At: at(0.05, 0.10), Kind: evGarbage})
		add(event{At: at(0.45, 0.50), Kind: evGarbage})
		for _, f := range []float64{0.12, 0.32, 0.52, 0.68} {
			add(event{At: at(f, f+0.04), Kind: evBurst, N: 400 + rng.IntN(400)})
		}
	}
	// Duplicate and out-of-order wake-ups all along the fault phase.
	for t := sec(2, 5); t < phase-10*time.Second; t += sec(3, 8) {
		add(event{At: t, Kind: evDuplicates})
	}
	sort.SliceStable(ev, func(i, j int) bool { return ev[i].At < ev[j].At })
	p.events = ev
	return p
}
