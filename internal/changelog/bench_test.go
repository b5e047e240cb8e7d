package changelog_test

import (
	"context"
	"encoding/json"

	"runtime"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sluicehq/sluice/internal/changelog"
	"github.com/sluicehq/sluice/internal/testenv"
)

// benchFields is a realistic list item: ~400 bytes of fields.
func benchFields(i int) json.RawMessage {
	return json.RawMessage(`{"Title":"PO-` + strconv.Itoa(i) + `","Status":"Shipped","Amount":1234.5,"Customer":"Contoso Ltd",` +
		`"OrderDate":"2026-11-25T08:00:00Z","Region":"EMEA","AssignedToLookupId":"17","Tags":["a","b"],` +
		`"Notes":"Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor incididunt ut labore",` +
		`"Link":{"Description":"Order","Url":"https://contoso.example/orders/` + strconv.Itoa(i) + `"}}`)
}

// peakHeap samples HeapInuse until stop is closed.
func peakHeap(stop <-chan struct{}, out *atomic.Uint64) {
	var ms runtime.MemStats
	t := time.NewTicker(20 * time.Millisecond)
	defer t.Stop()
	for {
		runtime.ReadMemStats(&ms)
		if ms.HeapInuse > out.Load() {
			out.Store(ms.HeapInuse)
		}
		select {
		case <-stop:
			return
		case <-t.C:
		}
	}
}

// BenchmarkAppendScan writes b.N records (pages of 1,000, a commit per page)
// to Azurite, then scans them, and reports both rates and the scan's peak
// heap. Run: scripts/with-services go test ./internal/changelog -run '^$' -bench AppendScan -benchtime 1000000x
func BenchmarkAppendScan(b *testing.B) {
	ctx := context.Background()
	l := changelog.New(testenv.Store(b), "bench", changelog.Options{})
	st, err := l.LoadState(ctx)
	if err != nil {
		b.Fatal(err)
	}
	a, err := l.NewAppender(ctx, st)
	if err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	start := time.Now()
	for i := range b.N {
		r := changelog.Record{Op: changelog.OpUpsert, Key: strconv.Itoa(i % 200_000), Fields: benchFields(i)}
		if err := a.Add(ctx, &r); err != nil {
			b.Fatal(err)
		}
		if i%1000 == 999 {
			if err := a.Commit(ctx, nil); err != nil {
				b.Fatal(err)
			}
		}
	}
	if err := a.Commit(ctx, nil); err != nil {
		b.Fatal(err)
	}
	appendDur := time.Since(start)

	runtime.GC()
	var peak atomic.Uint64
	stop := make(chan struct{})
	go peakHeap(stop, &peak)
	start = time.Now()
	sc := l.Scan(ctx, 1, int64(b.N))
	n := 0
	for sc.Next() {
		n++
	}
	if err := sc.Err(); err != nil {
		b.Fatal(err)
	}
	scanDur := time.Since(start)
	close(stop)
	if n != b.N {
		b.Fatalf("scanned %d of %d", n, b.N)
	}
	b.ReportMetric(float64(b.N)/appendDur.Seconds(), "append-rec/s")
	b.ReportMetric(float64(b.N)/scanDur.Seconds(), "scan-rec/s")
	b.ReportMetric(float64(peak.Load())/(1<<20), "scan-peak-heap-MB")
	b.ReportMetric(0, "ns/op")
}
