package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/sluicehq/sluice/internal/azstore"
)

// Environment the benchmark reads (scripts/with-services sets both).
const (
	storageEnv  = "SLUICE_TEST_STORAGE"
	postgresEnv = "SLUICE_TEST_POSTGRES_DSN"
)

// bench is one run of the benchmark: the services it uses, the things it
// created (removed by close) and the results so far.
type bench struct {
	opts     options
	progress io.Writer

	root     string // module root: where the results and cmd/sluice are
	self     string // this executable, re-executed for child workloads
	tmp      string // scratch directory
	connStr  string // Azurite connection string
	adminDSN string // PostgreSQL admin DSN
	dbName   string // the run's own database
	dsn      string // DSN of the run's own database
	psql     string // the psql client binary

	store *azstore.Store
	log   *genLog // the change log the drains read (nil until built)

	results []Workload
}

func newBench(ctx context.Context, opts options, progress io.Writer) (*bench, error) {
	b := &bench{opts: opts, progress: progress}
	b.connStr = os.Getenv(storageEnv)
	b.adminDSN = os.Getenv(postgresEnv)
	if b.connStr == "" || b.adminDSN == "" {
		return nil, fmt.Errorf("%s and %s must name Azurite and PostgreSQL: run `make bench` (scripts/with-services), or `source` a file that exports them", storageEnv, postgresEnv)
	}
	var err error
	if b.self, err = os.Executable(); err != nil {
		return nil, fmt.Errorf("find this executable (children re-execute it): %w", err)
	}
	if b.root, err = moduleRoot(ctx); err != nil {
		return nil, err
	}
	if b.psql, err = findPsql(); err != nil && (opts.only[wDrainPostgres]) {
		return nil, err
	}
	if b.tmp, err = os.MkdirTemp("", "sluice-bench-"); err != nil {
		return nil, err
	}
	settings, err := azstore.ParseConnectionString(b.connStr)
	if err != nil {
		b.close()
		return nil, fmt.Errorf("%s: %w", storageEnv, err)
	}
	if b.store, err = azstore.Open(ctx, settings, "bench"+randHex(6), azstore.Options{}); err != nil {
		b.close()
		return nil, fmt.Errorf("open Azurite container: %w", err)
	}
	if err := b.createDatabase(ctx); err != nil {
		b.close()
		return nil, err
	}
	return b, nil
}

// progressf prints a progress line (stderr: stdout is for the table).
func (b *bench) progressf(format string, args ...any) {
	fmt.Fprintf(b.progress, "%s  "+format+"\n", append([]any{time.Now().Format("15:04:05")}, args...)...)
}

// run runs the selected workloads. A workload that fails is reported with its
// error and the others still run.
func (b *bench) run(ctx context.Context) error {
	o := b.opts
	b.progressf("sluice-bench: %d records (drain-postgres-5m: %d); machine: %s", o.records, o.big, machine())
	step := func(name string, f func(context.Context) (Workload, error)) {
		if !o.only[name] || ctx.Err() != nil {
			return
		}
		load := loadAverage()
		b.progressf("── %s (load average %s)", name, load)
		started := time.Now()
		w, err := f(ctx)
		w.Name = name
		w.LoadAverage = load
		if err != nil {
			w.Error = err.Error()
			b.progressf("%s failed: %v", name, err)
		}
		w.WallSeconds = round(time.Since(started).Seconds(), 1)
		b.results = append(b.results, w)
	}
	if o.only[wDrainPostgres] || o.only[wDrainSQLite] || o.only[wDrainHTTP] {
		if err := b.buildLog(ctx, int64(o.records)); err != nil {
			return err
		}
	}
	step(wDrainPostgres, func(ctx context.Context) (Workload, error) { return b.drainPostgres(ctx, wDrainPostgres, "orders") })
	step(wDrainSQLite, b.drainSQLite)
	step(wDrainHTTP, b.drainHTTP)
	step(wReadGraph, b.readGraph)
	if o.only[wDrainPostgres5M] && ctx.Err() == nil {
		// The 5M log is the 1M log extended: the same keys, four times more
		// history; drained into a fresh table by a fresh destination.
		if err := b.buildLog(ctx, int64(o.big)); err != nil {
			return err
		}
	}
	step(wDrainPostgres5M, func(ctx context.Context) (Workload, error) { return b.drainPostgres(ctx, wDrainPostgres5M, "orders5m") })
	step(wHandlerStart, b.handlerStart)
	b.compareRSS()
	return ctx.Err()
}

// compareRSS fills drain-postgres-5m's baseline — drain-postgres, in the same
// run — and its peak RSS growth over it.
func (b *bench) compareRSS() {
	var small, big *Workload
	for i := range b.results {
		switch b.results[i].Name {
		case wDrainPostgres:
			small = &b.results[i]
		case wDrainPostgres5M:
			big = &b.results[i]
		}
	}
	if big == nil {
		return
	}
	big.Target = "peak RSS growth vs drain-postgres <= 20%"
	if small == nil || small.PeakRSSBytes == 0 || big.PeakRSSBytes == 0 {
		big.Target += " (needs drain-postgres in the same run)"
		return
	}
	big.BaselinePerSec = small.RecordsPerSec
	big.Ratio = ratio(big.RecordsPerSec, small.RecordsPerSec)
	g := round(float64(big.PeakRSSBytes)/float64(small.PeakRSSBytes)-1, 3)
	big.RSSGrowth = &g
	big.TargetMet = ptr(g <= 0.20)
}

// loadAverage is the 1-minute load average: how busy the machine was when
// a workload started (other processes compete for the same cores).
func loadAverage() string {
	data, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	f := strings.Fields(string(data))
	if len(f) == 0 {
		return "?"
	}
	return f[0]
}

// close removes what the run created: the database, the blobs, the scratch
// directory. It is best effort: a failure is printed, not returned.
func (b *bench) close() {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if b.dbName != "" {
		if err := b.dropDatabase(ctx); err != nil {
			b.progressf("cleanup: drop database %s: %v", b.dbName, err)
		}
	}
	if b.store != nil {
		n := 0
		err := b.store.List(ctx, "", func(bi azstore.BlobInfo) error {
			n++
			if err := b.store.Delete(ctx, bi.Name, ""); err != nil && !errors.Is(err, azstore.ErrNotFound) {
				return err
			}
			return nil
		})
		if err != nil {
			b.progressf("cleanup: delete blobs of container %s: %v", b.store.Container(), err)
		}
	}
	if b.tmp != "" {
		_ = os.RemoveAll(b.tmp)
	}
}

// createDatabase creates the run's own database on the admin DSN's server.
func (b *bench) createDatabase(ctx context.Context) error {
	u, err := url.Parse(b.adminDSN)
	if err != nil || (u.Scheme != "postgres" && u.Scheme != "postgresql") {
		return fmt.Errorf("%s: want a postgres:// URL", postgresEnv)
	}
	conn, err := pgx.Connect(ctx, b.adminDSN)
	if err != nil {
		return fmt.Errorf("connect to %s: %w", postgresEnv, err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	name := "sluice_bench_" + randHex(6)
	// The name is ours (hex): plain concatenation is safe.
	if _, err := conn.Exec(ctx, `CREATE DATABASE "`+name+`"`); err != nil {
		return fmt.Errorf("create database %s: %w", name, err)
	}
	b.dbName = name
	u.Path = "/" + name
	b.dsn = u.String()
	return nil
}

func (b *bench) dropDatabase(ctx context.Context) error {
	conn, err := pgx.Connect(ctx, b.adminDSN)
	if err != nil {
		return err
	}
	defer conn.Close(ctx)
	_, err = conn.Exec(ctx, `DROP DATABASE IF EXISTS "`+b.dbName+`" WITH (FORCE)`)
	return err
}

// moduleRoot is the directory of go.mod (the Makefile runs us there, but a
// user may not).
func moduleRoot(ctx context.Context) (string, error) {
	out, err := exec.CommandContext(ctx, "go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %w", err)
	}
	mod := strings.TrimSpace(string(out))
	if mod == "" || mod == os.DevNull {
		return "", errors.New("run sluice-bench inside the sluice module (make bench does)")
	}
	return filepath.Dir(mod), nil
}

// findPsql finds the psql client: the newest server installation's, else PATH.
func findPsql() (string, error) {
	matches, _ := filepath.Glob("/usr/lib/postgresql/*/bin/psql")
	if len(matches) > 0 {
		return matches[len(matches)-1], nil
	}
	if p, err := exec.LookPath("psql"); err == nil {
		return p, nil
	}
	return "", errors.New("psql not found (the \\copy ceiling of drain-postgres needs it): apt-get install -y postgresql-client")
}

func randHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

func ptr[T any](v T) *T { return &v }
