package main

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"strings"
	"time"

	"github.com/sluicehq/sluice/internal/changelog"
	"github.com/sluicehq/sluice/internal/checkpoint"
)

// churn keeps the list changing: a few adds, edits and deletes per tick.
func (s *suite) churn(ctx context.Context) {
	rng := rand.New(rand.NewPCG(uint64(s.o.Seed), 0xc4))
	t := time.NewTicker(s.plan.churnEvery)
	defer t.Stop()
	for !s.churnStop.Load() {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if s.isQuiet() {
			continue // a quiet 410 is under way
		}
		body := map[string]any{"adds": rng.IntN(4), "edits": rng.IntN(7), "deletes": rng.IntN(3), "seed": rng.Uint64() >> 1}
		if err := s.sim.admin(ctx, "POST", "/_sim/churn", body, nil); err != nil && ctx.Err() == nil {
			s.faultErr("churn: %v", err)
			continue
		}
		s.mu.Lock()
		s.c.churnCalls++
		s.mu.Unlock()
	}
}

// apply carries out one scheduled fault.
func (s *suite) apply(ctx context.Context, e event) {
	switch e.Kind {
	case evKill:
		brk, held := s.admitKill(ctx)
		if held {
			s.mu.Lock()
			s.c.killsHeld++
			s.mu.Unlock()
			// Spread the kills a quiet 410 held over the next 10 s
			// rather than firing them all at once.
			sleepCtx(ctx, e.At%(10*time.Second))
		}
		e.Break = e.Break || brk
		if ctx.Err() == nil {
			s.kill(e)
		}
	case evPGStop:
		s.burst(ctx, 200)
		s.logf("PostgreSQL down for %v", s.plan.pgOutage)
		if err := s.pg.stop(ctx); err != nil {
			s.faultErr("%v", err)
			return
		}
		s.mu.Lock()
		s.c.pgOutages++
		s.mu.Unlock()
	case evPGStart:
		if err := s.pg.start(ctx); err != nil {
			s.faultErr("%v", err)
			return
		}
		s.mu.Lock()
		s.c.pgDown += s.plan.pgOutage
		s.mu.Unlock()
		s.logf("PostgreSQL up again")
	case evRecv500:
		s.logf("receiver answers 500 for %v", s.plan.recvFail/2)
		s.recv.setMode(recvFail500, "")
		s.burst(ctx, 200) // something to deliver while it fails
	case evRecv429:
		s.logf("receiver answers 429 with Retry-After %s for %v", e.Retry, s.plan.recvFail/2)
		s.recv.setMode(recvThrottle, e.Retry)
		s.burst(ctx, 200)
	case evRecvOK:
		s.recv.setMode(recvOK, "")
		s.mu.Lock()
		s.c.recvFailing += s.plan.recvFail
		s.mu.Unlock()
		s.logf("receiver accepts again")
	case evAzurite:
		s.restartAzurite(ctx, e)
	case evExpire:
		s.waitQuiet(ctx) // not in the middle of a quiet 410's resync
		if err := s.sim.admin(ctx, "POST", "/_sim/expire", nil, nil); err != nil {
			s.faultErr("%v", err)
			return
		}
		s.mu.Lock()
		s.c.expiries++
		s.mu.Unlock()
		s.logf("delta tokens expired (next delta: 410, full round)")
	case evThrottle:
		f := map[string]any{"status": e.Status, "count": e.N}
		if e.Retry != "" {
			f["retryAfter"] = e.Retry
		}
		if err := s.sim.admin(ctx, "POST", "/_sim/faults", f, nil); err != nil {
			s.faultErr("%v", err)
			return
		}
		s.mu.Lock()
		s.c.throttles += e.N
		s.mu.Unlock()
		s.logf("%s", e)
	case evGarbage:
		s.sendGarbage(ctx)
	case evBurst:
		s.burst(ctx, e.N)
	case evQuietExpire:
		s.quietExpire(ctx, e)
	case evReplay:
		s.replay(ctx, e)
	}
}

// burst makes many changes at once; during a quiet 410 it waits for the
// resync to end first.
func (s *suite) burst(ctx context.Context, edits int) {
	if s.waitQuiet(ctx) {
		s.mu.Lock()
		s.c.burstsHeld++
		s.mu.Unlock()
	}
	if err := s.sim.admin(ctx, "POST", "/_sim/churn", map[string]any{"adds": edits / 10, "edits": edits, "deletes": edits / 20, "seed": 1}, nil); err != nil {
		s.faultErr("churn burst: %v", err)
		return
	}
	s.mu.Lock()
	s.c.bursts++
	s.mu.Unlock()
	s.vlogf("churn burst: %d edits, %d adds, %d deletes", edits, edits/10, edits/20)
}

func (s *suite) kill(e event) {
	killers := map[string]func(time.Duration) string{
		targetRunA: s.runs[0].kill, targetRunB: s.runs[1].kill, targetOneShot: s.oneshot.kill,
	}
	// The chosen target, else (it is restarting, or no one-shot command
	// runs at this moment) the others in a fixed order; when all are
	// between lives, a moment later.
	var killed string
	if e.Target == targetOneShot {
		// One-shot commands come and go: wait for the next one a little.
		for try := 0; try < 40; try++ {
			if killed = s.oneshot.kill(e.Delay); killed != "" {
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	for try := 0; killed == "" && try < 20; try++ {
		if try > 0 {
			time.Sleep(250 * time.Millisecond)
		}
		for _, t := range []string{e.Target, targetRunA, targetRunB, targetOneShot} {
			if killed = killers[t](e.Delay); killed != "" {
				break
			}
		}
	}
	if killed == "" {
		s.vlogf("kill %s: nothing running", e.Target)
		return
	}
	s.mu.Lock()
	s.c.kills[killed]++
	s.mu.Unlock()
	what := ""
	if e.Break {
		what = fmt.Sprintf(", broke %d leases", s.breakLeases())
	}
	s.vlogf("SIGKILL %s, restart in %v%s", killed, e.Delay.Round(10*time.Millisecond), what)
}

// leaseNames are the leases of the pipelines and the host's timer.
func leaseNames() []string {
	names := []string{"devhost/timers/read.lock"}
	for _, p := range pipelines {
		names = append(names, p.name+"/lock/read")
		for _, d := range p.dests {
			names = append(names, p.name+"/lock/"+d.name)
		}
	}
	return names
}

// breakLeases breaks every lease that is held; it returns how many were.
func (s *suite) breakLeases() int {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	n := 0
	for _, name := range leaseNames() {
		if err := s.st.BreakLease(ctx, name); err == nil {
			n++
		}
	}
	s.mu.Lock()
	s.c.leaseBreaks += n
	s.mu.Unlock()
	return n
}

// restartAzurite makes the destinations busy with a burst of changes, then
// stops Azurite while they drain, keeps it down for e.Delay, and starts it
// again on the same ports with the same data.
func (s *suite) restartAzurite(ctx context.Context, e event) {
	s.burst(ctx, 1500)
	s.waitDraining(ctx, 20*time.Second)
	lag := s.lagLine(ctx)
	mid := strings.Contains(lag, "behind")
	if mid {
		lag += " (mid-drain)"
	}
	s.logf("Azurite stopped (SIGTERM, data kept) for %v; %s", e.Delay.Round(100*time.Millisecond), lag)
	if !s.az.stop() {
		s.faultErr("Azurite did not stop within 60 s and was killed: its last writes may be lost (not sluice's fault)")
		s.mu.Lock()
		s.c.azKilled++
		s.mu.Unlock()
	}
	sleepCtx(ctx, e.Delay)
	if err := s.az.start(ctx); err != nil {
		s.faultErr("restart Azurite: %v", err)
		return
	}
	s.mu.Lock()
	s.c.azRestarts++
	if mid {
		s.c.azMidDrain++
	}
	s.mu.Unlock()
	s.logf("Azurite up again")
}

// waitDraining waits (at most limit) until a read has logged something
// new and writers are at work on it: a checkpoint past where it was and
// short of its head, or after 3 s any destination behind its head.
func (s *suite) waitDraining(ctx context.Context, limit time.Duration) {
	before := s.positions(ctx)
	var moved time.Time
	for end := time.Now().Add(limit); time.Now().Before(end) && ctx.Err() == nil; time.Sleep(100 * time.Millisecond) {
		now := s.positions(ctx)
		draining := false
		for p, pos := range now {
			if pos.head <= before[p].head {
				continue
			}
			if moved.IsZero() {
				moved = time.Now()
			}
			for _, cp := range pos.cps {
				draining = draining || (cp > before[p].head && cp < pos.head) || (time.Since(moved) > 3*time.Second && cp < pos.head)
			}
		}
		if draining {
			return
		}
	}
}

// position is a pipeline's committed head and its destinations'
// checkpoints (-1 where unknown).
type position struct {
	head int64
	cps  map[string]int64
}

func (s *suite) positions(ctx context.Context) map[string]position {
	out := map[string]position{}
	for _, p := range pipelines {
		pos := position{head: s.headSeen(ctx, p.name), cps: map[string]int64{}}
		for _, d := range p.dests {
			pos.cps[d.name] = -1
			if cp, err := checkpoint.Load(ctx, s.st, p.name, d.name); err == nil {
				pos.cps[d.name] = cp.Seq
			}
		}
		out[p.name] = pos
	}
	return out
}

// lagLine says where the heads and the checkpoints are.
func (s *suite) lagLine(ctx context.Context) string {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	var parts []string
	behind := false
	for _, p := range pipelines {
		st, err := changelog.New(s.st, p.name, changelog.Options{}).LoadState(ctx)
		if err != nil {
			parts = append(parts, p.name+" head unknown: "+err.Error())
			continue
		}
		var cps []string
		for _, d := range p.dests {
			cp, err := checkpoint.Load(ctx, s.st, p.name, d.name)
			if err != nil {
				cps = append(cps, d.name+" ?")
				continue
			}
			cps = append(cps, fmt.Sprintf("%s %d", d.name, cp.Seq))
			behind = behind || cp.Seq < st.Head.Seq
		}
		round := ""
		if st.Source.FullRound {
			round = ", full round"
		}
		parts = append(parts, fmt.Sprintf("%s head %d%s (%s)", p.name, st.Head.Seq, round, strings.Join(cps, ", ")))
	}
	state := "all caught up"
	if behind {
		state = "destinations behind"
	}
	return strings.Join(parts, "; ") + ": " + state
}

// duplicates enqueues extra wake-ups for every destination: exact copies of
// the current head, stale heads (at or below the checkpoint), future heads,
// none at all and with unknown extra keys — some delayed, so that they
// arrive out of order.
func (s *suite) duplicates(ctx context.Context, rng *rand.Rand) {
	ctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	type msg struct {
		kind string
		body map[string]any
	}
	var msgs []msg
	for _, p := range pipelines {
		st, err := changelog.New(s.st, p.name, changelog.Options{}).LoadState(ctx)
		if err != nil {
			s.vlogf("duplicates skipped: %v", err)
			return
		}
		head := st.Head.Seq
		for _, d := range p.destNames() {
			cp, err := checkpoint.Load(ctx, s.st, p.name, d)
			if err != nil {
				s.vlogf("duplicates skipped: %v", err)
				return
			}
			msgs = append(msgs,
				msg{"current", map[string]any{"pipeline": p.name, "destination": d, "head": head}},
				msg{"current", map[string]any{"pipeline": p.name, "destination": d, "head": head}},
				msg{"future", map[string]any{"pipeline": p.name, "destination": d, "head": head + 1 + rng.Int64N(5000)}},
				msg{"no-head", map[string]any{"pipeline": p.name, "destination": d}},
				msg{"extra-keys", map[string]any{"pipeline": p.name, "destination": d, "head": head, "from": "chaos", "attempt": rng.IntN(9)}},
			)
			if cp.Seq > 0 {
				msgs = append(msgs, msg{"stale", map[string]any{"pipeline": p.name, "destination": d, "head": 1 + rng.Int64N(cp.Seq)}})
				msgs = append(msgs, msg{"stale", map[string]any{"pipeline": p.name, "destination": d, "head": cp.Seq}})
			}
		}
	}
	n := 0
	rng.Shuffle(len(msgs), func(i, j int) { msgs[i], msgs[j] = msgs[j], msgs[i] })
	for _, m := range msgs {
		data, _ := json.Marshal(m.body)
		delay := time.Duration(0)
		if rng.IntN(2) == 0 {
			delay = time.Duration(1+rng.IntN(12)) * time.Second // out of order
		}
		if err := s.st.EnqueueText(ctx, writeQueue, base64.StdEncoding.EncodeToString(data), delay); err != nil {
			s.vlogf("duplicates: enqueue: %v", err)
			return
		}
		n++
		s.mu.Lock()
		s.c.dupes[m.kind]++
		if delay > 0 {
			s.c.dupes["delayed"]++
		}
		s.mu.Unlock()
	}
	s.vlogf("enqueued %d duplicate/stale/future wake-ups", n)
}

// garbageTexts are messages no writer can act on; the host must move the
// undecodable ones to the poison queue and drop the rest, and none of them
// may disturb a destination.
func garbageTexts() []string {
	b := func(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }
	return []string{
		"%%% not base64 %%%",
		b("not json at all"),
		b(`{"pipeline":"orders"}`),
		b(`{"pipeline":"orders","destination":"warehouse","head":-3}`),
		b(`{"pipeline":"no-such-pipeline","destination":"warehouse","head":5}`),
		b(`{"pipeline":"audit","destination":"lite","head":5}`), // a destination of another pipeline
		b(`[1,2,3]`),
	}
}

func (s *suite) sendGarbage(ctx context.Context) {
	n := 0
	for _, t := range garbageTexts() {
		if err := s.st.EnqueueText(ctx, writeQueue, t, 0); err != nil {
			s.faultErr("enqueue garbage: %v", err)
			continue
		}
		n++
	}
	s.mu.Lock()
	s.c.garbage += n
	for _, t := range garbageTexts() {
		s.garbage[t] = true
	}
	s.mu.Unlock()
	s.logf("enqueued %d undecodable or unknown wake-ups", n)
}
