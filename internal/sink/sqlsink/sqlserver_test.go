package sqlsink

import (
	"strconv"
	"strings"
	"testing"
	"unicode/utf16"
)

// SQL Server cannot run here, so its statements are checked as text.
func mssqlPlan(soft bool) *plan {
	d := sqlserver{}
	title := &column{field: "Title", name: "Title", kind: kindText, stage: 0}
	amount := &column{field: "Amount", name: "Amount", kind: kindNumber, stage: 1}
	evil := &column{field: "a]b", name: "a]b", kind: kindBool, stage: -1} // known, absent from the batch
	return &plan{
		table: d.tableName("items"), tomb: d.tableName(tombPrefix + "items"), soft: soft,
		all:    []*column{amount, title, evil},
		staged: []*column{title, amount},
	}
}

func TestSQLServerStatements(t *testing.T) {
	t.Parallel()
	d := sqlserver{}
	tests := []struct {
		name string
		got  string
		want string
	}{
		{"createTable", d.createTable("[it's]]x]", false),
			"IF OBJECT_ID(N'[it''s]]x]', N'U') IS NULL CREATE TABLE [it's]]x] ([id] nvarchar(450) NOT NULL PRIMARY KEY, [_sluice_seq] bigint NOT NULL, [_sluice_ts] datetime2(3) NOT NULL)"},
		{"createTableSoft", d.createTable("[t]", true),
			"IF OBJECT_ID(N'[t]', N'U') IS NULL CREATE TABLE [t] ([id] nvarchar(450) NOT NULL PRIMARY KEY, [_sluice_seq] bigint NOT NULL, [_sluice_ts] datetime2(3) NOT NULL, [_sluice_deleted] bit NOT NULL DEFAULT 0)"},
		{"createTombstones", d.createTombstones(d.tableName(tombPrefix + "t")),
			"IF OBJECT_ID(N'[_sluice_tombstones_t]', N'U') IS NULL CREATE TABLE [_sluice_tombstones_t] ([id] nvarchar(450) NOT NULL PRIMARY KEY, [seq] bigint NOT NULL)"},
		{"createCheckpoints", d.createCheckpoints(),
			"IF OBJECT_ID(N'[_sluice_checkpoints]', N'U') IS NULL CREATE TABLE [_sluice_checkpoints] ([pipeline] nvarchar(128) NOT NULL, [destination] nvarchar(128) NOT NULL, [epoch] bigint NOT NULL, [seq] bigint NOT NULL, PRIMARY KEY ([pipeline], [destination]))"},
		{"addColumnInjection", d.addColumn("[t]", `"; DROP TABLE x; --]'`, d.typeOf(kindText)),
			`IF COL_LENGTH(N'[t]', N'"; DROP TABLE x; --]''') IS NULL ALTER TABLE [t] ADD ["; DROP TABLE x; --]]'] nvarchar(max)`},
		{"addColumnTypes", d.addColumn("[t]", "n", d.typeOf(kindNumber)) + ";" + d.addColumn("[t]", "b", d.typeOf(kindBool)) + ";" + d.addColumn("[t]", "j", d.typeOf(kindJSON)),
			"IF COL_LENGTH(N'[t]', N'n') IS NULL ALTER TABLE [t] ADD [n] float;IF COL_LENGTH(N'[t]', N'b') IS NULL ALTER TABLE [t] ADD [b] bit;IF COL_LENGTH(N'[t]', N'j') IS NULL ALTER TABLE [t] ADD [j] nvarchar(max)"},
		{"listColumns", d.listColumns(),
			"SELECT c.name, t.name FROM sys.columns AS c JOIN sys.types AS t ON t.user_type_id = c.user_type_id WHERE c.object_id = OBJECT_ID(QUOTENAME(@p1))"},
		{"checkpoint", d.checkpoint(),
			"MERGE [_sluice_checkpoints] WITH (HOLDLOCK) AS c\n" +
				"USING (VALUES (@p1, @p2, @p3, @p4)) AS s ([pipeline], [destination], [epoch], [seq]) ON c.[pipeline] = s.[pipeline] AND c.[destination] = s.[destination]\n" +
				"WHEN MATCHED AND c.[epoch] <= s.[epoch] THEN UPDATE SET [epoch] = s.[epoch], [seq] = s.[seq]\n" +
				"WHEN NOT MATCHED THEN INSERT ([pipeline], [destination], [epoch], [seq]) VALUES (s.[pipeline], s.[destination], s.[epoch], s.[seq])\n" +
				"OUTPUT inserted.[epoch];"},
		{"checkpointsKeyed", d.checkpointsKeyed(),
			"SELECT 1 WHERE COL_LENGTH(N'[_sluice_checkpoints]', N'pipeline') IS NOT NULL"},
		{"lockCheckpoints", d.lockCheckpoints(),
			"DECLARE @lock int;\n" +
				"EXEC @lock = sp_getapplock @Resource = N'sluice:_sluice_checkpoints', @LockMode = N'Exclusive', @LockOwner = N'Transaction', @LockTimeout = 60000;\n" +
				"IF @lock < 0 THROW 50000, N'could not take the lock for migrating _sluice_checkpoints (sp_getapplock)', 1;"},
		{"migrateCheckpoints", strings.Join(d.migrateCheckpoints(), ";\n"),
			"ALTER TABLE [_sluice_checkpoints] ADD [pipeline] nvarchar(128) NOT NULL CONSTRAINT [_sluice_checkpoints_pipeline_default] DEFAULT N'';\n" +
				"ALTER TABLE [_sluice_checkpoints] DROP CONSTRAINT [_sluice_checkpoints_pipeline_default];\n" +
				"DECLARE @pk sysname = (SELECT [name] FROM sys.key_constraints WHERE [parent_object_id] = OBJECT_ID(N'[_sluice_checkpoints]') AND [type] = 'PK');\n" +
				"IF @pk IS NOT NULL\n" +
				"BEGIN\n" +
				"\tDECLARE @drop nvarchar(max) = N'ALTER TABLE [_sluice_checkpoints] DROP CONSTRAINT ' + QUOTENAME(@pk);\n" +
				"\tEXEC sp_executesql @drop;\n" +
				"END;\n" +
				"ALTER TABLE [_sluice_checkpoints] ADD PRIMARY KEY ([pipeline], [destination])"},
		{"seedCheckpoint", d.seedCheckpoint(),
			"MERGE [_sluice_checkpoints] WITH (HOLDLOCK) AS c\n" +
				"USING (SELECT @p1 AS [pipeline], l.[destination], l.[epoch], l.[seq] FROM [_sluice_checkpoints] AS l WHERE l.[pipeline] = N'' AND l.[destination] = @p2) AS s\n" +
				"ON c.[pipeline] = s.[pipeline] AND c.[destination] = s.[destination]\n" +
				"WHEN NOT MATCHED THEN INSERT ([pipeline], [destination], [epoch], [seq]) VALUES (s.[pipeline], s.[destination], s.[epoch], s.[seq]);"},
		{"epochFloor", d.epochFloor(),
			"SELECT COALESCE(MAX([epoch]), 0) FROM [_sluice_checkpoints] WHERE [destination] = @p2 AND [pipeline] IN (@p1, N'')"},
		{"createStage", strings.Join(d.createStage(mssqlPlan(false)), ";\n"),
			"IF OBJECT_ID(N'tempdb..#sluice_stage') IS NOT NULL DROP TABLE #sluice_stage;\nCREATE TABLE #sluice_stage (_id nvarchar(450) COLLATE DATABASE_DEFAULT NOT NULL, _seq bigint NOT NULL, _ts datetime2(3) NOT NULL, _del bit NOT NULL, c0 nvarchar(max) COLLATE DATABASE_DEFAULT NULL, c1 float NULL)"},
		{"loadStage", multiInsert(mssqlStage, stageColNames(6), 2, func(n int) string { return "@p" + itoa(n) }),
			"INSERT INTO #sluice_stage (_id, _seq, _ts, _del, c0, c1) VALUES (@p1, @p2, @p3, @p4, @p5, @p6), (@p7, @p8, @p9, @p10, @p11, @p12)"},
		{"mergeHard", strings.Join(d.merge(mssqlPlan(false)), ";\n"),
			"MERGE [items] WITH (HOLDLOCK) AS t\n" +
				"USING (SELECT * FROM #sluice_stage AS x WHERE NOT EXISTS (SELECT 1 FROM [_sluice_tombstones_items] AS b WHERE b.[id] = x._id AND b.[seq] > x._seq)) AS s ON t.[id] = s._id\n" +
				"WHEN MATCHED AND s._del = 0 AND t.[_sluice_seq] <= s._seq THEN UPDATE SET [Amount] = s.c1, [Title] = s.c0, [a]]b] = NULL, [_sluice_seq] = s._seq, [_sluice_ts] = s._ts\n" +
				"WHEN MATCHED AND s._del = 1 AND t.[_sluice_seq] <= s._seq THEN DELETE\n" +
				"WHEN NOT MATCHED BY TARGET AND s._del = 0 THEN INSERT ([id], [Amount], [Title], [a]]b], [_sluice_seq], [_sluice_ts]) VALUES (s._id, s.c1, s.c0, NULL, s._seq, s._ts);;\n" +
				"MERGE [_sluice_tombstones_items] WITH (HOLDLOCK) AS b USING (SELECT _id, _seq FROM #sluice_stage WHERE _del = 1) AS s ON b.[id] = s._id\n" +
				"WHEN MATCHED AND b.[seq] < s._seq THEN UPDATE SET [seq] = s._seq\n" +
				"WHEN NOT MATCHED THEN INSERT ([id], [seq]) VALUES (s._id, s._seq);;\n" +
				"DROP TABLE #sluice_stage"},
		{"mergeSoft", strings.Join(d.merge(mssqlPlan(true)), ";\n"),
			"MERGE [items] WITH (HOLDLOCK) AS t USING #sluice_stage AS s ON t.[id] = s._id\n" +
				"WHEN MATCHED AND t.[_sluice_seq] <= s._seq THEN UPDATE SET [Amount] = CASE WHEN s._del = 1 THEN t.[Amount] ELSE s.c1 END, [Title] = CASE WHEN s._del = 1 THEN t.[Title] ELSE s.c0 END, [a]]b] = CASE WHEN s._del = 1 THEN t.[a]]b] ELSE NULL END, [_sluice_seq] = s._seq, [_sluice_ts] = s._ts, [_sluice_deleted] = s._del\n" +
				"WHEN NOT MATCHED BY TARGET THEN INSERT ([id], [Amount], [Title], [a]]b], [_sluice_seq], [_sluice_ts], [_sluice_deleted]) VALUES (s._id, s.c1, s.c0, NULL, s._seq, s._ts, s._del);;\n" +
				"DROP TABLE #sluice_stage"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			if tc.got != tc.want {
				t.Errorf("got:\n%s\nwant:\n%s", tc.got, tc.want)
			}
		})
	}
}

func itoa(n int) string { return strconv.Itoa(n) }

func TestSQLServerLimits(t *testing.T) {
	t.Parallel()
	d := sqlserver{}
	// Names: at most 128 UTF-16 units, deterministic, distinct per field.
	long := strings.Repeat("Ä", 100) + strings.Repeat("😀", 40)
	a, b := d.colName(long), d.colName(long+"x")
	if n := len(utf16.Encode([]rune(a))); n > mssqlMaxIdent {
		t.Errorf("shortened name has %d UTF-16 units, limit %d", n, mssqlMaxIdent)
	}
	if a != d.colName(long) || a == b {
		t.Errorf("shortening not deterministic or not distinct: %q %q", a, b)
	}
	if d.colName("short") != "short" {
		t.Error("a short name was changed")
	}
	// Keys: nvarchar(450).
	if d.checkKey(strings.Repeat("k", 450)) != "" || d.checkKey(strings.Repeat("k", 451)) == "" {
		t.Error("key limit is not 450 characters")
	}
	// Parameters: every chunk of the stage load stays under 2,100.
	for _, ncols := range []int{4, 5, 30, 200, 1000} {
		per := rowsPerInsert(ncols, mssqlMaxParams, mssqlMaxRows)
		if per*ncols > 2100 || per > 1000 || per < 1 {
			t.Errorf("%d columns: %d rows per INSERT", ncols, per)
		}
	}
	// Managed identity DSNs go through the azuread driver.
	if _, err := d.open("sqlserver://x.database.windows.net?database=db&fedauth=ActiveDirectoryManagedIdentity"); err != nil {
		t.Errorf("open with fedauth: %v", err)
	}
}
