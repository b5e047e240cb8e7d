// Command graphsim runs the Microsoft Graph list-delta simulator of
// internal/graphsim as a process, for `make demo`, the chaos suite and
// benchmarks. It serves Graph under /v1.0/ and control endpoints under
// /_sim/ (see graphsim.AdminHandler), and never pretends to be anything but
// a simulator: bind it to loopback.
//
// It logs JSON lines to stdout with log/slog; the first line, message
// "listening", carries the graph_url, site_id and list_id to configure a
// client with.
//
//	graphsim --addr 127.0.0.1:0 --token t --site contoso.sharepoint.com:/sites/ops \
//	    --list Orders --items 500 --churn 3s --seed 1 --page-delay 500ms --page-jitter 1.5s
//
// --page-delay and --page-jitter set the list's initial PageDelay and
// PageJitter knobs; POST /_sim/knobs replaces all knobs, latency included.
package main

import (
	"context"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/signal"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/sluicehq/sluice/internal/graphsim"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "graphsim:", err)
		os.Exit(1)
	}
}

// run parses args, serves until ctx ends, and returns nil on a clean stop.
func run(ctx context.Context, args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("graphsim", flag.ContinueOnError)
	fs.SetOutput(stdout)
	addr := fs.String("addr", "127.0.0.1:0", "listen address (port 0 picks a free port)")
	token := fs.String("token", "", "bearer token requests must carry (empty: any bearer token)")
	siteRef := fs.String("site", "contoso.sharepoint.com:/sites/ops", "site as hostname:/server-relative-path")
	listName := fs.String("list", "Orders", "list display name")
	items := fs.Int("items", 100, "initial number of generated items")
	churn := fs.Duration("churn", 0, "interval between random changes (0: no churn)")
	adds := fs.Int("churn-adds", 2, "items added per churn tick")
	edits := fs.Int("churn-edits", 5, "items edited per churn tick")
	deletes := fs.Int("churn-deletes", 1, "items deleted per churn tick")
	seed := fs.Uint64("seed", 1, "seed for generated values and churn")
	useTLS := fs.Bool("tls", false, "serve HTTPS with a self-signed certificate")
	certOut := fs.String("cert-out", "", "with --tls: write the server certificate (PEM) here for clients to trust")
	retention := fs.Duration("tombstone-retention", 0, "how long deletes are reported (default 60 days)")
	lifetime := fs.Duration("token-lifetime", 0, "refuse delta tokens older than this with 410 (0: never)")
	ruPerMinute := fs.Int("ru-per-minute", 0, "resource-unit budget per minute; over it, 429 (0: unlimited)")
	pageSize := fs.Int("page-size", 0, "default page size without $top (default 200)")
	pageDelay := fs.Duration("page-delay", 0, "latency of every delta page, as real Graph has (0.5-2s is common; 0: answer at once)")
	pageJitter := fs.Duration("page-jitter", 0, "random extra latency per delta page, uniform in [0, this)")
	debug := fs.Bool("debug", false, "log every request")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *pageDelay < 0 || *pageJitter < 0 {
		return fmt.Errorf("--page-delay and --page-jitter must not be negative")
	}
	host, path, ok := strings.Cut(*siteRef, ":")
	if !ok || host == "" || !strings.HasPrefix(path, "/") {
		return fmt.Errorf("--site %q: want hostname:/server-relative-path, e.g. contoso.sharepoint.com:/sites/ops", *siteRef)
	}

	level := slog.LevelInfo
	if *debug {
		level = slog.LevelDebug
	}
	log := slog.New(slog.NewJSONHandler(stdout, &slog.HandlerOptions{Level: level}))
	// A running clock that /_sim/clock can move forward, for tombstone
	// retention and token expiry in out-of-process tests.
	clock := &graphsim.ManualClock{}
	sim := graphsim.New(graphsim.Options{
		Token:              *token,
		Clock:              clock,
		TombstoneRetention: *retention,
		TokenLifetime:      *lifetime,
		RUPerMinute:        *ruPerMinute,
		DefaultPageSize:    *pageSize,
		Logger:             log,
	})
	list := sim.AddList(host, path, *listName)
	list.Populate(*items, *seed)
	list.SetKnobs(graphsim.Knobs{PageDelay: *pageDelay, PageJitter: *pageJitter})

	mux := http.NewServeMux()
	mux.Handle("/v1.0/", sim)
	mux.Handle("/_sim/", sim.AdminHandler())
	// Churn belongs to this binary: pause it so that a checker can compare
	// a quiet list with what a pipeline delivered.
	var paused atomic.Bool
	mux.HandleFunc("POST /_sim/churn/pause", func(w http.ResponseWriter, r *http.Request) {
		paused.Store(true)
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprintln(w, `"paused"`)
	})
	mux.HandleFunc("POST /_sim/churn/resume", func(w http.ResponseWriter, r *http.Request) {
		paused.Store(false)
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprintln(w, `"resumed"`)
	})

	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", *addr, err)
	}
	srv := httptest.NewUnstartedServer(mux)
	srv.Listener.Close()
	srv.Listener = ln
	if *useTLS {
		srv.StartTLS()
		if *certOut != "" {
			cert := srv.Certificate()
			pemBytes := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Raw})
			if err := os.WriteFile(*certOut, pemBytes, 0o644); err != nil {
				srv.Close()
				return fmt.Errorf("write --cert-out %s: %w", *certOut, err)
			}
		}
	} else {
		srv.Start()
	}
	defer srv.Close()

	log.Info("listening",
		"url", srv.URL,
		"graph_url", srv.URL+"/v1.0",
		"admin_url", srv.URL+"/_sim/",
		"site", *siteRef,
		"site_id", list.SiteID(),
		"list", list.Name(),
		"list_id", list.ID(),
		"items", list.Len(),
		"page_delay", pageDelay.String(),
		"page_jitter", pageJitter.String(),
		"tls", *useTLS,
	)

	var tick <-chan time.Time
	if *churn > 0 {
		t := time.NewTicker(*churn)
		defer t.Stop()
		tick = t.C
	}
	rng := rand.New(rand.NewPCG(*seed, *seed^0x9e3779b97f4a7c15))
	for {
		select {
		case <-ctx.Done():
			log.Info("stopping", "reason", context.Cause(ctx).Error())
			if errors.Is(ctx.Err(), context.Canceled) || errors.Is(ctx.Err(), context.DeadlineExceeded) {
				return nil
			}
			return ctx.Err()
		case <-tick:
			if paused.Load() {
				continue
			}
			list.Churn(rng, *adds, *edits, *deletes)
			log.Info("churn", "list", list.Name(), "items", list.Len(), "seq", list.Seq())
		}
	}
}
