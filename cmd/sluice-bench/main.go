// Command sluice-bench is `make bench`: it measures sluice's drains (to
// PostgreSQL, SQLite and HTTP), its Graph read and its handler start, each
// next to a baseline measured in the same run, prints a table and writes
// bench/results/latest.json. Every figure is reported as a ratio to its
// baseline, because the machines it runs on are noisy.
//
// It needs Azurite and PostgreSQL: `make bench` runs it under
// scripts/with-services, which exports SLUICE_TEST_STORAGE and
// SLUICE_TEST_POSTGRES_DSN. It creates a database and a container of its own
// and removes them when it ends.
//
// Drains and the read run in a child process (this binary re-executed with
// the hidden --child flag), so that their peak RSS is theirs alone and not
// the parent's, which builds logs and runs the baselines.
//
//	go run ./cmd/sluice-bench [--records 1000000] [--quick] [--only drain-postgres,read-graph] [--cpuprofile DIR]
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"slices"
	"strings"
	"syscall"
)

// Workload names, in the order they run and print.
const (
	wDrainPostgres   = "drain-postgres"
	wDrainSQLite     = "drain-sqlite"
	wDrainHTTP       = "drain-http"
	wReadGraph       = "read-graph"
	wDrainPostgres5M = "drain-postgres-5m"
	wHandlerStart    = "handler-start"
)

var allWorkloads = []string{wDrainPostgres, wDrainSQLite, wDrainHTTP, wReadGraph, wDrainPostgres5M, wHandlerStart}

// options are the command-line flags.
type options struct {
	records    int             // change records of the 1M workloads
	big        int             // change records of drain-postgres-5m
	only       map[string]bool // workloads to run
	out        string          // results file, relative to the module root
	cpuprofile string          // directory for the children's CPU profiles
	memprofile string          // directory for the children's heap profiles
	starts     int             // handler starts per binary
	child      string          // hidden: run one workload's measured part
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "sluice-bench:", err)
		os.Exit(1)
	}
}

// run parses args and either runs the benchmark (parent) or one child.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	opts, err := parseFlags(args, stderr)
	if err != nil {
		return err
	}
	if opts.child != "" {
		return runChild(ctx, opts.child, stdout, stderr)
	}
	b, err := newBench(ctx, opts, stderr)
	if err != nil {
		return err
	}
	defer b.close()
	if err := b.run(ctx); err != nil {
		return err
	}
	return b.report(stdout)
}

func parseFlags(args []string, stderr io.Writer) (options, error) {
	fs := flag.NewFlagSet("sluice-bench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	records := fs.Int("records", 1_000_000, "change records of the drain workloads (drain-postgres-5m uses 5x)")
	quick := fs.Bool("quick", false, "short run: 100,000 records (drain-postgres-5m: 500,000)")
	only := fs.String("only", "", "comma-separated workloads to run (default all): "+strings.Join(allWorkloads, ","))
	out := fs.String("out", "bench/results/latest.json", "results file, relative to the module root")
	cpuprofile := fs.String("cpuprofile", "", "write a CPU profile of each child workload to DIR/<workload>.pprof")
	memprofile := fs.String("memprofile", "", "write a heap profile of each child workload to DIR/<workload>.heap.pprof")
	starts := fs.Int("starts", 20, "handler-start: starts per binary (the median is reported)")
	child := fs.String("child", "", "internal: run one workload's measured part (spec in $"+specEnv+")")
	if err := fs.Parse(args); err != nil {
		return options{}, err
	}
	if fs.NArg() > 0 {
		return options{}, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	o := options{records: *records, out: *out, cpuprofile: *cpuprofile, memprofile: *memprofile, starts: *starts, child: *child}
	if *quick {
		o.records = 100_000
	}
	if o.records < 1000 {
		return options{}, fmt.Errorf("--records %d: want at least 1000", o.records)
	}
	if o.starts < 1 {
		return options{}, fmt.Errorf("--starts %d: want at least 1", o.starts)
	}
	o.big = 5 * o.records
	o.only = map[string]bool{}
	if *only == "" {
		for _, w := range allWorkloads {
			o.only[w] = true
		}
	} else {
		for w := range strings.SplitSeq(*only, ",") {
			w = strings.TrimSpace(w)
			if !slices.Contains(allWorkloads, w) {
				return options{}, fmt.Errorf("--only: unknown workload %q (known: %s)", w, strings.Join(allWorkloads, ", "))
			}
			o.only[w] = true
		}
	}
	if len(o.only) == 0 {
		return options{}, errors.New("--only: no workload named")
	}
	return o, nil
}
