package main

import (
	"context"
	"database/sql"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"path/filepath"
	"reflect"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	_ "modernc.org/sqlite" // database/sql driver "sqlite", to read the SQLite destination

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

	li, scanErr := s.scanLog(ctx)
	snap, snapErr := s.sim.snapshot(ctx)
	bySeq, events, posts, answered, violations := s.recv.stats()
	poison, poisonErr := s.drainPoison(ctx)

	s.printCounts(li, snap, events, posts, answered, poison)

	result("log is gap-free (changelog.Scan 1..head)", scanErr)
	if li == nil {
		result("log folds to the simulator's list", fmt.Errorf("no log to fold"))
	} else if snapErr != nil {
		result("log folds to the simulator's list", snapErr)
	} else {
		result("log folds to the simulator's list", compareSnapshot(li, snap))
	}
	result("log ts never goes backwards", checkTS(li))
	result("postgres table equals the folded log (ids, _sluice_seq)", s.checkPostgres(ctx, li))
	result("sqlite table equals the folded log (ids, _sluice_seq)", s.checkSQLite(ctx, li))
	result("http received every seq at least once", checkHTTPComplete(li, bySeq))
	result("http repeats carry the same event ids, matching the log", s.checkHTTPIDs(ctx, li, bySeq))
	result("http requests well-formed and signed", listErr(violations))
	result("checkpoints at the head, nothing dead-lettered or halted", s.checkCheckpoints(ctx, li))
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

// scanLog reads the whole committed log.
func (s *suite) scanLog(ctx context.Context) (*logInfo, error) {
	lg := changelog.New(s.st, pipelineName, changelog.Options{})
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

func (s *suite) checkPostgres(ctx context.Context, li *logInfo) error {
	conn, err := pgx.Connect(ctx, s.pg.dsn())
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	rs, err := conn.Query(ctx, fmt.Sprintf(`SELECT "id", "_sluice_seq" FROM %q`, tableName))
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

func (s *suite) checkSQLite(ctx context.Context, li *logInfo) error {
	db, err := sql.Open("sqlite", "file:"+filepath.Join(s.dir, "orders.db")+"?_pragma=busy_timeout(5000)")
	if err != nil {
		return err
	}
	defer db.Close()
	rs, err := db.QueryContext(ctx, fmt.Sprintf(`SELECT "id", "_sluice_seq" FROM %q`, tableName))
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
// the destination's generation, and says what the log says.
func (s *suite) checkHTTPIDs(ctx context.Context, li *logInfo, bySeq map[int64][]delivery) error {
	if li == nil {
		return fmt.Errorf("no log")
	}
	cp, err := checkpoint.Load(ctx, s.st, pipelineName, "hook")
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
			want := fmt.Sprintf("%s-%d", pipelineName, seq)
			if cp.Generation > 0 {
				want += fmt.Sprintf(".%d", cp.Generation)
			}
			var problem string
			switch {
			case d.ID != ds[0].ID:
				problem = fmt.Sprintf("repeat has id %q, first delivery %q", d.ID, ds[0].ID)
			case d.ID != want:
				problem = fmt.Sprintf("id %q, want %q", d.ID, want)
			case d.Subject != r.Key:
				problem = fmt.Sprintf("subject %q, log key %q", d.Subject, r.Key)
			case d.Type != "sluice.change."+string(r.Op):
				problem = fmt.Sprintf("type %q, log op %s", d.Type, r.Op)
			case d.Gen != strconv.FormatInt(cp.Generation, 10):
				problem = fmt.Sprintf("sluicegen %q, generation %d", d.Gen, cp.Generation)
			}
			if problem != "" {
				n++
				if len(bad) < 5 {
					bad = append(bad, fmt.Sprintf("seq %d: %s", seq, problem))
				}
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

func (s *suite) checkCheckpoints(ctx context.Context, li *logInfo) error {
	if li == nil {
		return fmt.Errorf("no log")
	}
	var bad []string
	for _, d := range destinations {
		cp, err := checkpoint.Load(ctx, s.st, pipelineName, d)
		if err != nil {
			return err
		}
		if cp.Seq != li.head || cp.Halted || cp.DeadLetters.Count > 0 {
			bad = append(bad, fmt.Sprintf("%s: checkpoint %d of head %d, halted %v, %d dead letters (seqs %d..%d), last error %q",
				d, cp.Seq, li.head, cp.Halted, cp.DeadLetters.Count, cp.DeadLetters.FirstSeq, cp.DeadLetters.LastSeq, cp.LastError))
		}
	}
	n := 0
	_ = s.st.List(ctx, pipelineName+"/deadletter/", func(azstore.BlobInfo) error { n++; return nil })
	if n > 0 {
		bad = append(bad, fmt.Sprintf("%d dead-letter blobs under %s/deadletter/", n, pipelineName))
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
			case w["pipeline"] != pipelineName:
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
		d, _ := pm.wake["destination"].(string)
		known := false
		for _, x := range destinations {
			known = known || x == d
		}
		if !known {
			continue // the handler completes those; harmless either way
		}
		cp, err := checkpoint.Load(ctx, s.st, pipelineName, d)
		if err != nil {
			return err
		}
		h, _ := pm.wake["head"].(float64)
		if h <= 0 {
			h = float64(s.headSeen(ctx))
		}
		if min(int64(h), s.headSeen(ctx)) > cp.Seq {
			bad = append(bad, fmt.Sprintf("wake-up %v poisoned and %s is only at %d", pm.wake, d, cp.Seq))
		}
	}
	if len(bad) == 0 {
		return nil
	}
	return fmt.Errorf("%s", strings.Join(head(bad, 5), "; "))
}

func (s *suite) headSeen(ctx context.Context) int64 {
	st, err := changelog.New(s.st, pipelineName, changelog.Options{}).LoadState(ctx)
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
	if len(s.c.faultErrors) > 0 {
		bad = append(bad, fmt.Sprintf("%d injection errors: %s", len(s.c.faultErrors), strings.Join(head(s.c.faultErrors, 3), "; ")))
	}
	if len(bad) == 0 {
		return nil
	}
	return fmt.Errorf("%s", strings.Join(bad, "; "))
}

func (s *suite) printCounts(li *logInfo, snap *snapshot, events, posts int64, answered map[int]int64, poison []poisonMsg) {
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
	fmt.Fprintf(w, "kills:            %d SIGKILLs (%s); %d leases broken\n", kills, strings.Join(kparts, ", "), c.leaseBreaks)
	fmt.Fprintf(w, "one-shot runs:    %s\n", strings.Join(oparts, ", "))
	fmt.Fprintf(w, "own exits:        %d sluice run exits not caused by a kill (restarted)\n", c.unexpectedExits)
	for _, e := range c.exitSamples {
		fmt.Fprintf(w, "                    %s\n", e)
	}
	fmt.Fprintf(w, "outages:          PostgreSQL %d (%v down); receiver failing %v (answers: %v); Azurite restarts %d (%d mid-drain)\n",
		c.pgOutages, c.pgDown, c.recvFailing, answered, c.azRestarts, c.azMidDrain)
	fmt.Fprintf(w, "graph faults:     %d token expiries, %d throttled requests injected, %d churn ticks, %d bursts\n",
		c.expiries, c.throttles, c.churnCalls, c.bursts)
	fmt.Fprintf(w, "queue:            %d extra wake-ups (%s); %d garbage messages\n", dupes, strings.Join(dparts, ", "), c.garbage)
	if li != nil {
		fmt.Fprintf(w, "records:          %d in the log, %d keys seen, %d live\n", li.head, len(li.fold), len(li.live))
	}
	if snap != nil {
		fmt.Fprintf(w, "list:             %d live items (simulator seq %d)\n", snap.Count, snap.Seq)
	}
	repeats := events
	if li != nil {
		repeats = events - li.head
	}
	fmt.Fprintf(w, "http:             %d events in %d POSTs (%d repeats)\n", events, posts, repeats)
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
