package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"strconv"
	"time"

	"github.com/sluicehq/sluice/internal/azstore"
	"github.com/sluicehq/sluice/internal/config"
	"github.com/sluicehq/sluice/internal/engine"
	"github.com/sluicehq/sluice/internal/sink"
	"github.com/sluicehq/sluice/internal/sink/httpsink"
	"github.com/sluicehq/sluice/internal/sink/sqlsink"
	"github.com/sluicehq/sluice/internal/source/sharepoint"
)

// specEnv carries a child's childSpec as JSON. The environment, not the
// command line: a DSN may hold a password, and `ps` shows arguments.
const specEnv = "SLUICE_BENCH_SPEC"

// childSpec is what a child process runs: one drain or one read pass.
type childSpec struct {
	Storage   string `json:"storage"` // Azurite connection string
	Container string `json:"container"`
	Pipeline  string `json:"pipeline"`

	// Drains: the destination.
	DestName  string `json:"destName,omitempty"`
	DestType  string `json:"destType,omitempty"` // sql | http
	Driver    string `json:"driver,omitempty"`
	DSN       string `json:"dsn,omitempty"`
	Table     string `json:"table,omitempty"`
	URL       string `json:"url,omitempty"`
	BatchSize int    `json:"batchSize,omitempty"`

	// Read: the simulated Graph.
	GraphURL string `json:"graphURL,omitempty"`
	Token    string `json:"token,omitempty"`
	Site     string `json:"site,omitempty"`
	List     string `json:"list,omitempty"`

	CPUProfile string `json:"cpuProfile,omitempty"`
	MemProfile string `json:"memProfile,omitempty"`
}

// childResult is what a child prints on stdout as its last line.
type childResult struct {
	Records  int64   `json:"records"`
	Seconds  float64 `json:"seconds"`
	Outcome  string  `json:"outcome"`
	Pages    int64   `json:"pages,omitempty"`
	Requests int64   `json:"requests,omitempty"`
	// HeapInuse is the Go heap in use at the end (a hint for profiling).
	HeapInuse uint64 `json:"heapInuse,omitempty"`
	// Peak is what the RSS sampler saw at the highest RSS (a hint for
	// profiling: is the peak live heap, heap not yet returned, or else?).
	Peak rssSample `json:"peak"`
	// VmHWM is the child's peak RSS from /proc/self/status. Not getrusage:
	// os/exec starts children with vfork (CLONE_VM), and Linux carries the
	// parent's RSS high-water mark into the child's ru_maxrss at exec.
	VmHWM int64 `json:"vmHWM"`
}

// rssSample is the process's memory at one moment.
type rssSample struct {
	AtSeconds float64 `json:"atSeconds"`
	RSS       int64   `json:"rss"`
	HeapInuse uint64  `json:"heapInuse"`
	HeapSys   uint64  `json:"heapSys"`
	NextGC    uint64  `json:"nextGC"`
}

// sampleRSS samples VmRSS every 200 ms until stop is closed and returns the
// sample with the highest RSS.
func sampleRSS(stop <-chan struct{}) <-chan rssSample {
	out := make(chan rssSample, 1)
	go func() {
		start := time.Now()
		var peak rssSample
		t := time.NewTicker(200 * time.Millisecond)
		defer t.Stop()
		for {
			if rss := vmRSS(); rss > peak.RSS {
				var ms runtime.MemStats
				runtime.ReadMemStats(&ms)
				peak = rssSample{AtSeconds: round(time.Since(start).Seconds(), 1), RSS: rss, HeapInuse: ms.HeapInuse, HeapSys: ms.HeapSys, NextGC: ms.NextGC}
			}
			select {
			case <-stop:
				out <- peak
				return
			case <-t.C:
			}
		}
	}()
	return out
}

// vmRSS reads the resident set size from /proc/self/status, in bytes.
func vmRSS() int64 { return procStatus("self", "VmRSS:") }

// procStatus reads a kB field of /proc/<pid>/status, in bytes.
func procStatus(pid, field string) int64 {
	data, err := os.ReadFile("/proc/" + pid + "/status")
	if err != nil {
		return 0
	}
	for line := range bytes.SplitSeq(data, []byte("\n")) {
		if v, ok := bytes.CutPrefix(line, []byte(field)); ok {
			kb, _ := strconv.ParseInt(string(bytes.TrimSpace(bytes.TrimSuffix(bytes.TrimSpace(v), []byte("kB")))), 10, 64)
			return kb << 10
		}
	}
	return 0
}

// startChild runs workload in a child process and returns its result and
// peak RSS (the child's VmHWM; see childResult.VmHWM).
func (b *bench) startChild(ctx context.Context, workload string, spec childSpec) (childResult, int64, error) {
	spec.Storage, spec.Container = b.connStr, b.store.Container()
	if b.opts.cpuprofile != "" {
		spec.CPUProfile = filepath.Join(b.opts.cpuprofile, workload+".pprof")
	}
	if b.opts.memprofile != "" {
		spec.MemProfile = filepath.Join(b.opts.memprofile, workload+".heap.pprof")
	}
	data, err := json.Marshal(spec)
	if err != nil {
		return childResult{}, 0, err
	}
	cmd := exec.CommandContext(ctx, b.self, "--child", workload)
	cmd.Env = append(os.Environ(), specEnv+"="+string(data))
	var out bytes.Buffer
	cmd.Stdout = &out
	cmd.Stderr = b.progress
	if err := cmd.Run(); err != nil {
		return childResult{}, 0, fmt.Errorf("child %s: %w", workload, err)
	}
	lines := bytes.Split(bytes.TrimSpace(out.Bytes()), []byte("\n"))
	var res childResult
	if err := json.Unmarshal(lines[len(lines)-1], &res); err != nil {
		return childResult{}, 0, fmt.Errorf("child %s printed %q: %w", workload, out.String(), err)
	}
	return res, res.VmHWM, nil
}

// runChild is the child process: it runs the measured part of one workload
// and prints a childResult.
func runChild(ctx context.Context, workload string, stdout, stderr io.Writer) error {
	var spec childSpec
	if err := json.Unmarshal([]byte(os.Getenv(specEnv)), &spec); err != nil {
		return fmt.Errorf("--child needs its spec in $%s: %w", specEnv, err)
	}
	settings, err := azstore.ParseConnectionString(spec.Storage)
	if err != nil {
		return err
	}
	st, err := azstore.Open(ctx, settings, spec.Container, azstore.Options{})
	if err != nil {
		return err
	}
	if spec.CPUProfile != "" {
		f, err := os.Create(spec.CPUProfile)
		if err != nil {
			return err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		defer pprof.StopCPUProfile()
	}
	var res childResult
	stopSampler := make(chan struct{})
	peak := sampleRSS(stopSampler)
	switch workload {
	case wDrainPostgres, wDrainPostgres5M, wDrainSQLite, wDrainHTTP:
		res, err = childDrain(ctx, st, spec, stderr)
	case wReadGraph:
		res, err = childRead(ctx, st, spec, stderr)
	default:
		err = fmt.Errorf("--child %q: not a child workload", workload)
	}
	close(stopSampler)
	if err != nil {
		return err
	}
	res.Peak = <-peak
	res.VmHWM = procStatus("self", "VmHWM:")
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	res.HeapInuse = ms.HeapInuse
	if spec.MemProfile != "" {
		f, err := os.Create(spec.MemProfile)
		if err != nil {
			return err
		}
		defer f.Close()
		if err := pprof.Lookup("allocs").WriteTo(f, 0); err != nil {
			return err
		}
	}
	return json.NewEncoder(stdout).Encode(res)
}

// childDrain drains the pipeline's log into one destination, the way
// `sluice write` does: engine.Drainer with the real sink.
func childDrain(ctx context.Context, st *azstore.Store, spec childSpec, stderr io.Writer) (childResult, error) {
	dst := config.Destination{Name: spec.DestName, Type: spec.DestType, OnError: config.OnErrorDeadletter, BatchSize: spec.BatchSize,
		Driver: spec.Driver, DSN: config.Secret(spec.DSN), Table: spec.Table, Deletes: config.DeletesHard, URL: spec.URL}
	p := &config.Pipeline{Name: spec.Pipeline, Destinations: []config.Destination{dst}}
	open := func(ctx context.Context, p *config.Pipeline, d *config.Destination) (sink.Sink, error) {
		switch d.Type {
		case config.DestSQL:
			return sqlsink.Open(ctx, sqlsink.Config{Driver: d.Driver, DSN: d.DSN.Reveal(), Table: d.Table, Deletes: d.Deletes, Pipeline: p.Name, Destination: d.Name})
		case config.DestHTTP:
			return httpsink.Open(httpsink.Config{URL: d.URL, BatchSize: d.BatchSize, Version: "bench"})
		}
		return nil, fmt.Errorf("destination type %q", d.Type)
	}
	d := &engine.Drainer{Store: st, Open: open, Queue: "sluice-bench-write"}
	var lastPrint time.Time
	start := time.Now()
	req := engine.DrainRequest{Pipeline: p, Destination: &p.Destinations[0], Resume: true,
		Progress: func(done, total int64) {
			if time.Since(lastPrint) >= 5*time.Second {
				lastPrint = time.Now()
				fmt.Fprintf(stderr, "%s    drained %d/%d (%s/s)\n", time.Now().Format("15:04:05"), done, total, human(rate(done, time.Since(start).Seconds())))
			}
		}}
	res, err := d.Drain(ctx, req)
	secs := time.Since(start).Seconds()
	if err != nil {
		return childResult{}, fmt.Errorf("drain: %w", err)
	}
	if res.Outcome != engine.OutcomeDrained || res.DeadLettered > 0 {
		return childResult{}, fmt.Errorf("drain ended %s with %d dead letters: %s", res.Outcome, res.DeadLettered, res.Error)
	}
	return childResult{Records: res.Applied, Seconds: secs, Outcome: string(res.Outcome)}, nil
}

// childRead runs one read pass of a pipeline over the simulated Graph: a
// full initial enumeration into the log.
func childRead(ctx context.Context, st *azstore.Store, spec childSpec, stderr io.Writer) (childResult, error) {
	p := &config.Pipeline{Name: spec.Pipeline, Source: config.Source{Type: "sharepoint", Site: spec.Site, List: spec.List,
		GraphURL: spec.GraphURL, Auth: config.Auth{Type: config.AuthBearer, Token: config.Secret(spec.Token)}}}
	var client *sharepoint.Client
	var lastPrint time.Time
	start := time.Now()
	r := &engine.Reader{Store: st, Queue: "sluice-bench-write",
		Open: func(p *config.Pipeline) (engine.Source, error) {
			c, err := sharepoint.New(sharepoint.Options{GraphURL: p.Source.GraphURL, Auth: p.Source.Auth, Version: "bench"})
			client = c
			return c, err
		},
		Progress: func(_ string, n int64) {
			if time.Since(lastPrint) >= 5*time.Second {
				lastPrint = time.Now()
				fmt.Fprintf(stderr, "%s    read %d items (%s/s)\n", time.Now().Format("15:04:05"), n, human(rate(n, time.Since(start).Seconds())))
			}
		}}
	res, err := r.ReadPipeline(ctx, p)
	secs := time.Since(start).Seconds()
	if err != nil {
		return childResult{}, fmt.Errorf("read pass: %w", err)
	}
	if res.Outcome != "read" {
		return childResult{}, fmt.Errorf("read pass ended %q: %s", res.Outcome, res.Error)
	}
	out := childResult{Records: res.Records, Seconds: secs, Outcome: res.Outcome, Pages: int64(res.Pages)}
	if client == nil {
		return out, errors.New("read pass never opened its source")
	}
	out.Requests = client.Stats().Requests
	return out, nil
}

// String words the sample for the results file.
func (s rssSample) String() string {
	return fmt.Sprintf("sampled peak RSS %s at %.1f s: Go heap in use %s, heap from the OS %s, next GC at %s",
		mib(s.RSS), s.AtSeconds, mib(int64(s.HeapInuse)), mib(int64(s.HeapSys)), mib(int64(s.NextGC)))
}
