// Package sqlsink applies change records to a SQL table (PostgreSQL, SQLite or
// SQL Server) exactly as DESIGN §3.4 says: one row per key, one column per
// field, every op guarded by seq, each batch in one transaction together with
// the destination's (pipeline, destination, epoch, seq) checkpoint row.
//
// It must never apply an op older than what a row or tombstone already holds,
// never build SQL from field names without quoting them, never drop a column,
// and never let a driver or SDK type escape the package.
package sqlsink

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/sluicehq/sluice/internal/changelog"
	"github.com/sluicehq/sluice/internal/sink"
)

// Config says where a SQL destination lives.
type Config struct {
	// Driver is "postgres", "sqlite" or "sqlserver".
	Driver string
	// DSN is the driver's connection string. For SQL Server a DSN with
	// "fedauth=" (e.g. fedauth=ActiveDirectoryManagedIdentity) authenticates
	// with Entra ID.
	DSN string
	// Table is the destination table's name, used exactly (quoted).
	Table string
	// Deletes is "hard" (default: remove the row, keep a tombstone) or "soft"
	// (keep the row with _sluice_deleted = true).
	Deletes string
	// Pipeline and Destination key the checkpoint row in _sluice_checkpoints:
	// destination names are unique only within a pipeline (Invariant 5).
	Pipeline    string
	Destination string
	// Logger receives schema changes and rejected records; nil discards.
	Logger *slog.Logger
}

// System column and table names (DESIGN §3.4).
const (
	colID          = "id"
	colSeq         = "_sluice_seq"
	colTS          = "_sluice_ts"
	colDeleted     = "_sluice_deleted"
	tblCheckpoints = "_sluice_checkpoints"
	tombPrefix     = "_sluice_tombstones_"
	sysPrefix      = "_sluice_"
	// maxCheckpointName bounds pipeline and destination names in
	// _sluice_checkpoints (SQL Server: two nvarchar(128) key columns).
	maxCheckpointName = 128
)

// Sink writes batches into one table. Apply calls are serialised: a
// destination has one drain at a time, and the per-batch scratch state lives
// on the Sink.
type Sink struct {
	cfg  Config
	soft bool
	db   backend
	d    dialect
	log  *slog.Logger

	mu      sync.Mutex
	ready   bool               // tables exist and cols reflects the database
	cols    map[string]*column // by folded column name
	byField map[string]*column // by exact field name (cache of d.colName)
	all     []*column          // every known field column, sorted by name

	// scratch reused across batches to keep allocations per batch, not per record
	members []member
}

// column is one field column of the table.
type column struct {
	field string // the field name this column was found or created for
	name  string // column name in the database (field, or shortened)
	kind  kind
	stage int // index among the current plan's staged columns, or -1
}

// Open connects to the destination and creates what is missing: the table,
// the tombstone table (hard deletes) and _sluice_checkpoints.
func Open(ctx context.Context, cfg Config) (*Sink, error) {
	if cfg.Table == "" {
		return nil, errors.New("sql sink: table is empty")
	}
	if strings.IndexByte(cfg.Table, 0) >= 0 || !utf8.ValidString(cfg.Table) {
		return nil, fmt.Errorf("sql sink: table name %q is not valid text", cfg.Table)
	}
	if cfg.Pipeline == "" || cfg.Destination == "" {
		return nil, fmt.Errorf("sql sink: pipeline %q or destination %q is empty (together they key the _sluice_checkpoints row)", cfg.Pipeline, cfg.Destination)
	}
	if n := max(utf8.RuneCountInString(cfg.Pipeline), utf8.RuneCountInString(cfg.Destination)); n > maxCheckpointName {
		return nil, fmt.Errorf("sql sink: pipeline %q or destination %q is longer than %d characters (the _sluice_checkpoints key)", cfg.Pipeline, cfg.Destination, maxCheckpointName)
	}
	var soft bool
	switch cfg.Deletes {
	case "", "hard":
	case "soft":
		soft = true
	default:
		return nil, fmt.Errorf("sql sink: deletes %q: use hard or soft", cfg.Deletes)
	}
	d, err := newDialect(cfg.Driver)
	if err != nil {
		return nil, err
	}
	db, err := d.open(cfg.DSN)
	if err != nil {
		return nil, fmt.Errorf("sql sink %q: open %s: %w", cfg.Destination, cfg.Driver, err)
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &Sink{cfg: cfg, soft: soft, db: db, d: d, log: log.With("destination", cfg.Destination, "table", cfg.Table)}
	if err := s.ensureSchema(ctx); err != nil {
		db.close()
		return nil, err
	}
	return s, nil
}

// Close releases the database connections.
func (s *Sink) Close() error { return s.db.close() }

var _ sink.Sink = (*Sink)(nil)

func (s *Sink) table() string { return s.d.tableName(s.cfg.Table) }
func (s *Sink) tomb() string  { return s.d.tableName(tombPrefix + s.cfg.Table) }

// ensureSchema creates the tables if missing and loads the column list.
// Concurrent DDL that finds its work done is not an error: every DDL failure
// is followed by a look at what exists, and only a still-missing object fails.
func (s *Sink) ensureSchema(ctx context.Context) error {
	if s.ready {
		return nil
	}
	stmts := []string{s.d.createTable(s.table(), s.soft), s.d.createCheckpoints()}
	if !s.soft {
		stmts = append(stmts, s.d.createTombstones(s.tomb()))
	}
	for _, q := range stmts {
		if err := s.db.exec(ctx, q); err != nil {
			// A racing creator may have won; the column load below tells.
			s.log.Debug("create table failed, checking whether a concurrent sink created it", "err", err)
		}
	}
	if err := s.loadColumns(ctx); err != nil {
		return err
	}
	if s.soft && s.cols[s.d.fold(colDeleted)] == nil {
		if err := s.addColumns(ctx, []*column{{name: colDeleted, kind: kindBool}}); err != nil {
			return err
		}
	}
	// The checkpoint and tombstone tables must exist now: probe them.
	probe := []string{s.d.tableName(tblCheckpoints)}
	if !s.soft {
		probe = append(probe, s.tomb())
	}
	for _, t := range probe {
		if err := s.db.exec(ctx, s.d.probe(t)); err != nil {
			return fmt.Errorf("sql sink %q: table %s is missing and could not be created: %w", s.cfg.Destination, t, err)
		}
	}
	if err := s.migrateCheckpoints(ctx); err != nil {
		return err
	}
	if err := s.seedCheckpoint(ctx); err != nil {
		return err
	}
	s.ready = true
	return nil
}

// EpochFloor returns the highest epoch _sluice_checkpoints holds for
// (pipeline, destination), counting the destination's legacy row; 0 when
// there is none. A drain whose own epoch is not above it would be refused
// by every batch (a legacy row shared by two pipelines holds the higher of
// their epochs; a recreated checkpoint blob starts again at 1), so the
// engine raises its epoch past it first (Invariant 5).
func (s *Sink) EpochFloor(ctx context.Context, pipeline, destination string) (int64, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.ensureSchema(ctx); err != nil {
		return 0, err
	}
	var floor int64
	err := s.db.inTx(ctx, false, func(tx txn) error {
		var err error
		floor, err = tx.queryInt(ctx, s.d.epochFloor(), pipeline, destination)
		return err
	})
	if err != nil {
		s.ready = false
		return 0, fmt.Errorf("sql sink %q: read the epoch of %s/%s in %s: %w", s.cfg.Destination, pipeline, destination, tblCheckpoints, err)
	}
	return floor, nil
}

// checkpointsKeyed reports whether _sluice_checkpoints is keyed by pipeline
// and destination.
func (s *Sink) checkpointsKeyed(ctx context.Context) (bool, error) {
	var keyed bool
	err := s.db.inTx(ctx, false, func(tx txn) error {
		var err error
		keyed, err = tx.queryRow(ctx, s.d.checkpointsKeyed())
		return err
	})
	return keyed, err
}

// migrateCheckpoints turns a _sluice_checkpoints keyed by destination alone
// (sluice before destinations were told apart by pipeline) into one keyed by
// pipeline and destination. The old rows become pipeline "" rows, from which
// seedCheckpoint starts each pipeline's row. PostgreSQL and SQL Server
// change the table in place; SQLite, which cannot change a primary key,
// rebuilds it in the order its documentation gives. Either way a user's
// view on the table keeps working.
//
// Invariant 5: the migration runs in one transaction under a write lock on
// the table, so no batch commits between the copy and the switch, and
// several sinks opening at once migrate once: the others wait, find the work
// done and go on. A failure that leaves the table migrated (another sink
// won a race the lock did not cover) is not an error.
func (s *Sink) migrateCheckpoints(ctx context.Context) error {
	keyed, err := s.checkpointsKeyed(ctx)
	if err != nil {
		return fmt.Errorf("sql sink %q: read the shape of %s: %w", s.cfg.Destination, tblCheckpoints, err)
	}
	if keyed {
		return nil
	}
	migrated := false
	err = s.db.inTx(ctx, true, func(tx txn) error {
		if err := tx.exec(ctx, s.d.lockCheckpoints()); err != nil {
			return fmt.Errorf("lock: %w", err)
		}
		keyed, err := tx.queryRow(ctx, s.d.checkpointsKeyed())
		if err != nil {
			return err
		}
		if keyed {
			s.log.Debug("a concurrent sink migrated _sluice_checkpoints while this one waited for the lock")
			return nil
		}
		for _, q := range s.d.migrateCheckpoints() {
			if err := tx.exec(ctx, q); err != nil {
				return fmt.Errorf("%s: %w", q, err)
			}
		}
		migrated = true
		return nil
	})
	if err != nil {
		if keyed, kerr := s.checkpointsKeyed(ctx); kerr == nil && keyed {
			s.log.Debug("migrating _sluice_checkpoints failed, but a concurrent sink migrated it", "err", err)
			return nil
		}
		return fmt.Errorf("sql sink %q: migrate %s to rows keyed by (pipeline, destination): %w", s.cfg.Destination, tblCheckpoints, err)
	}
	if migrated {
		s.log.Info("migrated _sluice_checkpoints to rows keyed by (pipeline, destination); the old rows are kept as pipeline \"\"")
	}
	return nil
}

// seedCheckpoint starts this sink's checkpoint row from its destination's
// legacy row, if it has none yet.
//
// Invariant 5: a legacy row holds the newest epoch some drain of this
// destination name wrote before the migration; starting from it keeps a
// drain that was paused before the upgrade, with an older epoch, refused.
// It is an insert-if-absent, so sinks seeding at once agree and a row the
// pipeline already has is never moved back.
func (s *Sink) seedCheckpoint(ctx context.Context) error {
	err := s.db.inTx(ctx, true, func(tx txn) error {
		return tx.exec(ctx, s.d.seedCheckpoint(), s.cfg.Pipeline, s.cfg.Destination)
	})
	if err != nil {
		return fmt.Errorf("sql sink %q: start the %s row of pipeline %q from the destination's legacy row: %w",
			s.cfg.Destination, tblCheckpoints, s.cfg.Pipeline, err)
	}
	return nil
}

// loadColumns reads the table's columns; the table must exist.
func (s *Sink) loadColumns(ctx context.Context) error {
	list, err := s.db.columns(ctx, s.d.listColumns(), s.d.tableNameRaw(s.cfg.Table))
	if err != nil {
		return fmt.Errorf("sql sink %q: read columns of %s: %w", s.cfg.Destination, s.cfg.Table, err)
	}
	cols := map[string]*column{}
	for _, nt := range list {
		name, typ := nt[0], nt[1]
		cols[s.d.fold(name)] = &column{field: name, name: name, kind: s.d.kindOf(typ), stage: -1}
	}
	if cols[s.d.fold(colID)] == nil || cols[s.d.fold(colSeq)] == nil {
		return fmt.Errorf("sql sink %q: table %s is missing or lacks the id and %s columns", s.cfg.Destination, s.cfg.Table, colSeq)
	}
	s.cols = cols
	s.byField = map[string]*column{}
	s.all = s.all[:0]
	for _, c := range cols {
		if !isSystem(s.d.fold(c.name), s.d) {
			s.all = append(s.all, c)
		}
	}
	sort.Slice(s.all, func(i, j int) bool { return s.all[i].name < s.all[j].name })
	return nil
}

func isSystem(folded string, d dialect) bool {
	return folded == d.fold(colID) || strings.HasPrefix(folded, d.fold(sysPrefix))
}

// addColumns adds columns, tolerating a concurrent sink that added them first.
func (s *Sink) addColumns(ctx context.Context, add []*column) error {
	var firstErr error
	for _, c := range add {
		q := s.d.addColumn(s.table(), c.name, s.d.typeOf(c.kind))
		if err := s.db.exec(ctx, q); err != nil && firstErr == nil {
			firstErr = err
		} else if err == nil {
			s.log.Info("added column", "column", c.name, "type", s.d.typeOf(c.kind))
		}
	}
	if err := s.loadColumns(ctx); err != nil {
		return err
	}
	for _, c := range add {
		if s.cols[s.d.fold(c.name)] == nil {
			return fmt.Errorf("sql sink %q: add column %q to %s: %w", s.cfg.Destination, c.name, s.cfg.Table, firstErr)
		}
	}
	return nil
}

// lookup finds the column a field is stored in.
func (s *Sink) lookup(field []byte) *column {
	if c, ok := s.byField[string(field)]; ok {
		return c
	}
	name := s.d.colName(string(field))
	c := s.cols[s.d.fold(name)]
	if c != nil {
		s.byField[string(field)] = c
	}
	return c
}

// op is one record reduced to what the merge needs.
type op struct {
	idx  int // index in the batch
	key  string
	seq  int64
	ts   time.Time
	del  bool
	vals []any // aligned with plan.staged
}

// plan is one batch ready to apply.
type plan struct {
	table, tomb string // quoted
	soft        bool
	all         []*column // every known field column, sorted
	staged      []*column // columns some op of the batch carries a value for
	ops         []*op     // last good op per key, sorted by key (stable lock order)
	pipeline    string
	dest        string
	epoch, seq  int64
}

// Apply applies a batch (sink.Sink). See the package comment for the rules.
func (s *Sink) Apply(ctx context.Context, b sink.Batch) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(b.Records) == 0 {
		return nil
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("sql sink %q: %w", s.cfg.Destination, err)
	}
	if err := s.ensureSchema(ctx); err != nil {
		return err
	}
	bad := map[int]string{} // batch index → reason
	ops, err := s.decode(ctx, b.Records, bad)
	if err != nil {
		s.ready = false
		return err
	}
	p := &plan{
		table: s.table(), tomb: s.tomb(), soft: s.soft, all: s.all,
		pipeline: s.cfg.Pipeline, dest: s.cfg.Destination, epoch: b.Epoch, seq: b.Records[len(b.Records)-1].Seq,
	}
	for _, c := range s.all {
		if c.stage >= 0 {
			p.staged = append(p.staged, c)
		}
	}
	for {
		p.ops = reduce(ops, bad)
		err := s.run(ctx, p, true)
		if err == nil {
			break
		}
		if errors.Is(err, sink.ErrStaleEpoch) {
			return err
		}
		if ctx.Err() != nil || !s.d.isDataError(err) {
			// Transient: the next Apply rechecks the schema, which may have
			// changed under us (a dropped table, a DDL race).
			s.ready = false
			return fmt.Errorf("sql sink %q: apply seq %d..%d to %s: %w",
				s.cfg.Destination, b.Records[0].Seq, p.seq, s.cfg.Table, err)
		}
		found, ferr := s.bisect(ctx, p, p.ops, err)
		if ferr != nil {
			s.ready = false
			if errors.Is(ferr, sink.ErrStaleEpoch) {
				return ferr
			}
			return fmt.Errorf("sql sink %q: apply seq %d..%d to %s: %w",
				s.cfg.Destination, b.Records[0].Seq, p.seq, s.cfg.Table, ferr)
		}
		if len(found) == 0 {
			// No single record fails on its own: not the data's fault.
			s.ready = false
			return fmt.Errorf("sql sink %q: apply seq %d..%d to %s: %w",
				s.cfg.Destination, b.Records[0].Seq, p.seq, s.cfg.Table, err)
		}
		for i, reason := range found {
			bad[i] = reason
		}
	}
	if len(bad) == 0 {
		return nil
	}
	re := &sink.RecordErrors{}
	for i, reason := range bad {
		r := &b.Records[i]
		re.Failed = append(re.Failed, sink.RecordError{Seq: r.Seq, Key: r.Key, Reason: reason})
	}
	slices.SortFunc(re.Failed, func(a, b sink.RecordError) int { return cmp.Compare(a.Seq, b.Seq) })
	s.log.Warn("records rejected", "count", len(re.Failed), "first_seq", re.Failed[0].Seq, "reason", re.Failed[0].Reason)
	return re
}

// decode validates every record, decodes each upsert's fields once, adds the
// columns new fields need, and converts values to their columns' types.
// Rejected records land in bad; the error is for the database (DDL) only.
func (s *Sink) decode(ctx context.Context, recs []changelog.Record, bad map[int]string) ([]op, error) {
	ops := make([]op, len(recs))
	// Pass 1: split every upsert's fields into members (no copies).
	spans := make([][2]int, len(recs)) // members[lo:hi] of record i
	members := s.members[:0]
	type newField struct {
		col   *column
		kinds uint8 // bit set of kinds seen
	}
	var fresh map[string]*newField
	var freshOrder []string
	for _, c := range s.all {
		c.stage = -1
	}
	for i := range recs {
		r := &recs[i]
		ops[i] = op{idx: i, key: r.Key, seq: r.Seq, ts: r.TS, del: r.Op == changelog.OpDelete}
		if reason := s.checkRecord(r); reason != "" {
			bad[i] = reason
			continue
		}
		if ops[i].del {
			continue
		}
		lo := len(members)
		var err error
		members, err = scanObject(members, r.Fields)
		if err != nil {
			members = members[:lo]
			bad[i] = err.Error()
			continue
		}
		ms := members[lo:]
		for j := range ms {
			m := &ms[j]
			if reason := s.checkField(m.name); reason != "" {
				if reason == skipField {
					m.name = nil
					continue
				}
				bad[i] = reason
				break
			}
			k := kindOfRaw(m.raw)
			if c := s.lookup(m.name); c != nil {
				c.stage = 0 // mark as carried by this batch
				continue
			}
			if k == kindNone {
				m.name = nil // a null for an unknown field: nothing to store
				continue
			}
			if fresh == nil {
				fresh = map[string]*newField{}
			}
			nf := fresh[string(m.name)]
			if nf == nil {
				f := string(m.name)
				nf = &newField{col: &column{field: f, name: s.d.colName(f)}}
				fresh[f] = nf
				freshOrder = append(freshOrder, f)
			}
			nf.kinds |= 1 << k
		}
		if _, rejected := bad[i]; rejected {
			members = members[:lo]
			continue
		}
		spans[i] = [2]int{lo, len(members)}
	}
	s.members = members

	// New fields become columns before the batch's transaction: DDL outside it
	// keeps the data transaction short and lets racing sinks both succeed.
	if len(fresh) > 0 {
		add := make([]*column, 0, len(fresh))
		seen := map[string]bool{}
		for _, f := range freshOrder {
			nf := fresh[f]
			switch nf.kinds {
			case 1 << kindText:
				nf.col.kind = kindText
			case 1 << kindNumber:
				nf.col.kind = kindNumber
			case 1 << kindBool:
				nf.col.kind = kindBool
			case 1 << kindJSON:
				nf.col.kind = kindJSON
			default: // mixed types in one batch: text holds them all
				nf.col.kind = kindText
			}
			folded := s.d.fold(nf.col.name)
			if seen[folded] {
				continue // two fields that the database sees as one name
			}
			seen[folded] = true
			add = append(add, nf.col)
		}
		if err := s.addColumns(ctx, add); err != nil {
			return nil, err
		}
		for _, c := range s.all {
			c.stage = -1
		}
		// Column objects were reloaded: mark again which ones this batch carries.
		for i := range recs {
			for _, m := range members[spans[i][0]:spans[i][1]] {
				if m.name != nil {
					if c := s.lookup(m.name); c != nil {
						c.stage = 0
					}
				}
			}
		}
	}

	// Number the staged columns.
	n := 0
	for _, c := range s.all {
		if c.stage >= 0 {
			c.stage = n
			n++
		}
	}
	// Pass 2: convert values. One backing array for the whole batch.
	backing := make([]any, 0, n*len(recs))
	for i := range recs {
		o := &ops[i]
		if _, rejected := bad[i]; rejected || o.del {
			continue
		}
		lo := len(backing)
		backing = backing[:lo+n]
		o.vals = backing[lo : lo+n : lo+n]
		for _, m := range members[spans[i][0]:spans[i][1]] {
			if m.name == nil {
				continue
			}
			c := s.lookup(m.name)
			if c == nil {
				bad[i] = fmt.Sprintf("field %q: no column after schema update", m.name)
				break
			}
			v, err := valueFor(m.raw, c.kind)
			if err != nil {
				bad[i] = fmt.Sprintf("field %q (column %s): %v", m.name, c.kind, err)
				break
			}
			o.vals[c.stage] = v
		}
	}
	return ops, nil
}

const skipField = "skip"

// checkRecord returns why a record can never be applied, or "".
func (s *Sink) checkRecord(r *changelog.Record) string {
	switch {
	case r.Key == "":
		return "empty key: the id column is the primary key"
	case !utf8.ValidString(r.Key) || strings.IndexByte(r.Key, 0) >= 0:
		return "key is not valid text (invalid UTF-8 or a NUL byte)"
	case r.Op != changelog.OpUpsert && r.Op != changelog.OpDelete:
		return fmt.Sprintf("unknown op %q", r.Op)
	}
	return s.d.checkKey(r.Key)
}

// checkField returns why a field name cannot be a column ("" if it can), or
// skipField for the "id" field, which is the key and already the primary key.
func (s *Sink) checkField(name []byte) string {
	if len(name) == 0 {
		return "a field has an empty name"
	}
	if string(name) == colID {
		return skipField // §3.3: fields.id is the key
	}
	if len(name) >= len(sysPrefix) || len(name) <= len(colID) {
		folded := s.d.fold(string(name))
		if folded == s.d.fold(colID) {
			return skipField
		}
		if strings.HasPrefix(folded, s.d.fold(sysPrefix)) {
			return fmt.Sprintf("field %q collides with sluice's own %s columns", name, sysPrefix)
		}
	}
	if !utf8.Valid(name) {
		return "a field name is not valid UTF-8"
	}
	for _, c := range name {
		if c == 0 {
			return fmt.Sprintf("field %q has a NUL byte in its name", name)
		}
	}
	return ""
}

// reduce keeps the last good op per key (DESIGN §3.4: within a batch only the
// last op per key is applied), sorted by key so that concurrent writers lock
// rows in the same order.
func reduce(ops []op, bad map[int]string) []*op {
	last := make(map[string]int, len(ops))
	for i := range ops {
		if _, rejected := bad[i]; rejected {
			continue
		}
		last[ops[i].key] = i
	}
	out := make([]*op, 0, len(last))
	for _, i := range last {
		out = append(out, &ops[i])
	}
	slices.SortFunc(out, func(a, b *op) int { return strings.Compare(a.key, b.key) })
	return out
}

// run applies p in one transaction; with commit false it rolls back (a
// probe while bisecting).
func (s *Sink) run(ctx context.Context, p *plan, commit bool) error {
	return s.db.inTx(ctx, commit, func(tx txn) error {
		// Invariant 5: the checkpoint row is written first, in the batch's
		// transaction, and refuses an epoch older than the newest seen. The
		// row lock it takes serialises this batch against a newer drain.
		ok, err := tx.queryRow(ctx, s.d.checkpoint(), p.pipeline, p.dest, p.epoch, p.seq)
		if err != nil {
			return fmt.Errorf("write checkpoint: %w", err)
		}
		if !ok {
			return sink.ErrStaleEpoch
		}
		if len(p.ops) == 0 {
			return nil
		}
		for _, q := range s.d.createStage(p) {
			if err := tx.exec(ctx, q); err != nil {
				return fmt.Errorf("create staging table: %w", err)
			}
		}
		if err := tx.load(ctx, p); err != nil {
			return fmt.Errorf("load staging table: %w", err)
		}
		for _, q := range s.d.merge(p) {
			if err := tx.exec(ctx, q); err != nil {
				return fmt.Errorf("merge: %w", err)
			}
		}
		return nil
	})
}

// bisect finds the ops the database rejects on their own, probing halves in
// rolled-back transactions. It returns batch index → reason.
func (s *Sink) bisect(ctx context.Context, p *plan, ops []*op, cause error) (map[int]string, error) {
	s.log.Warn("batch rejected by the database, looking for the bad records", "ops", len(ops), "err", cause)
	found := map[int]string{}
	var walk func(ops []*op, known error) error
	walk = func(ops []*op, known error) error {
		if known == nil {
			sub := *p
			sub.ops = ops
			known = s.run(ctx, &sub, false)
			if known == nil {
				return nil
			}
			if errors.Is(known, sink.ErrStaleEpoch) || !s.d.isDataError(known) {
				return known
			}
		}
		if len(ops) == 1 {
			found[ops[0].idx] = "the database rejected the record: " + s.d.reason(known)
			return nil
		}
		h := len(ops) / 2
		if err := walk(ops[:h], nil); err != nil {
			return err
		}
		return walk(ops[h:], nil)
	}
	if err := walk(ops, cause); err != nil {
		return nil, err
	}
	return found, nil
}
