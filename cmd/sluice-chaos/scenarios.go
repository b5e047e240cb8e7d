package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/sluicehq/sluice/internal/changelog"
	"github.com/sluicehq/sluice/internal/checkpoint"
)

// isQuiet reports whether a quiet 410 is under way.
func (s *suite) isQuiet() bool {
	s.quietMu.Lock()
	defer s.quietMu.Unlock()
	return s.quiet != nil
}

// waitQuiet waits while a quiet 410 is under way; it reports whether it
// had to.
func (s *suite) waitQuiet(ctx context.Context) bool {
	s.quietMu.Lock()
	ch := s.quiet
	s.quietMu.Unlock()
	if ch == nil {
		return false
	}
	select {
	case <-ch:
	case <-ctx.Done():
	}
	return true
}

// beginQuiet holds churn, bursts and kills back until end is called (see
// letKills).
func (s *suite) beginQuiet() (end func()) {
	ch := make(chan struct{})
	s.quietMu.Lock()
	s.quiet, s.quietKills = ch, quietKills
	s.quietMu.Unlock()
	return func() {
		s.quietMu.Lock()
		s.quiet = nil
		s.quietMu.Unlock()
		close(ch)
	}
}

// quietKills is how many kills a quiet 410's resync lets through; they
// break every lease, so that the round resumes at the next tick rather
// than after the 30 s a dead reader's lease lasts.
const quietKills = 2

// letKills lets quietKills kills through from now on.
func (s *suite) letKills() {
	s.quietMu.Lock()
	s.quietKills = 0
	s.quietMu.Unlock()
}

// admitKill is asked before each kill. Outside a quiet 410 it lets the kill
// go as planned; during one it holds kills until the resync is over, except
// quietKills of them once the tokens have expired, which break every lease
// (breakLeases true). At the kill rate of the schedule (one every 5 to 8 s,
// half of them breaking leases) a reader at Graph's pace rarely gets the
// 10 s it needs between commits, and a resync would not end within the
// fault phase.
func (s *suite) admitKill(ctx context.Context) (breakLeases, held bool) {
	s.quietMu.Lock()
	ch := s.quiet
	if ch == nil {
		s.quietMu.Unlock()
		return false, false
	}
	if s.quietKills < quietKills {
		s.quietKills++
		s.quietMu.Unlock()
		return true, false
	}
	s.quietMu.Unlock()
	select {
	case <-ch:
	case <-ctx.Done():
	}
	return false, true
}

// quietExpire is the resync of a big list that has not changed: churn,
// bursts and Graph's edits between pages held back, the reads caught up,
// every delta token expired, and the pipelines' full rounds left to run at
// Graph's pace, interrupted by a couple of kills. Such a round logs next
// to nothing and may delete nothing; the checks hold it to that.
func (s *suite) quietExpire(ctx context.Context, e event) {
	end := s.beginQuiet()
	defer end()
	// Kills are held from now on; what killed processes still hold would
	// keep pipelines from catching up for up to 30 s.
	s.breakLeases()
	if err := s.sim.admin(ctx, "POST", "/_sim/knobs", quietKnobs(), nil); err != nil {
		s.faultErr("quiet 410: %v", err)
		return
	}
	defer func() {
		if err := s.sim.admin(context.WithoutCancel(ctx), "POST", "/_sim/knobs", phaseKnobs, nil); err != nil {
			s.faultErr("quiet 410: restore the knobs: %v", err)
		}
	}()
	// Let the reads take in the last changes first, so that the resync
	// meets the list the log already holds: a second deltaLink committed
	// after the pause comes from a round that began after it.
	paused := time.Now()
	links := map[string]map[time.Time]bool{}
	caught := s.waitStates(ctx, e.Delay, func(p string, st *changelog.State) bool {
		if st.Source.CursorAt.After(paused) && !st.Source.FullRound {
			if links[p] == nil {
				links[p] = map[time.Time]bool{}
			}
			links[p][st.Source.CursorAt] = true
		}
		return len(links[p]) >= 2
	})
	if ctx.Err() != nil {
		return
	}
	if !caught {
		s.quietNote("quiet 410: the reads did not catch up with the paused list within %v (%s); expiring anyway", e.Delay, s.lagLine(ctx))
	}
	heads := map[string]int64{}
	for _, p := range pipelines {
		heads[p.name] = s.headSeen(ctx, p.name)
	}
	at := time.Now()
	if err := s.sim.admin(ctx, "POST", "/_sim/expire", nil, nil); err != nil {
		s.faultErr("quiet 410: %v", err)
		return
	}
	s.letKills()
	s.mu.Lock()
	s.c.expiries++
	s.c.quietExpiries++
	s.mu.Unlock()
	s.logf("quiet 410: churn, Graph's edits between pages and kills held back, reads caught up in %v, delta tokens expired; waiting up to %v for every pipeline's resync round",
		at.Sub(paused).Round(100*time.Millisecond), e.Wait)

	// A pipeline is through once a full round began after the 410 and a
	// deltaLink was committed after that.
	began := map[string]time.Time{}
	done := s.waitStates(ctx, e.Wait, func(p string, st *changelog.State) bool {
		if st.Source.FullRound && began[p].IsZero() {
			began[p] = time.Now()
		}
		return !began[p].IsZero() && !st.Source.FullRound && st.Source.CursorAt.After(began[p])
	})
	var parts []string
	for _, p := range pipelines {
		ups, dels := s.countOps(ctx, p.name, heads[p.name])
		state := "resynced"
		if began[p.name].IsZero() {
			state = "no full round seen"
		} else if !done {
			st, err := changelog.New(s.st, p.name, changelog.Options{}).LoadState(ctx)
			if err != nil || st.Source.FullRound {
				state = "still in its round"
			}
		}
		parts = append(parts, fmt.Sprintf("%s %s, logged %d upserts and %d deletes", p.name, state, ups, dels))
	}
	s.quietNote("quiet 410 at %.0fs: %s in %v; churn and held kills resume", at.Sub(s.t0).Seconds(),
		strings.Join(parts, "; "), time.Since(at).Round(time.Second))
}

// quietKnobs are phaseKnobs without Graph's edits between pages.
func quietKnobs() map[string]any {
	k := maps.Clone(phaseKnobs)
	delete(k, "mutatePerPage")
	return k
}

// quietNote logs what a quiet 410 did, and keeps it for the counts.
func (s *suite) quietNote(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	s.mu.Lock()
	s.c.quietNotes = append(s.c.quietNotes, msg)
	s.mu.Unlock()
	s.logf("%s", msg)
}

// waitStates polls the pipelines' states every half second until ok holds
// for every one of them, at most limit; it reports whether it did.
func (s *suite) waitStates(ctx context.Context, limit time.Duration, ok func(pipeline string, st *changelog.State) bool) bool {
	for end := time.Now().Add(limit); ; {
		all := true
		for _, p := range pipelines {
			st, err := changelog.New(s.st, p.name, changelog.Options{}).LoadState(ctx)
			if err != nil || !ok(p.name, st) {
				all = false
			}
		}
		if all {
			return true
		}
		if time.Now().After(end) || !sleepCtx(ctx, 500*time.Millisecond) {
			return false
		}
	}
}

// countOps counts the upserts and deletes a pipeline logged after seq.
func (s *suite) countOps(ctx context.Context, pipeline string, after int64) (ups, dels int) {
	lg := changelog.New(s.st, pipeline, changelog.Options{})
	st, err := lg.LoadState(ctx)
	if err != nil || st.Head.Seq <= after {
		return 0, 0
	}
	sc := lg.Scan(ctx, after+1, st.Head.Seq)
	defer sc.Close()
	for sc.Next() {
		if sc.Record().Op == changelog.OpDelete {
			dels++
		} else {
			ups++
		}
	}
	return ups, dels
}

// replay rewinds the replayed pipeline's warehouse and hook, as an
// operator would through a host's replay function, while the other
// pipelines drain a burst.
func (s *suite) replay(ctx context.Context, e event) {
	s.burst(ctx, e.N)
	s.waitDraining(ctx, 15*time.Second)
	for _, d := range []string{"warehouse", "hook"} {
		head := s.headSeen(ctx, replayed.name)
		from := max(1, int64(e.Frac*float64(head)))
		ans, via, err := s.replayOne(ctx, replayed.name, d, from)
		if err != nil {
			if ctx.Err() == nil {
				s.faultErr("replay %s/%s: %v", replayed.name, d, err)
			}
			return
		}
		s.mu.Lock()
		s.c.replays++
		s.mu.Unlock()
		s.logf("replayed %s/%s from seq %d (asked %d): %d records again as generation %d, via %s; %s",
			replayed.name, d, ans.FromSeq, from, ans.Records, ans.Generation, via, s.lagLine(ctx))
	}
}

// replayAnswer is what the replay function answers.
type replayAnswer struct {
	FromSeq    int64 `json:"fromSeq"`
	ToSeq      int64 `json:"toSeq"`
	Records    int64 `json:"records"`
	Generation int64 `json:"generation"`
}

// replayOne asks a running host's replay function, the one that answers
// first; with neither up for a while, the CLI.
func (s *suite) replayOne(ctx context.Context, pipeline, dest string, from int64) (replayAnswer, string, error) {
	body, _ := json.Marshal(map[string]int64{"fromSeq": from})
	var last error
	client := &http.Client{Timeout: 20 * time.Second}
	for try := 0; try < 8 && ctx.Err() == nil; try++ {
		for _, r := range s.runs {
			url := fmt.Sprintf("http://%s/api/replay/%s/%s", r.addr, pipeline, dest)
			req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(body))
			if err != nil {
				return replayAnswer{}, "", err
			}
			req.Header.Set("Content-Type", "application/json")
			resp, err := client.Do(req)
			if err != nil {
				last = err
				continue // restarting after a kill
			}
			b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<16))
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				last = fmt.Errorf("%s: %s: %s", url, resp.Status, bytes.TrimSpace(b))
				continue
			}
			var a replayAnswer
			if err := json.Unmarshal(b, &a); err != nil {
				return replayAnswer{}, "", fmt.Errorf("%s: %v: %s", url, err, b)
			}
			return a, r.name, nil
		}
		sleepCtx(ctx, time.Second)
	}
	s.vlogf("replay %s/%s: no host answered (%v); using the CLI", pipeline, dest, last)
	out, code := s.sluice(ctx, "replay", "--pipeline", pipeline, "--destination", dest,
		"--from-seq", strconv.FormatInt(from, 10), "--no-drain")
	if code != 0 {
		return replayAnswer{}, "", fmt.Errorf("sluice replay: exit %d: %s", code, tailString(flatten(out), 300))
	}
	cp, err := checkpoint.Load(ctx, s.st, pipeline, dest)
	if err != nil || len(cp.Replays) == 0 {
		return replayAnswer{}, "", fmt.Errorf("sluice replay left no audit entry: %v", err)
	}
	r := cp.Replays[len(cp.Replays)-1]
	return replayAnswer{FromSeq: r.FromSeq, Generation: r.Generation}, "the CLI", nil
}
