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
		s.kill(e)
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
	}
}

func (s *suite) burst(ctx context.Context, edits int) {
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

// leaseNames are the leases of the pipeline and the host's timer.
func leaseNames() []string {
	names := []string{pipelineName + "/lock/read", "devhost/timers/read.lock"}
	for _, d := range destinations {
		names = append(names, pipelineName+"/lock/"+d)
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
	before := s.headSeen(ctx)
	s.burst(ctx, 1500)
	// Wait for a read to log the burst and the writers to start on it,
	// and pull the plug while they are at it.
	var moved time.Time
	for end := time.Now().Add(20 * time.Second); time.Now().Before(end) && ctx.Err() == nil; time.Sleep(100 * time.Millisecond) {
		head, cps := s.positions(ctx)
		if head <= before {
			continue
		}
		if moved.IsZero() {
			moved = time.Now()
		}
		// A checkpoint past the old head and short of the new one is a
		// drain at work; after 3 s, any destination behind will do.
		draining := false
		for _, cp := range cps {
			draining = draining || (cp > before && cp < head) || (time.Since(moved) > 3*time.Second && cp < head)
		}
		if draining {
			break
		}
	}
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

// positions are the committed head and the destinations' checkpoints
// (-1 where unknown).
func (s *suite) positions(ctx context.Context) (int64, []int64) {
	head := s.headSeen(ctx)
	var cps []int64
	for _, d := range destinations {
		cp, err := checkpoint.Load(ctx, s.st, pipelineName, d)
		if err != nil {
			cps = append(cps, -1)
			continue
		}
		cps = append(cps, cp.Seq)
	}
	return head, cps
}

// lagLine says where the head and the checkpoints are.
func (s *suite) lagLine(ctx context.Context) string {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	st, err := changelog.New(s.st, pipelineName, changelog.Options{}).LoadState(ctx)
	if err != nil {
		return "head unknown: " + err.Error()
	}
	var parts []string
	behind := false
	for _, d := range destinations {
		cp, err := checkpoint.Load(ctx, s.st, pipelineName, d)
		if err != nil {
			parts = append(parts, d+" ?")
			continue
		}
		parts = append(parts, fmt.Sprintf("%s %d", d, cp.Seq))
		behind = behind || cp.Seq < st.Head.Seq
	}
	state := "all caught up"
	if behind {
		state = "destinations behind"
	}
	return fmt.Sprintf("head %d, checkpoints %s: %s", st.Head.Seq, strings.Join(parts, ", "), state)
}

// duplicates enqueues extra wake-ups for every destination: exact copies of
// the current head, stale heads (at or below the checkpoint), future heads,
// none at all and with unknown extra keys — some delayed, so that they
// arrive out of order.
func (s *suite) duplicates(ctx context.Context, rng *rand.Rand) {
	ctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	st, err := changelog.New(s.st, pipelineName, changelog.Options{}).LoadState(ctx)
	if err != nil {
		s.vlogf("duplicates skipped: %v", err)
		return
	}
	head := st.Head.Seq
	n := 0
	for _, d := range destinations {
		cp, err := checkpoint.Load(ctx, s.st, pipelineName, d)
		if err != nil {
			s.vlogf("duplicates skipped: %v", err)
			return
		}
		type msg struct {
			kind string
			body map[string]any
		}
		msgs := []msg{
			{"current", map[string]any{"pipeline": pipelineName, "destination": d, "head": head}},
			{"current", map[string]any{"pipeline": pipelineName, "destination": d, "head": head}},
			{"future", map[string]any{"pipeline": pipelineName, "destination": d, "head": head + 1 + rng.Int64N(5000)}},
			{"no-head", map[string]any{"pipeline": pipelineName, "destination": d}},
			{"extra-keys", map[string]any{"pipeline": pipelineName, "destination": d, "head": head, "from": "chaos", "attempt": rng.IntN(9)}},
		}
		if cp.Seq > 0 {
			msgs = append(msgs, msg{"stale", map[string]any{"pipeline": pipelineName, "destination": d, "head": 1 + rng.Int64N(cp.Seq)}})
			msgs = append(msgs, msg{"stale", map[string]any{"pipeline": pipelineName, "destination": d, "head": cp.Seq}})
		}
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
	}
	s.vlogf("enqueued %d duplicate/stale/future wake-ups (head %d)", n, head)
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
		b(`{"pipeline":"orders","destination":"pg","head":-3}`),
		b(`{"pipeline":"no-such-pipeline","destination":"pg","head":5}`),
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
