package main

import (
	"database/sql"
	"fmt"
	"math/rand/v2"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sluicehq/sluice/internal/graphsim"
	"github.com/sluicehq/sluice/internal/testenv"
)

// TestReadThenWriteEndToEnd: sluice read pulls a simulated list into the
// log, sluice write drains it into SQLite, and the table equals the list.
func TestReadThenWriteEndToEnd(t *testing.T) {
	t.Parallel()
	sim := graphsim.New(graphsim.Options{Token: "dev-token"})
	list := sim.AddList("contoso.sharepoint.com", "/sites/ops", "Orders")
	list.Populate(500, 1)
	srv := httptest.NewServer(sim)
	defer srv.Close()

	dir := t.TempDir()
	db := filepath.Join(dir, "orders.db")
	cfg := filepath.Join(dir, "sluice.yaml")
	os.WriteFile(cfg, []byte(fmt.Sprintf(`storage:
  container: %s
pipelines:
  - name: orders
    source:
      type: sharepoint
      site: contoso.sharepoint.com:/sites/ops
      list: Orders
      graph_url: %s/v1.0
      auth: {type: bearer, token: "${GRAPH_TOKEN}"}
    destinations:
      - name: lite
        type: sql
        driver: sqlite
        dsn: file:%s
        table: orders
`, testenv.UniqueName("rd"), srv.URL, db)), 0o644)
	env := map[string]string{"AzureWebJobsStorage": testenv.StorageSettings(t).ConnectionString, "GRAPH_TOKEN": "dev-token"}

	check := func(when string) {
		t.Helper()
		conn, err := sql.Open("sqlite", db)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		var n int
		if err := conn.QueryRow(`SELECT count(*) FROM orders`).Scan(&n); err != nil {
			t.Fatal(err)
		}
		snap := list.Snapshot()
		if n != len(snap) {
			t.Fatalf("%s: %d rows, the list has %d items", when, n, len(snap))
		}
		for id, fields := range snap {
			var title sql.NullString
			if err := conn.QueryRow(`SELECT "Title" FROM orders WHERE id = ?`, id).Scan(&title); err != nil {
				t.Fatalf("%s: item %s: %v", when, id, err)
			}
			if want, _ := fields["Title"].(string); title.String != want {
				t.Fatalf("%s: item %s Title %q, want %q", when, id, title.String, want)
			}
		}
	}
	for round := range 3 {
		r := runCLI(t, env, "--config", cfg, "read")
		if r.code != 0 || !strings.Contains(r.stdout, "orders: read") || !strings.Contains(r.stdout, "1 destinations woken") {
			t.Fatalf("read: %+v", r)
		}
		if strings.Contains(r.stdout, "dev-token") || strings.Contains(r.stderr, "dev-token") {
			t.Fatal("the token was printed")
		}
		r = runCLI(t, env, "--config", cfg, "write")
		if r.code != 0 {
			t.Fatalf("write: %+v", r)
		}
		check(fmt.Sprintf("round %d", round))
		list.Churn(rand.New(rand.NewPCG(uint64(round), 9)), 10, 20, 10)
	}
}
