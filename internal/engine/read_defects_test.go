package engine_test

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sluicehq/sluice/internal/config"
	"github.com/sluicehq/sluice/internal/engine"
	"github.com/sluicehq/sluice/internal/source/sharepoint"
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

// Defect 1 (issue 11): a resync of a list that did not change committed
// after every page; the unchanged keys of every commit after the first were
// recorded under the same blob name as the first (the head did not move),
// so reconciliation "did not see" them and logged a delete for each.
func TestResyncOfUnchangedListLogsNoDeletes(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	f := newReadFixture(t, 5000)
	f.read(t, ctx)
	clock := newSteppingClock(time.Second)
	f.reader.Now, f.reader.CommitInterval = clock.Now, 500*time.Millisecond

	f.list.ExpireTokens()
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

// cancelAfterSource returns page n successfully and cancels the pass right
// after, so that the commit following it fails.
type cancelAfterSource struct {
	engine.Source
	n      int64
	served atomic.Int64
	cancel context.CancelFunc
}

func (s *cancelAfterSource) Page(ctx context.Context, link string) (*sharepoint.Page, error) {
	p, err := s.Source.Page(ctx, link)
	if s.served.Add(1) == s.n {
		s.cancel()
	}
	return p, err
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
			open := f.reader.Open
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			f.reader.Open = func(p *config.Pipeline) (engine.Source, error) {
				src, err := open(p)
				return &cancelAfterSource{Source: src, n: n, cancel: cancel}, err
			}
			if _, err := f.reader.ReadPipeline(ctx, f.p); err == nil {
				t.Fatal("the cancelled pass reported no error")
			}
			f.reader.Open = open
			res := f.read(t, context.Background())
			if res.Head != 5000 {
				t.Fatalf("a first load of 5,000 unchanged items, interrupted once, logged %d records; want 5,000 (no page logged twice)", res.Head)
			}
			checkFold(t, f, "after the interrupted first load")
		})
	}
}
