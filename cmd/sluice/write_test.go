package main

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	_ "modernc.org/sqlite"

	"github.com/sluicehq/sluice/internal/azstore"
	"github.com/sluicehq/sluice/internal/changelog"
	"github.com/sluicehq/sluice/internal/checkpoint"
	"github.com/sluicehq/sluice/internal/engine"
	"github.com/sluicehq/sluice/internal/testenv"
)

func TestWriteAndReplayIntoSQLite(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	container := testenv.UniqueName("cli")
	settings := testenv.StorageSettings(t)
	st, err := azstore.Open(ctx, settings, container, azstore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	l := changelog.New(st, "orders", changelog.Options{})
	s, _ := l.LoadState(ctx)
	a, err := l.NewAppender(ctx, s)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 2000 {
		r := &changelog.Record{Op: changelog.OpUpsert, Key: fmt.Sprint(i % 300), Fields: json.RawMessage(fmt.Sprintf(`{"Title":"t%d","N":%d}`, i, i))}
		if i%10 == 9 {
			r = &changelog.Record{Op: changelog.OpDelete, Key: fmt.Sprint(i % 300)}
		}
		if err := a.Add(ctx, r); err != nil {
			t.Fatal(err)
		}
	}
	if err := a.Commit(ctx, nil); err != nil {
		t.Fatal(err)
	}
	env := map[string]string{"AzureWebJobsStorage": settings.ConnectionString}
	cfg := writeConfig(t, container)

	r := runCLI(t, env, "--config", cfg, "write")
	if r.code != 0 || !strings.Contains(r.stdout, "orders/warehouse: drained, checkpoint 2000 of head 2000") {
		t.Fatalf("write: %+v", r)
	}
	db, err := sql.Open("sqlite", filepath.Join(filepath.Dir(cfg), "orders.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	// Fold the log: the last op per key decides.
	live := map[string]int{}
	for i := range 2000 {
		k := fmt.Sprint(i % 300)
		if i%10 == 9 {
			delete(live, k)
		} else {
			live[k] = i
		}
	}
	var n int
	if err := db.QueryRow(`SELECT count(*) FROM "orders"`).Scan(&n); err != nil || n != len(live) {
		t.Fatalf("rows = %d, %v; want %d", n, err, len(live))
	}
	var title string
	if err := db.QueryRow(`SELECT "Title" FROM "orders" WHERE id = '17'`).Scan(&title); err != nil || title != fmt.Sprintf("t%d", live["17"]) {
		t.Fatalf("Title of 17 = %q, %v", title, err)
	}

	// Dry run, then a real replay that drains again.
	r = runCLI(t, env, "--config", cfg, "replay", "--pipeline", "orders", "--destination", "warehouse", "--from-seq", "1501", "--dry-run")
	if r.code != 0 || !strings.Contains(r.stdout, "would rewind to seq 1501: 500 records") {
		t.Fatalf("replay --dry-run: %+v", r)
	}
	r = runCLI(t, env, "--config", cfg, "replay", "--pipeline", "orders", "--destination", "warehouse", "--from-seq", "1501")
	if r.code != 0 || !strings.Contains(r.stdout, "rewound to seq 1501: 500 records up to head 2000 (generation 1)") || !strings.Contains(r.stdout, "drained, checkpoint 2000") {
		t.Fatalf("replay: %+v", r)
	}
	if err := db.QueryRow(`SELECT count(*) FROM "orders"`).Scan(&n); err != nil || n != len(live) {
		t.Fatalf("rows after replay = %d, %v; want %d", n, err, len(live))
	}
	for _, bad := range [][]string{
		{"replay", "--pipeline", "orders", "--destination", "warehouse"},
		{"replay", "--pipeline", "orders", "--destination", "warehouse", "--from-seq", "3", "--from", "2026-01-01T00:00:00Z"},
		{"write", "--destination", "warehouse"},
	} {
		if r := runCLI(t, env, append([]string{"--config", cfg}, bad...)...); r.code != 2 {
			t.Fatalf("%v: %+v, want a usage error", bad, r)
		}
	}
	if r := runCLI(t, env, "--config", cfg, "replay", "--pipeline", "orders", "--destination", "nope", "--from-seq", "1"); r.code != 1 || !strings.Contains(r.stderr, "warehouse") {
		t.Fatalf("replay of unknown destination: %+v", r)
	}
}

// appendN commits n upserts to pipeline's log.
func appendN(t *testing.T, st *azstore.Store, pipeline string, n int) {
	t.Helper()
	ctx := context.Background()
	l := changelog.New(st, pipeline, changelog.Options{})
	s, err := l.LoadState(ctx)
	if err != nil {
		t.Fatal(err)
	}
	a, err := l.NewAppender(ctx, s)
	if err != nil {
		t.Fatal(err)
	}
	for i := range n {
		r := &changelog.Record{Op: changelog.OpUpsert, Key: fmt.Sprint(i % 40), Fields: json.RawMessage(fmt.Sprintf(`{"Title":"t%d"}`, i))}
		if err := a.Add(ctx, r); err != nil {
			t.Fatal(err)
		}
	}
	if err := a.Commit(ctx, nil); err != nil {
		t.Fatal(err)
	}
}

// Destination names are unique only within a pipeline: two pipelines with a
// destination "warehouse" each, in one SQLite file, must both get their
// records however unevenly they are drained.
func TestPipelinesSharingADestinationNameInOneDatabase(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	container := testenv.UniqueName("cli")
	settings := testenv.StorageSettings(t)
	st, err := azstore.Open(ctx, settings, container, azstore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	cfg := filepath.Join(dir, "sluice.yaml")
	var b strings.Builder
	fmt.Fprintf(&b, "storage:\n  container: %s\npipelines:\n", container)
	for _, p := range []string{"orders", "contracts"} {
		fmt.Fprintf(&b, `  - name: %s
    source: {type: sharepoint, site: contoso.sharepoint.com:/sites/ops, list: %s}
    destinations:
      - {name: warehouse, type: sql, driver: sqlite, dsn: "file:%s", table: %s}
`, p, p, filepath.Join(dir, "shared.db"), p)
	}
	if err := os.WriteFile(cfg, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	env := map[string]string{"AzureWebJobsStorage": settings.ConnectionString}
	heads := map[string]int{}
	for round := range 3 {
		for _, p := range []string{"orders", "orders", "orders", "contracts"} {
			appendN(t, st, p, 20)
			heads[p] += 20
			r := runCLI(t, env, "--config", cfg, "write", "--pipeline", p)
			want := fmt.Sprintf("%s/warehouse: drained, checkpoint %d of head %d", p, heads[p], heads[p])
			if r.code != 0 || !strings.Contains(r.stdout, want) {
				t.Fatalf("round %d: write --pipeline %s: %+v; want %q", round, p, r, want)
			}
		}
	}
}

// A destination whose drains keep ending without progress (here: another
// drain holds its lease and never moves the checkpoint) must not show as
// ok in status, whose lag would just sit there — once that has lasted well
// over a lease duration (a drain in one slow batch answers busy too).
func TestStatusShowsAStuckDestination(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	container := testenv.UniqueName("cli")
	settings := testenv.StorageSettings(t)
	st, err := azstore.Open(ctx, settings, container, azstore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	appendN(t, st, "orders", 30)
	env := map[string]string{"AzureWebJobsStorage": settings.ConnectionString}
	cfg := writeConfig(t, container)

	lease, err := st.AcquireLease(ctx, "orders/lock/warehouse", 60*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	for range 4 {
		if r := runCLI(t, env, "--config", cfg, "write"); r.code != 0 || !strings.Contains(r.stdout, "orders/warehouse: busy") {
			t.Fatalf("write while the lease is held: %+v", r)
		}
	}
	statusLine := func() (string, result) {
		r := runCLI(t, env, "--config", cfg, "status")
		t.Log("\n" + r.stdout)
		var line string
		for _, l := range strings.Split(r.stdout, "\n") {
			if strings.Contains(l, "warehouse") {
				line = l
			}
		}
		return line, r
	}
	if line, r := statusLine(); r.code != 0 || !strings.HasSuffix(strings.TrimSpace(line), " ok") {
		t.Fatalf("status line right after the busy answers = %q; want ok\n%s", line, r.stdout)
	}
	// Time passes with the checkpoint still: the run of busy answers began
	// longer ago than engine.StuckFor.
	var stalls map[string]any
	name := checkpoint.StallsName("orders", "warehouse")
	etag, err := st.ReadDoc(ctx, name, &stalls)
	if err != nil {
		t.Fatal(err)
	}
	stalls["since"] = time.Now().Add(-engine.StuckFor - time.Minute).UTC().Format(time.RFC3339Nano)
	if _, err := st.WriteDoc(ctx, name, stalls, etag); err != nil {
		t.Fatal(err)
	}
	line, r := statusLine()
	if r.code != 0 || strings.Contains(line, " ok") || !strings.Contains(line, "stuck") || !strings.Contains(line, "busy") {
		t.Fatalf("status line of the stuck destination = %q; want it stuck and why\n%s", line, r.stdout)
	}
	r = runCLI(t, env, "--config", cfg, "status", "--json")
	var status struct {
		Pipelines []struct {
			Destinations []map[string]any
		}
	}
	if err := json.Unmarshal([]byte(r.stdout), &status); err != nil || r.code != 0 {
		t.Fatalf("status --json: %v, %+v", err, r)
	}
	d := status.Pipelines[0].Destinations[0]
	if d["state"] != "stuck" || d["stalled"] == nil {
		t.Fatalf("status --json destination = %v; want state stuck with the stall", d)
	}

	// The lease goes; the next drain moves the checkpoint: ok again.
	if err := lease.Release(ctx); err != nil {
		t.Fatal(err)
	}
	if r := runCLI(t, env, "--config", cfg, "write"); r.code != 0 || !strings.Contains(r.stdout, "orders/warehouse: drained, checkpoint 30") {
		t.Fatalf("write after the lease was released: %+v", r)
	}
	r = runCLI(t, env, "--config", cfg, "status", "--json")
	status.Pipelines = nil
	if err := json.Unmarshal([]byte(r.stdout), &status); err != nil || r.code != 0 {
		t.Fatalf("status --json: %v, %+v", err, r)
	}
	if d := status.Pipelines[0].Destinations[0]; d["state"] != "ok" || d["stalled"] != nil {
		t.Fatalf("status --json destination after progress = %v; want ok", d)
	}
}
