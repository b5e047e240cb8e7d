package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sluicehq/sluice/internal/azstore"
	"github.com/sluicehq/sluice/internal/changelog"
	"github.com/sluicehq/sluice/internal/testenv"
)

type result struct {
	code           int
	stdout, stderr string
}

func runCLI(t *testing.T, env map[string]string, args ...string) result {
	t.Helper()
	var out, errb bytes.Buffer
	code := run(context.Background(), args, &out, &errb, func(k string) (string, bool) { v, ok := env[k]; return v, ok })
	return result{code, out.String(), errb.String()}
}

func writeConfig(t *testing.T, container string) string {
	t.Helper()
	dir := t.TempDir()
	path := filepath.Join(dir, "sluice.yaml")
	cfg := fmt.Sprintf(`storage:
  container: %s
pipelines:
  - name: orders
    source:
      type: sharepoint
      site: contoso.sharepoint.com:/sites/ops
      list: Orders
    destinations:
      - name: warehouse
        type: sql
        driver: sqlite
        dsn: file:%s
        table: orders
`, container, filepath.Join(dir, "orders.db"))
	if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestHelpAndUsageErrors(t *testing.T) {
	t.Parallel()
	tests := []struct {
		args      []string
		code      int
		stdoutHas string
		stderrHas string
	}{
		{[]string{"--help"}, 0, "Commands:", ""},
		{[]string{"help", "replay"}, 0, "--from-seq", ""},
		{[]string{"replay", "--help"}, 0, "never forward", ""},
		{[]string{}, 2, "", "Usage"},
		{[]string{"frobnicate"}, 2, "", `unknown command "frobnicate"`},
		{[]string{"log", "--bogus"}, 2, "", "-bogus"},
		{[]string{"log"}, 2, "", "--pipeline is required"},
		{[]string{"log", "--pipeline", "orders", "--from", "yesterday"}, 2, "", "not an RFC 3339 time"},
		{[]string{"log", "--pipeline", "orders", "--from", "2026-01-01T00:00:00Z", "--from-seq", "3"}, 2, "", "not both"},
		{[]string{"validate", "extra"}, 2, "", `unexpected argument "extra"`},
	}
	for _, tc := range tests {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			t.Parallel()
			r := runCLI(t, nil, tc.args...)
			if r.code != tc.code || !strings.Contains(r.stdout, tc.stdoutHas) || !strings.Contains(r.stderr, tc.stderrHas) {
				t.Fatalf("exit %d, stdout %q, stderr %q; want exit %d, stdout with %q, stderr with %q",
					r.code, r.stdout, r.stderr, tc.code, tc.stdoutHas, tc.stderrHas)
			}
			if r.code != 0 && strings.Count(strings.TrimSpace(r.stderr), "\n") > 0 && tc.args != nil && len(tc.args) > 0 {
				t.Fatalf("stderr should be one line, got %q", r.stderr)
			}
		})
	}
}

func TestValidate(t *testing.T) {
	t.Parallel()
	good := writeConfig(t, "sluice")
	r := runCLI(t, nil, "--config", good, "validate")
	if r.code != 0 || !strings.Contains(r.stdout, "OK") || !strings.Contains(r.stdout, "warehouse (sql)") {
		t.Fatalf("validate good: %+v", r)
	}
	bad := filepath.Join(t.TempDir(), "bad.yaml")
	os.WriteFile(bad, []byte("pipelines:\n  - name: Orders!\n    sorce: {}\n"), 0o644)
	r = runCLI(t, map[string]string{"SLUICE_CONFIG": bad}, "validate")
	if r.code != 1 || !strings.Contains(r.stderr, "bad.yaml:") || !strings.Contains(r.stderr, "sorce") {
		t.Fatalf("validate bad: %+v", r)
	}
}

func TestLogAndStatusReadTheChangeLog(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	container := testenv.UniqueName("cli")
	settings := testenv.StorageSettings(t)
	st, err := azstore.Open(ctx, settings, container, azstore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	start := time.Date(2026, 11, 25, 8, 0, 0, 0, time.UTC)
	now := start
	l := changelog.New(st, "orders", changelog.Options{Now: func() time.Time { return now }})
	s, _ := l.LoadState(ctx)
	a, err := l.NewAppender(ctx, s)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 30 {
		now = now.Add(time.Minute)
		r := &changelog.Record{Op: changelog.OpUpsert, Key: fmt.Sprint(i % 3), Fields: json.RawMessage(fmt.Sprintf(`{"N":%d}`, i))}
		if i == 29 {
			r = &changelog.Record{Op: changelog.OpDelete, Key: "2"}
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

	lines := func(r result) []changelog.Record {
		t.Helper()
		if r.code != 0 {
			t.Fatalf("exit %d: %s", r.code, r.stderr)
		}
		var out []changelog.Record
		sc := bufio.NewScanner(strings.NewReader(r.stdout))
		for sc.Scan() {
			var rec changelog.Record
			if err := json.Unmarshal(sc.Bytes(), &rec); err != nil {
				t.Fatalf("line %q is not a change record: %v", sc.Text(), err)
			}
			out = append(out, rec)
		}
		return out
	}
	if got := lines(runCLI(t, env, "--config", cfg, "log", "--pipeline", "orders")); len(got) != 30 || got[29].Op != changelog.OpDelete {
		t.Fatalf("log: %d records", len(got))
	}
	if got := lines(runCLI(t, env, "--config", cfg, "log", "--pipeline", "orders", "--from-seq", "25")); len(got) != 6 || got[0].Seq != 25 {
		t.Fatalf("log --from-seq 25: %+v", got)
	}
	if got := lines(runCLI(t, env, "--config", cfg, "log", "--pipeline", "orders", "--from", start.Add(10*time.Minute).Format(time.RFC3339))); len(got) != 21 || got[0].Seq != 10 {
		t.Fatalf("log --from: %d records, first %+v", len(got), got)
	}
	if got := lines(runCLI(t, env, "--config", cfg, "log", "--pipeline", "orders", "--key", "1")); len(got) != 10 {
		t.Fatalf("log --key 1: %d records", len(got))
	}
	r := runCLI(t, env, "--config", cfg, "log", "--pipeline", "nope")
	if r.code != 1 || !strings.Contains(r.stderr, "nope") || !strings.Contains(r.stderr, "orders") {
		t.Fatalf("log of unknown pipeline: %+v", r)
	}

	r = runCLI(t, env, "--config", cfg, "status", "--json")
	if r.code != 0 {
		t.Fatalf("status: %+v", r)
	}
	var status struct {
		Pipelines []struct {
			Name         string
			Head         struct{ Seq int64 }
			Destinations []struct {
				Name       string
				LagRecords int64
				LagSeconds float64
			}
		}
	}
	if err := json.Unmarshal([]byte(r.stdout), &status); err != nil {
		t.Fatalf("status JSON: %v\n%s", err, r.stdout)
	}
	p := status.Pipelines[0]
	if p.Head.Seq != 30 || p.Destinations[0].LagRecords != 30 || p.Destinations[0].LagSeconds != 29*60 {
		t.Fatalf("status = %+v", status)
	}
	if r := runCLI(t, env, "--config", cfg, "status"); r.code != 0 || !strings.Contains(r.stdout, "warehouse") {
		t.Fatalf("status table: %+v", r)
	}
	// Missing storage settings: a clear error naming the forms.
	if r := runCLI(t, nil, "--config", cfg, "status"); r.code != 1 || !strings.Contains(r.stderr, "AzureWebJobsStorage") {
		t.Fatalf("status without storage: %+v", r)
	}
}
