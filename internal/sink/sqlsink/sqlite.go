package sqlsink

import (
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"time"

	msqlite "modernc.org/sqlite"
	sqlite3 "modernc.org/sqlite/lib"

	"github.com/sluicehq/sluice/internal/changelog"
)

// sqlite is the embedded default (modernc.org/sqlite, pure Go, driver
// "sqlite"). One connection per sink: SQLite has one writer anyway, and a
// single connection keeps the temporary staging table where the batch is.
type sqlite struct{}

const sqliteStage = `temp."_sluice_stage"`

// sqliteDSN adds what a sink needs unless the user chose otherwise: wait for
// a busy database instead of failing at once, WAL so that readers do not
// block the writer, and BEGIN IMMEDIATE so a transaction never has to
// upgrade its lock halfway (which deadlocks between two writers).
func sqliteDSN(dsn string) string {
	lower := strings.ToLower(dsn)
	var add []string
	if !strings.Contains(lower, "busy_timeout") {
		add = append(add, "_pragma=busy_timeout(5000)")
	}
	if !strings.Contains(lower, "journal_mode") {
		add = append(add, "_pragma=journal_mode(WAL)")
	}
	if !strings.Contains(lower, "_txlock") {
		add = append(add, "_txlock=immediate")
	}
	if len(add) == 0 {
		return dsn
	}
	sep := "?"
	if strings.Contains(dsn, "?") {
		sep = "&"
	}
	return dsn + sep + strings.Join(add, "&")
}

func (s sqlite) open(dsn string) (backend, error) {
	db, err := sql.Open("sqlite", sqliteDSN(dsn))
	if err != nil {
		return nil, err
	}
	db.SetMaxOpenConns(1)
	return &sqlDB{db: db, mk: func(tx *sql.Tx) txn {
		return &sqlTx{
			tx: tx, maxParams: 32000, maxRows: 1 << 30, ts: s.tsValue,
			insert: func(rows, ncols int) string {
				return multiInsert(sqliteStage, stageColNames(ncols), rows, func(int) string { return "?" })
			},
		}
	}}, nil
}

func (sqlite) quote(name string) string {
	return `"` + strings.ReplaceAll(name, `"`, `""`) + `"`
}
func (sqlite) colName(field string) string     { return field } // no length limit
func (s sqlite) tableName(name string) string  { return s.quote(name) }
func (sqlite) tableNameRaw(name string) string { return name }
func (sqlite) checkKey(string) string          { return "" }
func (sqlite) probe(table string) string       { return "SELECT 1 FROM " + table + " LIMIT 0" }
func (sqlite) listColumns() string             { return "SELECT name, type FROM pragma_table_info(?)" }
func (sqlite) tsValue(t time.Time) any         { return t.UTC().Format(changelog.TSFormat) }
func (s sqlite) merge(p *plan) []string        { return s.mergeStmts(p) }
func (sqlite) createCheckpoints() string {
	return `CREATE TABLE IF NOT EXISTS "_sluice_checkpoints" ("pipeline" TEXT NOT NULL, "destination" TEXT NOT NULL, "epoch" INTEGER NOT NULL, "seq" INTEGER NOT NULL, PRIMARY KEY ("pipeline", "destination"))`
}

// fold lowercases ASCII only: SQLite compares identifiers case-insensitively
// for ASCII letters and exactly otherwise.
func (sqlite) fold(name string) string {
	for i := 0; i < len(name); i++ {
		if c := name[i]; c >= 'A' && c <= 'Z' {
			b := []byte(name)
			for j := i; j < len(b); j++ {
				if b[j] >= 'A' && b[j] <= 'Z' {
					b[j] += 'a' - 'A'
				}
			}
			return string(b)
		}
	}
	return name
}

func (sqlite) typeOf(k kind) string {
	switch k {
	case kindNumber:
		return "REAL"
	case kindBool:
		return "BOOLEAN"
	}
	return "TEXT" // text and JSON: SQLite has no JSON type
}

func (sqlite) kindOf(t string) kind {
	t = strings.ToUpper(t)
	switch {
	case strings.Contains(t, "BOOL"):
		return kindBool
	case strings.Contains(t, "INT") || strings.Contains(t, "REAL") || strings.Contains(t, "FLOA") ||
		strings.Contains(t, "DOUB") || strings.Contains(t, "NUM"):
		return kindNumber
	}
	return kindText
}

func (sqlite) createTable(table string, soft bool) string {
	q := "CREATE TABLE IF NOT EXISTS " + table + ` ("id" TEXT PRIMARY KEY NOT NULL, "_sluice_seq" INTEGER NOT NULL, "_sluice_ts" TEXT NOT NULL`
	if soft {
		q += `, "_sluice_deleted" BOOLEAN NOT NULL DEFAULT 0`
	}
	return q + ")"
}

func (sqlite) createTombstones(tomb string) string {
	return "CREATE TABLE IF NOT EXISTS " + tomb + ` ("id" TEXT PRIMARY KEY NOT NULL, "seq" INTEGER NOT NULL)`
}

// addColumn has no IF NOT EXISTS in SQLite: a racing sink gets "duplicate
// column name", and addColumns then finds the column and carries on.
func (s sqlite) addColumn(table, col, typ string) string {
	return "ALTER TABLE " + table + " ADD COLUMN " + s.quote(col) + " " + typ
}

func (sqlite) checkpoint() string {
	return `INSERT INTO "_sluice_checkpoints" AS c ("pipeline", "destination", "epoch", "seq") VALUES (?, ?, ?, ?)
ON CONFLICT ("pipeline", "destination") DO UPDATE SET "epoch" = excluded."epoch", "seq" = excluded."seq"
WHERE c."epoch" <= excluded."epoch" RETURNING 1`
}

func (sqlite) checkpointsKeyed() string {
	return `SELECT 1 FROM pragma_table_info('_sluice_checkpoints') WHERE name = 'pipeline'`
}

// lockCheckpoints: a write statement takes the database's write lock even
// when it changes nothing (and even if the DSN asked for deferred
// transactions).
func (sqlite) lockCheckpoints() string {
	return `DELETE FROM "_sluice_checkpoints" WHERE 0`
}

// migrateCheckpoints rebuilds the table, as SQLite cannot change a primary
// key in place, in the order its documentation gives for schema changes
// (lang_altertable.html, "Making Other Kinds Of Table Schema Changes"):
// create the new table under another name, copy, drop the old one, rename
// the new one to the old name. A user's view on the table keeps its text
// and reads the new table; renaming the old table away first would have
// rewritten the view to the name about to be dropped.
func (sqlite) migrateCheckpoints() []string {
	return []string{
		`DROP TABLE IF EXISTS "_sluice_checkpoints_new"`,
		`CREATE TABLE "_sluice_checkpoints_new" ("pipeline" TEXT NOT NULL, "destination" TEXT NOT NULL, "epoch" INTEGER NOT NULL, "seq" INTEGER NOT NULL, PRIMARY KEY ("pipeline", "destination"))`,
		`INSERT INTO "_sluice_checkpoints_new" ("pipeline", "destination", "epoch", "seq") SELECT '', "destination", "epoch", "seq" FROM "_sluice_checkpoints"`,
		`DROP TABLE "_sluice_checkpoints"`,
		`PRAGMA legacy_alter_table = ON`,
		`ALTER TABLE "_sluice_checkpoints_new" RENAME TO "_sluice_checkpoints"`,
		`PRAGMA legacy_alter_table = OFF`,
	}
}

func (sqlite) seedCheckpoint() string {
	return `INSERT INTO "_sluice_checkpoints" ("pipeline", "destination", "epoch", "seq")
SELECT ?1, l."destination", l."epoch", l."seq" FROM "_sluice_checkpoints" AS l WHERE l."pipeline" = '' AND l."destination" = ?2
ON CONFLICT ("pipeline", "destination") DO NOTHING`
}

func (sqlite) epochFloor() string {
	return `SELECT COALESCE(MAX("epoch"), 0) FROM "_sluice_checkpoints" WHERE "destination" = ?2 AND "pipeline" IN (?1, '')`
}

func (s sqlite) createStage(p *plan) []string {
	var b strings.Builder
	b.WriteString("CREATE TEMP TABLE " + sqliteStage + " (_id TEXT, _seq INTEGER, _ts TEXT, _del BOOLEAN")
	for i, c := range p.staged {
		fmt.Fprintf(&b, ", c%d %s", i, s.typeOf(c.kind))
	}
	b.WriteString(")")
	// The stage survives a commit on this connection: drop any leftover.
	return []string{"DROP TABLE IF EXISTS " + sqliteStage, b.String()}
}

func (s sqlite) mergeStmts(p *plan) []string {
	stmts := upsertMerge(s.quote, p, sqliteStage, "excluded", "1", "0", false)
	return append(stmts, "DROP TABLE "+sqliteStage)
}

// isDataError: a value too big, a constraint or a type mismatch is the
// record's fault; SQLITE_BUSY, I/O errors and the like are transient.
func (sqlite) isDataError(err error) bool {
	var se *msqlite.Error
	if !errors.As(err, &se) {
		return false
	}
	switch se.Code() & 0xff {
	case sqlite3.SQLITE_TOOBIG, sqlite3.SQLITE_CONSTRAINT, sqlite3.SQLITE_MISMATCH, sqlite3.SQLITE_RANGE:
		return true
	}
	return false
}

func (sqlite) reason(err error) string {
	var se *msqlite.Error
	if errors.As(err, &se) {
		return se.Error()
	}
	return err.Error()
}
