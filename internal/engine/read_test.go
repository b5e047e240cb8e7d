package engine_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http/httptest"
	"os"
	"os/exec"
	"reflect"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sluicehq/sluice/internal/azstore"
	"github.com/sluicehq/sluice/internal/changelog"
	"github.com/sluicehq/sluice/internal/config"
	"github.com/sluicehq/sluice/internal/engine"
	"github.com/sluicehq/sluice/internal/graphsim"
	"github.com/sluicehq/sluice/internal/source/sharepoint"
	"github.com/sluicehq/sluice/internal/testenv"
)

type readFixture struct {
	st     *azstore.Store
	sim    *graphsim.Sim
	list   *graphsim.List
	srv    *httptest.Server
	p      *config.Pipeline
	reader *engine.Reader
	sleeps []time.Duration
}

func newReadFixture(t *testing.T, items int) *readFixture {
	t.Helper()
	f := &readFixture{st: testenv.Store(t)}
	f.sim = graphsim.New(graphsim.Options{Token: "secret-token"})
	f.list = f.sim.AddList("contoso.sharepoint.com", "/sites/ops", "Orders")
	f.list.Populate(items, 42)
	f.srv = httptest.NewServer(f.sim)
	t.Cleanup(f.srv.Close)
	f.p = &config.Pipeline{Name: "orders", Source: config.Source{Type: "sharepoint", Site: "contoso.sharepoint.com:/sites/ops", List: "Orders",
		GraphURL: f.srv.URL + "/v1.0", Auth: config.Auth{Type: config.AuthBearer, Token: "secret-token"}},
		Destinations: []config.Destination{{Name: "warehouse", Type: "sql"}}}
	f.reader = &engine.Reader{Store: f.st, Queue: testenv.UniqueName("q"), CommitRecords: 300,
		Open: func(p *config.Pipeline) (engine.Source, error) {
			return sharepoint.New(sharepoint.Options{GraphURL: p.Source.GraphURL, Auth: p.Source.Auth, HTTPClient: f.srv.Client(),
				Sleep: func(ctx context.Context, d time.Duration) error { f.sleeps = append(f.sleeps, d); return ctx.Err() }})
		}}
	return f
}

func (f *readFixture) read(t *testing.T, ctx context.Context) engine.ReadResult {
	t.Helper()
	res, err := f.reader.ReadPipeline(ctx, f.p)
	if err != nil {
		t.Fatalf("read pass: %v (%+v)", err, res)
	}
	return res
}

// fold folds the committed log by key into the live items' fields.
func fold(t *testing.T, st *azstore.Store) map[string]map[string]any {
	t.Helper()
	ctx := context.Background()
	lg := changelog.New(st, "orders", changelog.Options{})
	s, err := lg.LoadState(ctx)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]map[string]any{}
	sc := lg.Scan(ctx, 1, s.Head.Seq)
	for sc.Next() {
		r := sc.Record()
		if r.Op == changelog.OpDelete {
			delete(out, r.Key)
			continue
		}
		var m map[string]any
		if err := json.Unmarshal(r.Fields, &m); err != nil {
			t.Fatalf("seq %d fields: %v", r.Seq, err)
		}
		out[r.Key] = m
	}
	if err := sc.Err(); err != nil {
		t.Fatalf("scan (seqs must be gap-free): %v", err)
	}
	return out
}

func checkFold(t *testing.T, f *readFixture, when string) {
	t.Helper()
	got, want := fold(t, f.st), f.list.Snapshot()
	if len(got) != len(want) {
		t.Fatalf("%s: the log folds to %d live items, the list has %d", when, len(got), len(want))
	}
	keys := make([]string, 0, len(want))
	for k := range want {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		if !reflect.DeepEqual(got[k], want[k]) {
			t.Fatalf("%s: item %s\nlog:  %v\nlist: %v", when, k, got[k], want[k])
		}
	}
}

func TestReadFullAndIncrementalRounds(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name  string
		knobs graphsim.Knobs
	}{
		{"plain", graphsim.Knobs{}},
		{"duplicates older first", graphsim.Knobs{DuplicateRate: 0.3}},
		{"shuffled", graphsim.Knobs{Shuffle: true}},
		{"empty pages", graphsim.Knobs{EmptyPageEvery: 2, EmptyFinalPage: true, ShortPages: true}},
		{"removed tombstones", graphsim.Knobs{Tombstones: "removed"}},
		{"everything", graphsim.Knobs{DuplicateRate: 0.2, Shuffle: true, EmptyPageEvery: 3, ShortPages: true, Replay: 5}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			ctx := context.Background()
			f := newReadFixture(t, 700)
			f.list.SetKnobs(tc.knobs)
			res := f.read(t, ctx)
			if res.Outcome != "read" || res.Records < 700 || res.WokeUp != 1 {
				t.Fatalf("first pass = %+v", res)
			}
			checkFold(t, f, "after the full load")
			rng := rand.New(rand.NewPCG(7, 7))
			for round := range 5 {
				f.list.Churn(rng, 20, 40, 15)
				f.read(t, ctx)
				checkFold(t, f, fmt.Sprintf("after round %d", round+1))
			}
			if tc.knobs.Replay > 0 {
				return // replays re-deliver old changes on every round
			}
			// A pass with nothing new adds nothing.
			before := f.read(t, ctx).Head
			if res := f.read(t, ctx); res.Head != before {
				t.Fatalf("an idle pass moved the head from %d to %d", before, res.Head)
			}
		})
	}
}

func TestReadResyncReconcilesDroppedDeletes(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	f := newReadFixture(t, 400)
	f.read(t, ctx)
	// Deletes whose tombstones are never reported, then the token expires:
	// only a full round with reconciliation can notice them.
	for id := 10; id < 30; id++ {
		f.list.DeleteUnreported(id)
	}
	f.list.Churn(rand.New(rand.NewPCG(1, 2)), 5, 5, 0)
	f.list.ExpireTokens()
	res := f.read(t, ctx)
	if res.Outcome != "read" || res.Deletes != 20 {
		t.Fatalf("pass after expiry = %+v; want 20 reconciled deletes", res)
	}
	// The full round logged only what changed: the 10 edits/adds, not the
	// 370 items it delivered unchanged.
	if res.Unchanged < 360 || res.Records > 15 {
		t.Fatalf("resync round logged %d records and skipped %d unchanged; want only the changes logged", res.Records, res.Unchanged)
	}
	checkFold(t, f, "after the resync")
	for _, r := range graphsim.ResyncCodes[:4] {
		f.list.SetKnobs(graphsim.Knobs{Resync: r})
		f.list.Churn(rand.New(rand.NewPCG(3, 4)), 3, 3, 3)
		f.list.ExpireTokens()
		f.read(t, ctx)
		checkFold(t, f, fmt.Sprintf("after a 410 %v", r))
	}
}

func TestReadThrottling(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	f := newReadFixture(t, 300)
	for _, ra := range []string{"3", "2.128", graphsim.RetryAfterDate(time.Now().Add(4 * time.Second))} {
		f.sim.Throttle(2, 429, ra)
		f.list.Churn(rand.New(rand.NewPCG(5, 6)), 5, 5, 5)
		f.sleeps = nil
		res := f.read(t, ctx)
		if res.Outcome != "read" {
			t.Fatalf("Retry-After %q: %+v", ra, res)
		}
		var waited time.Duration
		for _, d := range f.sleeps {
			waited += d
		}
		if waited < 2*time.Second {
			t.Fatalf("Retry-After %q: waited %v in all", ra, waited)
		}
		checkFold(t, f, "after throttling")
	}
	// A Retry-After longer than the pass may last: the pass ends cleanly
	// with its progress and throttledUntil saved, and the next pass skips.
	f.sim.Throttle(1, 503, "3600")
	f.list.Churn(rand.New(rand.NewPCG(5, 7)), 5, 5, 5)
	res := f.read(t, ctx)
	if res.Outcome != "throttled" {
		t.Fatalf("long throttle = %+v", res)
	}
	st, _ := changelog.New(f.st, "orders", changelog.Options{}).LoadState(ctx)
	if st.Source.ThrottledUntil.Before(time.Now().Add(50 * time.Minute)) {
		t.Fatalf("throttledUntil = %v", st.Source.ThrottledUntil)
	}
	if res := f.read(t, ctx); res.Outcome != "throttled" || res.Pages != 0 {
		t.Fatalf("pass while throttled = %+v; want a skip", res)
	}
}

func TestReadCrashAnywhereConverges(t *testing.T) {
	t.Parallel()
	// Large enough that a first enumeration outlasts many short passes.
	f := newReadFixture(t, 20000)
	f.list.SetKnobs(graphsim.Knobs{DuplicateRate: 0.1, Shuffle: true})
	rng := rand.New(rand.NewPCG(11, 12))
	cancels := 0
	for i := range 12 {
		f.list.Churn(rng, 10, 20, 5)
		ctx, cancel := context.WithTimeout(context.Background(), time.Duration(1+rng.IntN(25))*time.Millisecond)
		_, err := f.reader.ReadPipeline(ctx, f.p)
		cancel()
		if err != nil {
			cancels++
		}
		// The killed pass's lease would expire; expire it now.
		_ = f.st.BreakLease(context.Background(), "orders/lock/read")
		_ = i
	}
	if cancels < 3 {
		t.Fatalf("only %d passes were interrupted; the test proves little", cancels)
	}
	f.read(t, context.Background())
	checkFold(t, f, fmt.Sprintf("after %d interrupted passes", cancels))

	// Now a resync round (which skips unchanged items) interrupted again and
	// again, with deletes only reconciliation can find.
	for id := 100; id < 150; id++ {
		f.list.DeleteUnreported(id)
	}
	f.list.ExpireTokens()
	cancels = 0
	for range 12 {
		f.list.Churn(rng, 3, 10, 2)
		ctx, cancel := context.WithTimeout(context.Background(), time.Duration(1+rng.IntN(25))*time.Millisecond)
		if _, err := f.reader.ReadPipeline(ctx, f.p); err != nil {
			cancels++
		}
		cancel()
		_ = f.st.BreakLease(context.Background(), "orders/lock/read")
	}
	f.read(t, context.Background())
	checkFold(t, f, fmt.Sprintf("after a resync with %d interrupted passes", cancels))
}

func TestReadErrorsNameTheProblem(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	f := newReadFixture(t, 10)
	f.sim.Inject(graphsim.Fault{Status: 403, Count: 5})
	_, err := f.reader.ReadPipeline(ctx, f.p)
	if err == nil || !strings.Contains(err.Error(), "Sites.Read.All") {
		t.Fatalf("403: %v", err)
	}
	f.sim.ClearFaults()
	f.read(t, ctx)
	// A changed list is an error until reset.
	p2 := *f.p
	p2.Source.List = "Invoices"
	if _, err := f.reader.ReadPipeline(ctx, &p2); err == nil || !strings.Contains(err.Error(), "sluice reset --pipeline orders") {
		t.Fatalf("changed list: %v", err)
	}
	// Malformed page: an error, and nothing wrong committed.
	headBefore := f.read(t, ctx).Head
	f.list.Churn(rand.New(rand.NewPCG(1, 1)), 3, 0, 0)
	// One cut-off body is retried as a network glitch; a page that stays
	// malformed fails the pass.
	f.sim.Inject(graphsim.Fault{Malformed: true, Count: 20})
	if _, err := f.reader.ReadPipeline(ctx, f.p); err == nil {
		t.Fatal("a malformed page was accepted")
	}
	f.sim.ClearFaults()
	st, _ := changelog.New(f.st, "orders", changelog.Options{}).LoadState(ctx)
	if st.Head.Seq != headBefore {
		t.Fatalf("head moved from %d to %d on a malformed page", headBefore, st.Head.Seq)
	}
	f.read(t, ctx)
	checkFold(t, f, "after the malformed page")
	var _ = errors.New
}

// childRead is a read pass in a process of its own, for the kill test.
func childRead() int {
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
	p := &config.Pipeline{Name: "orders", Source: config.Source{Type: "sharepoint", Site: "contoso.sharepoint.com:/sites/ops", List: "Orders",
		GraphURL: os.Getenv("SLUICE_CHILD_GRAPH"), Auth: config.Auth{Type: config.AuthBearer, Token: "secret-token"}}}
	r := &engine.Reader{Store: st, Queue: os.Getenv("SLUICE_CHILD_QUEUE"), CommitRecords: 500,
		Open: func(p *config.Pipeline) (engine.Source, error) {
			return sharepoint.New(sharepoint.Options{GraphURL: p.Source.GraphURL, Auth: p.Source.Auth})
		}}
	res, err := r.ReadPipeline(ctx, p)
	if err != nil {
		fmt.Println(err)
		return 1
	}
	fmt.Println(res.Outcome, res.Head)
	return 0
}

func TestReadProcessKilledAnywhereConverges(t *testing.T) {
	t.Parallel()
	// Large enough that a read outlasts the kill window on a fast machine.
	f := newReadFixture(t, 60000)
	f.list.SetKnobs(graphsim.Knobs{DuplicateRate: 0.05, Shuffle: true})
	container := f.st.Container()
	seed := time.Now().UnixNano()
	rng := rand.New(rand.NewPCG(uint64(seed), 1))
	t.Logf("seed %d", seed)
	run := func(killAfter time.Duration) string {
		cmd := exec.Command(os.Args[0], "-test.run=^$")
		cmd.Env = append(os.Environ(), "SLUICE_ENGINE_CHILD=read", "SLUICE_CHILD_CONTAINER="+container,
			"SLUICE_CHILD_GRAPH="+f.p.Source.GraphURL, "SLUICE_CHILD_QUEUE="+testenv.UniqueName("q"))
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
		_ = f.st.BreakLease(context.Background(), "orders/lock/read")
		return out.String()
	}
	kills := 0
	for i := range 10 {
		if i == 5 {
			// Halfway: expire the token and drop tombstones, so later kills
			// land in a resync round.
			for id := 200; id < 260; id++ {
				f.list.DeleteUnreported(id)
			}
			f.list.ExpireTokens()
		}
		f.list.Churn(rng, 20, 50, 10)
		if out := run(time.Duration(100+rng.IntN(400)) * time.Millisecond); !strings.Contains(out, "read ") {
			kills++
		}
	}
	if kills < 4 {
		t.Fatalf("only %d passes were killed before finishing; make the list longer", kills)
	}
	// Two quiet passes: the first finishes the round, the second delivers
	// what changed while the round was under way (Graph reports those in
	// the round after, reference §1.3).
	for range 2 {
		start := time.Now()
		out := run(0)
		if !strings.HasPrefix(out, "read ") {
			t.Fatalf("final pass: %s", out)
		}
		t.Logf("quiet pass: %s in %v", strings.TrimSpace(out), time.Since(start))
	}
	t.Logf("%d passes killed", kills)
	checkFold(t, f, fmt.Sprintf("after %d killed passes", kills))
}
