package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/sluicehq/sluice/internal/devhost"
	"github.com/sluicehq/sluice/internal/functions"
)

func runCmd() command {
	return command{name: "run", args: "[--addr 127.0.0.1:7071] [--app DIR]", summary: "run the app locally: timers, queue listener and HTTP routes from functions/*/function.json",
		flags: func(fs *flag.FlagSet) func(context.Context, *app) error {
			addr := fs.String("addr", devhost.DefaultAddr, "address of the local HTTP routes (/api/...); beyond loopback it needs "+devhost.KeyEnv)
			appDir := fs.String("app", "", "app directory with host.json (default: the current directory if it has one, else the executable's)")
			return func(ctx context.Context, a *app) error {
				dir, err := findAppDir(*appDir)
				if err != nil {
					return err
				}
				// Like Core Tools, local.settings.json Values act as app
				// settings; the environment wins.
				lookupEnv, err := withLocalSettings(a.lookupEnv, filepath.Join(dir, "local.settings.json"))
				if err != nil {
					return err
				}
				a.lookupEnv = lookupEnv
				if a.configPath == "sluice.yaml" {
					if v, ok := lookupEnv("SLUICE_CONFIG"); ok && v != "" {
						a.configPath = v
					}
				}
				log := a.log
				cfg, err := a.loadConfig()
				if err != nil {
					return err
				}
				host, err := functions.LoadHostSettings(filepath.Join(dir, "host.json"))
				if err != nil {
					return err
				}
				store := openStoreOnce(lookupEnv, cfg, log)
				// Storage that is not up yet (Azurite still starting) is
				// waited for a while rather than fatal, as the host would.
				st, err := store(ctx)
				for wait := time.Second; err != nil && wait <= 16*time.Second; wait *= 2 {
					log.Warn("storage not reachable yet; retrying", "in", wait.String(), "err", err.Error())
					select {
					case <-ctx.Done():
						return ctx.Err()
					case <-time.After(wait):
					}
					st, err = store(ctx)
				}
				if err != nil {
					return err
				}
				h, err := devhost.New(devhost.Options{
					AppDir:    dir,
					Handler:   buildHandler(cfg, store, host, log),
					Store:     st,
					Addr:      *addr,
					LookupEnv: lookupEnv,
					Logger:    log,
				})
				if err != nil {
					return err
				}
				return h.Run(ctx)
			}
		}}
}

// findAppDir is dir if given, else the current directory if it holds
// host.json, else the directory of the executable.
func findAppDir(dir string) (string, error) {
	if dir != "" {
		if _, err := os.Stat(filepath.Join(dir, "host.json")); err != nil {
			return "", fmt.Errorf("--app %s: no host.json there: %w", dir, err)
		}
		return dir, nil
	}
	if _, err := os.Stat("host.json"); err == nil {
		return ".", nil
	}
	if exe, err := os.Executable(); err == nil {
		d := filepath.Dir(exe)
		if _, err := os.Stat(filepath.Join(d, "host.json")); err == nil {
			return d, nil
		}
	}
	return "", errors.New("no host.json in the current directory or next to the executable: run from the app directory or pass --app DIR")
}

// withLocalSettings layers local.settings.json Values (§10) under the
// environment; a missing file changes nothing.
func withLocalSettings(lookupEnv func(string) (string, bool), path string) (func(string) (string, bool), error) {
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return lookupEnv, nil
	}
	if err != nil {
		return nil, err
	}
	var ls struct {
		Values map[string]string `json:"Values"`
	}
	if err := json.Unmarshal(data, &ls); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return func(k string) (string, bool) {
		if v, ok := lookupEnv(k); ok {
			return v, ok
		}
		v, ok := ls.Values[k]
		return v, ok
	}, nil
}
