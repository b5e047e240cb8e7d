// Command sluice-chaos is the fault-injection suite (`make chaos`, and its
// --short version inside `make test`). It runs sluice as real processes —
// two `sluice run` hosts on the same storage plus one-shot `sluice read` and
// `sluice write` runs — against its own Azurite, its own PostgreSQL cluster,
// the Graph simulator (graphsim, a process of its own) and an HTTP receiver
// of its own. The profile is a realistic one: a list of 20,000 items (10,000
// with --short) that keeps changing, served at Graph's pace (pages of 0.3 to
// 1.5 s), read by three pipelines whose destinations share names
// (warehouse, hook) and write different tables of one PostgreSQL database
// and one SQLite file (see layout.go). It SIGKILLs the sluice processes at
// seeded random moments, takes PostgreSQL down, makes the receiver fail,
// restarts Azurite mid-drain, expires delta tokens — also while the list is
// quiet, letting the big resync run — throttles Graph, replays one
// pipeline's destinations while the others drain, and floods the write
// queue with duplicate, stale and future wake-ups. Then, with everything
// healthy again, it checks for every pipeline that nothing was lost or
// invented: every destination equals the list's final state folded from the
// gap-free log, the log equals the simulator's list, and the log never
// deleted an item the list had not deleted.
//
//	go run ./cmd/sluice-chaos [--seed N] [--duration 8m] [--short] [--keep] [-v]
//
// It prints one line per check (PASS name / FAIL name: why) and last
// "N passed, M failed"; the exit status is 1 when a check failed, 2 when
// the suite itself could not run. Everything listens on loopback only, and
// every child process is killed when it ends (also on failure or Ctrl-C).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"time"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	os.Exit(Main(ctx, os.Args[1:], os.Stdout, os.Stderr))
}

// Main parses args, runs the suite and returns the exit status.
func Main(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	opts, err := parseFlags(args, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintln(stderr, "sluice-chaos:", err)
		return 2
	}
	rep, err := Run(ctx, opts, stdout)
	if err != nil {
		fmt.Fprintln(stderr, "sluice-chaos:", err)
		if rep != nil && rep.Failed > 0 {
			return 1
		}
		return 2
	}
	if rep.Failed > 0 {
		return 1
	}
	return 0
}

func parseFlags(args []string, stderr io.Writer) (Options, error) {
	var o Options
	fs := flag.NewFlagSet("sluice-chaos", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Int64Var(&o.Seed, "seed", 0, "seed of the fault schedule (0: pick one from the clock; it is printed)")
	fs.DurationVar(&o.Duration, "duration", 0, "length of the fault phase (default 8m, with --short 100s)")
	fs.BoolVar(&o.Short, "short", false, "the short version for make test: a 10,000-item list, ≥ 10 kills, a 20 s PostgreSQL outage, 30 s of receiver failures, one Azurite restart, a quiet 410, one replay")
	fs.BoolVar(&o.Keep, "keep", false, "keep the temporary directory (logs of every process, Azurite and PostgreSQL data)")
	fs.BoolVar(&o.Verbose, "v", false, "print every event of the schedule as it happens")
	fs.StringVar(&o.Root, "root", "", "repository root (default: found from the current directory)")
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	if fs.NArg() > 0 {
		return o, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	if o.Duration < 0 {
		return o, fmt.Errorf("--duration must be positive")
	}
	if o.Duration > 0 && o.Duration < 40*time.Second {
		return o, fmt.Errorf("--duration %v is too short to fit the fault schedule (at least 40s)", o.Duration)
	}
	return o, nil
}
