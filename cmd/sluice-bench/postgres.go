package main

import (
	"bufio"
	"context"
	"encoding/csv"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
)

const (
	pgBatchSize  = 5000
	floorRecords = 20_000
	// benchTS is the _sluice_ts of the baselines' rows.
	benchTS = "2026-11-25T08:00:01.123Z"
)

// drainPostgres drains the log (already in Azurite) into a fresh table in a
// child process, checks the table against the folded log, and measures the
// two baselines: psql \copy of the same final rows into an UNLOGGED table
// (the ceiling) and a naive per-record INSERT ... ON CONFLICT (the floor).
func (b *bench) drainPostgres(ctx context.Context, name, table string) (Workload, error) {
	g := b.log
	w := Workload{Records: g.head, Baseline: "psql-copy-unlogged"}
	if name == wDrainPostgres {
		w.Target = ">= 100k records/s, ratio >= 0.2, peak RSS < 100 MB"
	}
	b.progressf("draining %d records into PostgreSQL table %s (sqlsink, batch %d) in a child process", g.head, table, pgBatchSize)
	res, rss, err := b.startChild(ctx, name, childSpec{Pipeline: benchPipeline, DestName: table, DestType: "sql",
		Driver: "postgres", DSN: b.dsn, Table: table, BatchSize: pgBatchSize})
	w.PeakRSSBytes = rss
	if err != nil {
		return w, err
	}
	w.Seconds = round(res.Seconds, 2)
	w.PeakDetail = res.Peak.String()
	w.RecordsPerSec = rate(res.Records, res.Seconds)
	b.progressf("  %s records/s, peak RSS %s", human(w.RecordsPerSec), mib(rss))

	w.Check = "table equals folded log (count, id -> _sluice_seq)"
	ok, detail, err := b.checkPostgres(ctx, table)
	if err != nil {
		return w, err
	}
	w.Check += ": " + detail
	w.CheckOK = &ok
	b.progressf("  check: %s", detail)

	if name == wDrainPostgres {
		rows, secs, err := b.copyCeiling(ctx)
		if err != nil {
			return w, fmt.Errorf("psql \\copy ceiling: %w", err)
		}
		w.BaselineRecords = rows
		w.BaselinePerSec = rate(rows, secs)
		w.Ratio = ratio(w.RecordsPerSec, w.BaselinePerSec)
		b.progressf("  ceiling: \\copy %d rows into an UNLOGGED table: %s rows/s", rows, human(w.BaselinePerSec))

		n, secs, err := b.naiveFloor(ctx, min(floorRecords, g.head))
		if err != nil {
			return w, fmt.Errorf("naive floor: %w", err)
		}
		w.Floor = "naive-insert-on-conflict"
		w.FloorPerSec = rate(n, secs)
		w.RatioToFloor = ratio(w.RecordsPerSec, w.FloorPerSec)
		b.progressf("  floor: per-record INSERT ... ON CONFLICT over %d records: %s records/s", n, human(w.FloorPerSec))
		w.TargetMet = ptr(w.RecordsPerSec >= 100_000 && w.Ratio >= 0.2 && rss < 100<<20 && ok)
	} else {
		w.Baseline = "drain-postgres"
		w.Note = "memory flatness: the same keys, 5x the log; the baseline is the 1x drain-postgres above (rate ratio; RSS growth is the target)"
	}
	// Free the server's memory and disk for what comes next.
	if err := b.pgExec(ctx, `DROP TABLE IF EXISTS "`+table+`"`); err != nil {
		return w, err
	}
	return w, nil
}

// checkPostgres compares the table with the folded log: same live keys, each
// with the seq of its last upsert.
func (b *bench) checkPostgres(ctx context.Context, table string) (bool, string, error) {
	conn, err := pgx.Connect(ctx, b.dsn)
	if err != nil {
		return false, "", err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	rows, err := conn.Query(ctx, `SELECT id, _sluice_seq FROM "`+table+`"`)
	if err != nil {
		return false, "", err
	}
	defer rows.Close()
	return b.checkRows(rows)
}

// rowScanner is what pgx.Rows and *sql.Rows have in common.
type rowScanner interface {
	Next() bool
	Scan(dest ...any) error
	Err() error
}

// checkRows compares (id, _sluice_seq) rows with the folded log.
func (b *bench) checkRows(rows rowScanner) (bool, string, error) {
	var id string
	var seq int64
	n, bad := 0, 0
	first := ""
	for rows.Next() {
		if err := rows.Scan(&id, &seq); err != nil {
			return false, "", err
		}
		n++
		if want, ok := b.log.fold[id]; !ok || want != seq {
			if bad == 0 {
				first = fmt.Sprintf("row %s has _sluice_seq %d, the log %d (0: deleted)", id, seq, want)
			}
			bad++
		}
	}
	if err := rows.Err(); err != nil {
		return false, "", err
	}
	return checkOutcome(n, bad, len(b.log.fold), first)
}

// checkOutcome words a table check.
func checkOutcome(n, bad, want int, first string) (bool, string, error) {
	if n == want && bad == 0 {
		return true, fmt.Sprintf("ok, %d rows", n), nil
	}
	return false, fmt.Sprintf("FAILED: %d rows for %d live keys, %d wrong; first: %s", n, want, bad, first), nil
}

// finalRows returns the live keys of the folded log in key order.
func (b *bench) finalRows() []string {
	keys := make([]string, 0, len(b.log.fold))
	for k := range b.log.fold {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

// copyCeiling writes the folded log's final rows as CSV and loads them with
// psql \copy into an UNLOGGED table without indexes (the physical ceiling:
// no WAL, no index, one COPY). It reports the best of three loads, timed
// around the psql process.
func (b *bench) copyCeiling(ctx context.Context) (int64, float64, error) {
	path := filepath.Join(b.tmp, "rows.csv")
	f, err := os.Create(path)
	if err != nil {
		return 0, 0, err
	}
	bw := bufio.NewWriterSize(f, 1<<20)
	cw := csv.NewWriter(bw)
	keys := b.finalRows()
	for _, k := range keys {
		seq := b.log.fold[k]
		r := genFields(seq)
		if err := cw.Write([]string{k, r.Title, r.Status, strconv.FormatFloat(r.Amount, 'f', -1, 64), r.Customer, r.OrderDate, r.Region,
			strconv.FormatInt(r.N, 10), r.Tags, strconv.FormatInt(seq, 10), benchTS}); err != nil {
			return 0, 0, err
		}
	}
	cw.Flush()
	if err := cw.Error(); err != nil {
		return 0, 0, err
	}
	if err := bw.Flush(); err != nil {
		return 0, 0, err
	}
	if err := f.Close(); err != nil {
		return 0, 0, err
	}
	if err := b.pgExec(ctx, `CREATE UNLOGGED TABLE copy_ceiling (`+columnDefs(false)+`)`); err != nil {
		return 0, 0, err
	}
	best := 0.0
	for range 3 {
		if err := b.pgExec(ctx, `TRUNCATE copy_ceiling`); err != nil {
			return 0, 0, err
		}
		start := time.Now()
		cmd := exec.CommandContext(ctx, b.psql, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", b.dsn,
			"-c", `\copy copy_ceiling (`+columnList()+`) FROM '`+path+`' WITH (FORMAT csv)`)
		if out, err := cmd.CombinedOutput(); err != nil {
			return 0, 0, fmt.Errorf("%s: %w: %s", b.psql, err, strings.TrimSpace(string(out)))
		}
		if secs := time.Since(start).Seconds(); best == 0 || secs < best {
			best = secs
		}
	}
	var n int64
	if err := b.pgQueryRow(ctx, `SELECT count(*) FROM copy_ceiling`, &n); err != nil {
		return 0, 0, err
	}
	if n != int64(len(keys)) {
		return 0, 0, fmt.Errorf("copy_ceiling has %d rows, want %d", n, len(keys))
	}
	return n, best, b.pgExec(ctx, `DROP TABLE copy_ceiling`)
}

// naiveFloor applies the first n records one statement at a time, each its
// own transaction: INSERT ... ON CONFLICT (id) DO UPDATE for upserts, DELETE
// for deletes — the per-record upsert most hand-written consumers start with.
func (b *bench) naiveFloor(ctx context.Context, n int64) (int64, float64, error) {
	conn, err := pgx.Connect(ctx, b.dsn)
	if err != nil {
		return 0, 0, err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	if _, err := conn.Exec(ctx, `CREATE TABLE naive_floor (`+columnDefs(true)+`)`); err != nil {
		return 0, 0, err
	}
	var set []string
	ph := []string{"$1"}
	for i, c := range genColumns {
		set = append(set, fmt.Sprintf(`%q = EXCLUDED.%q`, c.name, c.name))
		if c.pgType == "jsonb" {
			ph = append(ph, fmt.Sprintf("($%d::text)::jsonb", i+2))
		} else {
			ph = append(ph, fmt.Sprintf("$%d", i+2))
		}
	}
	ph = append(ph, fmt.Sprintf("$%d", len(genColumns)+2), fmt.Sprintf("$%d", len(genColumns)+3))
	upsert := `INSERT INTO naive_floor (` + columnList() + `) VALUES (` + strings.Join(ph, ",") + `) ON CONFLICT (id) DO UPDATE SET ` +
		strings.Join(set, ", ") + `, _sluice_seq = EXCLUDED._sluice_seq, _sluice_ts = EXCLUDED._sluice_ts`
	ts, _ := time.Parse(time.RFC3339Nano, benchTS)
	start := time.Now()
	for seq := int64(1); seq <= n; seq++ {
		key := genKey(seq, b.log.keys)
		if genDelete(seq) {
			_, err = conn.Exec(ctx, `DELETE FROM naive_floor WHERE id = $1`, key)
		} else {
			r := genFields(seq)
			_, err = conn.Exec(ctx, upsert, key, r.Title, r.Status, r.Amount, r.Customer, r.OrderDate, r.Region, float64(r.N), r.Tags, seq, ts)
		}
		if err != nil {
			return 0, 0, fmt.Errorf("record %d: %w", seq, err)
		}
	}
	secs := time.Since(start).Seconds()
	_, err = conn.Exec(ctx, `DROP TABLE naive_floor`)
	return n, secs, err
}

// columnDefs is the column list of a table shaped like sluice's, with or
// without its primary key.
func columnDefs(pk bool) string {
	var s strings.Builder
	s.WriteString("id text")
	if pk {
		s.WriteString(" PRIMARY KEY")
	}
	for _, c := range genColumns {
		fmt.Fprintf(&s, ", %q %s", c.name, c.pgType)
	}
	s.WriteString(", _sluice_seq bigint NOT NULL, _sluice_ts timestamptz NOT NULL")
	return s.String()
}

// columnList names the columns in CSV and parameter order.
func columnList() string {
	names := []string{"id"}
	for _, c := range genColumns {
		names = append(names, strconv.Quote(c.name))
	}
	return strings.Join(append(names, "_sluice_seq", "_sluice_ts"), ",")
}

func (b *bench) pgExec(ctx context.Context, sql string) error {
	conn, err := pgx.Connect(ctx, b.dsn)
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	if _, err := conn.Exec(ctx, sql); err != nil {
		return fmt.Errorf("%s: %w", sql, err)
	}
	return nil
}

func (b *bench) pgQueryRow(ctx context.Context, sql string, dest ...any) error {
	conn, err := pgx.Connect(ctx, b.dsn)
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	return conn.QueryRow(ctx, sql).Scan(dest...)
}
