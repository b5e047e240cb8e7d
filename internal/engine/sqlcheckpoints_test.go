package engine_test

import (
	"context"
	"testing"

	"github.com/sluicehq/sluice/internal/config"
	"github.com/sluicehq/sluice/internal/engine"
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
