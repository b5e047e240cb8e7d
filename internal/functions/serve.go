package functions

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"
)

// Port environment variables the host sets on the handler process (§3).
const (
	PortEnv       = "FUNCTIONS_CUSTOMHANDLER_PORT"
	LegacyPortEnv = "FUNCTIONS_HTTPWORKER_PORT"
	DefaultPort   = "8080" // what the samples fall back to (§3)
)

// ListenAddr is the loopback address the host expects the handler on (§3):
// 127.0.0.1 and FUNCTIONS_CUSTOMHANDLER_PORT, else FUNCTIONS_HTTPWORKER_PORT,
// else 8080. lookupEnv is os.LookupEnv outside tests.
func ListenAddr(lookupEnv func(string) (string, bool)) string {
	for _, name := range []string{PortEnv, LegacyPortEnv} {
		if v, ok := lookupEnv(name); ok && v != "" {
			return net.JoinHostPort("127.0.0.1", v)
		}
	}
	return net.JoinHostPort("127.0.0.1", DefaultPort)
}

// ShutdownGrace is how long Serve lets running invocations finish after
// its context is done before it cancels them.
const ShutdownGrace = 20 * time.Second

// Serve listens on addr at once — the host polls GET / every 25 ms and
// starts invoking as soon as anything answers (§3), so nothing slow may
// come before it — and serves h until ctx is done. Then it stops accepting,
// lets running invocations finish for up to ShutdownGrace, cancels the rest
// (a cancelled drain leaves its checkpoint consistent and the host retries
// the message) and returns nil.
func Serve(ctx context.Context, addr string, h http.Handler, logger *slog.Logger) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("custom handler: listen on %s: %w", addr, err)
	}
	return serveListener(ctx, ln, h, logger, ShutdownGrace)
}

func serveListener(ctx context.Context, ln net.Listener, h http.Handler, logger *slog.Logger, grace time.Duration) error {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	// Invocations get a context that outlives ctx by the grace period.
	base, cancelBase := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelBase()
	srv := &http.Server{
		Handler:           h,
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       2 * time.Minute,
		BaseContext:       func(net.Listener) context.Context { return base },
		ErrorLog:          slog.NewLogLogger(logger.Handler(), slog.LevelWarn),
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	logger.Info("custom handler listening", "addr", ln.Addr().String())

	select {
	case err := <-served:
		return fmt.Errorf("custom handler: serve on %s: %w", ln.Addr(), err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), grace)
	err := srv.Shutdown(sctx)
	cancel()
	if errors.Is(err, context.DeadlineExceeded) {
		logger.Warn("custom handler: invocations still running after the grace period; cancelling them", "grace", grace.String())
		cancelBase()
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		err = srv.Shutdown(sctx)
		cancel()
	}
	if err != nil {
		_ = srv.Close()
	}
	<-served // http.ErrServerClosed
	logger.Info("custom handler stopped")
	return nil
}
