package sqlsink

import (
	"database/sql"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
	"unicode/utf16"

	mssql "github.com/microsoft/go-mssqldb"
	"github.com/microsoft/go-mssqldb/azuread"
)

// sqlserver targets SQL Server and Azure SQL (github.com/microsoft/go-mssqldb).
// A DSN asking for fedauth= goes through the azuread driver ("azuresql"),
// which gets Entra ID tokens (managed identity, workload identity, ...).
type sqlserver struct{}

const (
	mssqlMaxIdent = 128 // sysname: nvarchar(128)
	mssqlMaxKey   = 450 // nvarchar(450): 900 bytes, the index key limit
	// mssqlMaxParams stays under the hard limit of 2,100 parameters per
	// request; mssqlMaxRows is the limit of rows in one VALUES list.
	mssqlMaxParams = 2000
	mssqlMaxRows   = 1000
	mssqlStage     = "#sluice_stage"
)

func (d sqlserver) open(dsn string) (backend, error) {
	name := "sqlserver"
	if strings.Contains(strings.ToLower(dsn), "fedauth=") {
		name = azuread.DriverName
	}
	db, err := sql.Open(name, dsn)
	if err != nil {
		return nil, err
	}
	db.SetMaxOpenConns(4)
	return &sqlDB{db: db, mk: func(tx *sql.Tx) txn {
		return &sqlTx{
			tx: tx, maxParams: mssqlMaxParams, maxRows: mssqlMaxRows, ts: d.tsValue,
			insert: func(rows, ncols int) string {
				return multiInsert(mssqlStage, stageColNames(ncols), rows, func(n int) string { return "@p" + strconv.Itoa(n) })
			},
		}
	}}, nil
}

func (sqlserver) quote(name string) string {
	return "[" + strings.ReplaceAll(name, "]", "]]") + "]"
}

// lit is an N'...' Unicode string literal (for OBJECT_ID and COL_LENGTH,
// which take names as strings).
func lit(s string) string { return "N'" + strings.ReplaceAll(s, "'", "''") + "'" }

func (sqlserver) colName(field string) string     { return shorten(field, mssqlMaxIdent, true) }
func (d sqlserver) tableName(name string) string  { return d.quote(d.tableNameRaw(name)) }
func (sqlserver) tableNameRaw(name string) string { return shorten(name, mssqlMaxIdent, true) }
func (sqlserver) fold(name string) string         { return strings.ToLower(name) } // default collations are case-insensitive
func (sqlserver) tsValue(t time.Time) any         { return t.UTC().Truncate(time.Millisecond) }
func (sqlserver) probe(table string) string       { return "SELECT TOP (0) 1 FROM " + table }
func (sqlserver) createCheckpoints() string {
	return `IF OBJECT_ID(N'[_sluice_checkpoints]', N'U') IS NULL CREATE TABLE [_sluice_checkpoints] ([pipeline] nvarchar(128) NOT NULL, [destination] nvarchar(128) NOT NULL, [epoch] bigint NOT NULL, [seq] bigint NOT NULL, PRIMARY KEY ([pipeline], [destination]))`
}

func (sqlserver) checkKey(key string) string {
	if n := len(utf16.Encode([]rune(key))); n > mssqlMaxKey {
		return fmt.Sprintf("key is %d characters long; SQL Server keys are nvarchar(%d)", n, mssqlMaxKey)
	}
	return ""
}

func (sqlserver) typeOf(k kind) string {
	switch k {
	case kindNumber:
		return "float"
	case kindBool:
		return "bit"
	}
	return "nvarchar(max)" // text and JSON
}

func (sqlserver) kindOf(t string) kind {
	switch strings.ToLower(t) {
	case "bit":
		return kindBool
	case "float", "real", "decimal", "numeric", "int", "bigint", "smallint", "tinyint", "money", "smallmoney":
		return kindNumber
	}
	return kindText
}

func (sqlserver) createTable(table string, soft bool) string {
	q := "IF OBJECT_ID(" + lit(table) + ", N'U') IS NULL CREATE TABLE " + table +
		" ([id] nvarchar(450) NOT NULL PRIMARY KEY, [_sluice_seq] bigint NOT NULL, [_sluice_ts] datetime2(3) NOT NULL"
	if soft {
		q += ", [_sluice_deleted] bit NOT NULL DEFAULT 0"
	}
	return q + ")"
}

func (sqlserver) createTombstones(tomb string) string {
	return "IF OBJECT_ID(" + lit(tomb) + ", N'U') IS NULL CREATE TABLE " + tomb +
		" ([id] nvarchar(450) NOT NULL PRIMARY KEY, [seq] bigint NOT NULL)"
}

// addColumn checks first; a sink racing past the check gets error 2705
// (column names must be unique), and addColumns then finds the column.
func (d sqlserver) addColumn(table, col, typ string) string {
	return "IF COL_LENGTH(" + lit(table) + ", " + lit(col) + ") IS NULL ALTER TABLE " + table + " ADD " + d.quote(col) + " " + typ
}

func (sqlserver) listColumns() string {
	return "SELECT c.name, t.name FROM sys.columns AS c JOIN sys.types AS t ON t.user_type_id = c.user_type_id WHERE c.object_id = OBJECT_ID(QUOTENAME(@p1))"
}

func (sqlserver) checkpoint() string {
	return `MERGE [_sluice_checkpoints] WITH (HOLDLOCK) AS c
USING (VALUES (@p1, @p2, @p3, @p4)) AS s ([pipeline], [destination], [epoch], [seq]) ON c.[pipeline] = s.[pipeline] AND c.[destination] = s.[destination]
WHEN MATCHED AND c.[epoch] <= s.[epoch] THEN UPDATE SET [epoch] = s.[epoch], [seq] = s.[seq]
WHEN NOT MATCHED THEN INSERT ([pipeline], [destination], [epoch], [seq]) VALUES (s.[pipeline], s.[destination], s.[epoch], s.[seq])
OUTPUT inserted.[epoch];`
}

func (sqlserver) checkpointsKeyed() string {
	return `SELECT 1 WHERE COL_LENGTH(N'[_sluice_checkpoints]', N'pipeline') IS NOT NULL`
}

// lockCheckpoints takes an application lock owned by the transaction, so
// that sinks opening at once migrate one after the other (the others then
// find the work done). A query for no rows with a table lock hint may never
// touch the table — TOP (0) can be optimised away — and so never lock.
// Batches are kept out by the migration itself: ALTER TABLE holds a schema
// modification lock on the table until the transaction ends (Invariant 5).
// A lock not granted (timeout, deadlock victim) is an error, never a
// migration without the lock.
func (sqlserver) lockCheckpoints() string {
	return `DECLARE @lock int;
EXEC @lock = sp_getapplock @Resource = N'sluice:_sluice_checkpoints', @LockMode = N'Exclusive', @LockOwner = N'Transaction', @LockTimeout = 60000;
IF @lock < 0 THROW 50000, N'could not take the lock for migrating _sluice_checkpoints (sp_getapplock)', 1;`
}

// migrateCheckpoints changes the table in place: a new key column, then the
// primary key (its constraint has a generated name, looked up in the
// catalog) swapped for one on (pipeline, destination). The table stays the
// same object, so a user's views on it and its permissions stay as they
// were. The default of the new column only fills the existing rows. A
// legacy destination column is nvarchar(450), so SQL Server warns that the
// new key may exceed 900 bytes; no row can (new rows are two names of at
// most 128 characters, legacy rows have an empty pipeline).
func (sqlserver) migrateCheckpoints() []string {
	return []string{
		`ALTER TABLE [_sluice_checkpoints] ADD [pipeline] nvarchar(128) NOT NULL CONSTRAINT [_sluice_checkpoints_pipeline_default] DEFAULT N''`,
		`ALTER TABLE [_sluice_checkpoints] DROP CONSTRAINT [_sluice_checkpoints_pipeline_default]`,
		`DECLARE @pk sysname = (SELECT [name] FROM sys.key_constraints WHERE [parent_object_id] = OBJECT_ID(N'[_sluice_checkpoints]') AND [type] = 'PK');
IF @pk IS NOT NULL
BEGIN
	DECLARE @drop nvarchar(max) = N'ALTER TABLE [_sluice_checkpoints] DROP CONSTRAINT ' + QUOTENAME(@pk);
	EXEC sp_executesql @drop;
END`,
		`ALTER TABLE [_sluice_checkpoints] ADD PRIMARY KEY ([pipeline], [destination])`,
	}
}

// seedCheckpoint is a MERGE WITH (HOLDLOCK): two sinks seeding the same row
// at once cannot both take the NOT MATCHED branch.
func (sqlserver) seedCheckpoint() string {
	return `MERGE [_sluice_checkpoints] WITH (HOLDLOCK) AS c
USING (SELECT @p1 AS [pipeline], l.[destination], l.[epoch], l.[seq] FROM [_sluice_checkpoints] AS l WHERE l.[pipeline] = N'' AND l.[destination] = @p2) AS s
ON c.[pipeline] = s.[pipeline] AND c.[destination] = s.[destination]
WHEN NOT MATCHED THEN INSERT ([pipeline], [destination], [epoch], [seq]) VALUES (s.[pipeline], s.[destination], s.[epoch], s.[seq]);`
}

func (sqlserver) epochFloor() string {
	return `SELECT COALESCE(MAX([epoch]), 0) FROM [_sluice_checkpoints] WHERE [destination] = @p2 AND [pipeline] IN (@p1, N'')`
}

func (d sqlserver) createStage(p *plan) []string {
	var b strings.Builder
	// COLLATE DATABASE_DEFAULT: tempdb's collation may differ from the
	// database's, and comparing keys across collations fails.
	b.WriteString("CREATE TABLE " + mssqlStage + " (_id nvarchar(450) COLLATE DATABASE_DEFAULT NOT NULL, _seq bigint NOT NULL, _ts datetime2(3) NOT NULL, _del bit NOT NULL")
	for i, c := range p.staged {
		t := d.typeOf(c.kind)
		if strings.HasPrefix(t, "nvarchar") {
			t += " COLLATE DATABASE_DEFAULT"
		}
		fmt.Fprintf(&b, ", c%d %s NULL", i, t)
	}
	b.WriteString(")")
	return []string{
		"IF OBJECT_ID(N'tempdb.." + mssqlStage + "') IS NOT NULL DROP TABLE " + mssqlStage,
		b.String(),
	}
}

// merge uses MERGE ... WITH (HOLDLOCK): without the key-range lock two
// concurrent MERGEs can both take the NOT MATCHED branch for one key.
func (d sqlserver) merge(p *plan) []string {
	var cols, srcs, sets []string
	for _, c := range p.all {
		q := d.quote(c.name)
		cols = append(cols, q)
		srcs = append(srcs, srcExpr(c, "s"))
		if p.soft {
			sets = append(sets, fmt.Sprintf("%s = CASE WHEN s._del = 1 THEN t.%s ELSE %s END", q, q, srcExpr(c, "s")))
		} else {
			sets = append(sets, q+" = "+srcExpr(c, "s"))
		}
	}
	pre := func(s []string) string {
		if len(s) == 0 {
			return ""
		}
		return join(s) + ", "
	}
	sets = append(sets, "[_sluice_seq] = s._seq", "[_sluice_ts] = s._ts")
	if p.soft {
		sets = append(sets, "[_sluice_deleted] = s._del")
		return []string{
			"MERGE " + p.table + " WITH (HOLDLOCK) AS t USING " + mssqlStage + " AS s ON t.[id] = s._id" +
				"\nWHEN MATCHED AND t.[_sluice_seq] <= s._seq THEN UPDATE SET " + join(sets) +
				"\nWHEN NOT MATCHED BY TARGET THEN INSERT ([id], " + pre(cols) + "[_sluice_seq], [_sluice_ts], [_sluice_deleted]) VALUES (s._id, " + pre(srcs) + "s._seq, s._ts, s._del);",
			"DROP TABLE " + mssqlStage,
		}
	}
	return []string{
		"MERGE " + p.table + " WITH (HOLDLOCK) AS t" +
			"\nUSING (SELECT * FROM " + mssqlStage + " AS x WHERE NOT EXISTS (SELECT 1 FROM " + p.tomb + " AS b WHERE b.[id] = x._id AND b.[seq] > x._seq)) AS s ON t.[id] = s._id" +
			"\nWHEN MATCHED AND s._del = 0 AND t.[_sluice_seq] <= s._seq THEN UPDATE SET " + join(sets) +
			"\nWHEN MATCHED AND s._del = 1 AND t.[_sluice_seq] <= s._seq THEN DELETE" +
			"\nWHEN NOT MATCHED BY TARGET AND s._del = 0 THEN INSERT ([id], " + pre(cols) + "[_sluice_seq], [_sluice_ts]) VALUES (s._id, " + pre(srcs) + "s._seq, s._ts);",
		"MERGE " + p.tomb + " WITH (HOLDLOCK) AS b USING (SELECT _id, _seq FROM " + mssqlStage + " WHERE _del = 1) AS s ON b.[id] = s._id" +
			"\nWHEN MATCHED AND b.[seq] < s._seq THEN UPDATE SET [seq] = s._seq" +
			"\nWHEN NOT MATCHED THEN INSERT ([id], [seq]) VALUES (s._id, s._seq);",
		"DROP TABLE " + mssqlStage,
	}
}

// isDataError lists the error numbers that a value causes: truncation
// (8152, 2628), conversion (245, 8114, 241, 242), overflow (8115, 220, 232),
// NULL into NOT NULL (515), constraints (547, 2601, 2627), index key too
// long (1946). Deadlocks (1205), timeouts and connection errors are transient.
func (sqlserver) isDataError(err error) bool {
	var me mssql.Error
	if !errors.As(err, &me) {
		return false
	}
	switch me.Number {
	case 8152, 2628, 245, 8114, 241, 242, 8115, 220, 232, 515, 547, 2601, 2627, 1946:
		return true
	}
	return false
}

func (sqlserver) reason(err error) string {
	var me mssql.Error
	if errors.As(err, &me) {
		return fmt.Sprintf("%s (error %d)", me.Message, me.Number)
	}
	return err.Error()
}
