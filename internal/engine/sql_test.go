package engine_test

import (
	"context"
	"database/sql"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/sluicehq/sluice/internal/azstore"
	"github.com/sluicehq/sluice/internal/changelog"
	"github.com/sluicehq/sluice/internal/checkpoint"
	"github.com/sluicehq/sluice/internal/config"
	"github.com/sluicehq/sluice/internal/engine"
	"github.com/sluicehq/sluice/internal/sink"
	"github.com/sluicehq/sluice/internal/sink/sqlsink"
	"github.com/sluicehq/sluice/internal/testenv"

	_ "modernc.org/sqlite"
)

// These tests run the drain into real databases: they are where Invariants
// 4 and 5 meet PostgreSQL and SQLite.

func sqlDest(name, driver, dsn string) config.Destination {
	return config.Destination{Name: name, Type: config.DestSQL, Driver: driver, DSN: config.Secret(dsn), Table: "orders",
		Deletes: config.DeletesHard, OnError: config.OnErrorDeadletter, BatchSize: 200}
}

func openSQL(ctx context.Context, p *config.Pipeline, d *config.Destination) (sink.Sink, error) {
	return sqlsink.Open(ctx, sqlsink.Config{Driver: d.Driver, DSN: d.DSN.Reveal(), Table: d.Table, Deletes: d.Deletes, Pipeline: p.Name, Destination: d.Name})
}

// sqlFixture is a pipeline whose log holds n records over keys 0..keys-1.
type sqlFixture struct {
	st        *azstore.Store
	container string
	p         *config.Pipeline
	table     string           // the destination table checkTable reads
	fold      map[string]int64 // live key -> seq of its last upsert
}

func newSQLFixture(t *testing.T, n, keys int, dests ...config.Destination) *sqlFixture {
	return newSQLFixtureB(t, n, keys, dests...)
}

func newSQLFixtureB(t testing.TB, n, keys int, dests ...config.Destination) *sqlFixture {
	return newSQLFixtureNamed(t, "orders", n, keys, dests...)
}

// newSQLFixtureNamed is a fixture for pipeline name; its destinations write
// the table of the first one.
func newSQLFixtureNamed(t testing.TB, name string, n, keys int, dests ...config.Destination) *sqlFixture {
	t.Helper()
	ctx := context.Background()
	f := &sqlFixture{container: testenv.UniqueName("e"), fold: map[string]int64{}, table: "orders"}
	if len(dests) > 0 {
		f.table = dests[0].Table
	}
	var err error
	if f.st, err = azstore.Open(ctx, testenv.StorageSettings(t), f.container, azstore.Options{}); err != nil {
		t.Fatal(err)
	}
	f.p = &config.Pipeline{Name: name, Destinations: dests}
	f.append(t, n, keys)
	return f
}

// append adds n records: mostly upserts, every 50th a delete.
func (f *sqlFixture) append(t testing.TB, n, keys int) {
	t.Helper()
	ctx := context.Background()
	lg := changelog.New(f.st, f.p.Name, changelog.Options{})
	s, err := lg.LoadState(ctx)
	if err != nil {
		t.Fatal(err)
	}
	a, err := lg.NewAppender(ctx, s)
	if err != nil {
		t.Fatal(err)
	}
	for i := range n {
		seq := s.Head.Seq + int64(i) + 1
		key := strconv.Itoa(int(seq*7919) % keys)
		r := &changelog.Record{Op: changelog.OpUpsert, Key: key,
			Fields: []byte(fmt.Sprintf(`{"Title":"order %d","N":%d,"Tags":["a","b"]}`, seq, seq))}
		if seq%50 == 0 {
			r = &changelog.Record{Op: changelog.OpDelete, Key: key}
		}
		if err := a.Add(ctx, r); err != nil {
			t.Fatal(err)
		}
		if r.Op == changelog.OpDelete {
			delete(f.fold, key)
		} else {
			f.fold[key] = seq
		}
	}
	if err := a.Commit(ctx, nil); err != nil {
		t.Fatal(err)
	}
}

func (f *sqlFixture) drainer() *engine.Drainer {
	return &engine.Drainer{Store: f.st, Open: openSQL, Queue: testenv.UniqueName("q"), MaxBackoff: time.Second}
}

func (f *sqlFixture) req(d int) engine.DrainRequest {
	return engine.DrainRequest{Pipeline: f.p, Destination: &f.p.Destinations[d], Deadline: time.Now().Add(5 * time.Minute)}
}

// checkTable asserts the table equals the log folded by key, exactly.
func (f *sqlFixture) checkTable(t *testing.T, driver, dsn string) { f.checkTableTB(t, driver, dsn) }

func (f *sqlFixture) checkTableTB(t testing.TB, driver, dsn string) {
	t.Helper()
	got := map[string]int64{}
	var n map[string]int64
	switch driver {
	case config.DriverPostgres:
		conn, err := pgx.Connect(context.Background(), dsn)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close(context.Background())
		rows, err := conn.Query(context.Background(), `SELECT id, "N", _sluice_seq FROM `+pgx.Identifier{f.table}.Sanitize())
		if err != nil {
			t.Fatal(err)
		}
		n = map[string]int64{}
		for rows.Next() {
			var id string
			var num float64
			var seq int64
			if err := rows.Scan(&id, &num, &seq); err != nil {
				t.Fatal(err)
			}
			got[id], n[id] = seq, int64(num)
		}
		if err := rows.Err(); err != nil {
			t.Fatal(err)
		}
	default:
		db, err := sql.Open("sqlite", dsn)
		if err != nil {
			t.Fatal(err)
		}
		defer db.Close()
		rows, err := db.Query(`SELECT id, "N", _sluice_seq FROM "` + f.table + `"`)
		if err != nil {
			t.Fatal(err)
		}
		defer rows.Close()
		n = map[string]int64{}
		for rows.Next() {
			var id string
			var num float64
			var seq int64
			if err := rows.Scan(&id, &num, &seq); err != nil {
				t.Fatal(err)
			}
			got[id], n[id] = seq, int64(num)
		}
	}
	if len(got) != len(f.fold) {
		t.Fatalf("table has %d rows, the folded log %d live keys", len(got), len(f.fold))
	}
	for k, seq := range f.fold {
		if got[k] != seq || n[k] != seq {
			t.Fatalf("row %s: _sluice_seq %d N %d, want %d", k, got[k], n[k], seq)
		}
	}
}

func TestDestinationsAreIndependent(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	sqlite := "file:" + t.TempDir() + "/orders.db"
	// "down" points at a port where nothing listens: connection refused.
	down := "postgres://postgres@127.0.0.1:1/postgres?sslmode=disable&connect_timeout=2"
	f := newSQLFixture(t, 3000, 500, sqlDest("lite", config.DriverSQLite, sqlite), sqlDest("pg", config.DriverPostgres, down))
	d := f.drainer()

	failing := make(chan error, 1)
	go func() {
		req := f.req(1)
		req.Deadline = time.Now().Add(25 * time.Second)
		_, err := d.Drain(ctx, req)
		failing <- err
	}()
	res, err := d.Drain(ctx, f.req(0))
	if err != nil || res.Outcome != engine.OutcomeDrained {
		t.Fatalf("healthy destination = %+v, %v", res, err)
	}
	select {
	case err := <-failing:
		t.Fatalf("the failing destination ended (%v) before the healthy one finished: test proves nothing", err)
	default:
	}
	f.checkTable(t, config.DriverSQLite, sqlite)
	if err := <-failing; err == nil {
		t.Fatal("the drain of an unreachable database succeeded")
	}
	// The database comes back (here: the destination is pointed at a live
	// one): a later wake-up delivers everything the log kept.
	f.p.Destinations[1].DSN = config.Secret(testenv.Postgres(t))
	if res, err := d.Drain(ctx, f.req(1)); err != nil || res.Outcome != engine.OutcomeDrained || res.To != 3000 {
		t.Fatalf("after recovery = %+v, %v", res, err)
	}
	f.checkTable(t, config.DriverPostgres, f.p.Destinations[1].DSN.Reveal())
}

// pausingSink lets a drain reach Apply and then holds it there, like a
// process paused by the OS; its request still goes out afterwards, even if
// its lease is gone (context.WithoutCancel).
type pausingSink struct {
	sink.Sink
	once    sync.Once
	entered chan struct{}
	resume  chan struct{}
}

func (s *pausingSink) Apply(ctx context.Context, b sink.Batch) error {
	paused := false
	s.once.Do(func() { paused = true })
	if paused {
		close(s.entered)
		<-s.resume
		return s.Sink.Apply(context.WithoutCancel(ctx), b)
	}
	return s.Sink.Apply(ctx, b)
}

func TestReplayBeatsAPausedDrainBySQLEpoch(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	dsn := testenv.Postgres(t)
	f := newSQLFixture(t, 2000, 300, sqlDest("pg", config.DriverPostgres, dsn))
	d := f.drainer()
	if res, err := d.Drain(ctx, f.req(0)); err != nil || res.Outcome != engine.OutcomeDrained {
		t.Fatalf("first drain = %+v, %v", res, err)
	}
	f.append(t, 1000, 300)

	// Drain A takes the destination and pauses inside its first Apply.
	ps := &pausingSink{entered: make(chan struct{}), resume: make(chan struct{})}
	a := &engine.Drainer{Store: f.st, Queue: d.Queue, LeaseDuration: 15 * time.Second,
		Open: func(ctx context.Context, p *config.Pipeline, dd *config.Destination) (sink.Sink, error) {
			s, err := openSQL(ctx, p, dd)
			ps.Sink = s
			return ps, err
		}}
	resA := make(chan engine.DrainResult, 1)
	go func() {
		res, err := a.Drain(ctx, f.req(0))
		if err != nil {
			res.Error = err.Error()
		}
		resA <- res
	}()
	<-ps.entered

	// The operator replays from the start; A's lease has expired meanwhile
	// (broken here), and drain B delivers the replay to the head.
	rr, err := engine.Replay(ctx, f.st, engine.ReplayRequest{Pipeline: f.p, Destination: &f.p.Destinations[0], FromSeq: 1, By: "test"}, time.Now())
	if err != nil || rr.Records != 3000 {
		t.Fatalf("replay = %+v, %v", rr, err)
	}
	if err := f.st.BreakLease(ctx, "orders/lock/pg"); err != nil {
		t.Fatal(err)
	}
	if res, err := d.Drain(ctx, f.req(0)); err != nil || res.Outcome != engine.OutcomeDrained || res.From != 0 || res.To != 3000 {
		t.Fatalf("drain B = %+v, %v", res, err)
	}
	f.checkTable(t, config.DriverPostgres, dsn)

	// A wakes up and sends its stale batch: the epoch in _sluice_checkpoints
	// refuses it, so it cannot undo anything B applied.
	close(ps.resume)
	if res := <-resA; res.Outcome != engine.OutcomeRewound && res.Outcome != engine.OutcomeFailed {
		t.Fatalf("paused drain A = %+v, want rewound (stale epoch)", res)
	}
	f.checkTable(t, config.DriverPostgres, dsn)
}

// TestMain lets this test binary act as a drain process that the crash test
// kills.
func TestMain(m *testing.M) {
	switch os.Getenv("SLUICE_ENGINE_CHILD") {
	case "drain":
		os.Exit(childDrain())
	case "read":
		os.Exit(childRead())
	}
	os.Exit(m.Run())
}

// crashAfterApply exits the process right after the n-th successful Apply:
// the batch is in the database, the checkpoint does not know it yet.
type crashAfterApply struct {
	sink.Sink
	n int
}

func (s *crashAfterApply) Apply(ctx context.Context, b sink.Batch) error {
	err := s.Sink.Apply(ctx, b)
	if err == nil {
		s.n--
		if s.n == 0 {
			os.Exit(3)
		}
	}
	return err
}

func childDrain() int {
	ctx := context.Background()
	s, err := azstore.ParseConnectionString(os.Getenv(testenv.StorageEnv))
	if err != nil {
		fmt.Println(err)
		return 1
	}
	st, err := azstore.Open(ctx, s, os.Getenv("SLUICE_CHILD_CONTAINER"), azstore.Options{})
	if err != nil {
		fmt.Println(err)
		return 1
	}
	dest := sqlDest("pg", config.DriverPostgres, os.Getenv("SLUICE_CHILD_DSN"))
	dest.BatchSize = 100
	p := &config.Pipeline{Name: "orders", Destinations: []config.Destination{dest}}
	crashAt, _ := strconv.Atoi(os.Getenv("SLUICE_CHILD_CRASH_AFTER_APPLY"))
	d := &engine.Drainer{Store: st, Queue: os.Getenv("SLUICE_CHILD_QUEUE"),
		Open: func(ctx context.Context, p *config.Pipeline, dd *config.Destination) (sink.Sink, error) {
			sk, err := openSQL(ctx, p, dd)
			if err != nil || crashAt == 0 {
				return sk, err
			}
			return &crashAfterApply{Sink: sk, n: crashAt}, nil
		}}
	res, err := d.Drain(ctx, engine.DrainRequest{Pipeline: p, Destination: &p.Destinations[0], Resume: true})
	if err != nil {
		fmt.Println(err)
		return 1
	}
	fmt.Println(res.Outcome, res.To)
	return 0
}

func TestCrashAnywhereInADrainConverges(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	dsn := testenv.Postgres(t)
	dest := sqlDest("pg", config.DriverPostgres, dsn)
	f := newSQLFixture(t, 20000, 2000, dest)
	seed := time.Now().UnixNano()
	if v, err := strconv.ParseInt(os.Getenv("SLUICE_TEST_SEED"), 10, 64); err == nil {
		seed = v // reproduce a run: SLUICE_TEST_SEED=<the seed it logged>
	}
	rng := rand.New(rand.NewPCG(uint64(seed), 0))
	t.Logf("seed %d", seed)
	run := func(crashAfter int, killAfter time.Duration) string {
		cmd := exec.Command(os.Args[0], "-test.run=^$")
		cmd.Env = append(os.Environ(), "SLUICE_ENGINE_CHILD=drain", "SLUICE_CHILD_CONTAINER="+f.container,
			"SLUICE_CHILD_DSN="+dsn, "SLUICE_CHILD_QUEUE="+testenv.UniqueName("q"),
			"SLUICE_CHILD_CRASH_AFTER_APPLY="+strconv.Itoa(crashAfter))
		out := &lockedBuffer{}
		cmd.Stdout, cmd.Stderr = out, out
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		if killAfter > 0 {
			timer := time.AfterFunc(killAfter, func() { _ = cmd.Process.Signal(syscall.SIGKILL) })
			defer timer.Stop()
		}
		_ = cmd.Wait()
		// A killed drain leaves its lease until it expires; expire it now.
		_ = f.st.BreakLease(ctx, "orders/lock/pg")
		return out.String()
	}
	kills, midway := 0, 0
	for i := 0; i < 8; i++ {
		// Between apply and checkpoint, after a different batch each time.
		if out := run(1+i%3, 0); strings.Contains(out, "drained") {
			break
		}
		kills++
		before := f.checkpointOf(t, "pg").Seq
		// At a random moment: mid-batch, mid-checkpoint, mid-scan.
		if out := run(0, time.Duration(100+rng.IntN(300))*time.Millisecond); strings.Contains(out, "drained") {
			break
		}
		kills++
		if cp := f.checkpointOf(t, "pg").Seq; cp > before && cp < 20000 {
			midway++
		}
	}
	if midway < 2 {
		t.Fatalf("only %d random kills landed in the middle of a drain; make the log longer", midway)
	}
	if out := run(0, 0); !strings.Contains(out, " 20000") {
		t.Fatalf("final drain: %s", out)
	}
	t.Logf("%d kills, %d of them at random moments mid-drain", kills, midway)
	res, err := f.drainer().Drain(ctx, engine.DrainRequest{Pipeline: f.p, Destination: &f.p.Destinations[0], Head: 20000})
	if err != nil || res.Outcome != engine.OutcomeIdle {
		t.Fatalf("after the final drain: %+v, %v; want idle at the head", res, err)
	}
	f.checkTable(t, config.DriverPostgres, dsn)
}

type lockedBuffer struct {
	mu  sync.Mutex
	buf []byte
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.buf = append(b.buf, p...)
	return len(p), nil
}

func (b *lockedBuffer) String() string { b.mu.Lock(); defer b.mu.Unlock(); return string(b.buf) }

func TestPostgresOutageMidDrain(t *testing.T) {
	if testing.Short() {
		t.Skip("a 60-second outage")
	}
	t.Parallel()
	ctx := context.Background()
	srv := testenv.PrivatePostgres(t)
	f := newSQLFixture(t, 20000, 3000, sqlDest("pg", config.DriverPostgres, srv.DSN))
	applied := 0
	var mu sync.Mutex
	restarted := make(chan struct{})
	d := f.drainer()
	d.Open = func(ctx context.Context, p *config.Pipeline, dd *config.Destination) (sink.Sink, error) {
		sk, err := openSQL(ctx, p, dd)
		if err != nil {
			return nil, err
		}
		return sinkFunc{sk, func() {
			mu.Lock()
			defer mu.Unlock()
			applied++
			if applied == 5 {
				// PostgreSQL goes away for 60 s in the middle of the drain.
				srv.Stop()
				go func() { time.Sleep(60 * time.Second); srv.Start(); close(restarted) }()
			}
		}}, nil
	}
	req := f.req(0)
	req.Deadline = time.Now().Add(35 * time.Second)
	res, err := d.Drain(ctx, req)
	if err == nil || res.Outcome != engine.OutcomeFailed {
		t.Fatalf("drain during the outage = %+v, %v; want a clean failure for the host to retry", res, err)
	}
	cp := f.checkpointOf(t, "pg")
	if cp.LastError == "" || cp.Seq < 800 || cp.Seq >= 20000 {
		t.Fatalf("checkpoint after the failed drain = %+v", cp)
	}
	<-restarted
	res, err = d.Drain(ctx, f.req(0))
	if err != nil || res.Outcome != engine.OutcomeDrained || res.To != 20000 {
		t.Fatalf("drain after the outage = %+v, %v", res, err)
	}
	f.checkTable(t, config.DriverPostgres, srv.DSN)
}

// sinkFunc calls after() after every successful Apply.
type sinkFunc struct {
	sink.Sink
	after func()
}

func (s sinkFunc) Apply(ctx context.Context, b sink.Batch) error {
	err := s.Sink.Apply(ctx, b)
	if err == nil {
		s.after()
	}
	return err
}

func (f *sqlFixture) checkpointOf(t *testing.T, dest string) *checkpoint.Checkpoint {
	t.Helper()
	cp, err := checkpoint.Load(context.Background(), f.st, f.p.Name, dest)
	if err != nil {
		t.Fatal(err)
	}
	return cp
}
