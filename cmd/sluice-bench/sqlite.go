package main

import (
	"context"
	"database/sql"
	"fmt"
	"path/filepath"
	"time"

	_ "modernc.org/sqlite" // the driver sqlsink uses
)

const sqliteBatchSize = 5000

// drainSQLite drains the log into a fresh SQLite file in a child process,
// checks it against the folded log, and measures the baseline: the same
// final rows inserted with one prepared statement in one transaction into a
// table without indexes, with the same driver.
func (b *bench) drainSQLite(ctx context.Context) (Workload, error) {
	w := Workload{Records: b.log.head, Baseline: "sqlite-bulk-insert-1tx"}
	dsn := "file:" + filepath.Join(b.tmp, "drain.db")
	b.progressf("draining %d records into SQLite (sqlsink, batch %d) in a child process", b.log.head, sqliteBatchSize)
	res, rss, err := b.startChild(ctx, wDrainSQLite, childSpec{Pipeline: benchPipeline, DestName: "lite", DestType: "sql",
		Driver: "sqlite", DSN: dsn, Table: "orders", BatchSize: sqliteBatchSize})
	w.PeakRSSBytes = rss
	if err != nil {
		return w, err
	}
	w.Seconds = round(res.Seconds, 2)
	w.PeakDetail = res.Peak.String()
	w.RecordsPerSec = rate(res.Records, res.Seconds)
	b.progressf("  %s records/s, peak RSS %s", human(w.RecordsPerSec), mib(rss))

	w.Check = "table equals folded log (count, id -> _sluice_seq)"
	ok, detail, err := b.checkSQLite(ctx, dsn)
	if err != nil {
		return w, err
	}
	w.Check += ": " + detail
	w.CheckOK = &ok
	b.progressf("  check: %s", detail)

	n, secs, err := b.sqliteBulk(ctx, "file:"+filepath.Join(b.tmp, "bulk.db"))
	if err != nil {
		return w, fmt.Errorf("sqlite baseline: %w", err)
	}
	w.BaselineRecords = n
	w.BaselinePerSec = rate(n, secs)
	w.Ratio = ratio(w.RecordsPerSec, w.BaselinePerSec)
	b.progressf("  baseline: %d rows in one transaction: %s rows/s", n, human(w.BaselinePerSec))
	return w, nil
}

func (b *bench) checkSQLite(ctx context.Context, dsn string) (bool, string, error) {
	db, err := sql.Open("sqlite", dsn)
	if err != nil {
		return false, "", err
	}
	defer db.Close()
	rows, err := db.QueryContext(ctx, `SELECT id, _sluice_seq FROM orders`)
	if err != nil {
		return false, "", err
	}
	defer rows.Close()
	return b.checkRows(rows)
}

// sqliteBulk inserts the folded log's final rows into a fresh table.
func (b *bench) sqliteBulk(ctx context.Context, dsn string) (int64, float64, error) {
	db, err := sql.Open("sqlite", dsn)
	if err != nil {
		return 0, 0, err
	}
	defer db.Close()
	db.SetMaxOpenConns(1)
	if _, err := db.ExecContext(ctx, `CREATE TABLE bulk (id text, "Title" text, "Status" text, "Amount" real, "Customer" text, "OrderDate" text,
		"Region" text, "N" real, "Tags" text, _sluice_seq integer NOT NULL, _sluice_ts text NOT NULL)`); err != nil {
		return 0, 0, err
	}
	keys := b.finalRows()
	start := time.Now()
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return 0, 0, err
	}
	defer tx.Rollback()
	stmt, err := tx.PrepareContext(ctx, `INSERT INTO bulk VALUES (?,?,?,?,?,?,?,?,?,?,?)`)
	if err != nil {
		return 0, 0, err
	}
	for _, k := range keys {
		seq := b.log.fold[k]
		r := genFields(seq)
		if _, err := stmt.ExecContext(ctx, k, r.Title, r.Status, r.Amount, r.Customer, r.OrderDate, r.Region, float64(r.N), r.Tags, seq, benchTS); err != nil {
			return 0, 0, err
		}
	}
	if err := tx.Commit(); err != nil {
		return 0, 0, err
	}
	return int64(len(keys)), time.Since(start).Seconds(), nil
}
