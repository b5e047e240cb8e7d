package engine_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sluicehq/sluice/internal/azstore"
	"github.com/sluicehq/sluice/internal/changelog"
	"github.com/sluicehq/sluice/internal/config"
	"github.com/sluicehq/sluice/internal/engine"
	"github.com/sluicehq/sluice/internal/source/sharepoint"
	"github.com/sluicehq/sluice/internal/testenv"
)

// steppingClock advances by step every time it is read, so that every
// page of a pass looks like it took longer than the commit interval: a
// commit after every page, as real Graph timing (0.5–2 s a page) causes on
// any large list.
type steppingClock struct {
	t    atomic.Int64
	step time.Duration
}

func newSteppingClock(step time.Duration) *steppingClock {
	c := &steppingClock{step: step}
	c.t.Store(time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC).UnixNano())
	return c
}

func (c *steppingClock) Now() time.Time { return time.Unix(0, c.t.Add(int64(c.step))).UTC() }

// resyncFixture loads a list of n items, then makes every page of the
// passes after it take longer than the commit interval (a commit after
// every page) and expires the delta tokens: the next pass is a resync.
func resyncFixture(t *testing.T, n int) *readFixture {
	t.Helper()
	f := newReadFixture(t, n)
	f.read(t, context.Background())
	clock := newSteppingClock(time.Second)
	f.reader.Now, f.reader.CommitInterval = clock.Now, 500*time.Millisecond
	f.list.ExpireTokens()
	return f
}

// Defect 1 (issue 11): a resync of a list that did not change committed
// after every page; the unchanged keys of every commit after the first were
// recorded under the same blob name as the first (the head did not move),
// so reconciliation "did not see" them and logged a delete for each.
func TestResyncOfUnchangedListLogsNoDeletes(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	f := resyncFixture(t, 5000)
	res := f.read(t, ctx)
	if res.Deletes != 0 || res.Records != 0 {
		t.Fatalf("resync of an unchanged 5,000-item list logged %d records and %d reconciled deletes; want none (%+v)", res.Records, res.Deletes, res)
	}
	checkFold(t, f, "after the resync of an unchanged list")

	// With k silently deleted items, exactly k deletes.
	for id := 1000; id < 1007; id++ {
		f.list.DeleteUnreported(id)
	}
	f.list.ExpireTokens()
	res = f.read(t, ctx)
	if res.Deletes != 7 {
		t.Fatalf("resync with 7 silently deleted items logged %d deletes (%+v)", res.Deletes, res)
	}
	checkFold(t, f, "after the resync with 7 silent deletes")
}

// pageHook passes a pass's page requests through, numbered from 1, and
// calls before each (true: answer ctx.Err() instead of fetching) and after
// each.
type pageHook struct {
	engine.Source
	before func(n int64) (stop bool)
	after  func(n int64, err error)
	served atomic.Int64
}

func (h *pageHook) Page(ctx context.Context, link string) (*sharepoint.Page, error) {
	n := h.served.Add(1)
	if h.before != nil && h.before(n) {
		return nil, ctx.Err()
	}
	p, err := h.Source.Page(ctx, link)
	if h.after != nil {
		h.after(n, err)
	}
	return p, err
}

// hookPages makes the fixture's passes go through h until restore.
func (f *readFixture) hookPages(h *pageHook) (restore func()) {
	open := f.reader.Open
	f.reader.Open = func(p *config.Pipeline) (engine.Source, error) {
		src, err := open(p)
		h.Source = src
		return h, err
	}
	return func() { f.reader.Open = open }
}

// Defect 4 (issue 11): a pass whose commit failed recorded its outcome with
// a commit that also flushed the open segment, moving the head past the
// cursor. The next pass read those pages again and logged them under new
// seqs: duplicates with new event ids downstream.
func TestFailedPassNeverMovesHeadPastCursor(t *testing.T) {
	t.Parallel()
	for _, n := range []int64{2, 3, 4} {
		t.Run(fmt.Sprint("cancel after page ", n), func(t *testing.T) {
			t.Parallel()
			f := newReadFixture(t, 5000)
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			// Page n arrives, and the pass is cancelled right after: the
			// commit following it fails.
			restore := f.hookPages(&pageHook{after: func(i int64, _ error) {
				if i == n {
					cancel()
				}
			}})
			if _, err := f.reader.ReadPipeline(ctx, f.p); err == nil {
				t.Fatal("the cancelled pass reported no error")
			}
			restore()
			res := f.read(t, context.Background())
			if res.Head != 5000 {
				t.Fatalf("a first load of 5,000 unchanged items, interrupted once, logged %d records; want 5,000 (no page logged twice)", res.Head)
			}
			checkFold(t, f, "after the interrupted first load")
		})
	}
}

// A 410 in the middle of a resync of an unchanged list restarts the round
// at the same head under the same fence; its blobs of unchanged keys must
// still get names of their own (found by review of the defect 1 fix).
func TestResyncRestartedMidRoundCompletes(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	f := resyncFixture(t, 5000)
	// Tokens expire again right after the second page that arrives.
	var pages atomic.Int64
	f.hookPages(&pageHook{after: func(_ int64, err error) {
		if err == nil && pages.Add(1) == 2 {
			f.list.ExpireTokens()
		}
	}})
	res, err := f.reader.ReadPipeline(ctx, f.p)
	if err != nil || res.Outcome != "read" || res.Deletes != 0 || res.Records != 0 {
		t.Fatalf("resync restarted by a second 410: %+v, %v; want a completed pass that logged nothing", res, err)
	}
	checkFold(t, f, "after a resync restarted mid-round")
}

// A first load whose final commit fails must not log its last page twice
// (found by review: the last page used to be committed first, with the
// link that fetched it as cursor, and the delta link in a second commit).
func TestFinalCommitFailureLogsNoPageTwice(t *testing.T) {
	t.Parallel()
	for _, n := range []int{50, 2500} {
		t.Run(fmt.Sprint(n, " items"), func(t *testing.T) {
			t.Parallel()
			f := newReadFixture(t, n)
			inject := &failFinalCommit{}
			faulty, err := azstore.Open(context.Background(), testenv.StorageSettings(t), f.st.Container(), azstore.Options{HTTPClient: inject})
			if err != nil {
				t.Fatal(err)
			}
			f.reader.Store = faulty
			if _, err := f.reader.ReadPipeline(context.Background(), f.p); err == nil || !inject.fired.Load() {
				t.Fatalf("the final commit did not fail (%v); the test proves nothing", err)
			}
			f.reader.Store = f.st
			if res := f.read(t, context.Background()); res.Head != int64(n) {
				t.Fatalf("a %d-item first load whose final commit failed logged %d records; want %d", n, res.Head, n)
			}
			checkFold(t, f, "after the failed final commit")
		})
	}
}

// A round whose chain of unchanged keys lost a blob (as the old DropSeen of
// a stale reader, defect 5, could do) must not stop the pipeline for good,
// nor guess deletes: the round starts again.
func TestLostSeenChainRestartsRound(t *testing.T) {
	t.Parallel()
	f := resyncFixture(t, 5000)
	lg := changelog.New(f.st, "orders", changelog.Options{})
	chained := func() bool {
		st, err := lg.LoadState(context.Background())
		return err == nil && st.Source.RoundSeen != ""
	}
	ctx, cancel := context.WithCancel(context.Background())
	restore := f.hookPages(&pageHook{before: func(int64) bool {
		if chained() {
			cancel()
		}
		return false
	}})
	_, _ = f.reader.ReadPipeline(ctx, f.p)
	cancel()
	restore()
	st, err := lg.LoadState(context.Background())
	if err != nil || st.Source.RoundSeen == "" || !st.Source.FullRound {
		t.Fatalf("the interrupted resync left no chain of unchanged keys (%v); the test proves nothing", err)
	}
	if err := f.st.Delete(context.Background(), st.Source.RoundSeen, ""); err != nil {
		t.Fatal(err)
	}
	f.list.Add(map[string]any{"Title": "added after the chain broke"})
	for id := 3000; id < 3004; id++ {
		f.list.DeleteUnreported(id)
	}
	var deletes int64
	restarted := false
	for i := range 3 {
		res, err := f.reader.ReadPipeline(context.Background(), f.p)
		deletes += res.Deletes
		restarted = restarted || res.RoundRestarted
		if err == nil && res.Outcome == "read" && !res.RoundRestarted {
			break
		}
		if i == 2 {
			t.Fatalf("the pipeline is stuck after its chain of unchanged keys broke: %+v, %v", res, err)
		}
	}
	if !restarted {
		t.Fatal("no pass reported that the round starts again")
	}
	if deletes != 4 {
		t.Fatalf("%d deletes reconciled; want exactly the 4 silent ones", deletes)
	}
	checkFold(t, f, "after the broken chain")
}

// failFinalCommit fails every write of the pipeline state that ends a round
// (the one that sets cursorAt; also the SDK's retries of it), before it
// reaches storage.
type failFinalCommit struct {
	fired atomic.Bool
}

func (f *failFinalCommit) Do(r *http.Request) (*http.Response, error) {
	if r.Method == http.MethodPut && strings.HasSuffix(r.URL.Path, "/orders/state.json") && r.Body != nil {
		b, err := io.ReadAll(r.Body)
		if err != nil {
			return nil, err
		}
		r.Body = io.NopCloser(bytes.NewReader(b))
		if bytes.Contains(b, []byte(`"cursorAt"`)) {
			f.fired.Store(true)
			return nil, errors.New("injected: the final commit of the round fails")
		}
	}
	return http.DefaultTransport.RoundTrip(r)
}
