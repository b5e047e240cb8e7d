package main

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestChaosShort is `sluice-chaos --short` inside `make test`: three
// pipelines on one slow 10,000-item list, real sluice processes killed at
// random, PostgreSQL and Azurite restarted, the receiver failing, Graph
// expiring tokens (once while the list is quiet) and throttling, a replay —
// then nothing may be lost or invented. SLUICE_CHAOS_SEED reproduces a
// failed run.
func TestChaosShort(t *testing.T) {
	if testing.Short() {
		t.Skip("the chaos suite runs real services for about 3 minutes; skipped under -short (run it with `make chaos` or without -short)")
	}
	root, err := findRoot()
	if err != nil {
		t.Fatal(err)
	}
	for what, path := range map[string]string{
		"Azurite (make deps)": filepath.Join(root, "node_modules", ".bin", "azurite"),
	} {
		if !fileExists(path) {
			missing(t, what)
		}
	}
	if _, err := findPGBin(); err != nil {
		missing(t, err.Error())
	}
	opts := Options{Short: true, Root: root, Bin: t.TempDir()}
	if v := os.Getenv("SLUICE_CHAOS_SEED"); v != "" {
		if opts.Seed, err = strconv.ParseInt(v, 10, 64); err != nil {
			t.Fatalf("SLUICE_CHAOS_SEED=%q: %v", v, err)
		}
	}
	// The build is not the suite's time: on a fresh machine it can take
	// longer than the suite itself.
	start := time.Now()
	bctx, bcancel := context.WithTimeout(context.Background(), 10*time.Minute)
	err = buildBinaries(bctx, root, opts.Bin)
	bcancel()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("built sluice and graphsim in %v", time.Since(start).Round(100*time.Millisecond))
	// The suite takes about 2.5 minutes; the limit only ends a hang, with
	// room for a loaded machine.
	ctx, cancel := context.WithTimeout(context.Background(), 6*time.Minute)
	defer cancel()
	w := &testWriter{t: t}
	start = time.Now()
	rep, err := Run(ctx, opts, w)
	w.close()
	t.Logf("chaos --short took %v after the build", time.Since(start).Round(time.Second))
	if err != nil {
		t.Fatalf("the suite could not run: %v", err)
	}
	if rep.Failed > 0 {
		t.Fatalf("seed %d: %d checks failed (reproduce: go run ./cmd/sluice-chaos --short --seed %d):\n%s",
			rep.Seed, rep.Failed, rep.Seed, strings.Join(rep.Lines, "\n"))
	}
}

func missing(t *testing.T, what string) {
	t.Helper()
	if os.Getenv("SLUICE_REQUIRE_SERVICES") == "1" {
		t.Fatalf("%s is required but missing", what)
	}
	t.Skipf("%s missing: run with `make test`", what)
}

// testWriter logs the suite's lines as they come, and drops any that come
// after Run returned (t.Log would panic then).
type testWriter struct {
	t    *testing.T
	mu   sync.Mutex
	done bool
}

func (w *testWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.done {
		w.t.Log(strings.TrimRight(string(p), "\n"))
	}
	return len(p), nil
}

func (w *testWriter) close() {
	w.mu.Lock()
	w.done = true
	w.mu.Unlock()
}
