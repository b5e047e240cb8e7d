package main

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"
)

func TestRunServesAndChurns(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithCancel(context.Background())
	pr, pw := io.Pipe()
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, []string{"--addr", "127.0.0.1:0", "--token", "tok", "--items", "25",
			"--churn", "20ms", "--site", "contoso.sharepoint.com:/sites/ops", "--list", "Orders"}, pw)
		pw.Close()
	}()
	lines := bufio.NewScanner(pr)
	if !lines.Scan() {
		t.Fatal("no output")
	}
	var first struct {
		Msg      string `json:"msg"`
		GraphURL string `json:"graph_url"`
		URL      string `json:"url"`
		SiteID   string `json:"site_id"`
		ListID   string `json:"list_id"`
	}
	if err := json.Unmarshal(lines.Bytes(), &first); err != nil || first.Msg != "listening" || first.GraphURL == "" {
		t.Fatalf("first line %q: %v", lines.Text(), err)
	}
	go io.Copy(io.Discard, pr) // keep draining the log

	time.Sleep(100 * time.Millisecond) // let churn run a few ticks
	req, _ := http.NewRequest("GET", first.GraphURL+"/sites/contoso.sharepoint.com:/sites/ops:/lists/Orders/items/delta?$expand=fields&$top=1000", nil)
	req.Header.Set("Authorization", "Bearer tok")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	var page struct {
		Delta string           `json:"@odata.deltaLink"`
		Value []map[string]any `json:"value"`
	}
	json.NewDecoder(resp.Body).Decode(&page)
	resp.Body.Close()
	if resp.StatusCode != 200 || page.Delta == "" || !strings.HasPrefix(page.Delta, first.GraphURL) {
		t.Fatalf("delta: %d, deltaLink %q", resp.StatusCode, page.Delta)
	}

	resp, err = http.Get(first.URL + "/_sim/snapshot")
	if err != nil {
		t.Fatal(err)
	}
	var snap struct {
		Count int                       `json:"count"`
		Items map[string]map[string]any `json:"items"`
	}
	json.NewDecoder(resp.Body).Decode(&snap)
	resp.Body.Close()
	if snap.Count == 0 || snap.Count != len(snap.Items) {
		t.Fatalf("snapshot count %d, items %d", snap.Count, len(snap.Items))
	}

	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("run: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("run did not stop")
	}
}

func TestRunRejectsBadSite(t *testing.T) {
	t.Parallel()
	err := run(context.Background(), []string{"--site", "contoso.sharepoint.com"}, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "hostname:/server-relative-path") {
		t.Fatalf("err = %v", err)
	}
}

func TestRunPageLatencyFlags(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	pr, pw := io.Pipe()
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, []string{"--addr", "127.0.0.1:0", "--token", "tok", "--items", "5",
			"--page-delay", "200ms", "--page-jitter", "100ms"}, pw)
		pw.Close()
	}()
	lines := bufio.NewScanner(pr)
	if !lines.Scan() {
		t.Fatal("no output")
	}
	var first struct {
		GraphURL string `json:"graph_url"`
		URL      string `json:"url"`
	}
	if err := json.Unmarshal(lines.Bytes(), &first); err != nil || first.GraphURL == "" {
		t.Fatalf("first line %q: %v", lines.Text(), err)
	}
	go io.Copy(io.Discard, pr)

	req, _ := http.NewRequest("GET", first.GraphURL+"/sites/contoso.sharepoint.com:/sites/ops:/lists/Orders/items/delta", nil)
	req.Header.Set("Authorization", "Bearer tok")
	start := time.Now()
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if took := time.Since(start); resp.StatusCode != 200 || took < 200*time.Millisecond {
		t.Fatalf("delta page: %d in %v, want 200 after at least 200ms", resp.StatusCode, took)
	}
	resp, err = http.Get(first.URL + "/_sim/knobs")
	if err != nil {
		t.Fatal(err)
	}
	var knobs map[string]any
	json.NewDecoder(resp.Body).Decode(&knobs)
	resp.Body.Close()
	if knobs["pageDelay"] != "200ms" || knobs["pageJitter"] != "100ms" {
		t.Fatalf("knobs %v: want the flags' page latency", knobs)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("run: %v", err)
	}
}

func TestRunRejectsNegativeLatency(t *testing.T) {
	t.Parallel()
	err := run(context.Background(), []string{"--page-delay", "-1s"}, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "must not be negative") {
		t.Fatalf("err = %v", err)
	}
}
