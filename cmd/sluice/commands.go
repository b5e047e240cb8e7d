package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/sluicehq/sluice/internal/changelog"
	"github.com/sluicehq/sluice/internal/engine"
)

// notYet is what commands whose issue has not landed answer.
func notYet(what string) error {
	return fmt.Errorf("%s is not implemented yet in this build", what)
}

func serveCmd() command {
	return command{name: "serve", args: "", summary: "run the Azure Functions custom handler on $FUNCTIONS_CUSTOMHANDLER_PORT",
		flags: func(fs *flag.FlagSet) func(context.Context, *app) error {
			return func(ctx context.Context, a *app) error { return notYet("serve") }
		}}
}

func runCmd() command {
	return command{name: "run", args: "[--addr 127.0.0.1:7071]", summary: "run the app locally: timers, queue listener and HTTP routes from functions/*/function.json",
		flags: func(fs *flag.FlagSet) func(context.Context, *app) error {
			fs.String("addr", "127.0.0.1:7071", "address of the local HTTP routes (/api/...)")
			return func(ctx context.Context, a *app) error { return notYet("run") }
		}}
}

func readCmd() command {
	return command{name: "read", args: "[--pipeline P]", summary: "run one read pass (what the timer does), then exit",
		flags: func(fs *flag.FlagSet) func(context.Context, *app) error {
			fs.String("pipeline", "", "read only this pipeline (default: all)")
			return func(ctx context.Context, a *app) error { return notYet("read") }
		}}
}

func writeCmd() command {
	return command{name: "write", args: "[--pipeline P] [--destination D]", summary: "drain the matching destinations to the head, then exit",
		flags: func(fs *flag.FlagSet) func(context.Context, *app) error {
			fs.String("pipeline", "", "only this pipeline (default: all)")
			fs.String("destination", "", "only this destination (default: all)")
			return func(ctx context.Context, a *app) error { return notYet("write") }
		}}
}

func replayCmd() command {
	return command{name: "replay", args: "--pipeline P --destination D (--from RFC3339 | --from-seq N) [--dry-run] [--no-drain]",
		summary: "rewind a destination's checkpoint (never forward), then drain it",
		flags: func(fs *flag.FlagSet) func(context.Context, *app) error {
			fs.String("pipeline", "", "pipeline (required)")
			fs.String("destination", "", "destination (required)")
			fs.String("from", "", "replay records captured at or after this time (RFC 3339)")
			fs.Int64("from-seq", 0, "replay from this sequence number")
			fs.Bool("dry-run", false, "only report how many records would be replayed")
			fs.Bool("no-drain", false, "rewind only; the next wake-up drains")
			return func(ctx context.Context, a *app) error { return notYet("replay") }
		}}
}

func resetCmd() command {
	return command{name: "reset", args: "--pipeline P", summary: "forget the source cursor after site/list changed (the log is kept)",
		flags: func(fs *flag.FlagSet) func(context.Context, *app) error {
			pipeline := fs.String("pipeline", "", "pipeline (required)")
			return func(ctx context.Context, a *app) error {
				if *pipeline == "" {
					return usageError{"--pipeline is required"}
				}
				cfg, err := a.loadConfig()
				if err != nil {
					return err
				}
				if _, err := cfg.Pipeline(*pipeline); err != nil {
					return err
				}
				st, err := a.openStore(ctx, cfg)
				if err != nil {
					return err
				}
				l := changelog.New(st, *pipeline, changelog.Options{Logger: a.log})
				s, err := l.LoadState(ctx)
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
				if *from != "" {
					var err error
					if at, err = time.Parse(time.RFC3339Nano, *from); err != nil {
						return usageError{fmt.Sprintf("--from %q is not an RFC 3339 time such as 2026-11-25T08:00:00Z", *from)}
					}
				}
				cfg, err := a.loadConfig()
				if err != nil {
					return err
				}
				if _, err := cfg.Pipeline(*pipeline); err != nil {
					return err
				}
				st, err := a.openStore(ctx, cfg)
				if err != nil {
					return err
				}
				l := changelog.New(st, *pipeline, changelog.Options{Logger: a.log})
				s, err := l.LoadState(ctx)
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
					headTS := "-"
					if !p.Head.TS.IsZero() {
						headTS = p.Head.TS.Format(time.RFC3339)
					}
					fmt.Fprintf(tw, "%s\t\t%d\t\t\t\t\tread %s (%s)\n", p.Name, p.Head.Seq, orDash(p.LastOutcome), headTS)
					for _, d := range p.Destinations {
						state := "ok"
						if d.Halted {
							state = "halted"
						}
						if d.LastError != "" {
							state += ": " + d.LastError
						}
						fmt.Fprintf(tw, "\t%s\t\t%d\t%d\t%.0f\t%d\t%s\n", d.Name, d.Checkpoint, d.LagRecords, d.LagSeconds, d.DeadLetters.Count, state)
					}
				}
				return tw.Flush()
			}
		}}
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
