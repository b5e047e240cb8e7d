// Command sluice is the whole product in one binary: the Azure Functions
// custom handler (serve), a local host (run), and the operator's CLI.
// It only wires packages together; the work happens in internal/.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/sluicehq/sluice/internal/azstore"
	"github.com/sluicehq/sluice/internal/config"
)

// version is set at build time (-ldflags "-X main.version=...").
var version = "dev"

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	os.Exit(run(ctx, os.Args[1:], os.Stdout, os.Stderr, os.LookupEnv))
}

// app is what every command gets: where to print, the environment, and the
// global flags.
type app struct {
	stdout, stderr io.Writer
	lookupEnv      func(string) (string, bool)
	configPath     string
	log            *slog.Logger
	drawn          bool // a progress line is on the terminal
}

type command struct {
	name    string
	args    string // synopsis after the name
	summary string
	// flags registers the command's flags; run executes it.
	flags func(fs *flag.FlagSet) func(ctx context.Context, a *app) error
}

// usageError marks a command-line mistake: exit status 2 and a hint.
type usageError struct{ msg string }

func (e usageError) Error() string { return e.msg }

func commands() []command {
	return []command{
		serveCmd(), runCmd(), readCmd(), writeCmd(), replayCmd(),
		statusCmd(), logCmd(), validateCmd(), resetCmd(), versionCmd(),
	}
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer, lookupEnv func(string) (string, bool)) int {
	a := &app{stdout: stdout, stderr: stderr, lookupEnv: lookupEnv}
	global := flag.NewFlagSet("sluice", flag.ContinueOnError)
	global.SetOutput(io.Discard) // errors are printed below, in one line
	defConfig := "sluice.yaml"
	if v, ok := lookupEnv("SLUICE_CONFIG"); ok && v != "" {
		defConfig = v
	}
	global.StringVar(&a.configPath, "config", defConfig, "pipelines file (default $SLUICE_CONFIG, else ./sluice.yaml)")
	if err := global.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			printUsage(stdout, global)
			return 0
		}
		fmt.Fprintf(stderr, "sluice: %v; run 'sluice --help' for usage\n", err)
		return 2
	}
	rest := global.Args()
	if len(rest) == 0 {
		printUsage(stderr, global)
		return 2
	}
	name := rest[0]
	if name == "help" {
		if len(rest) > 1 {
			rest = []string{rest[1], "--help"}
			name = rest[0]
		} else {
			printUsage(stdout, global)
			return 0
		}
	}
	var cmd *command
	for _, c := range commands() {
		if c.name == name {
			cmd = &c
			break
		}
	}
	if cmd == nil {
		fmt.Fprintf(stderr, "sluice: unknown command %q; run 'sluice --help' for the list\n", name)
		return 2
	}
	fs := flag.NewFlagSet("sluice "+cmd.name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	// Allow the global flag after the command name too: `sluice validate --config x`.
	fs.StringVar(&a.configPath, "config", a.configPath, "pipelines file")
	exec := cmd.flags(fs)
	if err := fs.Parse(rest[1:]); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fmt.Fprintf(stdout, "Usage: sluice %s %s\n\n%s\n\nFlags:\n", cmd.name, cmd.args, cmd.summary)
			fs.SetOutput(stdout)
			fs.PrintDefaults()
			return 0
		}
		fmt.Fprintf(stderr, "sluice %s: %v; run 'sluice %s --help' for usage\n", cmd.name, err, cmd.name)
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "sluice %s: unexpected argument %q; run 'sluice %s --help'\n", cmd.name, fs.Arg(0), cmd.name)
		return 2
	}
	// Logs go to stdout: the Functions host treats stderr as errors.
	a.log = slog.New(slog.NewTextHandler(stdout, &slog.HandlerOptions{Level: logLevel(lookupEnv)}))
	if err := exec(ctx, a); err != nil {
		var ue usageError
		if errors.As(err, &ue) {
			fmt.Fprintf(stderr, "sluice %s: %s; run 'sluice %s --help'\n", cmd.name, ue.msg, cmd.name)
			return 2
		}
		// One line on stderr: the reason, with what to do where we know it.
		fmt.Fprintf(stderr, "sluice %s: %s\n", cmd.name, oneLine(err))
		return 1
	}
	return 0
}

func logLevel(lookupEnv func(string) (string, bool)) slog.Level {
	v, _ := lookupEnv("SLUICE_LOG_LEVEL")
	var l slog.Level
	if err := l.UnmarshalText([]byte(v)); err != nil {
		return slog.LevelInfo
	}
	return l
}

func oneLine(err error) string {
	s := err.Error()
	s = strings.ReplaceAll(s, "\n", "; ")
	return s
}

func printUsage(w io.Writer, global *flag.FlagSet) {
	fmt.Fprintf(w, `sluice %s — change data capture from SharePoint lists to SQL, Service Bus and webhooks

Usage: sluice [--config FILE] <command> [flags]

Commands:
`, version)
	for _, c := range commands() {
		fmt.Fprintf(w, "  %-9s %s\n", c.name, c.summary)
	}
	fmt.Fprintf(w, `
Global flags:
  --config FILE  pipelines file (default $SLUICE_CONFIG, else ./sluice.yaml)

Storage comes from AzureWebJobsStorage (a connection string, UseDevelopmentStorage=true
for Azurite, or AzureWebJobsStorage__accountName for a managed identity).
Run 'sluice <command> --help' for a command's flags.
`)
}

// loadConfig reads the pipelines file named by --config.
func (a *app) loadConfig() (*config.Config, error) {
	data, err := os.ReadFile(a.configPath)
	if err != nil {
		return nil, fmt.Errorf("read pipelines file: %w (set --config or $SLUICE_CONFIG; see sluice.example.yaml)", err)
	}
	return config.Parse(a.configPath, data, a.lookupEnv)
}

// openStore connects to the storage account of AzureWebJobsStorage.
func (a *app) openStore(ctx context.Context, cfg *config.Config) (*azstore.Store, error) {
	s, err := azstore.SettingsFromEnv(a.lookupEnv)
	if err != nil {
		return nil, err
	}
	return azstore.Open(ctx, s, cfg.Storage.Container, azstore.Options{Logger: a.log})
}
