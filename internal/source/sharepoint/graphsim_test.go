package sharepoint_test

// An end-to-end check against internal/graphsim, using only the exported
// API the engine uses. The core tests (the other files) use hand-written
// servers that follow the reference, so that they do not depend on the
// simulator's reading of it.

import (
	"context"
	"encoding/json"
	"errors"
	"math/rand/v2"
	"net/http/httptest"
	"reflect"
	"sync"
	"testing"
	"time"

	"github.com/sluicehq/sluice/internal/changelog"
	"github.com/sluicehq/sluice/internal/config"
	"github.com/sluicehq/sluice/internal/graphsim"
	"github.com/sluicehq/sluice/internal/source/sharepoint"
)

// recordingSleep is a fake clock: Sleep records the wait and moves Now.
type recordingSleep struct {
	mu    sync.Mutex
	now   time.Time
	waits []time.Duration
}

func newSleep() *recordingSleep { return &recordingSleep{now: time.Now()} }

func (s *recordingSleep) Now() time.Time {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.now
}

func (s *recordingSleep) Sleep(ctx context.Context, d time.Duration) error {
	s.mu.Lock()
	s.waits = append(s.waits, d)
	s.now = s.now.Add(d)
	s.mu.Unlock()
	return ctx.Err()
}

// round follows link to the deltaLink, folding records by key.
func round(t *testing.T, c *sharepoint.Client, link string, state map[string]map[string]any) string {
	t.Helper()
	for range 1000 {
		p, err := c.Page(context.Background(), link)
		if err != nil {
			t.Fatalf("page: %v", err)
		}
		for _, r := range p.Records("contoso.sharepoint.com:/sites/ops", "Orders") {
			if r.Op == changelog.OpDelete {
				delete(state, r.Key)
				continue
			}
			var f map[string]any
			if err := json.Unmarshal(r.Fields, &f); err != nil {
				t.Fatal(err)
			}
			state[r.Key] = f
		}
		if p.DeltaLink != "" {
			return p.DeltaLink
		}
		link = p.NextLink
	}
	t.Fatal("round did not end")
	return ""
}

func TestAgainstGraphsim(t *testing.T) {
	t.Parallel()
	sim := graphsim.New(graphsim.Options{Token: "sim-token", DefaultPageSize: 7})
	list := sim.AddList("contoso.sharepoint.com", "/sites/ops", "Orders")
	list.Populate(60, 7)
	list.SetKnobs(graphsim.Knobs{DuplicateRate: 0.3, Shuffle: true, EmptyPageEvery: 3, EmptyFinalPage: true, ShortPages: true})
	srv := httptest.NewTLSServer(sim)
	defer srv.Close()

	sl := newSleep()
	c, err := sharepoint.New(sharepoint.Options{
		GraphURL:   srv.URL + "/v1.0",
		Auth:       config.Auth{Type: config.AuthBearer, Token: "sim-token"},
		HTTPClient: srv.Client(),
		Version:    "test",
		Now:        sl.Now,
		Sleep:      sl.Sleep,
	})
	if err != nil {
		t.Fatal(err)
	}
	siteID, listID, err := c.Resolve(context.Background(), "contoso.sharepoint.com:/sites/ops", "Orders")
	if err != nil {
		t.Fatal(err)
	}
	if siteID != list.SiteID() || listID != list.ID() {
		t.Fatalf("resolved %s/%s, want %s/%s", siteID, listID, list.SiteID(), list.ID())
	}

	state := map[string]map[string]any{}
	delta := round(t, c, sharepoint.DeltaURL(srv.URL+"/v1.0", siteID, listID, nil), state)
	if !reflect.DeepEqual(state, list.Snapshot()) {
		t.Fatalf("full round: %d items, snapshot %d", len(state), len(list.Snapshot()))
	}

	// Changes, throttling on the way.
	list.Churn(rand.New(rand.NewPCG(1, 2)), 5, 10, 4)
	sim.Throttle(2, 429, "2.128")
	delta = round(t, c, delta, state)
	if !reflect.DeepEqual(state, list.Snapshot()) {
		t.Fatalf("incremental round differs from the snapshot")
	}
	if len(sl.waits) != 2 || sl.waits[0] < 2128*time.Millisecond || sl.waits[1] < 2128*time.Millisecond {
		t.Errorf("waits = %v", sl.waits)
	}

	// An expired token: 410, then a full round from Location.
	list.ExpireTokens()
	_, err = c.Page(context.Background(), delta)
	var re *sharepoint.ResyncError
	if !errors.As(err, &re) {
		t.Fatalf("err = %v, want *ResyncError", err)
	}
	start := re.Location
	if start == "" {
		start = sharepoint.DeltaURL(srv.URL+"/v1.0", siteID, listID, nil)
	}
	fresh := map[string]map[string]any{}
	round(t, c, start, fresh)
	if !reflect.DeepEqual(fresh, list.Snapshot()) {
		t.Fatalf("resync round differs from the snapshot")
	}
	st := c.Stats()
	t.Logf("stats: %+v", st)
	if st.Throttles != 2 || st.Pages == 0 {
		t.Errorf("stats = %+v", st)
	}
}

func TestGraphsimFaults(t *testing.T) {
	t.Parallel()
	sim := graphsim.New(graphsim.Options{Token: "sim-token"})
	list := sim.AddList("contoso.sharepoint.com", "/sites/ops", "Orders")
	list.Populate(3, 1)
	srv := httptest.NewServer(sim)
	defer srv.Close()
	c, err := sharepoint.New(sharepoint.Options{
		GraphURL: srv.URL + "/v1.0",
		Auth:     config.Auth{Type: config.AuthBearer, Token: "sim-token"},
		Sleep:    newSleep().Sleep,
	})
	if err != nil {
		t.Fatal(err)
	}
	first := sharepoint.DeltaURL(srv.URL+"/v1.0", list.SiteID(), list.ID(), []string{"Title"})

	sim.Inject(graphsim.Fault{ForeignLink: true, Target: graphsim.DeltaRequests})
	if _, err := c.Page(context.Background(), first); err == nil {
		t.Error("foreign link accepted")
	}
	sim.Inject(graphsim.Fault{Status: 403})
	var se *sharepoint.StatusError
	if _, err := c.Page(context.Background(), first); !errors.As(err, &se) || se.StatusCode != 403 {
		t.Errorf("403: err = %v", err)
	}
	// A cut-short body is retried like a network failure.
	sim.Inject(graphsim.Fault{Malformed: true, Target: graphsim.DeltaRequests})
	if p, err := c.Page(context.Background(), first); err != nil || len(p.Items) != 3 {
		t.Errorf("malformed then good: err = %v", err)
	}
}
