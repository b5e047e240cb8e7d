package main

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"time"

	"github.com/sluicehq/sluice/internal/graphsim"
	"github.com/sluicehq/sluice/internal/source/sharepoint"
)

const graphToken = "bench-token"

// readGraph serves a simulated list of --records items over loopback HTTP
// from this process and runs one read pass — the initial enumeration into
// the log — in a child process. The baseline is a plain client loop in this
// process fetching the same pages (following nextLinks, discarding bodies),
// so the ratio says whether the simulator, not sluice, is the bottleneck.
func (b *bench) readGraph(ctx context.Context) (Workload, error) {
	n := b.opts.records
	w := Workload{Records: int64(n), Baseline: "plain-client-same-pages", Target: ">= 50k items/s"}
	b.progressf("populating a simulated list of %d items", n)
	sim := graphsim.New(graphsim.Options{Token: graphToken})
	list := sim.AddList("contoso.sharepoint.com", "/sites/ops", "Orders")
	list.Populate(n, 42)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return w, err
	}
	srv := &http.Server{Handler: sim, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	defer srv.Close()
	graphURL := "http://" + ln.Addr().String() + "/v1.0"

	b.progressf("reading %d items from the simulator into the log in a child process", n)
	sim.ResetStats()
	res, rss, err := b.startChild(ctx, wReadGraph, childSpec{Pipeline: "graph", GraphURL: graphURL, Token: graphToken,
		Site: "contoso.sharepoint.com:/sites/ops", List: "Orders"})
	w.PeakRSSBytes = rss
	if err != nil {
		return w, err
	}
	st := sim.Stats()
	w.Seconds = round(res.Seconds, 2)
	w.PeakDetail = res.Peak.String()
	w.RecordsPerSec = rate(res.Records, res.Seconds)
	w.RequestsPer1000 = round(float64(st.Requests)/float64(n)*1000, 2)
	w.RUPer1000 = round(float64(st.ResourceUnits)/float64(n)*1000, 2)
	ok := res.Records == int64(n)
	w.CheckOK = &ok
	w.Check = fmt.Sprintf("%d records in the log for %d items, %d pages, %d Graph requests (client counted %d)", res.Records, n, res.Pages, st.Requests, res.Requests)
	w.TargetMet = ptr(w.RecordsPerSec >= 50_000 && ok)
	b.progressf("  %s items/s, peak RSS %s, %d Graph requests, %d RU", human(w.RecordsPerSec), mib(rss), st.Requests, st.ResourceUnits)

	sim.ResetStats()
	secs, err := enumerate(ctx, sharepoint.DeltaURL(graphURL, list.SiteID(), list.ID(), nil))
	if err != nil {
		return w, fmt.Errorf("baseline: %w", err)
	}
	items := sim.Stats().Items
	if items != int64(n) {
		return w, fmt.Errorf("baseline: the simulator served %d items, want %d", items, n)
	}
	w.BaselineRecords = items
	w.BaselinePerSec = rate(items, secs)
	w.Ratio = ratio(w.RecordsPerSec, w.BaselinePerSec)
	b.progressf("  baseline: plain client fetching the same pages: %s items/s", human(w.BaselinePerSec))
	return w, nil
}

// enumerate follows nextLinks from link to the deltaLink, discarding the
// pages, and returns the seconds it took (the simulator counts the items).
func enumerate(ctx context.Context, link string) (float64, error) {
	client := &http.Client{Timeout: 60 * time.Second}
	var buf bytes.Buffer
	start := time.Now()
	for link != "" {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, link, nil)
		if err != nil {
			return 0, err
		}
		req.Header.Set("Authorization", "Bearer "+graphToken)
		resp, err := client.Do(req)
		if err != nil {
			return 0, err
		}
		buf.Reset()
		_, err = buf.ReadFrom(resp.Body)
		resp.Body.Close()
		if err != nil {
			return 0, err
		}
		if resp.StatusCode != http.StatusOK {
			return 0, fmt.Errorf("GET page: %s", resp.Status)
		}
		if link, err = nextLink(buf.Bytes()); err != nil {
			return 0, err
		}
	}
	return time.Since(start).Seconds(), nil
}

// nextLink extracts "@odata.nextLink" from a page; "" at the deltaLink.
func nextLink(body []byte) (string, error) {
	const key = `"@odata.nextLink":"`
	i := bytes.Index(body, []byte(key))
	if i < 0 {
		return "", nil
	}
	rest := body[i+len(key)-1:]
	j := bytes.IndexByte(rest[1:], '"')
	if j < 0 {
		return "", fmt.Errorf("unterminated @odata.nextLink")
	}
	return strconv.Unquote(string(rest[:j+2]))
}
