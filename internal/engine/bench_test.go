package engine_test

import (
	"bytes"
	"context"
	"os"
	"runtime"
	"strconv"
	"testing"
	"time"

	"github.com/sluicehq/sluice/internal/config"
	"github.com/sluicehq/sluice/internal/engine"
	"github.com/sluicehq/sluice/internal/testenv"
)

// BenchmarkDrainPostgres replays a log of SLUICE_BENCH_RECORDS change records
// (default 200,000; the figure uses 1,000,000) over a fifth as many
// keys with 2% deletes from Azurite into a fresh PostgreSQL table, and
// reports records/s and the process's peak RSS during the drain.
//
//	SLUICE_BENCH_RECORDS=1000000 scripts/with-services go test ./internal/engine -run '^$' -bench DrainPostgres -benchtime 1x
func BenchmarkDrainPostgres(b *testing.B) {
	n := 200_000
	if v, err := strconv.Atoi(os.Getenv("SLUICE_BENCH_RECORDS")); err == nil && v > 0 {
		n = v
	}
	ctx := context.Background()
	dsn := testenv.Postgres(b)
	dest := sqlDest("pg", config.DriverPostgres, dsn)
	dest.BatchSize = 5000
	if v, err := strconv.Atoi(os.Getenv("SLUICE_BENCH_BATCH")); err == nil && v > 0 {
		dest.BatchSize = v
	}
	f := newSQLFixtureB(b, n, n/5, dest)
	b.ResetTimer()
	for range b.N {
		resetPeakRSS()
		start := time.Now()
		res, err := f.drainer().Drain(ctx, engine.DrainRequest{Pipeline: f.p, Destination: &f.p.Destinations[0], Resume: true})
		if err != nil || res.Outcome != engine.OutcomeDrained {
			b.Fatalf("drain = %+v, %v", res, err)
		}
		secs := time.Since(start).Seconds()
		b.ReportMetric(float64(res.Applied)/secs, "records/s")
		b.ReportMetric(float64(peakRSS())/(1<<20), "peak-RSS-MB")
		b.StopTimer()
		if _, err := engine.Replay(ctx, f.st, engine.ReplayRequest{Pipeline: f.p, Destination: &f.p.Destinations[0], FromSeq: 1}, time.Now()); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
	}
	b.StopTimer()
	f.checkTableTB(b, config.DriverPostgres, dsn)
}

// resetPeakRSS resets VmHWM (Linux: writing 5 to clear_refs).
func resetPeakRSS() {
	runtime.GC()
	_ = os.WriteFile("/proc/self/clear_refs", []byte("5"), 0)
}

// peakRSS reads VmHWM from /proc/self/status, in bytes.
func peakRSS() int64 {
	data, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for _, line := range bytes.Split(data, []byte("\n")) {
		if v, ok := bytes.CutPrefix(line, []byte("VmHWM:")); ok {
			kb, _ := strconv.ParseInt(string(bytes.TrimSpace(bytes.TrimSuffix(bytes.TrimSpace(v), []byte("kB")))), 10, 64)
			return kb << 10
		}
	}
	return 0
}
