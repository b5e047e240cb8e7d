package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"github.com/sluicehq/sluice/internal/config"
	"os/user"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/sluicehq/sluice/internal/changelog"
	"github.com/sluicehq/sluice/internal/engine"
)

func readCmd() command {
	return command{name: "read", args: "[--pipeline P]", summary: "run one read pass (what the timer does), then exit",
		flags: func(fs *flag.FlagSet) func(context.Context, *app) error {
			pipeline := fs.String("pipeline", "", "read only this pipeline (default: all)")
			return func(ctx context.Context, a *app) error {
				cfg, err := a.loadConfig()
				if err != nil {
					return err
				}
				if *pipeline != "" {
					if _, err := cfg.Pipeline(*pipeline); err != nil {
						return err
					}
				}
				st, err := a.openStore(ctx, cfg)
				if err != nil {
					return err
				}
				r := &engine.Reader{Store: st, Open: sourceOpener(a.log), Log: a.log}
				if bar := a.progress("read"); bar != nil {
					r.Progress = func(p string, n int64) { bar(n, 0) }
				}
				results, err := r.ReadAll(ctx, cfg, *pipeline)
				a.endProgress()
				for _, res := range results {
					fmt.Fprintf(a.stdout, "%s: %s, %d records in %d pages, head %d, %d destinations woken",
						res.Pipeline, res.Outcome, res.Records, res.Pages, res.Head, res.WokeUp)
					if res.Deletes > 0 {
						fmt.Fprintf(a.stdout, ", %d deletes found by reconciliation", res.Deletes)
					}
					fmt.Fprintln(a.stdout)
				}
				return err
			}
		}}
}

func writeCmd() command {
	return command{name: "write", args: "[--pipeline P] [--destination D]", summary: "drain the matching destinations to the head, then exit",
		flags: func(fs *flag.FlagSet) func(context.Context, *app) error {
			pipeline := fs.String("pipeline", "", "only this pipeline (default: all)")
			destination := fs.String("destination", "", "only this destination (default: all)")
			return func(ctx context.Context, a *app) error {
				cfg, err := a.loadConfig()
				if err != nil {
					return err
				}
				targets, err := selectDestinations(cfg, *pipeline, *destination)
				if err != nil {
					return err
				}
				st, err := a.openStore(ctx, cfg)
				if err != nil {
					return err
				}
				d := &engine.Drainer{Store: st, Open: sinkOpener(a.log), Log: a.log}
				var failed []string
				for _, t := range targets {
					res, err := d.Drain(ctx, engine.DrainRequest{Pipeline: t.p, Destination: t.d, Resume: true,
						Progress: a.progress(t.p.Name + "/" + t.d.Name)})
					a.endProgress()
					if err != nil {
						failed = append(failed, fmt.Sprintf("%s/%s: %v", t.p.Name, t.d.Name, err))
						continue
					}
					fmt.Fprintf(a.stdout, "%s/%s: %s, checkpoint %d of head %d (%d applied, %d dead-lettered)\n",
						t.p.Name, t.d.Name, res.Outcome, res.To, res.Head, res.Applied, res.DeadLettered)
					if res.Outcome == engine.OutcomeHalted {
						failed = append(failed, fmt.Sprintf("%s/%s halted: %s", t.p.Name, t.d.Name, res.Error))
					}
				}
				if len(failed) > 0 {
					return errors.New(strings.Join(failed, "; "))
				}
				return nil
			}
		}}
}

type target struct {
	p *config.Pipeline
	d *config.Destination
}

// selectDestinations resolves --pipeline/--destination to destinations.
func selectDestinations(cfg *config.Config, pipeline, destination string) ([]target, error) {
	if destination != "" && pipeline == "" {
		return nil, usageError{"--destination needs --pipeline"}
	}
	var out []target
	for i := range cfg.Pipelines {
		p := &cfg.Pipelines[i]
		if pipeline != "" && p.Name != pipeline {
			continue
		}
		for j := range p.Destinations {
			if destination == "" || p.Destinations[j].Name == destination {
				out = append(out, target{p, &p.Destinations[j]})
			}
		}
	}
	if pipeline != "" {
		p, err := cfg.Pipeline(pipeline)
		if err != nil {
			return nil, err
		}
		if destination != "" {
			if _, err := p.Destination(destination); err != nil {
				return nil, err
			}
		}
	}
	return out, nil
}

func replayCmd() command {
	return command{name: "replay", args: "--pipeline P --destination D (--from RFC3339 | --from-seq N) [--dry-run] [--no-drain]",
		summary: "rewind a destination's checkpoint (never forward), then drain it",
		flags: func(fs *flag.FlagSet) func(context.Context, *app) error {
			pipeline := fs.String("pipeline", "", "pipeline (required)")
			destination := fs.String("destination", "", "destination (required)")
			from := fs.String("from", "", "replay records captured at or after this time (RFC 3339)")
			fromSeq := fs.Int64("from-seq", 0, "replay from this sequence number")
			dryRun := fs.Bool("dry-run", false, "only report how many records would be replayed")
			noDrain := fs.Bool("no-drain", false, "rewind only; the next wake-up drains")
			return func(ctx context.Context, a *app) error {
				if *pipeline == "" || *destination == "" {
					return usageError{"--pipeline and --destination are required"}
				}
				if (*from == "") == (*fromSeq == 0) {
					return usageError{"give exactly one of --from and --from-seq"}
				}
				if *fromSeq < 0 {
					return usageError{"--from-seq must be 1 or more"}
				}
				var at time.Time
				at, err := parseFrom(*from)
				if err != nil {
					return err
				}
				cfg, err := a.loadConfig()
				if err != nil {
					return err
				}
				targets, err := selectDestinations(cfg, *pipeline, *destination)
				if err != nil {
					return err
				}
				t := targets[0]
				st, err := a.openStore(ctx, cfg)
				if err != nil {
					return err
				}
				res, err := engine.Replay(ctx, st, engine.ReplayRequest{Pipeline: t.p, Destination: t.d, From: at, FromSeq: *fromSeq,
					DryRun: *dryRun, By: "cli:" + currentUser()}, time.Now())
				if err != nil {
					return err
				}
				verb := "rewound"
				if res.DryRun {
					verb = "would rewind"
				}
				fmt.Fprintf(a.stdout, "%s/%s: %s to seq %d: %d records up to head %d (generation %d)\n",
					t.p.Name, t.d.Name, verb, res.FromSeq, res.Records, res.ToSeq, res.Generation)
				if res.DryRun || *noDrain {
					return nil
				}
				d := &engine.Drainer{Store: st, Open: sinkOpener(a.log), Log: a.log}
				dr, err := d.Drain(ctx, engine.DrainRequest{Pipeline: t.p, Destination: t.d, Resume: true, Progress: a.progress("replay " + t.p.Name + "/" + t.d.Name)})
				a.endProgress()
				if err != nil {
					return err
				}
				fmt.Fprintf(a.stdout, "%s/%s: %s, checkpoint %d of head %d\n", t.p.Name, t.d.Name, dr.Outcome, dr.To, dr.Head)
				if dr.Outcome == engine.OutcomeBusy {
					fmt.Fprintln(a.stdout, "another drain holds the destination; it will deliver the replayed records")
				}
				return nil
			}
		}}
}

func currentUser() string {
	if u, err := user.Current(); err == nil {
		return u.Username
	}
	return "unknown"
}

func resetCmd() command {
	return command{name: "reset", args: "--pipeline P", summary: "forget the source cursor after site/list changed (the log is kept)",
		flags: func(fs *flag.FlagSet) func(context.Context, *app) error {
			pipeline := fs.String("pipeline", "", "pipeline (required)")
			return func(ctx context.Context, a *app) error {
				if *pipeline == "" {
					return usageError{"--pipeline is required"}
				}
				l, s, err := a.pipelineLog(ctx, *pipeline)
				if err != nil {
					return err
				}
				old := s.Source
				// Keep the throttle: a reset must not let us hammer Graph.
				s.Source = changelog.SourceState{ThrottledUntil: old.ThrottledUntil}
				if err := l.SaveState(ctx, s); err != nil {
					return fmt.Errorf("reset pipeline %s: %w (a read pass may be running; try again)", *pipeline, err)
				}
				fmt.Fprintf(a.stdout, "pipeline %s: source cursor forgotten; the next read starts a full round (log kept, head %d)\n", *pipeline, s.Head.Seq)
				return nil
			}
		}}
}

func versionCmd() command {
	return command{name: "version", summary: "print the version",
		flags: func(fs *flag.FlagSet) func(context.Context, *app) error {
			return func(ctx context.Context, a *app) error { fmt.Fprintln(a.stdout, "sluice", version); return nil }
		}}
}

func validateCmd() command {
	return command{name: "validate", summary: "check the pipelines file and exit",
		flags: func(fs *flag.FlagSet) func(context.Context, *app) error {
			return func(ctx context.Context, a *app) error {
				cfg, err := a.loadConfig()
				if err != nil {
					return err
				}
				n := 0
				for _, p := range cfg.Pipelines {
					n += len(p.Destinations)
				}
				fmt.Fprintf(a.stdout, "%s: OK — %d pipeline(s), %d destination(s)\n", cfg.File, len(cfg.Pipelines), n)
				for _, p := range cfg.Pipelines {
					var ds []string
					for _, d := range p.Destinations {
						ds = append(ds, d.Name+" ("+d.Type+")")
					}
					fmt.Fprintf(a.stdout, "  %s: %s / %s -> %s\n", p.Name, p.Source.Site, p.Source.List, strings.Join(ds, ", "))
				}
				return nil
			}
		}}
}

func logCmd() command {
	return command{name: "log", args: "--pipeline P [--from-seq N | --from RFC3339] [--key K]",
		summary: "print committed change records as NDJSON",
		flags: func(fs *flag.FlagSet) func(context.Context, *app) error {
			pipeline := fs.String("pipeline", "", "pipeline (required)")
			fromSeq := fs.Int64("from-seq", 0, "first sequence number to print")
			from := fs.String("from", "", "print records captured at or after this time (RFC 3339)")
			key := fs.String("key", "", "print only records of this item key")
			return func(ctx context.Context, a *app) error {
				if *pipeline == "" {
					return usageError{"--pipeline is required"}
				}
				if *fromSeq != 0 && *from != "" {
					return usageError{"give --from-seq or --from, not both"}
				}
				var at time.Time
				at, err := parseFrom(*from)
				if err != nil {
					return err
				}
				l, s, err := a.pipelineLog(ctx, *pipeline)
				if err != nil {
					return err
				}
				start := max(*fromSeq, 1)
				if !at.IsZero() {
					if start, err = l.Seek(ctx, at, s.Head.Seq); err != nil {
						return err
					}
				}
				sc := l.Scan(ctx, start, s.Head.Seq)
				defer sc.Close()
				var line []byte
				for sc.Next() {
					r := sc.Record()
					if *key != "" && r.Key != *key {
						continue
					}
					if line, err = changelog.AppendLine(line[:0], r); err != nil {
						return err
					}
					if _, err := a.stdout.Write(line); err != nil {
						return err
					}
				}
				return sc.Err()
			}
		}}
}

func statusCmd() command {
	return command{name: "status", args: "[--pipeline P] [--json]", summary: "show heads, checkpoints, lag and last errors",
		flags: func(fs *flag.FlagSet) func(context.Context, *app) error {
			pipeline := fs.String("pipeline", "", "only this pipeline")
			asJSON := fs.Bool("json", false, "print JSON (what the status function answers)")
			return func(ctx context.Context, a *app) error {
				cfg, err := a.loadConfig()
				if err != nil {
					return err
				}
				if *pipeline != "" {
					if _, err := cfg.Pipeline(*pipeline); err != nil {
						return err
					}
				}
				st, err := a.openStore(ctx, cfg)
				if err != nil {
					return err
				}
				ss, err := engine.Status(ctx, st, cfg, *pipeline, time.Now())
				if err != nil {
					return err
				}
				if *asJSON {
					enc := json.NewEncoder(a.stdout)
					enc.SetIndent("", "  ")
					return enc.Encode(map[string]any{"pipelines": ss})
				}
				tw := tabwriter.NewWriter(a.stdout, 0, 4, 2, ' ', 0)
				fmt.Fprintln(tw, "PIPELINE\tDESTINATION\tHEAD\tCHECKPOINT\tLAG\tLAG(s)\tDEAD LETTERS\tSTATE")
				for _, p := range ss {
					read := "never read"
					if !p.LastRead.IsZero() {
						read = fmt.Sprintf("last read %s ago: %s", time.Since(p.LastRead).Round(time.Second), orDash(p.LastOutcome))
					}
					fmt.Fprintf(tw, "%s\t\t%d\t\t\t\t\t%s\n", p.Name, p.Head.Seq, read)
					for _, d := range p.Destinations {
						state := destinationState(d)
						fmt.Fprintf(tw, "\t%s\t\t%d\t%d\t%.0f\t%d\t%s\n", d.Name, d.Checkpoint, d.LagRecords, d.LagSeconds, d.DeadLetters.Count, state)
					}
				}
				return tw.Flush()
			}
		}}
}

// destinationState is the STATE column: the state, why a stuck destination
// does not move or why the state is unknown, and the last error.
func destinationState(d engine.DestinationStatus) string {
	var why []string
	if d.State == engine.StateStuck && d.Stalled != nil {
		why = append(why, fmt.Sprintf("%s; %d times in a row since %s", d.Stalled.Reason, d.Stalled.Count, d.Stalled.Since.UTC().Format(time.RFC3339)))
	}
	if d.StateError != "" {
		why = append(why, d.StateError)
	}
	if d.LastError != "" {
		why = append(why, d.LastError)
	}
	if len(why) == 0 {
		return d.State
	}
	return d.State + ": " + strings.Join(why, "; last error: ")
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// pipelineLog opens the change log of a configured pipeline and loads its state.
func (a *app) pipelineLog(ctx context.Context, pipeline string) (*changelog.Log, *changelog.State, error) {
	cfg, err := a.loadConfig()
	if err != nil {
		return nil, nil, err
	}
	if _, err := cfg.Pipeline(pipeline); err != nil {
		return nil, nil, err
	}
	st, err := a.openStore(ctx, cfg)
	if err != nil {
		return nil, nil, err
	}
	l := changelog.New(st, pipeline, changelog.Options{Logger: a.log})
	s, err := l.LoadState(ctx)
	if err != nil {
		return nil, nil, err
	}
	return l, s, nil
}

// parseFrom reads a --from flag; empty is the zero time.
func parseFrom(from string) (time.Time, error) {
	if from == "" {
		return time.Time{}, nil
	}
	at, err := time.Parse(time.RFC3339Nano, from)
	if err != nil {
		return time.Time{}, usageError{fmt.Sprintf("--from %q is not an RFC 3339 time such as 2026-11-25T08:00:00Z", from)}
	}
	return at, nil
}
