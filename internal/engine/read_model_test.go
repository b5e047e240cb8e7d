package engine_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http/httptest"
	"os"
	"reflect"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
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

// TestReadModel runs thousands of short random histories against the read
// pass: adds, edits, deletes with and without tombstones, restores from the
// recycle bin, token expiries, commits forced by record count and by time
// (an injected clock), every delta-shape knob of the simulator, and passes
// cancelled at random pages, before or after the page arrived. After every
// pass that completes, the folded log must equal the list, and the log must
// never hold a delete for an item that was never deleted.
//
// Seeded: SLUICE_TEST_SEED fixes the seed, SLUICE_READ_MODEL_CASES the
// number of cases (default 3,000, within SLUICE_READ_MODEL_BUDGET, default
// 75 s: a slow machine runs fewer), SLUICE_READ_MODEL_CASE runs one case. A
// failure prints how to replay it. Pages are fetched ahead concurrently, so the
// exact moment a cancellation lands can differ between runs of one seed;
// the history (the edits, the knobs, the pages at which passes are
// cancelled) is the same.
func TestReadModel(t *testing.T) {
	t.Parallel()
	seed := time.Now().UnixNano()
	if s := os.Getenv("SLUICE_TEST_SEED"); s != "" {
		seed, _ = strconv.ParseInt(s, 10, 64)
	}
	cases := envInt(t, "SLUICE_READ_MODEL_CASES", 3000)
	budget := 75 * time.Second
	if s := os.Getenv("SLUICE_READ_MODEL_BUDGET"); s != "" {
		var err error
		if budget, err = time.ParseDuration(s); err != nil {
			t.Fatalf("SLUICE_READ_MODEL_BUDGET=%q: %v", s, err)
		}
	}
	first, last := 0, cases-1
	if s := os.Getenv("SLUICE_READ_MODEL_CASE"); s != "" {
		first = envInt(t, "SLUICE_READ_MODEL_CASE", 0)
		last = first
	}
	t.Logf("seed %d, cases %d..%d (SLUICE_TEST_SEED=%d)", seed, first, last, seed)

	settings := testenv.StorageSettings(t)
	sim := graphsim.New(graphsim.Options{Token: "model-token", DefaultPageSize: 7, MaxPageSize: 7})
	srv := httptest.NewServer(sim)
	t.Cleanup(srv.Close)

	var stats modelStats
	next := atomic.Int64{}
	next.Store(int64(first))
	var wg sync.WaitGroup
	var failures, ran atomic.Int64
	start := time.Now()
	for range envInt(t, "SLUICE_READ_MODEL_WORKERS", 6) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				if time.Since(start) > budget {
					return
				}
				i := int(next.Add(1) - 1)
				if i > last || failures.Load() >= 3 {
					return
				}
				ran.Add(1)
				// A container per case: Azurite's listings slow down with
				// the number of blobs in a container.
				st, err := azstore.Open(context.Background(), settings, fmt.Sprintf("model%d-%d", seed%1e9, i), azstore.Options{})
				if err != nil {
					failures.Add(1)
					t.Error(err)
					return
				}
				m := &modelCase{seed: seed, index: i, st: st, sim: sim, srv: srv, stats: &stats}
				err = m.run()
				_ = st.DeleteContainer(context.Background())
				if err != nil {
					failures.Add(1)
					t.Errorf("case %d: %v\n  replay with SLUICE_TEST_SEED=%d SLUICE_READ_MODEL_CASE=%d\n  history:\n%s",
						i, err, seed, i, m.history())
				}
			}
		}()
	}
	wg.Wait()
	n := ran.Load()
	t.Logf("%d cases in %v: %d passes (%d cancelled, %d with tokens expired, %d of them mid-pass, %d chains lost, %d rounds restarted), %d reconciled deletes",
		n, time.Since(start).Round(time.Second), stats.passes.Load(), stats.cancelled.Load(), stats.resyncs.Load(), stats.midExpiries.Load(),
		stats.chainsLost.Load(), stats.restarts.Load(), stats.reconciled.Load())
	if n < int64(last-first+1) {
		t.Logf("the time budget (%v, SLUICE_READ_MODEL_BUDGET) ended the run before %d cases", budget, last-first+1)
	}
	// The model must have exercised what it is for; only meaningful with
	// enough cases.
	if n >= 200 {
		for what, got := range map[string]int64{"cancelled passes": stats.cancelled.Load(), "reconciled deletes": stats.reconciled.Load(),
			"mid-pass 410s": stats.midExpiries.Load(), "restarted rounds": stats.restarts.Load()} {
			if got == 0 {
				t.Errorf("%d cases and no %s: the model proves little", n, what)
			}
		}
	}
}

func envInt(t *testing.T, name string, def int) int {
	s := os.Getenv(name)
	if s == "" {
		return def
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 0 {
		t.Fatalf("%s=%q: want a number", name, s)
	}
	return n
}

type modelStats struct {
	passes, cancelled, resyncs, midExpiries, chainsLost, restarts, reconciled atomic.Int64
}

type modelCase struct {
	seed  int64
	index int
	st    *azstore.Store
	sim   *graphsim.Sim
	srv   *httptest.Server
	stats *modelStats

	rng      *rand.Rand
	list     *graphsim.List
	p        *config.Pipeline
	steps    []string
	restored map[string]bool // items restored from the recycle bin
	live     map[string]map[string]any
	maxID    int
}

func (m *modelCase) logf(format string, args ...any) {
	m.steps = append(m.steps, fmt.Sprintf(format, args...))
}

func (m *modelCase) history() string {
	out := ""
	for _, s := range m.steps {
		out += "    " + s + "\n"
	}
	return out
}

// everLive reports whether the list ever held item id (ids are handed out
// in order and never reused).
func (m *modelCase) everLive(id int) bool { return id <= m.maxID }

// look notes the live items and the highest id handed out so far.
func (m *modelCase) look() {
	m.live = m.list.Snapshot()
	for k := range m.live {
		if id, _ := strconv.Atoi(k); id > m.maxID {
			m.maxID = id
		}
	}
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}

func (m *modelCase) run() error {
	m.rng = rand.New(rand.NewPCG(uint64(m.seed), uint64(m.index)))
	m.restored = map[string]bool{}
	name := fmt.Sprintf("m%d", m.index)
	m.list = m.sim.AddList("contoso.sharepoint.com", "/sites/"+name, "Model")
	knobs := graphsim.Knobs{
		Shuffle:        m.rng.IntN(3) == 0,
		EmptyFinalPage: m.rng.IntN(3) == 0,
		ShortPages:     m.rng.IntN(2) == 0,
		Tombstones:     []graphsim.TombstoneStyle{graphsim.DeletedFacet, graphsim.RemovedAnnotation, graphsim.BothShapes}[m.rng.IntN(3)],
	}
	if m.rng.IntN(3) == 0 {
		knobs.DuplicateRate = 0.25
	}
	if m.rng.IntN(4) == 0 {
		knobs.EmptyPageEvery = 2 + m.rng.IntN(3)
	}
	if m.rng.IntN(6) == 0 {
		knobs.Replay = 1 + m.rng.IntN(4)
	}
	m.list.SetKnobs(knobs)
	n := m.rng.IntN(45)
	m.list.Populate(n, m.rng.Uint64())
	m.look()
	m.logf("list of %d items, knobs %+v", n, knobs)

	m.p = &config.Pipeline{Name: name, Source: config.Source{Type: "sharepoint", Site: "contoso.sharepoint.com:/sites/" + name, List: "Model",
		GraphURL: m.srv.URL + "/v1.0", Auth: config.Auth{Type: config.AuthBearer, Token: "model-token"}}}
	clock := newSteppingClock(time.Duration(m.rng.IntN(4)) * 300 * time.Millisecond)
	reader := &engine.Reader{Store: m.st, Now: clock.Now,
		CommitRecords:  1 + m.rng.IntN(25),
		CommitInterval: time.Duration(1+m.rng.IntN(3)) * time.Second}
	m.logf("commit every %d records or %v; each clock reading advances %v", reader.CommitRecords, reader.CommitInterval, clock.step)

	cancelledBefore := false
	steps := 2 + m.rng.IntN(4)
	for step := range steps + 1 {
		// The last step is a quiet pass: every case ends with a check.
		quiet := step == steps
		// After a cancelled pass the list stays still, so that the pass
		// that completes the interrupted round must bring the log level
		// with the list (changes made during a round are Graph's next
		// round's business, reference §1.3).
		expire := !quiet && m.rng.IntN(3) == 0
		if !cancelledBefore && !quiet {
			m.mutate(expire)
		}
		if expire {
			m.list.ExpireTokens()
			m.stats.resyncs.Add(1)
			m.logf("step %d: tokens expire", step)
		}
		cancelAt, expireAt := 0, 0
		if !quiet && m.rng.IntN(3) == 0 {
			cancelAt = 1 + m.rng.IntN(5)
		}
		if !quiet && m.rng.IntN(6) == 0 {
			// Tokens expire while the pass runs: a 410 mid-round.
			expireAt = 1 + m.rng.IntN(4)
		}
		after := m.rng.IntN(2) == 0
		ctx, cancel := context.WithCancel(context.Background())
		// The pass is cancelled at the cancelAt-th page request: before
		// sending it, or right after its answer arrived (so that the commit
		// after it fails). Tokens expire after the expireAt-th.
		var fired, expired atomic.Bool
		hook := &pageHook{
			before: func(n int64) bool {
				if cancelAt > 0 && n == int64(cancelAt) && !after {
					fired.Store(true)
					cancel()
					return true
				}
				return false
			},
			after: func(n int64, err error) {
				if expireAt > 0 && n == int64(expireAt) && err == nil {
					expired.Store(true)
					m.list.ExpireTokens()
				}
				if cancelAt > 0 && n == int64(cancelAt) && after {
					fired.Store(true)
					cancel()
				}
			},
		}
		reader.Open = func(p *config.Pipeline) (engine.Source, error) {
			c, err := sharepoint.New(sharepoint.Options{GraphURL: p.Source.GraphURL, Auth: p.Source.Auth, HTTPClient: m.srv.Client(),
				Sleep: func(ctx context.Context, d time.Duration) error { return ctx.Err() }})
			hook.Source = c
			return hook, err
		}
		res, err := reader.ReadPipeline(ctx, m.p)
		cancel()
		m.stats.passes.Add(1)
		m.stats.reconciled.Add(res.Deletes)
		if fired.Load() {
			m.stats.cancelled.Add(1)
		}
		if expired.Load() {
			m.stats.midExpiries.Add(1)
		}
		if res.RoundRestarted {
			m.stats.restarts.Add(1)
		}
		m.logf("step %d: pass (cancel at page %d, after the page: %v; tokens expire after page %d): %s %d records, %d reconciled, head %d, restarted %v, err %v",
			step, cancelAt, after, expireAt, res.Outcome, res.Records, res.Deletes, res.Head, res.RoundRestarted, err)
		if err := m.checkNoFalseDeletes(); err != nil {
			return err
		}
		if err != nil {
			if !fired.Load() || !strings.Contains(err.Error(), context.Canceled.Error()) {
				return fmt.Errorf("pass failed without being cancelled: %w", err)
			}
			cancelledBefore = true
			if quiet {
				return fmt.Errorf("the quiet pass was cancelled")
			}
			if m.rng.IntN(4) == 0 {
				if err := m.loseChain(); err != nil {
					return err
				}
			}
			continue
		}
		if res.Outcome != "read" {
			return fmt.Errorf("pass outcome %q, want read", res.Outcome)
		}
		if res.RoundRestarted {
			// The round starts again next pass: like a cancelled one.
			cancelledBefore = true
			if quiet {
				steps++ // one more quiet pass to finish it
			}
			continue
		}
		cancelledBefore = false
		if err := m.checkFold(); err != nil {
			return err
		}
	}
	return nil
}

// mutate changes the list between passes. Deletes without a tombstone
// happen only right before tokens expire: nothing but a full round can
// notice them, so before one the log cannot equal the list.
func (m *modelCase) mutate(expire bool) {
	adds, edits, dels := m.rng.IntN(6), m.rng.IntN(8), m.rng.IntN(4)
	m.list.Churn(m.rng, adds, edits, dels)
	silent := 0
	for range m.rng.IntN(3) * btoi(expire) {
		if id := 1 + m.rng.IntN(60); m.list.DeleteUnreported(id) {
			silent++
		}
	}
	restored := 0
	if m.rng.IntN(4) == 0 {
		// A recycle-bin restore of a deleted item: same id, live again.
		live := m.list.Snapshot()
		for id := 1; id < 60; id++ {
			if _, ok := live[strconv.Itoa(id)]; !ok && m.everLive(id) {
				// A title of its own each time, so that the check for
				// records logged twice never mistakes two restores.
				m.list.Upsert(id, map[string]any{"Title": fmt.Sprint("restored ", id, " #", len(m.steps))})
				m.restored[strconv.Itoa(id)] = true
				restored++
				break
			}
		}
	}
	m.look()
	m.logf("churn +%d ~%d -%d, %d deleted without tombstone, %d restored; %d live", adds, edits, dels, silent, restored, len(m.live))
}

// loseChain deletes the newest blob of the chain of unchanged keys of a
// round in progress, as the old DropSeen of a stale reader could (issue 11,
// defect 5): the round must start again rather than guess deletes.
func (m *modelCase) loseChain() error {
	ctx := context.Background()
	s, err := changelog.New(m.st, m.p.Name, changelog.Options{}).LoadState(ctx)
	if err != nil || s.Source.RoundSeen == "" {
		return err
	}
	err = m.st.Delete(ctx, s.Source.RoundSeen, "")
	if errors.Is(err, azstore.ErrNotFound) {
		return nil // lost already, and no pass has restarted the round yet
	}
	m.stats.chainsLost.Add(1)
	m.logf("the chain's newest blob %s is lost", s.Source.RoundSeen)
	return err
}

// checkNoFalseDeletes: the log never holds a delete for an item that
// exists and was never deleted. SharePoint never reuses ids, and a deleted
// item comes back only by a restore (which the model records), so a live,
// never-restored item was never deleted.
func (m *modelCase) checkNoFalseDeletes() error {
	live := m.list.Snapshot()
	ctx := context.Background()
	lg := changelog.New(m.st, m.p.Name, changelog.Options{})
	s, err := lg.LoadState(ctx)
	if err != nil {
		return err
	}
	sc := lg.Scan(ctx, 1, s.Head.Seq)
	defer sc.Close()
	for sc.Next() {
		r := sc.Record()
		if _, ok := live[r.Key]; ok && r.Op == changelog.OpDelete && !m.restored[r.Key] {
			return fmt.Errorf("seq %d deletes item %s, which exists and was never deleted", r.Seq, r.Key)
		}
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("scan the committed log: %w", err)
	}
	return nil
}

// checkFold: the committed log, folded by key, equals the list.
func (m *modelCase) checkFold() error {
	ctx := context.Background()
	lg := changelog.New(m.st, m.p.Name, changelog.Options{})
	s, err := lg.LoadState(ctx)
	if err != nil {
		return err
	}
	got := map[string]map[string]any{}
	// Without the knobs that make Graph itself repeat items, no item is
	// logged twice in a row with the same fields: a page logged twice (a
	// commit that split a page, Invariant 2) shows here.
	k := m.list.Knobs()
	checkDup := k.Replay == 0 && k.DuplicateRate == 0
	var dup error
	prev := map[string]string{}
	sc := lg.Scan(ctx, 1, s.Head.Seq)
	defer sc.Close()
	for sc.Next() {
		r := sc.Record()
		if r.Op == changelog.OpDelete {
			delete(got, r.Key)
			delete(prev, r.Key)
			continue
		}
		if checkDup && dup == nil {
			if prev[r.Key] == string(r.Fields) {
				dup = fmt.Errorf("seq %d logs item %s again with the same fields: %s", r.Seq, r.Key, r.Fields)
			}
			prev[r.Key] = string(r.Fields)
		}
		var f map[string]any
		if err := json.Unmarshal(r.Fields, &f); err != nil {
			return fmt.Errorf("seq %d: %w", r.Seq, err)
		}
		got[r.Key] = f
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("scan the committed log: %w", err)
	}
	if err := dup; err != nil {
		return err
	}
	want := m.list.Snapshot()
	var diff []string
	for k, w := range want {
		if g, ok := got[k]; !ok {
			diff = append(diff, "missing "+k)
		} else if !reflect.DeepEqual(g, w) {
			diff = append(diff, "differs "+k)
		}
	}
	for k := range got {
		if _, ok := want[k]; !ok {
			diff = append(diff, "extra "+k)
		}
	}
	if len(diff) > 0 {
		sort.Strings(diff)
		return fmt.Errorf("the log folds to %d items, the list has %d: %v", len(got), len(want), diff[:min(10, len(diff))])
	}
	return nil
}
