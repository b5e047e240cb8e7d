package sqlsink

import (
	"context"
	"database/sql"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// dialect is everything that differs between databases: names, types, the
// statements, how a transaction runs and which errors are the data's fault.
// Statement builders are pure functions of their arguments so that tests can
// compare them as text (SQL Server has no server here).
type dialect interface {
	// open connects lazily: the first statement dials.
	open(dsn string) (backend, error)
	// quote returns name as a quoted identifier.
	quote(name string) string
	// colName returns the column a field is stored in: the field's name, or a
	// deterministic shortening when it is longer than the database allows.
	colName(field string) string
	// tableName returns the quoted (and if needed shortened) name of a table;
	// tableNameRaw the unquoted form, as the catalog stores it.
	tableName(name string) string
	tableNameRaw(name string) string
	// fold maps a name to the form the database compares identifiers in.
	fold(name string) string
	typeOf(k kind) string
	kindOf(dbType string) kind
	// checkKey returns why a key can never be stored, or "".
	checkKey(key string) string

	createTable(table string, soft bool) string
	createTombstones(tomb string) string
	createCheckpoints() string
	addColumn(table, col, typ string) string
	// listColumns takes the raw table name and yields (name, type) rows.
	listColumns() string
	// probe is a cheap statement that fails when the table is missing.
	probe(table string) string
	// checkpoint takes (pipeline, destination, epoch, seq) and yields a row
	// only when the epoch is not older than the stored one.
	checkpoint() string
	// checkpointsKeyed yields a row when _sluice_checkpoints has the shape
	// of createCheckpoints (keyed by pipeline and destination), none when it
	// is keyed by destination alone (sluice before that) or missing.
	checkpointsKeyed() string
	// lockCheckpoints takes a lock until the end of the transaction that
	// makes concurrent migrations of _sluice_checkpoints wait for each
	// other: a write lock on the table (PostgreSQL, SQLite) or an
	// application lock (SQL Server, whose ALTER TABLE then keeps batches
	// out until the commit).
	lockCheckpoints() string
	// migrateCheckpoints turns a table keyed by destination alone into one
	// keyed by (pipeline, destination), in place where the database can
	// (so that views and grants on it stay); its rows become pipeline ""
	// rows. It runs after lockCheckpoints, in the same transaction.
	migrateCheckpoints() []string
	// seedCheckpoint takes (pipeline, destination) and, unless that row
	// exists, inserts it with the epoch and seq of the legacy row
	// ("", destination), if there is one.
	seedCheckpoint() string
	// epochFloor takes (pipeline, destination) and yields the highest epoch
	// of that row and of the destination's legacy row, or 0.
	epochFloor() string
	createStage(p *plan) []string
	merge(p *plan) []string
	// isDataError reports whether err is the data's fault (a value or key the
	// database refuses), as opposed to the database's (outage, deadlock, DDL).
	isDataError(err error) bool
	// reason is a short, user-facing description of a data error.
	reason(err error) string
}

// backend is the connection side of a dialect: database/sql for SQLite and
// SQL Server, one native pgx connection for PostgreSQL (pgx's database/sql
// adapter pulls in a pool module this repository does not require).
type backend interface {
	// exec runs one statement outside any batch transaction (DDL).
	exec(ctx context.Context, q string) error
	// columns runs q with the raw table name and returns (name, type) rows.
	columns(ctx context.Context, q, table string) ([][2]string, error)
	// inTx runs fn in one transaction, committing when commit is true and fn
	// succeeds, rolling back otherwise.
	inTx(ctx context.Context, commit bool, fn func(txn) error) error
	close() error
}

// txn is the little a plan needs from a transaction.
type txn interface {
	exec(ctx context.Context, q string, args ...any) error
	// queryRow reports whether q returned at least one row.
	queryRow(ctx context.Context, q string, args ...any) (bool, error)
	// queryInt returns the integer in the first column of q's one row.
	queryInt(ctx context.Context, q string, args ...any) (int64, error)
	// load fills the staging table with p's ops.
	load(ctx context.Context, p *plan) error
}

func newDialect(driver string) (dialect, error) {
	switch driver {
	case "postgres":
		return postgres{}, nil
	case "sqlite":
		return sqlite{}, nil
	case "sqlserver":
		return sqlserver{}, nil
	}
	return nil, fmt.Errorf("sql sink: driver %q: use postgres, sqlite or sqlserver", driver)
}

// sqlDB is a backend over database/sql.
type sqlDB struct {
	db *sql.DB
	mk func(*sql.Tx) txn
}

func (b *sqlDB) exec(ctx context.Context, q string) error {
	_, err := b.db.ExecContext(ctx, q)
	return err
}

func (b *sqlDB) columns(ctx context.Context, q, table string) ([][2]string, error) {
	rows, err := b.db.QueryContext(ctx, q, table)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out [][2]string
	for rows.Next() {
		var nt [2]string
		if err := rows.Scan(&nt[0], &nt[1]); err != nil {
			return nil, err
		}
		out = append(out, nt)
	}
	return out, rows.Err()
}

func (b *sqlDB) inTx(ctx context.Context, commit bool, fn func(txn) error) error {
	tx, err := b.db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	if err := fn(b.mk(tx)); err != nil {
		tx.Rollback()
		return err
	}
	if !commit {
		return tx.Rollback()
	}
	return tx.Commit()
}

func (b *sqlDB) close() error { return b.db.Close() }

// stageCols is the staging table's column list: fixed columns, then one
// column per staged field column, named by position (field names never
// reach the staging table).
func stageCols(p *plan) []string {
	cols := make([]string, 0, 4+len(p.staged))
	cols = append(cols, "_id", "_seq", "_ts", "_del")
	for i := range p.staged {
		cols = append(cols, "c"+strconv.Itoa(i))
	}
	return cols
}

// srcExpr is the staging expression for a target column: its staged value,
// or NULL when no op of the batch carries the field (an upsert replaces the
// row, so absent fields become NULL).
func srcExpr(c *column, alias string) string {
	if c.stage < 0 {
		return "NULL"
	}
	return alias + ".c" + strconv.Itoa(c.stage)
}

// sqlTx is a database/sql transaction loading the stage with multi-row INSERTs.
type sqlTx struct {
	tx        *sql.Tx
	insert    func(rows, cols int) string // multi-row INSERT into the stage
	maxParams int
	maxRows   int
	ts        func(time.Time) any
}

func (t *sqlTx) exec(ctx context.Context, q string, args ...any) error {
	_, err := t.tx.ExecContext(ctx, q, args...)
	return err
}

func (t *sqlTx) queryRow(ctx context.Context, q string, args ...any) (bool, error) {
	rows, err := t.tx.QueryContext(ctx, q, args...)
	if err != nil {
		return false, err
	}
	found := rows.Next()
	for rows.Next() {
	}
	rows.Close()
	return found, rows.Err()
}

func (t *sqlTx) queryInt(ctx context.Context, q string, args ...any) (int64, error) {
	var n int64
	err := t.tx.QueryRowContext(ctx, q, args...).Scan(&n)
	return n, err
}

// load inserts the ops in chunks that respect the parameter limit, reusing
// one argument slice and one statement text per chunk size.
func (t *sqlTx) load(ctx context.Context, p *plan) error {
	ncols := 4 + len(p.staged)
	per := rowsPerInsert(ncols, t.maxParams, t.maxRows)
	if per < 1 {
		return fmt.Errorf("%d columns exceed the database's %d parameters per statement", ncols, t.maxParams)
	}
	args := make([]any, 0, per*ncols)
	var full string
	for lo := 0; lo < len(p.ops); lo += per {
		hi := min(lo+per, len(p.ops))
		args = args[:0]
		for _, o := range p.ops[lo:hi] {
			args = append(args, o.key, o.seq, t.ts(o.ts), o.del)
			if o.vals == nil {
				for range p.staged {
					args = append(args, nil)
				}
			} else {
				args = append(args, o.vals...)
			}
		}
		q := full
		if hi-lo != per || q == "" {
			q = t.insert(hi-lo, ncols)
			if hi-lo == per {
				full = q
			}
		}
		if _, err := t.tx.ExecContext(ctx, q, args...); err != nil {
			return err
		}
	}
	return nil
}

// multiInsert builds INSERT INTO stage (cols) VALUES (...),(...) with the
// placeholder style ph (1-based).
func multiInsert(stage string, cols []string, rows int, ph func(int) string) string {
	var b strings.Builder
	b.Grow(len(stage) + 32 + rows*len(cols)*6)
	b.WriteString("INSERT INTO ")
	b.WriteString(stage)
	b.WriteString(" (")
	b.WriteString(strings.Join(cols, ", "))
	b.WriteString(") VALUES ")
	n := 1
	for r := 0; r < rows; r++ {
		if r > 0 {
			b.WriteString(", ")
		}
		b.WriteByte('(')
		for c := range cols {
			if c > 0 {
				b.WriteString(", ")
			}
			b.WriteString(ph(n))
			n++
		}
		b.WriteByte(')')
	}
	return b.String()
}

// join writes items separated by ", ".
func join(items []string) string { return strings.Join(items, ", ") }

// stageColNames is stageCols for a column count.
func stageColNames(ncols int) []string {
	cols := []string{"_id", "_seq", "_ts", "_del"}
	for i := 0; i < ncols-4; i++ {
		cols = append(cols, "c"+strconv.Itoa(i))
	}
	return cols
}

// rowsPerInsert is how many staging rows of ncols fit in one INSERT.
func rowsPerInsert(ncols, maxParams, maxRows int) int {
	return min(maxParams/ncols, maxRows)
}
