package main

import (
	"context"
	"database/sql"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"reflect"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	_ "modernc.org/sqlite" // database/sql driver "sqlite", to read the SQLite destinations

	"github.com/sluicehq/sluice/internal/azstore"
	"github.com/sluicehq/sluice/internal/changelog"
	"github.com/sluicehq/sluice/internal/checkpoint"
)

// folded is the last record of one key.
type folded struct {
	seq    int64
	op     changelog.Op
	fields json.RawMessage
}

type logInfo struct {
	head    int64
	records []changelog.Record // fields dropped; seq-indexed from 1
	fold    map[string]folded
	live    map[string]int64 // key → seq of its last upsert, for live keys
}

func (s *suite) check(ctx context.Context) *Report {
	rep := &Report{}
	result := func(name string, err error) {
		line := "PASS " + name
		if err != nil {
			line = "FAIL " + name + ": " + err.Error()
			rep.Failed++
		} else {
			rep.Passed++
		}
		rep.Lines = append(rep.Lines, line)
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()

	logs := map[string]*logInfo{}
	scanErrs := map[string]error{}
	for _, p := range pipelines {
		logs[p.name], scanErrs[p.name] = s.scanLog(ctx, p.name)
	}
	snap, snapErr := s.sim.snapshot(ctx)
	dels, delErr := s.sim.deletions(ctx)
	recv := s.recv.stats()
	poison, poisonErr := s.drainPoison(ctx)

	s.printCounts(logs, snap, recv, poison)

	for _, p := range pipelines {
		li := logs[p.name]
		check := func(name string, err error) { result(p.name+": "+name, err) }
		check("log is gap-free (changelog.Scan 1..head)", scanErrs[p.name])
		switch {
		case li == nil:
			check("log folds to the simulator's list", fmt.Errorf("no log to fold"))
			check("log never deletes an item that exists", fmt.Errorf("no log"))
		case snapErr != nil:
			check("log folds to the simulator's list", snapErr)
			check("log never deletes an item that exists", snapErr)
		case delErr != nil:
			check("log folds to the simulator's list", compareSnapshot(li, snap))
			check("log never deletes an item that exists", delErr)
		default:
			check("log folds to the simulator's list", compareSnapshot(li, snap))
			check("log never deletes an item that exists", checkDeletes(li, snap, dels))
		}
		check("log ts never goes backwards", checkTS(li))
		for _, d := range p.dests {
			switch d.kind {
			case kindPostgres:
				check(fmt.Sprintf("%s: postgres table %s equals the folded log (ids, _sluice_seq)", d.name, d.table), s.checkPostgres(ctx, d.table, li))
				check(d.name+": its own _sluice_checkpoints row is at the head", s.checkCheckpointRow(ctx, p.name, d, li))
			case kindSQLite:
				check(fmt.Sprintf("%s: sqlite table %s equals the folded log (ids, _sluice_seq)", d.name, d.table), s.checkSQLite(ctx, d.table, li))
				check(d.name+": its own _sluice_checkpoints row is at the head", s.checkCheckpointRow(ctx, p.name, d, li))
			case kindHTTP:
				bySeq := recv.got[p.name].bySeq
				check(d.name+": http received every seq at least once", checkHTTPComplete(li, bySeq))
				check(d.name+": http event ids say seq and generation, repeats keep them, all match the log",
					s.checkHTTPIDs(ctx, p.name, d.name, li, bySeq))
			}
		}
		check("checkpoints at the head, nothing dead-lettered or halted", s.checkCheckpoints(ctx, p, li))
	}
	result("http requests well-formed and signed", listErr(recv.bad))
	result("poison queue holds nothing that lost data", s.checkPoison(ctx, poison, poisonErr))
	result("fault schedule carried out", s.checkFaults())

	return rep
}

// print ends the output: one line per check, then the tally.
func (rep *Report) print(w io.Writer) {
	for _, l := range rep.Lines {
		fmt.Fprintln(w, l)
	}
	fmt.Fprintf(w, "%d passed, %d failed\n", rep.Passed, rep.Failed)
}

// scanLog reads a pipeline's whole committed log.
func (s *suite) scanLog(ctx context.Context, pipeline string) (*logInfo, error) {
	lg := changelog.New(s.st, pipeline, changelog.Options{})
	st, err := lg.LoadState(ctx)
	if err != nil {
		return nil, err
	}
	li := &logInfo{head: st.Head.Seq, fold: map[string]folded{}, live: map[string]int64{},
		records: make([]changelog.Record, 1, st.Head.Seq+1)}
	sc := lg.Scan(ctx, 1, st.Head.Seq)
	defer sc.Close()
	for sc.Next() {
		r := *sc.Record()
		r.Fields = append(json.RawMessage(nil), r.Fields...)
		li.fold[r.Key] = folded{seq: r.Seq, op: r.Op, fields: r.Fields}
		r.Fields = nil
		li.records = append(li.records, r)
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	if n := int64(len(li.records) - 1); n != li.head {
		return nil, fmt.Errorf("scan returned %d records, the head is %d", n, li.head)
	}
	for i, r := range li.records[1:] {
		if r.Seq != int64(i+1) {
			return nil, fmt.Errorf("record %d has seq %d", i+1, r.Seq)
		}
	}
	for k, f := range li.fold {
		if f.op == changelog.OpUpsert {
			li.live[k] = f.seq
		}
	}
	return li, nil
}

// checkDeletes: every delete in the log is of an item the list had
// deleted by the time the record was captured (the simulator keeps every
// delete); a delete of an item that was never deleted, or not yet, is a
// false delete — destinations dropped a row that exists. The suite never
// restores a deleted item, so an item's first delete is its only one.
func checkDeletes(li *logInfo, snap *snapshot, dels []deletion) error {
	deletedAt := map[string]time.Time{} // first delete of each item
	for _, d := range dels {
		k := strconv.Itoa(d.ID)
		if t, ok := deletedAt[k]; !ok || d.At.Before(t) {
			deletedAt[k] = d.At
		}
	}
	var samples []string
	total, never, early := 0, 0, 0
	liveKeys := map[string]bool{}
	for _, r := range li.records[1:] {
		if r.Op != changelog.OpDelete {
			continue
		}
		total++
		at, ok := deletedAt[r.Key]
		switch {
		case !ok:
			never++
			_, live := snap.Items[r.Key]
			if live {
				liveKeys[r.Key] = true
			}
			if len(samples) < 5 {
				samples = append(samples, fmt.Sprintf("seq %d deletes item %s, which the list never deleted (live now: %v)", r.Seq, r.Key, live))
			}
		case at.Truncate(time.Millisecond).After(r.TS):
			early++
			if len(samples) < 5 {
				samples = append(samples, fmt.Sprintf("seq %d (ts %s) deletes item %s, which the list deleted only at %s",
					r.Seq, r.TS.Format(time.RFC3339Nano), r.Key, at.Format(time.RFC3339Nano)))
			}
		}
	}
	if never+early == 0 {
		return nil
	}
	return fmt.Errorf("%d of %d deletes in the log are of items that existed: %d never deleted in the list (%d distinct items live in it now), %d deleted only later; %s",
		never+early, total, never, len(liveKeys), early, strings.Join(samples, "; "))
}

func checkTS(li *logInfo) error {
	if li == nil {
		return fmt.Errorf("no log")
	}
	for i := 2; i < len(li.records); i++ {
		if li.records[i].TS.Before(li.records[i-1].TS) {
			return fmt.Errorf("seq %d ts %s is before seq %d ts %s", i, li.records[i].TS.Format(time.RFC3339Nano),
				i-1, li.records[i-1].TS.Format(time.RFC3339Nano))
		}
	}
	return nil
}

func compareSnapshot(li *logInfo, snap *snapshot) error {
	var diffs []string
	missing, extra, differ := 0, 0, 0
	for _, k := range sortedKeys(snap.Items) {
		f, ok := li.fold[k]
		if !ok || f.op != changelog.OpUpsert {
			missing++
			if len(diffs) < 5 {
				diffs = append(diffs, fmt.Sprintf("item %s is in the list, not live in the log", k))
			}
			continue
		}
		var got map[string]any
		if err := json.Unmarshal(f.fields, &got); err != nil {
			return fmt.Errorf("seq %d fields: %v", f.seq, err)
		}
		if !reflect.DeepEqual(got, snap.Items[k]) {
			differ++
			if len(diffs) < 5 {
				diffs = append(diffs, fmt.Sprintf("item %s: log (seq %d) %v, list %v", k, f.seq, got, snap.Items[k]))
			}
		}
	}
	for _, k := range sortedKeys(li.live) {
		if _, ok := snap.Items[k]; !ok {
			extra++
			if len(diffs) < 5 {
				diffs = append(diffs, fmt.Sprintf("item %s is live in the log (seq %d), not in the list", k, li.live[k]))
			}
		}
	}
	if missing+extra+differ == 0 {
		return nil
	}
	return fmt.Errorf("%d live items in the log, %d in the list: %d missing, %d extra, %d differ; %s",
		len(li.live), len(snap.Items), missing, extra, differ, strings.Join(diffs, "; "))
}

// sortedKeys orders item keys numerically where they are numbers.
func sortedKeys[V any](m map[string]V) []string {
	ks := make([]string, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	sort.Slice(ks, func(i, j int) bool {
		a, ea := strconv.Atoi(ks[i])
		b, eb := strconv.Atoi(ks[j])
		if ea == nil && eb == nil {
			return a < b
		}
		return ks[i] < ks[j]
	})
	return ks
}

// compareRows compares a table's (id, _sluice_seq) with the folded log.
func compareRows(li *logInfo, rows map[string]int64) error {
	if li == nil {
		return fmt.Errorf("no log to compare with")
	}
	var diffs []string
	missing, extra, wrong := 0, 0, 0
	for _, k := range sortedKeys(li.live) {
		got, ok := rows[k]
		switch {
		case !ok:
			missing++
			if len(diffs) < 6 {
				diffs = append(diffs, fmt.Sprintf("id %s missing (log: upsert at seq %d)", k, li.live[k]))
			}
		case got != li.live[k]:
			wrong++
			if len(diffs) < 6 {
				diffs = append(diffs, fmt.Sprintf("id %s has _sluice_seq %d, log's last op is seq %d", k, got, li.live[k]))
			}
		}
	}
	for _, k := range sortedKeys(rows) {
		if _, ok := li.live[k]; !ok {
			extra++
			if len(diffs) < 6 {
				what := "never in the log"
				if f, ok := li.fold[k]; ok {
					what = fmt.Sprintf("log: %s at seq %d", f.op, f.seq)
				}
				diffs = append(diffs, fmt.Sprintf("id %s present with _sluice_seq %d (%s)", k, rows[k], what))
			}
		}
	}
	if missing+extra+wrong == 0 {
		return nil
	}
	return fmt.Errorf("%d rows, %d live keys in the log: %d missing, %d extra, %d with the wrong seq; %s",
		len(rows), len(li.live), missing, extra, wrong, strings.Join(diffs, "; "))
}

func (s *suite) checkPostgres(ctx context.Context, table string, li *logInfo) error {
	conn, err := pgx.Connect(ctx, s.pg.dsn())
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	rs, err := conn.Query(ctx, fmt.Sprintf(`SELECT "id", "_sluice_seq" FROM %q`, table))
	if err != nil {
		return err
	}
	rows := map[string]int64{}
	for rs.Next() {
		var id string
		var seq int64
		if err := rs.Scan(&id, &seq); err != nil {
			return err
		}
		rows[id] = seq
	}
	if err := rs.Err(); err != nil {
		return err
	}
	return compareRows(li, rows)
}

func (s *suite) checkSQLite(ctx context.Context, table string, li *logInfo) error {
	db, err := s.openSQLite()
	if err != nil {
		return err
	}
	defer db.Close()
	rs, err := db.QueryContext(ctx, fmt.Sprintf(`SELECT "id", "_sluice_seq" FROM %q`, table))
	if err != nil {
		return err
	}
	defer rs.Close()
	rows := map[string]int64{}
	for rs.Next() {
		var id string
		var seq int64
		if err := rs.Scan(&id, &seq); err != nil {
			return err
		}
		rows[id] = seq
	}
	if err := rs.Err(); err != nil {
		return err
	}
	return compareRows(li, rows)
}

func (s *suite) openSQLite() (*sql.DB, error) {
	return sql.Open("sqlite", "file:"+s.sqlitePath()+"?_pragma=busy_timeout(5000)")
}

// checkCheckpointRow: a SQL destination's own row in _sluice_checkpoints —
// keyed by pipeline and destination, since destination names are unique
// only within a pipeline (DESIGN §4, Invariant 5) — is at the head. A
// table keyed by destination alone gives pipelines whose destinations share
// a name one row, whose epoch each refuses the other's batches by.
func (s *suite) checkCheckpointRow(ctx context.Context, pipeline string, d destSpec, li *logInfo) error {
	if li == nil {
		return fmt.Errorf("no log")
	}
	// One row of a query, in the destination's database.
	var queryRow func(q string, args []any, dest ...any) error
	columns := `SELECT count(*) FROM information_schema.columns WHERE table_name = '_sluice_checkpoints' AND column_name = 'pipeline'`
	if d.kind == kindPostgres {
		conn, err := pgx.Connect(ctx, s.pg.dsn())
		if err != nil {
			return err
		}
		defer conn.Close(context.Background())
		queryRow = func(q string, args []any, dest ...any) error { return conn.QueryRow(ctx, q, args...).Scan(dest...) }
	} else {
		db, err := s.openSQLite()
		if err != nil {
			return err
		}
		defer db.Close()
		queryRow = func(q string, args []any, dest ...any) error {
			return db.QueryRowContext(ctx, q, args...).Scan(dest...)
		}
		columns = `SELECT count(*) FROM pragma_table_info('_sluice_checkpoints') WHERE name = 'pipeline'`
	}
	var n int
	if err := queryRow(columns, nil, &n); err != nil {
		return err
	}
	q, args, keyed := `SELECT "seq", "epoch" FROM "_sluice_checkpoints" WHERE "pipeline" = $1 AND "destination" = $2`, []any{pipeline, d.name}, "(pipeline, destination)"
	if n == 0 {
		q, args, keyed = `SELECT "seq", "epoch" FROM "_sluice_checkpoints" WHERE "destination" = $1`, []any{d.name}, "destination alone"
	}
	if d.kind == kindSQLite {
		q = strings.NewReplacer("$1", "?", "$2", "?").Replace(q)
	}
	var seq, epoch int64
	if err := queryRow(q, args, &seq, &epoch); err != nil {
		return fmt.Errorf("the row of %s/%s (keyed by %s): %w", pipeline, d.name, keyed, err)
	}
	if seq != li.head {
		shared := ""
		if n == 0 {
			shared = fmt.Sprintf("; the table is keyed by destination alone, so every pipeline's %q shares this row", d.name)
		}
		return fmt.Errorf("the row of %s/%s holds seq %d (epoch %d), the head is %d%s", pipeline, d.name, seq, epoch, li.head, shared)
	}
	return nil
}

func checkHTTPComplete(li *logInfo, bySeq map[int64][]delivery) error {
	if li == nil {
		return fmt.Errorf("no log")
	}
	var missing []int64
	for seq := int64(1); seq <= li.head; seq++ {
		if len(bySeq[seq]) == 0 {
			missing = append(missing, seq)
		}
	}
	var invented []int64
	for seq := range bySeq {
		if seq > li.head {
			invented = append(invented, seq)
		}
	}
	if len(missing) == 0 && len(invented) == 0 {
		return nil
	}
	return fmt.Errorf("%d of %d seqs never received (first: %v); %d received that are not in the log (%v)",
		len(missing), li.head, head(missing, 10), len(invented), head(invented, 10))
}

func head[T any](xs []T, n int) []T {
	if len(xs) > n {
		return xs[:n]
	}
	return xs
}

// checkHTTPIDs: every delivery of a seq has the event id of that seq and
// of the generation it says (no later than the destination's), repeats in
// a generation keep their id, and each says what the log says; after a
// replay, every seq from where it began came again in its generation.
func (s *suite) checkHTTPIDs(ctx context.Context, pipeline, dest string, li *logInfo, bySeq map[int64][]delivery) error {
	if li == nil {
		return fmt.Errorf("no log")
	}
	cp, err := checkpoint.Load(ctx, s.st, pipeline, dest)
	if err != nil {
		return err
	}
	var bad []string
	n := 0
	for seq, ds := range bySeq {
		if seq > li.head {
			continue
		}
		r := li.records[seq]
		for _, d := range ds {
			g, gerr := strconv.ParseInt(d.Gen, 10, 64)
			want := fmt.Sprintf("%s-%d", pipeline, seq)
			if g > 0 {
				want += fmt.Sprintf(".%d", g)
			}
			var problem string
			switch {
			case gerr != nil || g < 0 || g > cp.Generation:
				problem = fmt.Sprintf("sluicegen %q, the destination is at generation %d", d.Gen, cp.Generation)
			case d.ID != want:
				problem = fmt.Sprintf("id %q, want %q", d.ID, want)
			case d.Subject != r.Key:
				problem = fmt.Sprintf("subject %q, log key %q", d.Subject, r.Key)
			case d.Type != "sluice.change."+string(r.Op):
				problem = fmt.Sprintf("type %q, log op %s", d.Type, r.Op)
			}
			if problem != "" {
				n++
				if len(bad) < 5 {
					bad = append(bad, fmt.Sprintf("seq %d: %s", seq, problem))
				}
			}
		}
	}
	if cp.Generation > 0 {
		// The replay that began this generation, from the audit.
		from := int64(-1)
		for _, rp := range cp.Replays {
			if rp.Generation == cp.Generation {
				from = rp.FromSeq
			}
		}
		gen := strconv.FormatInt(cp.Generation, 10)
		switch {
		case from < 0:
			n++
			bad = append(bad, fmt.Sprintf("generation %d has no replay in the checkpoint's audit", cp.Generation))
		default:
			var missing []int64
			for seq := max(from, 1); seq <= li.head; seq++ {
				again := false
				for _, d := range bySeq[seq] {
					again = again || d.Gen == gen
				}
				if !again {
					missing = append(missing, seq)
				}
			}
			if len(missing) > 0 {
				n++
				bad = append(bad, fmt.Sprintf("the replay from seq %d did not deliver %d seqs as generation %d (first: %v)",
					from, len(missing), cp.Generation, head(missing, 10)))
			}
		}
	}
	if n == 0 {
		return nil
	}
	return fmt.Errorf("%d bad deliveries: %s", n, strings.Join(bad, "; "))
}

func listErr(problems []string) error {
	if len(problems) == 0 {
		return nil
	}
	return fmt.Errorf("%d problems: %s", len(problems), strings.Join(head(problems, 5), "; "))
}

func (s *suite) checkCheckpoints(ctx context.Context, p pipeSpec, li *logInfo) error {
	if li == nil {
		return fmt.Errorf("no log")
	}
	var bad []string
	for _, d := range p.destNames() {
		cp, err := checkpoint.Load(ctx, s.st, p.name, d)
		if err != nil {
			return err
		}
		if cp.Seq != li.head || cp.Halted || cp.DeadLetters.Count > 0 {
			bad = append(bad, fmt.Sprintf("%s: checkpoint %d of head %d, halted %v, %d dead letters (seqs %d..%d), last error %q",
				d, cp.Seq, li.head, cp.Halted, cp.DeadLetters.Count, cp.DeadLetters.FirstSeq, cp.DeadLetters.LastSeq, cp.LastError))
		}
	}
	n := 0
	_ = s.st.List(ctx, p.name+"/deadletter/", func(azstore.BlobInfo) error { n++; return nil })
	if n > 0 {
		bad = append(bad, fmt.Sprintf("%d dead-letter blobs under %s/deadletter/", n, p.name))
	}
	if len(bad) == 0 {
		return nil
	}
	return fmt.Errorf("%s", strings.Join(bad, "; "))
}

// poisonMsg is one message of the poison queue, classified.
type poisonMsg struct {
	text    string
	kind    string // undecodable, unknown, ours (garbage we sent), wake-up
	wake    map[string]any
	dequeue int64
}

// drainPoison takes every message off the poison queue.
func (s *suite) drainPoison(ctx context.Context) ([]poisonMsg, error) {
	var out []poisonMsg
	for range 100 {
		ms, err := s.st.Dequeue(ctx, poisonQueue, 32, 10*time.Minute)
		if err != nil {
			return out, err
		}
		if len(ms) == 0 {
			break
		}
		for _, m := range ms {
			pm := poisonMsg{text: m.Text, dequeue: m.DequeueCount}
			s.mu.Lock()
			ours := s.garbage[m.Text]
			s.mu.Unlock()
			data, err := base64.StdEncoding.DecodeString(m.Text)
			var w map[string]any
			switch {
			case ours:
				pm.kind = "garbage we sent"
			case err != nil:
				pm.kind = "not base64"
			case json.Unmarshal(data, &w) != nil:
				pm.kind = "not a JSON object"
			case !slices.Contains(pipelineNames(), fmt.Sprint(w["pipeline"])):
				pm.kind = "unknown pipeline"
			default:
				pm.kind, pm.wake = "wake-up", w
			}
			out = append(out, pm)
		}
	}
	return out, nil
}

// checkPoison: a poisoned wake-up lost data unless its destination holds
// everything up to (at least) the head it carried; undecodable messages
// cannot have carried data.
func (s *suite) checkPoison(ctx context.Context, poison []poisonMsg, err error) error {
	if err != nil {
		return err
	}
	var bad []string
	for _, pm := range poison {
		if pm.kind != "wake-up" {
			continue
		}
		p, _ := pm.wake["pipeline"].(string)
		d, _ := pm.wake["destination"].(string)
		if !knownDestination(p, d) {
			continue // the handler completes those; harmless either way
		}
		cp, err := checkpoint.Load(ctx, s.st, p, d)
		if err != nil {
			return err
		}
		h, _ := pm.wake["head"].(float64)
		if h <= 0 {
			h = float64(s.headSeen(ctx, p))
		}
		if min(int64(h), s.headSeen(ctx, p)) > cp.Seq {
			bad = append(bad, fmt.Sprintf("wake-up %v poisoned and %s/%s is only at %d", pm.wake, p, d, cp.Seq))
		}
	}
	if len(bad) == 0 {
		return nil
	}
	return fmt.Errorf("%s", strings.Join(head(bad, 5), "; "))
}

// headSeen is a pipeline's committed head (0 when unknown).
func (s *suite) headSeen(ctx context.Context, pipeline string) int64 {
	st, err := changelog.New(s.st, pipeline, changelog.Options{}).LoadState(ctx)
	if err != nil {
		return 0
	}
	return st.Head.Seq
}

// checkFaults: the suite proves nothing unless the faults happened.
func (s *suite) checkFaults() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	var bad []string
	kills := 0
	for _, n := range s.c.kills {
		kills += n
	}
	if kills < s.plan.minKills {
		bad = append(bad, fmt.Sprintf("only %d kills (want ≥ %d)", kills, s.plan.minKills))
	}
	if s.c.pgOutages < s.countPlanned(evPGStop) {
		bad = append(bad, fmt.Sprintf("%d PostgreSQL outages of %d", s.c.pgOutages, s.countPlanned(evPGStop)))
	}
	if s.c.azRestarts < s.countPlanned(evAzurite) {
		bad = append(bad, fmt.Sprintf("%d Azurite restarts of %d", s.c.azRestarts, s.countPlanned(evAzurite)))
	}
	if s.c.azKilled > 0 {
		bad = append(bad, "Azurite had to be killed (acknowledged writes may be lost)")
	}
	if s.c.expiries < s.countPlanned(evExpire) {
		bad = append(bad, fmt.Sprintf("%d token expiries of %d", s.c.expiries, s.countPlanned(evExpire)))
	}
	if s.c.quietExpiries < s.countPlanned(evQuietExpire) {
		bad = append(bad, fmt.Sprintf("%d quiet 410s of %d", s.c.quietExpiries, s.countPlanned(evQuietExpire)))
	}
	if want := 2 * s.countPlanned(evReplay); s.c.replays < want {
		bad = append(bad, fmt.Sprintf("%d replays of %d", s.c.replays, want))
	}
	if len(s.c.faultErrors) > 0 {
		bad = append(bad, fmt.Sprintf("%d injection errors: %s", len(s.c.faultErrors), strings.Join(head(s.c.faultErrors, 3), "; ")))
	}
	if len(bad) == 0 {
		return nil
	}
	return fmt.Errorf("%s", strings.Join(bad, "; "))
}

func (s *suite) printCounts(logs map[string]*logInfo, snap *snapshot, recv recvStats, poison []poisonMsg) {
	s.mu.Lock()
	c := s.c
	s.mu.Unlock()
	kills, kparts := 0, []string{}
	for _, k := range sortedKeys(c.kills) {
		kills += c.kills[k]
		kparts = append(kparts, fmt.Sprintf("%s %d", k, c.kills[k]))
	}
	dupes, dparts := 0, []string{}
	for _, k := range sortedKeys(c.dupes) {
		if k != "delayed" {
			dupes += c.dupes[k]
		}
		dparts = append(dparts, fmt.Sprintf("%s %d", k, c.dupes[k]))
	}
	var oparts []string
	for _, k := range sortedKeys(c.oneshots) {
		oparts = append(oparts, fmt.Sprintf("%s %d", k, c.oneshots[k]))
	}
	w := s.out
	fmt.Fprintf(w, "---- counts (seed %d)\n", s.o.Seed)
	fmt.Fprintf(w, "kills:            %d SIGKILLs (%s), %d held for a quiet 410; %d leases broken\n",
		kills, strings.Join(kparts, ", "), c.killsHeld, c.leaseBreaks)
	fmt.Fprintf(w, "one-shot runs:    %s\n", strings.Join(oparts, ", "))
	fmt.Fprintf(w, "own exits:        %d sluice run exits not caused by a kill (restarted)\n", c.unexpectedExits)
	for _, e := range c.exitSamples {
		fmt.Fprintf(w, "                    %s\n", e)
	}
	fmt.Fprintf(w, "outages:          PostgreSQL %d (%v down); receiver failing %v (answers: %v); Azurite restarts %d (%d mid-drain)\n",
		c.pgOutages, c.pgDown, c.recvFailing, recv.answered, c.azRestarts, c.azMidDrain)
	fmt.Fprintf(w, "graph faults:     %d token expiries (%d quiet), %d throttled requests injected, %d churn ticks, %d bursts (%d held for a quiet 410)\n",
		c.expiries, c.quietExpiries, c.throttles, c.churnCalls, c.bursts, c.burstsHeld)
	for _, n := range c.quietNotes {
		fmt.Fprintf(w, "                    %s\n", n)
	}
	fmt.Fprintf(w, "replays:          %d (destinations of %s)\n", c.replays, replayed.name)
	fmt.Fprintf(w, "queue:            %d extra wake-ups (%s); %d garbage messages\n", dupes, strings.Join(dparts, ", "), c.garbage)
	if snap != nil {
		fmt.Fprintf(w, "list:             %d live items (simulator seq %d)\n", snap.Count, snap.Seq)
	}
	for _, p := range pipelines {
		li := logs[p.name]
		if li == nil {
			continue
		}
		dels := 0
		for _, r := range li.records[1:] {
			if r.Op == changelog.OpDelete {
				dels++
			}
		}
		got := recv.got[p.name]
		fmt.Fprintf(w, "%-18s%d records (%d deletes), %d keys seen, %d live; http %d events (%d repeats)\n",
			p.name+":", li.head, dels, len(li.fold), len(li.live), got.events, got.events-li.head)
	}
	fmt.Fprintf(w, "http:             %d POSTs\n", recv.posts)
	kinds := map[string]int{}
	for _, p := range poison {
		kinds[p.kind]++
	}
	fmt.Fprintf(w, "poison queue:     %d messages %v\n", len(poison), kinds)
	for i, p := range poison {
		if i == 10 {
			fmt.Fprintf(w, "                    …\n")
			break
		}
		desc := p.kind
		if p.wake != nil {
			b, _ := json.Marshal(p.wake)
			desc += " " + string(b)
		}
		fmt.Fprintf(w, "                    %q: %s (dequeued %d)\n", truncate(p.text, 60), desc, p.dequeue)
	}
}
