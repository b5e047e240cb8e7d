package main

import (
	"context"
	"flag"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"

	"github.com/sluicehq/sluice/internal/azstore"
	"github.com/sluicehq/sluice/internal/config"
	"github.com/sluicehq/sluice/internal/engine"
	"github.com/sluicehq/sluice/internal/functions"
)

func serveCmd() command {
	return command{name: "serve", args: "", summary: "run the Azure Functions custom handler on $FUNCTIONS_CUSTOMHANDLER_PORT",
		flags: func(fs *flag.FlagSet) func(context.Context, *app) error {
			return func(ctx context.Context, a *app) error {
				// The host reads JSON lines on stdout; stderr is for errors only.
				log := slog.New(slog.NewJSONHandler(a.stdout, &slog.HandlerOptions{Level: logLevel(a.lookupEnv)}))
				cfg, err := a.loadConfig()
				if err != nil {
					return err
				}
				root, _ := a.lookupEnv("FUNCTIONS_APP_ROOT_PATH")
				host, err := functions.LoadHostSettings(filepath.Join(root, "host.json"))
				if err != nil && !os.IsNotExist(err) {
					log.Warn("host.json unreadable; using the host's defaults", "err", err.Error())
				}
				store := openStoreOnce(a.lookupEnv, cfg, log)
				h := buildHandler(cfg, store, host, log)
				// Warm the storage connection while the host polls for readiness.
				go func() { _, _ = store(ctx) }()
				return functions.Serve(ctx, functions.ListenAddr(a.lookupEnv), h, log)
			}
		}}
}

// openStoreOnce opens the storage of AzureWebJobsStorage on first use and
// shares it (functions.OpenOnce).
func openStoreOnce(lookupEnv func(string) (string, bool), cfg *config.Config, log *slog.Logger) functions.StoreFunc {
	return functions.OpenOnce(func(ctx context.Context) (*azstore.Store, error) {
		s, err := azstore.SettingsFromEnv(lookupEnv)
		if err != nil {
			return nil, err
		}
		return azstore.Open(ctx, s, cfg.Storage.Container, azstore.Options{Logger: log})
	})
}

// buildHandler is the custom handler wired to the engine: what `sluice
// serve` offers the Functions host and `sluice run` drives locally.
func buildHandler(cfg *config.Config, store functions.StoreFunc, host functions.HostSettings, log *slog.Logger) http.Handler {
	return functions.NewHandler(functions.Deps{
		Config: cfg,
		Store:  store,
		Drain: func(ctx context.Context, req engine.DrainRequest) (engine.DrainResult, error) {
			st, err := store(ctx)
			if err != nil {
				return engine.DrainResult{}, err
			}
			d := &engine.Drainer{Store: st, Open: sinkOpener(log), Log: log}
			return d.Drain(ctx, req)
		},
		Reader: functions.ReaderFunc(func(ctx context.Context) (any, error) {
			st, err := store(ctx)
			if err != nil {
				return nil, err
			}
			r := &engine.Reader{Store: st, Open: sourceOpener(log), Log: log}
			return r.ReadAll(ctx, cfg, "")
		}),
		Logger:          log,
		FunctionTimeout: host.FunctionTimeout,
		MaxDequeueCount: host.Queues.MaxDequeueCount,
	})
}
