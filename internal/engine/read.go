package engine

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/sluicehq/sluice/internal/azstore"
	"github.com/sluicehq/sluice/internal/changelog"
	"github.com/sluicehq/sluice/internal/checkpoint"
	"github.com/sluicehq/sluice/internal/config"
	"github.com/sluicehq/sluice/internal/keyindex"
	"github.com/sluicehq/sluice/internal/source/sharepoint"
)

// Source is what a read pass needs from SharePoint; *sharepoint.Client fits.
type Source interface {
	Resolve(ctx context.Context, site, list string) (siteID, listID string, err error)
	Page(ctx context.Context, link string) (*sharepoint.Page, error)
	SetNotBefore(t time.Time)
}

// SourceOpener makes the source client of a pipeline.
type SourceOpener func(p *config.Pipeline) (Source, error)

// Reader runs the Read protocol of DESIGN §4 for every pipeline.
type Reader struct {
	Store *azstore.Store
	Open  SourceOpener
	Log   *slog.Logger
	Now   func() time.Time
	// Queue receives the wake-ups; default WriteQueue.
	Queue string
	// Concurrency bounds how many pipelines are read at once; default 4.
	Concurrency int
	// CommitRecords and CommitInterval bound how much is read before a
	// commit (always at a page boundary); defaults 5,000 and 10 s.
	CommitRecords  int
	CommitInterval time.Duration
	// Progress, if set, is called after each page with the records read.
	Progress func(pipeline string, records int64)
}

// ReadResult reports one pipeline's read pass.
type ReadResult struct {
	Pipeline string `json:"pipeline"`
	Outcome  string `json:"outcome"` // read, busy, throttled, partial, failed
	Records  int64  `json:"records"`
	Deletes  int64  `json:"reconciledDeletes,omitempty"`
	// Unchanged counts items a full round delivered exactly as the log
	// already had them, and so did not log again.
	Unchanged int64 `json:"unchanged,omitempty"`
	Pages     int   `json:"pages"`
	// RoundRestarted: a full round could not reconcile (its record of
	// unchanged keys was lost) and starts again at the next pass.
	RoundRestarted bool   `json:"roundRestarted,omitempty"`
	Head           int64  `json:"head"`
	WokeUp         int    `json:"wokeUp"`
	Error          string `json:"error,omitempty"`
}

func (r *Reader) defaults() {
	if r.Queue == "" {
		r.Queue = WriteQueue
	}
	if r.Concurrency <= 0 {
		r.Concurrency = 4
	}
	if r.CommitRecords <= 0 {
		r.CommitRecords = 5000
	}
	if r.CommitInterval <= 0 {
		r.CommitInterval = 10 * time.Second
	}
	if r.Now == nil {
		r.Now = time.Now
	}
	if r.Log == nil {
		r.Log = slog.New(slog.DiscardHandler)
	}
}

// ReadAll reads the pipelines (all when only is empty) concurrently, with a
// bound; one failing pipeline does not stop the others. The error joins the
// failures, so a timer invocation reports them.
func (r *Reader) ReadAll(ctx context.Context, cfg *config.Config, only string) ([]ReadResult, error) {
	r.defaults()
	var ps []*config.Pipeline
	for i := range cfg.Pipelines {
		if only == "" || cfg.Pipelines[i].Name == only {
			ps = append(ps, &cfg.Pipelines[i])
		}
	}
	results := make([]ReadResult, len(ps))
	errs := make([]error, len(ps))
	sem := make(chan struct{}, r.Concurrency)
	var wg sync.WaitGroup
	for i, p := range ps {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			results[i], errs[i] = r.ReadPipeline(ctx, p)
			if errs[i] != nil {
				results[i].Outcome, results[i].Error = "failed", errs[i].Error()
			}
		}()
	}
	wg.Wait()
	return results, errors.Join(errs...)
}

type fingerprint struct {
	Site   string   `json:"site"`
	List   string   `json:"list"`
	Fields []string `json:"fields,omitempty"`
}

func fingerprintOf(p *config.Pipeline) fingerprint {
	return fingerprint{Site: p.Source.Site, List: p.Source.List, Fields: p.Source.Fields}
}

func (f fingerprint) String() string { b, _ := json.Marshal(f); return string(b) }

// ReadPipeline runs one read pass of one pipeline.
func (r *Reader) ReadPipeline(ctx context.Context, p *config.Pipeline) (ReadResult, error) {
	r.defaults()
	res := ReadResult{Pipeline: p.Name}
	log := r.Log.With("pipeline", p.Name)
	// 30 s: a killed reader holds the pipeline only that long (leases avoid
	// duplicate work; the fence keeps the log safe).
	lease, err := r.Store.AcquireLease(ctx, p.Name+"/lock/read", 30*time.Second)
	if errors.Is(err, azstore.ErrLeaseHeld) {
		res.Outcome = "busy" // another reader is at it
		return res, nil
	}
	if err != nil {
		return res, err
	}
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	stop := lease.Keep(ctx, func(err error) { cancel(fmt.Errorf("read lease lost: %w", err)) })
	defer func() {
		stop()
		rctx, rcancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		_ = lease.Release(rctx)
		rcancel()
	}()

	lg := changelog.New(r.Store, p.Name, changelog.Options{Logger: r.Log, Now: r.Now})
	var (
		a   *changelog.Appender
		src Source
	)
	for attempt := 1; ; attempt++ {
		st, err := lg.LoadState(ctx)
		if err != nil {
			return res, err
		}
		res.Head = st.Head.Seq
		fp := fingerprintOf(p)
		if st.Source.Fingerprint != "" && st.Source.Fingerprint != fp.String() {
			var old fingerprint
			_ = json.Unmarshal([]byte(st.Source.Fingerprint), &old)
			if old.Site != fp.Site || old.List != fp.List {
				return res, fmt.Errorf("read pipeline %s: the source changed from %s / %s to %s / %s; "+
					"run `sluice reset --pipeline %s` to read the new list from the start (the log is kept)",
					p.Name, old.Site, old.List, fp.Site, fp.List, p.Name)
			}
			// Old links carry the old $select: start a full round.
			log.Info("fields changed; starting a full round", "old", old.Fields, "new", fp.Fields)
			st.Source.Cursor, st.Source.FullRound = "", false
		}
		if now := r.Now(); st.Source.ThrottledUntil.After(now) {
			res.Outcome = "throttled"
			log.Info("Graph asked us to wait; skipping this pass", "until", st.Source.ThrottledUntil)
			return res, r.wake(ctx, p, st.Head.Seq, &res)
		}
		if src == nil {
			if src, err = r.Open(p); err != nil {
				return res, err
			}
		}
		src.SetNotBefore(st.Source.ThrottledUntil)
		if st.Source.SiteID == "" || st.Source.ListID == "" || st.Source.Fingerprint != fp.String() {
			if st.Source.SiteID, st.Source.ListID, err = src.Resolve(ctx, p.Source.Site, p.Source.List); err != nil {
				return res, fmt.Errorf("read pipeline %s: %w", p.Name, err)
			}
		}
		st.Source.Fingerprint = fp.String()

		a, err = lg.NewAppender(ctx, st)
		if errors.Is(err, changelog.ErrConflict) && attempt < 3 {
			// The state changed between loading and fencing although this
			// pass holds the lease: a write of an earlier, interrupted pass
			// that reached storage late. Load it again; the fence makes the
			// takeover safe whatever happens.
			log.Info("the pipeline state changed while taking over the log; loading it again", "attempt", attempt)
			continue
		}
		if err != nil {
			return res, err
		}
		break
	}
	pass := &readPass{r: r, p: p, lg: lg, a: a, src: src, log: log, res: &res}
	err = pass.run(ctx)
	if cause := context.Cause(ctx); err != nil && cause != nil && !errors.Is(cause, context.Canceled) {
		err = fmt.Errorf("%w (%v)", err, cause)
	}
	// Records added after the last commit are not part of the log: the
	// head is what was committed.
	res.Head = a.State().Head.Seq
	// Record the outcome (best effort: a fenced-out reader cannot).
	// Invariant 2: this write never moves the head. A pass that failed
	// between page boundaries leaves its uncommitted records as orphans;
	// committing them here would put the head past the cursor, and the next
	// pass would log those pages again under new seqs.
	outcome := res.Outcome
	if res.RoundRestarted {
		outcome += "; the full round starts again (its record of unchanged keys was lost)"
	}
	if err != nil {
		outcome = "failed: " + err.Error()
	}
	_ = a.Annotate(context.WithoutCancel(ctx), func(s *changelog.State) {
		s.Source.LastRead, s.Source.LastOutcome = r.Now().UTC(), truncate(outcome, 300)
	})
	if werr := r.wake(context.WithoutCancel(ctx), p, res.Head, &res); werr != nil && err == nil {
		err = werr
	}
	return res, err
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}

// wake enqueues a wake-up for every destination whose checkpoint is behind
// head (DESIGN §4 Read 3); a lost wake-up heals at the next pass.
func (r *Reader) wake(ctx context.Context, p *config.Pipeline, head int64, res *ReadResult) error {
	var errs []error
	for _, d := range p.Destinations {
		cp, err := checkpoint.Load(ctx, r.Store, p.Name, d.Name)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if cp.Seq >= head || cp.Halted {
			continue
		}
		if err := r.Store.Enqueue(ctx, r.Queue, WakeUp{Pipeline: p.Name, Destination: d.Name, Head: head}); err != nil {
			errs = append(errs, err)
			continue
		}
		res.WokeUp++
	}
	return errors.Join(errs...)
}

// readPass follows the cursor to the delta link, committing at page
// boundaries.
type readPass struct {
	r   *Reader
	p   *config.Pipeline
	lg  *changelog.Log
	a   *changelog.Appender
	src Source
	log *slog.Logger
	res *ReadResult

	pending     int       // records added since the last commit
	seenBlobs   int       // blobs of unchanged keys this pass wrote
	lastCommit  time.Time // when the last commit happened
	resyncTries int

	// During a full round: the live keys before it (from the key index),
	// what the round itself has logged since, and the keys it delivered
	// unchanged since the last commit.
	before  *keyindex.Index
	overlay map[string]uint64
	skipped []string
	// added holds the keys the round logged since the last commit: the
	// round's final commit reconciles before they are committed.
	added []string
}

func (rp *readPass) run(ctx context.Context) error {
	st := rp.a.State()
	link := st.Source.Cursor
	if link == "" {
		rp.startRound(st.Head.Seq)
		link = rp.deltaURL()
	}
	if st.Source.FullRound {
		if err := rp.prepareRound(ctx); err != nil {
			return err
		}
	}
	rp.lastCommit = rp.r.Now()
	// The next page is fetched while the current one is logged: Graph's
	// latency and our encoding overlap. A prefetched page that is never
	// used is simply dropped; the cursor only ever names pages not logged.
	fctx, cancelFetch := context.WithCancel(ctx)
	defer cancelFetch()
	type fetched struct {
		page *sharepoint.Page
		err  error
	}
	fetch := func(link string) <-chan fetched {
		ch := make(chan fetched, 1)
		go func() {
			p, err := rp.src.Page(fctx, link)
			ch <- fetched{p, err}
		}()
		return ch
	}
	var next <-chan fetched
	for {
		if dl, ok := ctx.Deadline(); ok && rp.r.Now().Add(30*time.Second).After(dl) {
			// Leave time to commit and hand over; the cursor is saved.
			rp.res.Outcome = "partial"
			return rp.commit(ctx, link, false)
		}
		if next == nil {
			next = fetch(link)
		}
		f := <-next
		next = nil
		page, err := f.page, f.err
		var resync *sharepoint.ResyncError
		var throttled *sharepoint.ThrottledError
		switch {
		case errors.As(err, &resync):
			if err := rp.commit(ctx, link, false); err != nil {
				return err
			}
			rp.resyncTries++
			if rp.resyncTries > 3 {
				return fmt.Errorf("read pipeline %s: Graph keeps answering 410 (%s) even to a fresh round", rp.p.Name, resync.Code)
			}
			rp.log.Warn("delta token expired; starting a full round", "code", resync.Code, "location", resync.Location != "")
			rp.startRound(rp.a.Head().Seq)
			if err := rp.prepareRound(ctx); err != nil {
				return err
			}
			// Restart from Location, or token-less when there is none or
			// when Location itself failed.
			link = resync.Location
			if link == "" || rp.resyncTries > 1 {
				link = rp.deltaURL()
			}
			continue
		case errors.As(err, &throttled):
			rp.res.Outcome = "throttled"
			rp.log.Warn("Graph throttled longer than this pass may wait; saving the cursor", "until", throttled.Until)
			if err := rp.commit(ctx, link, false); err != nil {
				return err
			}
			return rp.a.Annotate(ctx, func(s *changelog.State) { s.Source.ThrottledUntil = throttled.Until.UTC() })
		case err != nil:
			if cerr := rp.commit(context.WithoutCancel(ctx), link, false); cerr != nil {
				rp.log.Warn("commit after a failed page", "err", cerr.Error())
			}
			return fmt.Errorf("read pipeline %s: %w", rp.p.Name, err)
		}
		rp.res.Pages++
		if page.NextLink != "" {
			next = fetch(page.NextLink)
		}
		recs := page.Records(rp.p.Source.Site, rp.p.Source.List)
		added := 0
		for i := range recs {
			if rp.unchanged(&recs[i]) {
				continue
			}
			if err := rp.a.Add(ctx, &recs[i]); err != nil {
				return err
			}
			if rp.a.State().Source.FullRound && rp.before != nil && rp.before.Len() > 0 {
				rp.added = append(rp.added, recs[i].Key)
			}
			added++
		}
		rp.pending += added
		rp.res.Records += int64(added)
		if rp.r.Progress != nil {
			rp.r.Progress(rp.p.Name, rp.res.Records)
		}
		if page.DeltaLink != "" {
			// One commit: the last page's records, a full round's
			// reconciled deletes and the delta link move together
			// (Invariant 2). Committing the last page first, with the link
			// that fetched it as cursor, would log that page twice if the
			// final commit then failed.
			if err := rp.commit(ctx, page.DeltaLink, true); err != nil {
				return err
			}
			rp.res.Outcome = "read"
			return nil
		}
		link = page.NextLink
		if rp.pending >= rp.r.CommitRecords || rp.r.Now().Sub(rp.lastCommit) >= rp.r.CommitInterval {
			if err := rp.commit(ctx, link, false); err != nil {
				return err
			}
		}
	}
}

func (rp *readPass) deltaURL() string {
	st := rp.a.State()
	return sharepoint.DeltaURL(rp.p.Source.GraphURL, st.Source.SiteID, st.Source.ListID, rp.p.Source.Fields)
}

// startRound marks a full enumeration beginning after seq.
func (rp *readPass) startRound(seq int64) {
	st := rp.a.State()
	st.Source.FullRound, st.Source.RoundStartSeq = true, seq
	st.Source.Cursor, st.Source.RoundSeen = "", ""
}

// prepareRound loads what a full round compares against: the live keys at
// the round's start from the key index (caught up from the log first), and
// what this round has already logged (when a pass resumes a round).
func (rp *readPass) prepareRound(ctx context.Context) error {
	st := rp.a.State()
	start := st.Source.RoundStartSeq
	rp.overlay, rp.skipped, rp.added = map[string]uint64{}, nil, nil
	if start == 0 {
		rp.before = &keyindex.Index{}
		return nil
	}
	ix, err := keyindex.Load(ctx, rp.r.Store, rp.p.Name, start)
	if err != nil {
		return err
	}
	from := ix.Seq
	if ix, err = keyindex.CatchUp(ctx, rp.lg, ix, start); err != nil {
		return err
	}
	if start-from > 10000 {
		// Keep the cache warm for the next round; a failure only costs time.
		if err := keyindex.Save(ctx, rp.r.Store, rp.p.Name, ix); err != nil {
			rp.log.Warn("could not save the key index", "err", err.Error())
		}
	}
	rp.before = ix
	sc := rp.lg.Scan(ctx, start+1, st.Head.Seq)
	defer sc.Close()
	for sc.Next() {
		r := sc.Record()
		if r.Op == changelog.OpDelete {
			rp.overlay[r.Key] = 0
		} else {
			rp.overlay[r.Key] = keyindex.HashFields(r.Fields)
		}
	}
	return sc.Err()
}

// unchanged reports whether a full round may skip rec because the log
// already holds exactly these fields for its key; it then remembers the key
// as seen. Outside full rounds nothing is skipped.
func (rp *readPass) unchanged(rec *changelog.Record) bool {
	if !rp.a.State().Source.FullRound || rp.before == nil || rp.before.Len() == 0 {
		// Outside full rounds, and in a first enumeration (nothing was
		// live before it), nothing can be unchanged: keep no overlay.
		return false
	}
	var cur uint64
	if h, ok := rp.overlay[rec.Key]; ok {
		cur = h
	} else if h, ok := rp.before.Lookup(rec.Key); ok {
		cur = h
	}
	if rec.Op == changelog.OpUpsert {
		h := keyindex.HashFields(rec.Fields)
		if h == cur {
			rp.skipped = append(rp.skipped, rec.Key)
			rp.res.Unchanged++
			return true
		}
		rp.overlay[rec.Key] = h
		return false
	}
	rp.overlay[rec.Key] = 0
	return false
}

// commit moves head and cursor together (Invariant 2: the cursor is the
// link after the last complete page in the head). At the delta link of a
// full round it first adds deletes for keys that were live before the
// round and not seen in it, so they commit with the round's delta link.
func (rp *readPass) commit(ctx context.Context, cursor string, final bool) error {
	st := rp.a.State()
	seen := st.Source.RoundSeen
	if final && st.Source.FullRound {
		n, err := rp.reconcile(ctx, st.Source.RoundStartSeq)
		switch {
		case errors.Is(err, keyindex.ErrSeenLost):
			// Without the record of what the round saw unchanged, any
			// delete would be a guess. Read the list again in full instead:
			// the next pass starts a new round (an empty cursor).
			rp.log.Warn("the keys this full round saw unchanged cannot be read; starting the round again instead of guessing deletes", "err", err.Error())
			cursor, final, seen, rp.skipped = "", false, "", nil
			rp.res.RoundRestarted = true
		case err != nil:
			return err
		default:
			rp.res.Deletes += n
		}
	}
	if !final && cursor != "" && st.Source.FullRound && len(rp.skipped) > 0 {
		// Keys delivered unchanged are not in the log; record them so that
		// reconciliation still counts them as seen after a crash. The blob
		// is referenced only by the state this commit writes. (A final
		// commit has just reconciled with them and needs no blob.)
		rp.seenBlobs++
		name, err := keyindex.SaveSeen(ctx, rp.r.Store, rp.p.Name, st.Source.RoundStartSeq, st.Fence, rp.seenBlobs, seen, rp.skipped)
		if err != nil {
			return err
		}
		seen = name
	}
	round, fence := st.Source.RoundStartSeq, st.Fence
	err := rp.a.Commit(ctx, func(s *changelog.State) {
		s.Source.Cursor = cursor
		s.Source.RoundSeen = seen
		if final {
			s.Source.RoundSeen = ""
			s.Source.CursorAt = rp.r.Now().UTC()
			s.Source.FullRound, s.Source.RoundStartSeq = false, 0
			s.Source.ThrottledUntil = time.Time{}
		}
	})
	if err != nil {
		return err
	}
	rp.pending, rp.lastCommit, rp.skipped, rp.added = 0, rp.r.Now(), nil, rp.added[:0]
	if final && rp.before != nil {
		// Only this round's chain (and older rounds' leftovers): a reader
		// that lost the pipeline after this commit must not touch the
		// chain of a round a newer reader started.
		keyindex.DropSeen(ctx, rp.r.Store, rp.p.Name, round, fence)
		rp.before, rp.overlay = nil, nil
	}
	return nil
}

// reconcile appends a delete for every key live at roundStart that the round
// did not deliver. What was live comes from the log (through the key index,
// caught up from it); what the round delivered from the log, the chain of
// unchanged keys committed with the cursor, and this pass's keys since its
// last commit. So a pass that crashed mid-round and resumed from its cursor
// still knows what the round has seen.
func (rp *readPass) reconcile(ctx context.Context, roundStart int64) (int64, error) {
	if roundStart == 0 || rp.before == nil || rp.before.Len() == 0 {
		return 0, nil // nothing was live before the round
	}
	st := rp.a.State()
	seen, err := keyindex.LoadSeen(ctx, rp.r.Store, st.Source.RoundSeen)
	if err != nil {
		return 0, fmt.Errorf("reconcile pipeline %s: %w", rp.p.Name, err)
	}
	// Seen in this round: the keys delivered unchanged (committed in the
	// chain, and since the last commit), the round's committed records and
	// those added since the last commit, which commit together with the
	// deletes added here.
	for _, k := range rp.skipped {
		seen[k] = struct{}{}
	}
	for _, k := range rp.added {
		seen[k] = struct{}{}
	}
	sc := rp.lg.Scan(ctx, roundStart+1, st.Head.Seq)
	defer sc.Close()
	for sc.Next() {
		seen[sc.Record().Key] = struct{}{}
	}
	if err := sc.Err(); err != nil {
		return 0, fmt.Errorf("reconcile pipeline %s: %w", rp.p.Name, err)
	}
	var gone []string
	for _, e := range rp.before.Entries {
		if _, ok := seen[e.Key]; !ok {
			gone = append(gone, e.Key)
		}
	}
	for _, k := range gone {
		rec := changelog.Record{Op: changelog.OpDelete, Key: k, Source: changelog.Source{Site: rp.p.Source.Site, List: rp.p.Source.List}}
		if err := rp.a.Add(ctx, &rec); err != nil {
			return 0, err
		}
	}
	if len(gone) > 0 {
		rp.log.Info("full round done: deleting items that disappeared without a tombstone", "count", len(gone),
			"sample", strings.Join(gone[:min(5, len(gone))], ","))
	}
	return int64(len(gone)), nil
}
