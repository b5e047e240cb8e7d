package graphsim_test

import (
	"bytes"
	"net/http"
	"runtime"
	"strconv"
	"testing"

	"github.com/sluicehq/sluice/internal/graphsim"
)

// BenchmarkEnumerate1M serves a full enumeration of a 1,000,000-item list
// over loopback HTTP with $expand=fields&$top=1000, the way a consumer's
// first round would. The client only reads bodies and extracts the link, so
// the figures are the simulator's serving rate. It reports items/s, RU per
// 1,000 items, and the heap the list occupies.
func BenchmarkEnumerate1M(b *testing.B) {
	const n = 1_000_000
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	e := newEnv(b, graphsim.Options{})
	e.list.Populate(n, 42)
	runtime.GC()
	runtime.ReadMemStats(&after)
	heapMB := float64(after.HeapAlloc-before.HeapAlloc) / (1 << 20)

	hc := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 4}}
	var items, bytesRead int64
	var buf bytes.Buffer
	e.sim.ResetStats()
	for b.Loop() {
		link := e.deltaURL("$expand=fields&$top=1000")
		for link != "" {
			req, _ := http.NewRequest(http.MethodGet, link, nil)
			req.Header.Set("Authorization", "Bearer "+testToken)
			resp, err := hc.Do(req)
			if err != nil {
				b.Fatal(err)
			}
			buf.Reset()
			_, err = buf.ReadFrom(resp.Body)
			resp.Body.Close()
			body := buf.Bytes()
			if err != nil || resp.StatusCode != 200 {
				b.Fatalf("%d %v", resp.StatusCode, err)
			}
			bytesRead += int64(len(body))
			link = nextLink(body)
		}
		items += n
	}
	st := e.sim.Stats()
	if st.Items != items {
		b.Fatalf("served %d items, want %d", st.Items, items)
	}
	b.ReportMetric(heapMB, "MB-heap-list")
	b.ReportMetric(float64(items)/b.Elapsed().Seconds(), "items/s")
	b.ReportMetric(float64(st.ResourceUnits)/float64(items)*1000, "RU/1000items")
	b.ReportMetric(float64(bytesRead)/float64(items), "bytes/item")
}

// nextLink extracts "@odata.nextLink" from the head of a page (Graph writes
// it before "value"); "" at the deltaLink.
func nextLink(body []byte) string {
	const key = `"@odata.nextLink":"`
	i := bytes.Index(body[:min(len(body), 4096)], []byte(key))
	if i < 0 {
		return ""
	}
	rest := body[i+len(key)-1:]
	j := bytes.IndexByte(rest[1:], '"')
	s, err := strconv.Unquote(string(rest[:j+2]))
	if err != nil {
		panic(err)
	}
	return s
}
