package sqlsink_test

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/sluicehq/sluice/internal/changelog"
	"github.com/sluicehq/sluice/internal/sink"
	"github.com/sluicehq/sluice/internal/sink/sqlsink"
	"github.com/sluicehq/sluice/internal/testenv"
)

// BenchmarkApplyPostgres: batches of 5,000 records over 200,000 keys, 2%
// deletes, typical SharePoint fields. Reports records/s; the goal is 100k/s
// on 2 cores.
func BenchmarkApplyPostgres(b *testing.B) {
	benchApply(b, "postgres", testenv.Postgres(b))
}

func BenchmarkApplySQLite(b *testing.B) {
	benchApply(b, "sqlite", "file:"+b.TempDir()+"/bench.db")
}

func benchApply(b *testing.B, driver, dsn string) {
	const (
		batchSize = 5000
		keys      = 200_000
		pool      = 40 // distinct batches, cycled with fresh seqs
	)
	ctx := context.Background()
	s, err := sqlsink.Open(ctx, sqlsink.Config{Driver: driver, DSN: dsn, Table: "contracts", Pipeline: "bench", Destination: "bench"})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	r := rand.New(rand.NewPCG(1, 1))
	statuses := []string{"Draft", "Review", "Signed", "Expired"}
	batches := make([][]changelog.Record, pool)
	ts := time.Date(2026, 11, 25, 8, 0, 0, 0, time.UTC)
	for i := range batches {
		recs := make([]changelog.Record, batchSize)
		for j := range recs {
			key := fmt.Sprint(r.IntN(keys) + 1)
			recs[j] = changelog.Record{TS: ts, Key: key, Op: changelog.OpUpsert}
			if r.IntN(100) < 2 {
				recs[j].Op = changelog.OpDelete
				continue
			}
			f := map[string]any{
				"id": key, "Title": "PO-" + key, "Status": statuses[r.IntN(4)],
				"Amount": float64(r.IntN(10_000_000)) / 100, "Approved": r.IntN(2) == 0,
				"Modified": "2026-11-25T07:59:58Z", "AuthorLookupId": fmt.Sprint(r.IntN(50)),
			}
			if r.IntN(3) == 0 {
				f["Tags"] = []string{"legal", "q4"}
			}
			recs[j].Fields, _ = json.Marshal(f)
		}
		batches[i] = recs
	}
	// Fill the table once so that the timed batches mostly update.
	var seq int64
	next := func(i int) sink.Batch {
		recs := batches[i%pool]
		for j := range recs {
			seq++
			recs[j].Seq = seq
		}
		return sink.Batch{Pipeline: "p", Destination: "bench", Epoch: 1, Records: recs}
	}
	for i := range pool {
		if err := s.Apply(ctx, next(i)); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		if err := s.Apply(ctx, next(i)); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N*batchSize)/b.Elapsed().Seconds(), "records/s")
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*batchSize), "ns/record")
}
