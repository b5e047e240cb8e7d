package sqlsink_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/sluicehq/sluice/internal/changelog"
	"github.com/sluicehq/sluice/internal/sink"
	"github.com/sluicehq/sluice/internal/sink/sqlsink"
)

// These tests are about _sluice_checkpoints (Invariant 5): its rows are
// keyed by pipeline and destination, tables of the old shape (keyed by
// destination alone) are migrated without losing the epoch guard.

// exec runs statements on the destination's database outside any sink.
func (d *dest) exec(t *testing.T, stmts ...string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	switch d.driver {
	case "postgres":
		conn, err := pgx.Connect(ctx, d.dsn)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close(ctx)
		for _, q := range stmts {
			if _, err := conn.Exec(ctx, q); err != nil {
				t.Fatalf("%s: %v", q, err)
			}
		}
	default:
		db, err := sql.Open("sqlite", d.dsn)
		if err != nil {
			t.Fatal(err)
		}
		defer db.Close()
		for _, q := range stmts {
			if _, err := db.ExecContext(ctx, q); err != nil {
				t.Fatalf("%s: %v", q, err)
			}
		}
	}
}

// execErr runs one statement and returns its error.
func (d *dest) execErr(t *testing.T, q string) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if d.driver == "postgres" {
		conn, err := pgx.Connect(ctx, d.dsn)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close(ctx)
		_, err = conn.Exec(ctx, q)
		return err
	}
	db, err := sql.Open("sqlite", d.dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	_, err = db.ExecContext(ctx, q)
	return err
}

// legacyCheckpoints creates _sluice_checkpoints as sluice created it before
// rows were keyed by pipeline, with rows destination → (epoch, seq).
func (d *dest) legacyCheckpoints(t *testing.T, rows map[string][2]int64) {
	t.Helper()
	stmts := []string{`CREATE TABLE "_sluice_checkpoints" ("destination" text PRIMARY KEY, "epoch" bigint NOT NULL, "seq" bigint NOT NULL)`}
	if d.driver == "sqlite" {
		stmts = []string{`CREATE TABLE "_sluice_checkpoints" ("destination" TEXT PRIMARY KEY NOT NULL, "epoch" INTEGER NOT NULL, "seq" INTEGER NOT NULL)`}
	}
	for dst, es := range rows {
		stmts = append(stmts, fmt.Sprintf(`INSERT INTO "_sluice_checkpoints" ("destination", "epoch", "seq") VALUES ('%s', %d, %d)`, dst, es[0], es[1]))
	}
	d.exec(t, stmts...)
}

// checkpointRows reads _sluice_checkpoints as "pipeline/destination" →
// (epoch, seq).
func (d *dest) checkpointRows(t *testing.T) map[string][2]int64 {
	t.Helper()
	out := map[string][2]int64{}
	for _, r := range d.rows(t, "_sluice_checkpoints") {
		p, _ := r["pipeline"].(string)
		out[p+"/"+r["destination"].(string)] = [2]int64{toInt(r["epoch"]), toInt(r["seq"])}
	}
	return out
}

func (d *dest) open(t *testing.T, pipeline, destination string) *sqlsink.Sink {
	t.Helper()
	c := d.config()
	c.Pipeline, c.Destination = pipeline, destination
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	s, err := sqlsink.Open(ctx, c)
	if err != nil {
		t.Fatalf("Open %s/%s: %v", pipeline, destination, err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func batch(pipeline, destination string, epoch, seq int64) sink.Batch {
	return sink.Batch{Pipeline: pipeline, Destination: destination, Epoch: epoch, Records: []changelog.Record{{
		Seq: seq, TS: time.Now().UTC(), Op: changelog.OpUpsert, Key: fmt.Sprint(seq),
		Fields: []byte(fmt.Sprintf(`{"Title":"t%d"}`, seq)),
	}}}
}

// mustApply applies b and fails the test unless the outcome is want (nil or
// sink.ErrStaleEpoch).
func mustApply(t *testing.T, s *sqlsink.Sink, b sink.Batch, want error) {
	t.Helper()
	err := s.Apply(context.Background(), b)
	if want == nil && err != nil || want != nil && !errors.Is(err, want) {
		t.Fatalf("Apply %s/%s epoch %d: %v; want %v", b.Pipeline, b.Destination, b.Epoch, err, want)
	}
}

var checkpointDrivers = []string{"sqlite", "postgres"}

func TestPipelinesSharingADestinationNameKeepTheirOwnEpochs(t *testing.T) {
	t.Parallel()
	for _, driver := range checkpointDrivers {
		t.Run(driver, func(t *testing.T) {
			t.Parallel()
			d := newDest(t, driver, "hard", "items")
			orders, contracts := d.open(t, "orders", "warehouse"), d.open(t, "contracts", "warehouse")
			mustApply(t, orders, batch("orders", "warehouse", 9, 1), nil)
			mustApply(t, contracts, batch("contracts", "warehouse", 2, 2), nil)
			mustApply(t, orders, batch("orders", "warehouse", 8, 3), sink.ErrStaleEpoch)
			mustApply(t, contracts, batch("contracts", "warehouse", 1, 4), sink.ErrStaleEpoch)
			got := d.checkpointRows(t)
			want := map[string][2]int64{"orders/warehouse": {9, 1}, "contracts/warehouse": {2, 2}}
			if fmt.Sprint(got) != fmt.Sprint(want) {
				t.Fatalf("_sluice_checkpoints = %v, want %v", got, want)
			}
		})
	}
}

// A table of the old shape is migrated when a sink opens: its rows stay as
// the pipeline "" rows, and each (pipeline, destination) starts from the
// legacy row of its destination, so a drain that started before the upgrade
// with an older epoch stays refused.
func TestLegacyCheckpointsAreMigratedWithTheirEpochs(t *testing.T) {
	t.Parallel()
	for _, driver := range checkpointDrivers {
		t.Run(driver, func(t *testing.T) {
			t.Parallel()
			d := newDest(t, driver, "hard", "items")
			d.legacyCheckpoints(t, map[string][2]int64{"warehouse": {50, 100}, "other": {7, 3}})

			orders := d.open(t, "orders", "warehouse")
			mustApply(t, orders, batch("orders", "warehouse", 10, 101), sink.ErrStaleEpoch)
			mustApply(t, orders, batch("orders", "warehouse", 49, 101), sink.ErrStaleEpoch)
			mustApply(t, orders, batch("orders", "warehouse", 50, 101), nil)
			contracts := d.open(t, "contracts", "warehouse")
			mustApply(t, contracts, batch("contracts", "warehouse", 3, 102), sink.ErrStaleEpoch)
			mustApply(t, contracts, batch("contracts", "warehouse", 51, 102), nil)

			got := d.checkpointRows(t)
			want := map[string][2]int64{"/warehouse": {50, 100}, "/other": {7, 3}, "orders/warehouse": {50, 101}, "contracts/warehouse": {51, 102}}
			if fmt.Sprint(got) != fmt.Sprint(want) {
				t.Fatalf("_sluice_checkpoints = %v, want %v", got, want)
			}
			// An old binary's checkpoint statement (keyed by destination
			// alone) now fails, so it can apply nothing: its transaction
			// rolls back.
			old := `INSERT INTO "_sluice_checkpoints" AS c ("destination", "epoch", "seq") VALUES ('warehouse', 1000, 1)
ON CONFLICT ("destination") DO UPDATE SET "epoch" = excluded."epoch", "seq" = excluded."seq" WHERE c."epoch" <= excluded."epoch" RETURNING 1`
			if err := d.execErr(t, old); err == nil {
				t.Fatal("the old checkpoint statement still works against the migrated table")
			}
			// Opening again changes nothing.
			again := d.open(t, "orders", "warehouse")
			if got := d.checkpointRows(t); fmt.Sprint(got) != fmt.Sprint(want) {
				t.Fatalf("after a second open _sluice_checkpoints = %v, want %v", got, want)
			}
			// The floor a drain must raise its epoch past: the pipeline's
			// row, or the legacy row of its destination, or nothing.
			ctx := context.Background()
			for _, tc := range []struct {
				p, d string
				want int64
			}{{"orders", "warehouse", 50}, {"contracts", "warehouse", 51}, {"unseen", "warehouse", 50}, {"orders", "other", 7}, {"orders", "nowhere", 0}} {
				if got, err := again.EpochFloor(ctx, tc.p, tc.d); err != nil || got != tc.want {
					t.Errorf("EpochFloor(%s, %s) = %d, %v; want %d", tc.p, tc.d, got, err, tc.want)
				}
			}
		})
	}
}

// Several sinks opening at once on a table of the old shape: one migrates,
// the others find the work done; none fails, and every one keeps the guard.
func TestConcurrentOpensMigrateLegacyCheckpoints(t *testing.T) {
	t.Parallel()
	for _, driver := range checkpointDrivers {
		t.Run(driver, func(t *testing.T) {
			t.Parallel()
			d := newDest(t, driver, "hard", "items")
			d.legacyCheckpoints(t, map[string][2]int64{"warehouse": {20, 5}})
			const n = 4
			var logs lockedLog
			sinks := make([]*sqlsink.Sink, n)
			errs := make([]error, n)
			var wg sync.WaitGroup
			start := make(chan struct{})
			for i := range n {
				wg.Add(1)
				go func() {
					defer wg.Done()
					<-start
					c := d.config()
					c.Pipeline, c.Destination = fmt.Sprintf("p%d", i), "warehouse"
					c.Logger = slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
					ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
					defer cancel()
					sinks[i], errs[i] = sqlsink.Open(ctx, c)
				}()
			}
			close(start)
			wg.Wait()
			for i := range n {
				if errs[i] != nil {
					t.Fatalf("concurrent Open %d: %v", i, errs[i])
				}
				defer sinks[i].Close()
			}
			t.Logf("logs of the concurrent opens:\n%s", logs.String())
			if m := strings.Count(logs.String(), "msg=\"migrated _sluice_checkpoints"); m != 1 {
				t.Fatalf("%d sinks say they migrated the table, want exactly 1", m)
			}
			for i, s := range sinks {
				p := fmt.Sprintf("p%d", i)
				mustApply(t, s, batch(p, "warehouse", 19, int64(10+i)), sink.ErrStaleEpoch)
				mustApply(t, s, batch(p, "warehouse", 21, int64(10+i)), nil)
			}
			got := d.checkpointRows(t)
			keys := make([]string, 0, len(got))
			for k := range got {
				keys = append(keys, k)
			}
			sort.Strings(keys)
			if fmt.Sprint(keys) != "[/warehouse p0/warehouse p1/warehouse p2/warehouse p3/warehouse]" || got["/warehouse"] != [2]int64{20, 5} {
				t.Fatalf("_sluice_checkpoints = %v", got)
			}
		})
	}
}

type lockedLog struct {
	mu  sync.Mutex
	buf strings.Builder
}

func (l *lockedLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *lockedLog) String() string { l.mu.Lock(); defer l.mu.Unlock(); return l.buf.String() }

// A user's view on a legacy _sluice_checkpoints (and, on PostgreSQL, a grant
// on it) survives the migration: the table is changed in place, not
// replaced, so the view still reads it — migrated rows included — and the
// migration is not refused because something depends on the table.
func TestLegacyCheckpointsUnderAViewAreMigrated(t *testing.T) {
	t.Parallel()
	for _, driver := range checkpointDrivers {
		t.Run(driver, func(t *testing.T) {
			t.Parallel()
			d := newDest(t, driver, "hard", "items")
			d.legacyCheckpoints(t, map[string][2]int64{"warehouse": {50, 100}})
			d.exec(t, `CREATE VIEW "checkpoint_report" AS SELECT "destination", "seq" FROM "_sluice_checkpoints"`)
			if driver == "postgres" {
				d.exec(t, `GRANT SELECT ON "_sluice_checkpoints" TO PUBLIC`)
			}

			orders := d.open(t, "orders", "warehouse")
			mustApply(t, orders, batch("orders", "warehouse", 49, 101), sink.ErrStaleEpoch)
			mustApply(t, orders, batch("orders", "warehouse", 50, 101), nil)
			want := map[string][2]int64{"/warehouse": {50, 100}, "orders/warehouse": {50, 101}}
			if got := d.checkpointRows(t); fmt.Sprint(got) != fmt.Sprint(want) {
				t.Fatalf("_sluice_checkpoints = %v, want %v", got, want)
			}
			var seqs []int64
			for _, r := range d.rows(t, "checkpoint_report") {
				seqs = append(seqs, toInt(r["seq"]))
			}
			sort.Slice(seqs, func(i, j int) bool { return seqs[i] < seqs[j] })
			if fmt.Sprint(seqs) != "[100 101]" {
				t.Fatalf("the view reads seqs %v, want [100 101] (the migrated table)", seqs)
			}
			if driver == "postgres" {
				var acl string
				ctx := context.Background()
				conn, err := pgx.Connect(ctx, d.dsn)
				if err != nil {
					t.Fatal(err)
				}
				defer conn.Close(ctx)
				if err := conn.QueryRow(ctx, `SELECT COALESCE(relacl::text, '') FROM pg_class WHERE oid = '"_sluice_checkpoints"'::regclass`).Scan(&acl); err != nil {
					t.Fatal(err)
				}
				if !strings.Contains(acl, "=r/") {
					t.Fatalf("grants on _sluice_checkpoints after the migration = %q; want SELECT to PUBLIC kept", acl)
				}
			}
			// Opening again changes nothing.
			d.open(t, "orders", "warehouse")
			if got := d.checkpointRows(t); fmt.Sprint(got) != fmt.Sprint(want) {
				t.Fatalf("after a second open _sluice_checkpoints = %v, want %v", got, want)
			}
		})
	}
}
