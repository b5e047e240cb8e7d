// Command sluice-receiver is a small webhook receiver for trying sluice: it
// accepts the CloudEvents batches an http destination POSTs, checks their
// signature when given the secret, and prints one line per event.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/sluicehq/sluice/internal/sink/httpsink"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:0", "listen address")
	secret := flag.String("secret", os.Getenv("HOOK_SECRET"), "verify X-Sluice-Signature with this secret (default $HOOK_SECRET)")
	quiet := flag.Bool("quiet", false, "count events without printing each one")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, *addr, *secret, *quiet, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "sluice-receiver:", err)
		os.Exit(1)
	}
}

type event struct {
	ID        string          `json:"id"`
	Type      string          `json:"type"`
	Subject   string          `json:"subject"`
	Time      string          `json:"time"`
	SluiceSeq string          `json:"sluiceseq"`
	SluiceGen string          `json:"sluicegen"`
	Data      json.RawMessage `json:"data"`
}

func run(ctx context.Context, addr, secret string, quiet bool, out io.Writer) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	log := slog.New(slog.NewTextHandler(out, nil))
	var total atomic.Int64
	mux := http.NewServeMux()
	mux.HandleFunc("POST /", func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(io.LimitReader(r.Body, 32<<20))
		if err != nil {
			http.Error(w, "cannot read body", http.StatusBadRequest)
			return
		}
		if secret != "" {
			if err := httpsink.VerifySignature([]byte(secret), r.Header, body, time.Now(), 5*time.Minute); err != nil {
				log.Warn("rejected a request", "reason", err.Error())
				http.Error(w, err.Error(), http.StatusUnauthorized)
				return
			}
		}
		var events []event
		if err := json.Unmarshal(body, &events); err != nil {
			http.Error(w, "not a CloudEvents batch: "+err.Error(), http.StatusBadRequest)
			return
		}
		n := total.Add(int64(len(events)))
		if !quiet {
			for _, e := range events {
				fmt.Fprintf(out, "event %-6s item %-5s seq %-6s gen %s  %s\n", strings.TrimPrefix(e.Type, "sluice.change."), e.Subject, e.SluiceSeq, e.SluiceGen, summary(e.Data))
			}
		} else if n%10000 < int64(len(events)) {
			fmt.Fprintf(out, "%d events\n", n)
		}
		w.WriteHeader(http.StatusNoContent)
	})
	mux.HandleFunc("GET /count", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintln(w, total.Load())
	})
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	fmt.Fprintf(out, "sluice-receiver listening on http://%s\n", ln.Addr())
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
	}()
	if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// summary shows a few fields of an event's data on one line.
func summary(data json.RawMessage) string {
	if len(data) == 0 {
		return ""
	}
	var m map[string]any
	if json.Unmarshal(data, &m) != nil {
		return ""
	}
	var parts []string
	for _, k := range []string{"Title", "Status", "Amount", "Customer"} {
		if v, ok := m[k]; ok {
			parts = append(parts, fmt.Sprintf("%s=%v", k, v))
		}
	}
	return strings.Join(parts, " ")
}
