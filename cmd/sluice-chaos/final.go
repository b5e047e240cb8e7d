package main

import (
	"context"
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/sluicehq/sluice/internal/changelog"
	"github.com/sluicehq/sluice/internal/checkpoint"
)

// readLine is one pipeline's line of `sluice read`.
var readLine = regexp.MustCompile(`(?m)^([a-z0-9-]+): (\w+), (\d+) records in \d+ pages, head (\d+)`)

// finalPasses brings everything to rest: the list stops changing, then
// `sluice read` twice and `sluice write` until a read finds nothing new and
// every destination is at its pipeline's head. Writes that stop moving any
// checkpoint end it early: more of them would only spend the time budget.
func (s *suite) finalPasses(ctx context.Context) error {
	// Quiet the simulator: no more changes, no faults, plain pages.
	if err := s.sim.admin(ctx, "POST", "/_sim/knobs", map[string]any{}, nil); err != nil {
		return err
	}
	if err := s.sim.admin(ctx, "DELETE", "/_sim/faults", nil, nil); err != nil {
		return err
	}
	limit := 5 * time.Minute
	if s.o.Short {
		limit = 2 * time.Minute
	}
	deadline := time.Now().Add(limit)
	s.logf("final passes: sluice read ×2, then sluice write, until stable (at most %v)", limit)
	for iter := 1; time.Now().Before(deadline); iter++ {
		var added [2]int64
		var heads map[string]int64
		for i := 0; i < 2; {
			if time.Now().After(deadline) {
				return fmt.Errorf("read passes did not complete within %v", limit)
			}
			out, code := s.sluice(ctx, "read")
			n, h, ok := parseRead(out)
			if code == 0 && ok {
				added[i], heads = n, h
				i++
				continue
			}
			// busy: a killed process's lease has not expired yet; throttled:
			// Graph asked for a pause. Both end by themselves.
			s.vlogf("final read not complete yet (exit %d): %s", code, tailString(flatten(out), 300))
			if !sleepCtx(ctx, 3*time.Second) {
				return ctx.Err()
			}
		}
		var before map[string]position
		for still := 0; ; {
			if time.Now().After(deadline) {
				return fmt.Errorf("destinations did not reach the heads %v within %v: %s", heads, limit, s.lagLine(ctx))
			}
			out, code := s.sluice(ctx, "write")
			at, err := s.atHead(ctx, heads)
			if err != nil {
				return err
			}
			if at {
				break
			}
			now := s.positions(ctx)
			if samePositions(before, now) {
				if still++; still == 3 {
					return fmt.Errorf("three writes in a row moved no checkpoint: %s; last write (exit %d): %s",
						s.lagLine(ctx), code, tailString(flatten(out), 500))
				}
			} else {
				still = 0
			}
			before = now
			s.vlogf("final write not complete yet (exit %d): %s", code, tailString(flatten(out), 300))
			if !sleepCtx(ctx, 3*time.Second) {
				return ctx.Err()
			}
		}
		s.logf("final pass %d: reads added %d and %d records; heads %v; every destination at its head", iter, added[0], added[1], heads)
		if added[1] == 0 {
			return nil
		}
	}
	return fmt.Errorf("still changing after %v", limit)
}

// parseRead reads the output of `sluice read`: the records every pipeline
// added and their heads; ok only when every pipeline was read to the end.
func parseRead(out string) (added int64, heads map[string]int64, ok bool) {
	heads = map[string]int64{}
	for _, m := range readLine.FindAllStringSubmatch(out, -1) {
		if m[2] != "read" {
			return 0, nil, false
		}
		n, _ := strconv.ParseInt(m[3], 10, 64)
		h, _ := strconv.ParseInt(m[4], 10, 64)
		added += n
		heads[m[1]] = h
	}
	for _, p := range pipelines {
		if _, read := heads[p.name]; !read {
			return 0, nil, false
		}
	}
	return added, heads, true
}

// atHead reports whether every pipeline's committed head is heads[p] and
// each of its destinations' checkpoints is at it.
func (s *suite) atHead(ctx context.Context, heads map[string]int64) (bool, error) {
	for _, p := range pipelines {
		st, err := changelog.New(s.st, p.name, changelog.Options{}).LoadState(ctx)
		if err != nil {
			return false, err
		}
		if st.Head.Seq != heads[p.name] {
			return false, nil
		}
		for _, d := range p.dests {
			cp, err := checkpoint.Load(ctx, s.st, p.name, d.name)
			if err != nil {
				return false, err
			}
			if cp.Seq != heads[p.name] {
				return false, nil
			}
		}
	}
	return true, nil
}

func samePositions(a, b map[string]position) bool {
	if a == nil || len(a) != len(b) {
		return false
	}
	for p, x := range a {
		y := b[p]
		if x.head != y.head || len(x.cps) != len(y.cps) {
			return false
		}
		for d, cp := range x.cps {
			if y.cps[d] != cp {
				return false
			}
		}
	}
	return true
}

// flatten puts a command's output on one line.
func flatten(s string) string {
	return strings.Join(strings.Fields(strings.ReplaceAll(strings.TrimSpace(s), "\n", " | ")), " ")
}
