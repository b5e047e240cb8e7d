package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"syscall"
	"time"
)

// trivialServer is the baseline binary: a Go HTTP server that answers GET /
// on $FUNCTIONS_CUSTOMHANDLER_PORT and does nothing else.
const trivialServer = `package main

import (
	"net/http"
	"os"
)

func main() {
	http.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) { w.Write([]byte("ok")) })
	if err := http.ListenAndServe("127.0.0.1:"+os.Getenv("FUNCTIONS_CUSTOMHANDLER_PORT"), nil); err != nil {
		os.Exit(1)
	}
}
`

// handlerConfig is a valid pipelines file for `sluice serve`.
const handlerConfig = `storage:
  container: %s
pipelines:
  - name: orders
    source:
      type: sharepoint
      site: contoso.sharepoint.com:/sites/ops
      list: Orders
    destinations:
      - name: warehouse
        type: sql
        driver: sqlite
        dsn: file:%s
        table: orders
`

// handlerStart builds `sluice` and the trivial server the way `make build`
// does and measures, alternating between them, the time from starting the
// process to its first answer to GET / (what the Functions host waits for).
func (b *bench) handlerStart(ctx context.Context) (Workload, error) {
	n := b.opts.starts
	w := Workload{Records: int64(n), Baseline: "trivial-go-http-server", Target: "median < 50 ms"}
	dir := filepath.Join(b.tmp, "handler")
	if err := os.MkdirAll(filepath.Join(dir, "trivial"), 0o755); err != nil {
		return w, err
	}
	b.progressf("building sluice and a trivial Go HTTP server (CGO_ENABLED=0 -trimpath -ldflags '-s -w')")
	sluice, trivial := filepath.Join(dir, "sluice"), filepath.Join(dir, "trivial-server")
	if err := goBuild(ctx, b.root, sluice, "./cmd/sluice"); err != nil {
		return w, err
	}
	if err := os.WriteFile(filepath.Join(dir, "trivial", "main.go"), []byte(trivialServer), 0o644); err != nil {
		return w, err
	}
	if err := os.WriteFile(filepath.Join(dir, "trivial", "go.mod"), []byte("module trivial\n\ngo 1.26\n"), 0o644); err != nil {
		return w, err
	}
	if err := goBuild(ctx, filepath.Join(dir, "trivial"), trivial, "."); err != nil {
		return w, err
	}
	cfg := filepath.Join(dir, "sluice.yaml")
	if err := os.WriteFile(cfg, fmt.Appendf(nil, handlerConfig, b.store.Container(), filepath.Join(dir, "orders.db")), 0o644); err != nil {
		return w, err
	}
	env := append(os.Environ(), "AzureWebJobsStorage="+b.connStr, "FUNCTIONS_APP_ROOT_PATH="+dir, "SLUICE_CONFIG="+cfg)

	b.progressf("starting each %d times, alternating", n)
	var ours, base []float64
	var peak int64
	for range n {
		ms, rss, err := startToReady(ctx, env, sluice, "--config", cfg, "serve")
		if err != nil {
			return w, fmt.Errorf("sluice serve: %w", err)
		}
		ours, peak = append(ours, ms), max(peak, rss)
		if ms, _, err = startToReady(ctx, env, trivial); err != nil {
			return w, fmt.Errorf("trivial server: %w", err)
		}
		base = append(base, ms)
	}
	w.MedianMS, w.BaselineMS = round(median(ours), 1), round(median(base), 1)
	w.RecordsPerSec, w.BaselinePerSec = round(1000/w.MedianMS, 1), round(1000/w.BaselineMS, 1)
	w.Ratio = ratio(w.BaselineMS, w.MedianMS)
	w.PeakRSSBytes = peak
	w.TargetMet = ptr(w.MedianMS < 50)
	w.Note = fmt.Sprintf("records = starts per binary; rates are starts/s; sluice min %.1f max %.1f ms, baseline min %.1f max %.1f ms",
		slices.Min(ours), slices.Max(ours), slices.Min(base), slices.Max(base))
	b.progressf("  sluice serve %.1f ms, trivial server %.1f ms (medians)", w.MedianMS, w.BaselineMS)
	return w, nil
}

// goBuild builds pkg in dir into out with make build's flags.
func goBuild(ctx context.Context, dir, out, pkg string) error {
	cmd := exec.CommandContext(ctx, "go", "build", "-trimpath", "-ldflags", "-s -w", "-o", out, pkg)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if data, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go build %s: %w\n%s", pkg, err, data)
	}
	return nil
}

// startToReady starts the binary on a free port, polls GET / every 0.5 ms
// until it answers 200, and returns the milliseconds that took and the
// process's peak RSS up to then. The process is stopped with SIGTERM afterwards.
func startToReady(ctx context.Context, env []string, bin string, args ...string) (float64, int64, error) {
	port, err := freePort()
	if err != nil {
		return 0, 0, err
	}
	cmd := exec.Command(bin, args...)
	cmd.Env = append(env, "FUNCTIONS_CUSTOMHANDLER_PORT="+strconv.Itoa(port))
	client := &http.Client{Timeout: time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	url := fmt.Sprintf("http://127.0.0.1:%d/", port)
	start := time.Now()
	if err := cmd.Start(); err != nil {
		return 0, 0, err
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	var ready time.Duration
	for ready == 0 {
		resp, err := client.Get(url)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				ready = time.Since(start)
				break
			}
		}
		select {
		case err := <-exited:
			return 0, 0, fmt.Errorf("exited before answering GET /: %v", err)
		case <-ctx.Done():
			_ = cmd.Process.Kill()
			<-exited
			return 0, 0, ctx.Err()
		case <-time.After(500 * time.Microsecond):
		}
		if time.Since(start) > 10*time.Second {
			_ = cmd.Process.Kill()
			<-exited
			return 0, 0, errors.New("no answer to GET / within 10 s")
		}
	}
	// The peak RSS so far, read before the process ends (getrusage would
	// report the parent's: see childResult.VmHWM).
	rss := procStatus(strconv.Itoa(cmd.Process.Pid), "VmHWM:")
	_ = cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-exited:
	case <-time.After(10 * time.Second):
		_ = cmd.Process.Kill()
		<-exited
	}
	return float64(ready.Microseconds()) / 1000, rss, nil
}

// freePort asks the kernel for a free loopback port.
func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

func median(v []float64) float64 {
	s := slices.Clone(v)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}
