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

var readLine = regexp.MustCompile(`(?m)^` + pipelineName + `: (\w+), (\d+) records in \d+ pages, head (\d+)`)

// finalPasses brings everything to rest: the list stops changing, then
// `sluice read` twice and `sluice write` until a read finds nothing new and
// every destination is at the head.
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
		limit = 100 * time.Second
	}
	deadline := time.Now().Add(limit)
	s.logf("final passes: sluice read ×2, then sluice write, until stable (at most %v)", limit)
	for iter := 1; time.Now().Before(deadline); iter++ {
		var added [2]int64
		var head int64
		for i := 0; i < 2; {
			if time.Now().After(deadline) {
				return fmt.Errorf("read passes did not complete within %v", limit)
			}
			out, code := s.sluice(ctx, "read")
			m := readLine.FindStringSubmatch(out)
			if code == 0 && m != nil && m[1] == "read" {
				added[i], _ = strconv.ParseInt(m[2], 10, 64)
				head, _ = strconv.ParseInt(m[3], 10, 64)
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
		for {
			if time.Now().After(deadline) {
				return fmt.Errorf("destinations did not reach head %d within %v", head, limit)
			}
			out, code := s.sluice(ctx, "write")
			at, err := s.atHead(ctx, head)
			if err != nil {
				return err
			}
			if at {
				break
			}
			s.vlogf("final write not complete yet (exit %d): %s", code, tailString(flatten(out), 300))
			if !sleepCtx(ctx, 3*time.Second) {
				return ctx.Err()
			}
		}
		s.logf("final pass %d: reads added %d and %d records; head %d; every destination at the head", iter, added[0], added[1], head)
		if added[1] == 0 {
			return nil
		}
	}
	return fmt.Errorf("still changing after %v", limit)
}

// atHead reports whether the committed head is head and every destination's
// checkpoint is at it.
func (s *suite) atHead(ctx context.Context, head int64) (bool, error) {
	st, err := changelog.New(s.st, pipelineName, changelog.Options{}).LoadState(ctx)
	if err != nil {
		return false, err
	}
	if st.Head.Seq != head {
		return false, nil
	}
	for _, d := range destinations {
		cp, err := checkpoint.Load(ctx, s.st, pipelineName, d)
		if err != nil {
			return false, err
		}
		if cp.Seq != head {
			return false, nil
		}
	}
	return true, nil
}

// flatten puts a command's output on one line.
func flatten(s string) string {
	return strings.Join(strings.Fields(strings.ReplaceAll(strings.TrimSpace(s), "\n", " | ")), " ")
}
