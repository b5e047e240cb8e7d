package sqlsink

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// postgres runs on one native pgx connection (a sink applies one batch at a
// time), redialled after a failure, and COPYs the staging table: COPY is
// several times faster than multi-row INSERTs.
type postgres struct{}

// pgMaxIdent is NAMEDATALEN-1: PostgreSQL silently truncates longer names,
// which would make two long fields share a column.
const pgMaxIdent = 63

const pgStage = `"_sluice_stage"`

func (postgres) open(dsn string) (backend, error) {
	cfg, err := pgx.ParseConfig(dsn)
	if err != nil {
		return nil, err
	}
	// Plain extended protocol, no server-side statement cache: the staging
	// table is recreated in every transaction and the merge text changes as
	// columns are added, so cached plans would buy little and risk staleness.
	cfg.DefaultQueryExecMode = pgx.QueryExecModeExec
	return &pgBackend{cfg: cfg}, nil
}

// pgBackend holds one connection, dialled on first use and again after it
// broke (a cancelled context closes a pgx connection mid-query).
type pgBackend struct {
	cfg  *pgx.ConnConfig
	conn *pgx.Conn
}

func (b *pgBackend) get(ctx context.Context) (*pgx.Conn, error) {
	if b.conn != nil && !b.conn.IsClosed() {
		return b.conn, nil
	}
	if b.conn != nil {
		b.conn.Close(context.Background())
		b.conn = nil
	}
	c, err := pgx.ConnectConfig(ctx, b.cfg)
	if err != nil {
		return nil, err
	}
	b.conn = c
	return c, nil
}

func (b *pgBackend) exec(ctx context.Context, q string) error {
	c, err := b.get(ctx)
	if err != nil {
		return err
	}
	_, err = c.Exec(ctx, q)
	return err
}

func (b *pgBackend) columns(ctx context.Context, q, table string) ([][2]string, error) {
	c, err := b.get(ctx)
	if err != nil {
		return nil, err
	}
	rows, err := c.Query(ctx, q, table)
	if err != nil {
		return nil, err
	}
	var out [][2]string
	for rows.Next() {
		var nt [2]string
		if err := rows.Scan(&nt[0], &nt[1]); err != nil {
			rows.Close()
			return nil, err
		}
		out = append(out, nt)
	}
	rows.Close()
	return out, rows.Err()
}

func (b *pgBackend) close() error {
	if b.conn == nil {
		return nil
	}
	err := b.conn.Close(context.Background())
	b.conn = nil
	return err
}

func (postgres) quote(name string) string {
	return `"` + strings.ReplaceAll(name, `"`, `""`) + `"`
}
func (postgres) colName(field string) string { return shorten(field, pgMaxIdent, false) }
func (p postgres) tableName(name string) string {
	return p.quote(p.tableNameRaw(name))
}
func (postgres) tableNameRaw(name string) string { return shorten(name, pgMaxIdent, false) }
func (postgres) fold(name string) string         { return name }
func (postgres) checkKey(string) string          { return "" }

func (postgres) typeOf(k kind) string {
	switch k {
	case kindNumber:
		return "double precision"
	case kindBool:
		return "boolean"
	case kindJSON:
		return "jsonb"
	}
	return "text"
}

func (postgres) kindOf(t string) kind {
	switch {
	case t == "boolean":
		return kindBool
	case t == "jsonb" || t == "json":
		return kindJSON
	case t == "double precision" || t == "real" || t == "bigint" || t == "integer" ||
		t == "smallint" || strings.HasPrefix(t, "numeric"):
		return kindNumber
	}
	return kindText
}

func (p postgres) createTable(table string, soft bool) string {
	q := "CREATE TABLE IF NOT EXISTS " + table + ` ("id" text PRIMARY KEY, "_sluice_seq" bigint NOT NULL, "_sluice_ts" timestamptz NOT NULL`
	if soft {
		q += `, "_sluice_deleted" boolean NOT NULL DEFAULT false`
	}
	// Rows are rewritten all the time (an upsert replaces the row): free
	// space in each page lets PostgreSQL update in place (HOT) without
	// touching the primary key index.
	return q + ") WITH (fillfactor = 80)"
}

func (postgres) createTombstones(tomb string) string {
	return "CREATE TABLE IF NOT EXISTS " + tomb + ` ("id" text PRIMARY KEY, "seq" bigint NOT NULL)`
}

func (postgres) createCheckpoints() string {
	return `CREATE TABLE IF NOT EXISTS "_sluice_checkpoints" ("pipeline" text NOT NULL, "destination" text NOT NULL, "epoch" bigint NOT NULL, "seq" bigint NOT NULL, PRIMARY KEY ("pipeline", "destination"))`
}

func (postgres) checkpointsKeyed() string {
	return `SELECT 1 FROM pg_attribute WHERE attrelid = to_regclass('"_sluice_checkpoints"') AND attname = 'pipeline' AND NOT attisdropped`
}

func (postgres) lockCheckpoints() string {
	return `LOCK TABLE "_sluice_checkpoints" IN ACCESS EXCLUSIVE MODE`
}

// migrateCheckpoints changes the table in place: a new key column, then the
// primary key swapped for one on (pipeline, destination). The table stays
// the same object, so a user's views on it, its grants and its owner stay
// as they were; rebuilding it would have to drop the old table, which a
// view makes fail (SQLSTATE 2BP01) on every Open. The old primary key's
// name is looked up in the catalog, as nothing guarantees the default
// name. The default of the new column only fills the existing rows.
func (postgres) migrateCheckpoints() []string {
	return []string{
		`ALTER TABLE "_sluice_checkpoints" ADD COLUMN "pipeline" text NOT NULL DEFAULT ''`,
		`ALTER TABLE "_sluice_checkpoints" ALTER COLUMN "pipeline" DROP DEFAULT`,
		`DO $$
DECLARE pk name;
BEGIN
	SELECT conname INTO pk FROM pg_constraint WHERE conrelid = '"_sluice_checkpoints"'::regclass AND contype = 'p';
	IF pk IS NOT NULL THEN
		EXECUTE format('ALTER TABLE %s DROP CONSTRAINT %I', '"_sluice_checkpoints"'::regclass, pk);
	END IF;
END $$`,
		`ALTER TABLE "_sluice_checkpoints" ADD PRIMARY KEY ("pipeline", "destination")`,
	}
}

func (postgres) seedCheckpoint() string {
	return `INSERT INTO "_sluice_checkpoints" ("pipeline", "destination", "epoch", "seq")
SELECT $1::text, l."destination", l."epoch", l."seq" FROM "_sluice_checkpoints" AS l WHERE l."pipeline" = '' AND l."destination" = $2::text
ON CONFLICT ("pipeline", "destination") DO NOTHING`
}

func (postgres) epochFloor() string {
	return `SELECT COALESCE(MAX("epoch"), 0) FROM "_sluice_checkpoints" WHERE "destination" = $2::text AND "pipeline" IN ($1::text, '')`
}

func (p postgres) addColumn(table, col, typ string) string {
	// IF NOT EXISTS: a second sink waiting on the first one's lock then
	// finds the column there and succeeds.
	return "ALTER TABLE " + table + " ADD COLUMN IF NOT EXISTS " + p.quote(col) + " " + typ
}

func (postgres) listColumns() string {
	return `SELECT a.attname, format_type(a.atttypid, a.atttypmod) FROM pg_attribute AS a
WHERE a.attrelid = to_regclass(quote_ident($1)) AND a.attnum > 0 AND NOT a.attisdropped`
}

func (postgres) probe(table string) string { return "SELECT 1 FROM " + table + " LIMIT 0" }

func (postgres) checkpoint() string {
	return `INSERT INTO "_sluice_checkpoints" AS c ("pipeline", "destination", "epoch", "seq") VALUES ($1, $2, $3, $4)
ON CONFLICT ("pipeline", "destination") DO UPDATE SET "epoch" = EXCLUDED."epoch", "seq" = EXCLUDED."seq"
WHERE c."epoch" <= EXCLUDED."epoch" RETURNING 1`
}

func (p postgres) createStage(pl *plan) []string {
	var b strings.Builder
	b.WriteString("CREATE TEMP TABLE " + pgStage + " (_id text, _seq bigint, _ts timestamptz, _del boolean")
	for i, c := range pl.staged {
		fmt.Fprintf(&b, ", c%d %s", i, p.typeOf(c.kind))
	}
	b.WriteString(") ON COMMIT DROP")
	return []string{b.String()}
}

func (p postgres) merge(pl *plan) []string {
	return upsertMerge(p.quote, pl, pgStage, "EXCLUDED", "true", "false", true)
}

// upsertMerge builds the merge of PostgreSQL and SQLite, which share
// INSERT ... ON CONFLICT. Invariant of §3.4: every write is guarded by seq
// against the row (WHERE t._sluice_seq <= new seq) and against the key's
// tombstone (NOT EXISTS a newer tombstone).
func upsertMerge(quote func(string) string, pl *plan, stage, excluded, tru, fls string, deleteUsing bool) []string {
	var cols, srcs, sets []string
	for _, c := range pl.all {
		q := quote(c.name)
		cols = append(cols, q)
		srcs = append(srcs, srcExpr(c, "s"))
		if pl.soft {
			sets = append(sets, fmt.Sprintf("%s = CASE WHEN %s.\"_sluice_deleted\" THEN t.%s ELSE %s.%s END", q, excluded, q, excluded, q))
		} else {
			sets = append(sets, fmt.Sprintf("%s = %s.%s", q, excluded, q))
		}
	}
	pre := func(s []string) string {
		if len(s) == 0 {
			return ""
		}
		return join(s) + ", "
	}
	sets = append(sets,
		fmt.Sprintf(`"_sluice_seq" = %s."_sluice_seq"`, excluded),
		fmt.Sprintf(`"_sluice_ts" = %s."_sluice_ts"`, excluded))
	if pl.soft {
		sets = append(sets, fmt.Sprintf(`"_sluice_deleted" = %s."_sluice_deleted"`, excluded))
		return []string{
			"INSERT INTO " + pl.table + ` AS t ("id", ` + pre(cols) + `"_sluice_seq", "_sluice_ts", "_sluice_deleted")` +
				"\nSELECT s._id, " + pre(srcs) + "s._seq, s._ts, s._del FROM " + stage + " AS s WHERE " + tru + " ORDER BY s._id" +
				"\nON CONFLICT (\"id\") DO UPDATE SET " + join(sets) +
				"\nWHERE t.\"_sluice_seq\" <= " + excluded + ".\"_sluice_seq\"",
		}
	}
	del := "DELETE FROM " + pl.table + " AS t USING " + stage + " AS s WHERE s._del AND t.\"id\" = s._id AND t.\"_sluice_seq\" <= s._seq"
	if !deleteUsing {
		del = "DELETE FROM " + pl.table + " WHERE \"id\" IN (SELECT s._id FROM " + stage + " AS s JOIN " + pl.table +
			" AS t ON t.\"id\" = s._id WHERE s._del AND t.\"_sluice_seq\" <= s._seq)"
	}
	return []string{
		"INSERT INTO " + pl.table + ` AS t ("id", ` + pre(cols) + `"_sluice_seq", "_sluice_ts")` +
			"\nSELECT s._id, " + pre(srcs) + "s._seq, s._ts FROM " + stage + " AS s" +
			"\nWHERE s._del = " + fls + " AND NOT EXISTS (SELECT 1 FROM " + pl.tomb + " AS b WHERE b.\"id\" = s._id AND b.\"seq\" > s._seq) ORDER BY s._id" +
			"\nON CONFLICT (\"id\") DO UPDATE SET " + join(sets) +
			"\nWHERE t.\"_sluice_seq\" <= " + excluded + ".\"_sluice_seq\"",
		del,
		"INSERT INTO " + pl.tomb + ` AS b ("id", "seq") SELECT s._id, s._seq FROM ` + stage + " AS s WHERE s._del = " + tru + " ORDER BY s._id" +
			"\nON CONFLICT (\"id\") DO UPDATE SET \"seq\" = " + excluded + ".\"seq\" WHERE b.\"seq\" < " + excluded + ".\"seq\"",
	}
}

func (b *pgBackend) inTx(ctx context.Context, commit bool, fn func(txn) error) error {
	c, err := b.get(ctx)
	if err != nil {
		return err
	}
	tx, err := c.Begin(ctx)
	if err != nil {
		return err
	}
	if err := fn(pgTx{tx}); err != nil {
		// A rollback that fails leaves the connection unusable: drop it.
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		if rerr := tx.Rollback(rctx); rerr != nil {
			c.Close(rctx)
		}
		return err
	}
	if !commit {
		return tx.Rollback(ctx)
	}
	return tx.Commit(ctx)
}

// pgTx is a native pgx transaction.
type pgTx struct{ tx pgx.Tx }

func (t pgTx) exec(ctx context.Context, q string, args ...any) error {
	_, err := t.tx.Exec(ctx, q, args...)
	return err
}

func (t pgTx) queryRow(ctx context.Context, q string, args ...any) (bool, error) {
	rows, err := t.tx.Query(ctx, q, args...)
	if err != nil {
		return false, err
	}
	found := rows.Next()
	rows.Close()
	return found, rows.Err()
}

func (t pgTx) queryInt(ctx context.Context, q string, args ...any) (int64, error) {
	var n int64
	err := t.tx.QueryRow(ctx, q, args...).Scan(&n)
	return n, err
}

// load COPYs the ops into the staging table through one reused row slice.
func (t pgTx) load(ctx context.Context, p *plan) error {
	cols := stageCols(p)
	row := make([]any, len(cols))
	i := 0
	_, err := t.tx.CopyFrom(ctx, pgx.Identifier{"_sluice_stage"}, cols, pgx.CopyFromFunc(func() ([]any, error) {
		if i == len(p.ops) {
			return nil, nil
		}
		o := p.ops[i]
		i++
		row[0], row[1], row[2], row[3] = o.key, o.seq, o.ts, o.del
		if o.vals == nil {
			clear(row[4:])
		} else {
			copy(row[4:], o.vals)
		}
		return row, nil
	}))
	return err
}

// isDataError: SQLSTATE classes 22 (data exception: bad encoding, NUL in
// text, invalid JSON), 23 (integrity constraint) and 54 (program limit
// exceeded: a key too long for the index) are the data's fault. Everything
// else (connection, 40001 serialization, 40P01 deadlock, 55/57 admin) is
// transient.
func (postgres) isDataError(err error) bool {
	var pe *pgconn.PgError
	if !errors.As(err, &pe) {
		return false
	}
	switch pe.Code[:2] {
	case "22", "23", "54":
		return true
	}
	return false
}

func (postgres) reason(err error) string {
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		return fmt.Sprintf("%s (SQLSTATE %s)", pe.Message, pe.Code)
	}
	return err.Error()
}
