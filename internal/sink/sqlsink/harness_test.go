package sqlsink_test

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	_ "github.com/microsoft/go-mssqldb"
	_ "modernc.org/sqlite"

	"github.com/sluicehq/sluice/internal/changelog"
	"github.com/sluicehq/sluice/internal/sink"
	"github.com/sluicehq/sluice/internal/sink/sinktest"
	"github.com/sluicehq/sluice/internal/sink/sqlsink"
	"github.com/sluicehq/sluice/internal/testenv"
)

// harness runs the conformance suite against one driver and delete mode.
type harness struct {
	driver  string
	deletes string
}

func (h harness) Capabilities() sinktest.Capabilities {
	return sinktest.Capabilities{Epochs: true, Transient: true, Permanent: true, Parallel: true}
}

func (h harness) NewDestination(t *testing.T) sinktest.Destination {
	return newDest(t, h.driver, h.deletes, "items")
}

// dest is one fresh database (PostgreSQL, SQL Server: a fresh table) with
// a table written by sinks.
type dest struct {
	driver, deletes, table string
	dsn                    string // what sinks get
	admin                  string // PostgreSQL: the server's admin DSN
	db                     string // PostgreSQL: the database name
	lock                   *sql.Conn
	lockDB                 *sql.DB
	n                      atomic.Int64
}

var tableSeq atomic.Int64

func newDest(t *testing.T, driver, deletes, table string) *dest {
	t.Helper()
	d := &dest{driver: driver, deletes: deletes, table: table}
	switch driver {
	case "sqlite":
		// A short busy timeout so that Break (a held write lock) fails fast.
		d.dsn = "file:" + filepath.Join(t.TempDir(), "sink.db") + "?_pragma=busy_timeout(2000)"
	case "postgres":
		d.dsn = testenv.Postgres(t)
		d.admin = os.Getenv("SLUICE_TEST_POSTGRES_DSN")
		u, _ := url.Parse(d.dsn)
		d.db = strings.TrimPrefix(u.Path, "/")
	case "sqlserver":
		d.dsn = os.Getenv("SLUICE_TEST_SQLSERVER_DSN")
		if d.dsn == "" {
			t.Skip("SQL Server not configured: set SLUICE_TEST_SQLSERVER_DSN")
		}
		d.table = fmt.Sprintf("%s_%d_%d", table, time.Now().UnixNano(), tableSeq.Add(1))
	}
	return d
}

func (d *dest) config() sqlsink.Config {
	return sqlsink.Config{Driver: d.driver, DSN: d.dsn, Table: d.table, Deletes: d.deletes,
		Pipeline: "test", Destination: "dest-" + d.table}
}

func (d *dest) NewSink(t *testing.T) sink.Sink {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	s, err := sqlsink.Open(ctx, d.config())
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	return s
}

// State reads the table: id is the key (and the "id" field), _sluice_seq the
// seq, _sluice_deleted the soft-delete flag; other columns are fields.
func (d *dest) State(t *testing.T) map[string]sinktest.Observed {
	t.Helper()
	rows := d.rows(t, d.table)
	out := make(map[string]sinktest.Observed, len(rows))
	for _, r := range rows {
		o := sinktest.Observed{Fields: map[string]any{}}
		var key string
		for c, v := range r {
			switch c {
			case "id":
				key = v.(string)
				o.Fields["id"] = key
			case "_sluice_seq":
				o.Seq = toInt(v)
			case "_sluice_deleted":
				o.Deleted = v == true || toInt(v) == 1
			case "_sluice_ts":
			default:
				if v != nil {
					o.Fields[c] = v
				}
			}
		}
		out[key] = o
	}
	return out
}

func toInt(v any) int64 {
	switch x := v.(type) {
	case int64:
		return x
	case int32:
		return int64(x)
	case float64:
		return int64(x)
	case bool:
		if x {
			return 1
		}
	}
	return 0
}

// rows returns every row of table as column → value, values decoded per the
// column's declared type (SQLite BOOLEAN → bool, PostgreSQL jsonb → JSON).
func (d *dest) rows(t *testing.T, table string) []map[string]any {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var out []map[string]any
	switch d.driver {
	case "postgres":
		conn, err := pgx.Connect(ctx, d.dsn)
		if err != nil {
			t.Fatalf("read state: %v", err)
		}
		defer conn.Close(ctx)
		rs, err := conn.Query(ctx, "SELECT * FROM "+pgx.Identifier{table}.Sanitize())
		if err != nil {
			t.Fatalf("read state: %v", err)
		}
		defer rs.Close()
		fds := rs.FieldDescriptions()
		for rs.Next() {
			vals, err := rs.Values()
			if err != nil {
				t.Fatalf("read state: %v", err)
			}
			m := map[string]any{}
			for i, f := range fds {
				m[f.Name] = vals[i]
			}
			out = append(out, m)
		}
		if err := rs.Err(); err != nil {
			t.Fatalf("read state: %v", err)
		}
	default:
		driver, q := "sqlite", `SELECT * FROM "`+strings.ReplaceAll(table, `"`, `""`)+`"`
		if d.driver == "sqlserver" {
			driver, q = "sqlserver", "SELECT * FROM ["+strings.ReplaceAll(table, "]", "]]")+"]"
		}
		db, err := sql.Open(driver, d.dsn)
		if err != nil {
			t.Fatalf("read state: %v", err)
		}
		defer db.Close()
		rs, err := db.QueryContext(ctx, q)
		if err != nil {
			t.Fatalf("read state: %v", err)
		}
		defer rs.Close()
		types, _ := rs.ColumnTypes()
		for rs.Next() {
			vals := make([]any, len(types))
			ptrs := make([]any, len(types))
			for i := range vals {
				ptrs[i] = &vals[i]
			}
			if err := rs.Scan(ptrs...); err != nil {
				t.Fatalf("read state: %v", err)
			}
			m := map[string]any{}
			for i, ct := range types {
				v := vals[i]
				if b, ok := v.([]byte); ok {
					v = string(b)
				}
				if strings.EqualFold(ct.DatabaseTypeName(), "BOOLEAN") && v != nil {
					v = toInt(v) != 0
				}
				m[ct.Name()] = v
			}
			out = append(out, m)
		}
		if err := rs.Err(); err != nil {
			t.Fatalf("read state: %v", err)
		}
	}
	return out
}

// Break makes the database refuse the sink: PostgreSQL stops accepting
// connections to the database and ends the open ones; SQLite is held under
// a write lock by another connection (Apply then fails with SQLITE_BUSY).
func (d *dest) Break(t *testing.T) {
	t.Helper()
	ctx := context.Background()
	switch d.driver {
	case "postgres":
		d.adminExec(t, `ALTER DATABASE "`+d.db+`" ALLOW_CONNECTIONS false`)
		d.adminExec(t, `SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '`+d.db+`' AND pid <> pg_backend_pid()`)
	case "sqlite":
		db, err := sql.Open("sqlite", d.dsn)
		if err != nil {
			t.Fatal(err)
		}
		conn, err := db.Conn(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := conn.ExecContext(ctx, "BEGIN EXCLUSIVE"); err != nil {
			t.Fatalf("break: %v", err)
		}
		d.lock, d.lockDB = conn, db
	default:
		t.Fatalf("cannot break %s", d.driver)
	}
}

func (d *dest) Heal(t *testing.T) {
	t.Helper()
	switch d.driver {
	case "postgres":
		d.adminExec(t, `ALTER DATABASE "`+d.db+`" ALLOW_CONNECTIONS true`)
	case "sqlite":
		d.lock.ExecContext(context.Background(), "ROLLBACK")
		d.lock.Close()
		d.lockDB.Close()
	}
}

func (d *dest) adminExec(t *testing.T, q string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, d.admin)
	if err != nil {
		t.Fatalf("admin connect: %v", err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, q); err != nil {
		t.Fatalf("admin %q: %v", q, err)
	}
}

// BadRecord: a text value with a NUL byte on PostgreSQL (which text and
// jsonb refuse: the database rejects it and the sink bisects the batch), a
// string that is not UTF-8 on SQLite (which the sink refuses up front).
func (d *dest) BadRecord(seq int64, key string) changelog.Record {
	fields := `{"id":` + jsonString(key) + `,"Title":"bad\u0000value"}`
	if d.driver != "postgres" {
		fields = `{"id":` + jsonString(key) + ",\"Title\":\"bad \xff\xfe value\"}"
	}
	return changelog.Record{Seq: seq, Op: changelog.OpUpsert, Key: key, Fields: json.RawMessage(fields)}
}

func jsonString(s string) string {
	b, _ := json.Marshal(s)
	return string(b)
}

func TestConformance(t *testing.T) {
	t.Parallel()
	for _, driver := range []string{"sqlite", "postgres", "sqlserver"} {
		for _, deletes := range []string{"hard", "soft"} {
			t.Run(driver+"/"+deletes, func(t *testing.T) {
				t.Parallel()
				if driver == "sqlserver" && os.Getenv("SLUICE_TEST_SQLSERVER_DSN") == "" {
					t.Skip("SQL Server not configured: set SLUICE_TEST_SQLSERVER_DSN (its SQL is tested as text)")
				}
				sinktest.Run(t, harness{driver: driver, deletes: deletes})
			})
		}
	}
}
