package engine_test

import (
	"context"
	"database/sql"
	"errors"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/sluicehq/sluice/internal/changelog"
	"github.com/sluicehq/sluice/internal/checkpoint"
	"github.com/sluicehq/sluice/internal/config"
	"github.com/sluicehq/sluice/internal/engine"
	"github.com/sluicehq/sluice/internal/sink"
	"github.com/sluicehq/sluice/internal/testenv"
)

// sqlDSN is a fresh database of driver for one test.
func sqlDSN(t *testing.T, driver string) string {
	t.Helper()
	if driver == config.DriverPostgres {
		return testenv.Postgres(t)
	}
	return "file:" + t.TempDir() + "/shared.db"
}

// Destination names are unique only within a pipeline (Invariant 5: the
// _sluice_checkpoints row is keyed by pipeline and destination). Two
// pipelines whose destinations share a name and a database must not refuse
// each other's epochs, however unevenly they drain.
func TestPipelinesSharingADestinationNameBothReachTheirHeads(t *testing.T) {
	t.Parallel()
	for _, driver := range []string{config.DriverSQLite, config.DriverPostgres} {
		t.Run(driver, func(t *testing.T) {
			t.Parallel()
			ctx := context.Background()
			dsn := sqlDSN(t, driver)
			od := sqlDest("warehouse", driver, dsn)
			cd := sqlDest("warehouse", driver, dsn)
			cd.Table = "contracts"
			orders := newSQLFixtureNamed(t, "orders", 300, 100, od)
			contracts := newSQLFixtureNamed(t, "contracts", 200, 100, cd)

			// orders drains three times as often: its epoch runs ahead.
			drain := func(f *sqlFixture, round int) {
				t.Helper()
				res, err := f.drainer().Drain(ctx, f.req(0))
				if err != nil || res.Outcome != engine.OutcomeDrained || res.To != res.Head || res.Applied == 0 {
					t.Fatalf("round %d: drain of %s = %+v, %v; want drained to the head", round, f.p.Name, res, err)
				}
			}
			for round := range 3 {
				for range 3 {
					drain(orders, round)
					orders.append(t, 50, 100)
				}
				drain(contracts, round)
				contracts.append(t, 50, 100)
			}
			drain(orders, 3)
			drain(contracts, 3)
			orders.checkTableTB(t, driver, dsn)
			contracts.checkTableTB(t, driver, dsn)
		})
	}
}

// execSQL runs statements on a test database.
func execSQL(t *testing.T, driver, dsn string, stmts ...string) {
	t.Helper()
	ctx := context.Background()
	if driver == config.DriverPostgres {
		conn, err := pgx.Connect(ctx, dsn)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close(ctx)
		for _, q := range stmts {
			if _, err := conn.Exec(ctx, q); err != nil {
				t.Fatalf("%s: %v", q, err)
			}
		}
		return
	}
	db, err := sql.Open("sqlite", dsn)
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

// A database from before checkpoints were keyed by pipeline: its row for
// "warehouse" holds the higher epoch of the pipelines that shared the name.
// A pipeline whose own checkpoint has a lower epoch must still drain (its
// epoch is raised past the database's), and a drain paused before the
// upgrade, with an epoch below the legacy one, stays refused.
func TestDrainRaisesItsEpochPastALegacyCheckpointRow(t *testing.T) {
	t.Parallel()
	for _, driver := range []string{config.DriverSQLite, config.DriverPostgres} {
		t.Run(driver, func(t *testing.T) {
			t.Parallel()
			ctx := context.Background()
			dsn := sqlDSN(t, driver)
			execSQL(t, driver, dsn,
				`CREATE TABLE "_sluice_checkpoints" ("destination" text PRIMARY KEY, "epoch" bigint NOT NULL, "seq" bigint NOT NULL)`,
				`INSERT INTO "_sluice_checkpoints" ("destination", "epoch", "seq") VALUES ('warehouse', 40, 900)`)
			f := newSQLFixtureNamed(t, "orders", 500, 100, sqlDest("warehouse", driver, dsn))
			res, err := f.drainer().Drain(ctx, f.req(0))
			if err != nil || res.Outcome != engine.OutcomeDrained || res.To != 500 {
				t.Fatalf("drain = %+v, %v; want drained to 500", res, err)
			}
			if cp := f.checkpointOf(t, "warehouse"); cp.Epoch <= 40 {
				t.Fatalf("checkpoint epoch %d, want it raised past the legacy 40", cp.Epoch)
			}
			f.checkTableTB(t, driver, dsn)
			// A pre-upgrade drain of this pipeline, paused with epoch 39.
			sk, err := openSQL(ctx, f.p, &f.p.Destinations[0])
			if err != nil {
				t.Fatal(err)
			}
			defer sk.Close()
			b := sink.Batch{Pipeline: "orders", Destination: "warehouse", Epoch: 39,
				Records: []changelog.Record{{Seq: 1, Op: changelog.OpDelete, Key: "1"}}}
			if err := sk.Apply(ctx, b); !errors.Is(err, sink.ErrStaleEpoch) {
				t.Fatalf("Apply with the pre-upgrade epoch 39: %v; want refused as stale", err)
			}
		})
	}
}

// The checkpoint blob is recreated (a new storage account, a deleted
// container) while the table and its _sluice_checkpoints row survive: the
// new checkpoint's epochs start again at 1, below the row's. The drain
// raises its epoch past the database's instead of being refused forever.
func TestDrainAfterTheCheckpointBlobWasRecreated(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	dsn := sqlDSN(t, config.DriverSQLite)
	f := newSQLFixtureNamed(t, "orders", 300, 100, sqlDest("warehouse", config.DriverSQLite, dsn))
	for range 3 {
		if res, err := f.drainer().Drain(ctx, f.req(0)); err != nil || res.Outcome != engine.OutcomeDrained {
			t.Fatalf("drain = %+v, %v", res, err)
		}
		f.append(t, 100, 100)
	}
	if err := f.st.Delete(ctx, checkpoint.Name("orders", "warehouse"), ""); err != nil {
		t.Fatal(err)
	}
	res, err := f.drainer().Drain(ctx, f.req(0))
	if err != nil || res.Outcome != engine.OutcomeDrained || res.To != 600 {
		t.Fatalf("drain after the checkpoint was recreated = %+v, %v; want drained to 600", res, err)
	}
	f.checkTableTB(t, config.DriverSQLite, dsn)
}
