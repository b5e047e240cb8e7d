package graphsim_test

import (
	"encoding/json"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/sluicehq/sluice/internal/graphsim"
)

func TestDeletions(t *testing.T) {
	t.Parallel()
	clock := graphsim.NewManualClock(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	e := newEnv(t, graphsim.Options{Clock: clock, TombstoneRetention: time.Hour})
	e.list.Populate(10, 1)
	e.list.Delete(3)
	clock.Advance(time.Minute)
	e.list.DeleteUnreported(5)
	if e.list.Delete(3) || e.list.Delete(99) {
		t.Fatal("deleting a deleted or unknown item reported success")
	}
	e.list.Churn(rand.New(rand.NewPCG(1, 2)), 0, 0, 2)
	clock.Advance(2 * time.Hour)
	e.c.page(e.deltaURL("token=latest")) // purges the tombstones: the history stays

	got := e.list.Deletions()
	if len(got) != 4 {
		t.Fatalf("%d deletions, want 4: %+v", len(got), got)
	}
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	if got[0].ID != 3 || got[0].Change != 11 || !got[0].At.Equal(t0) || got[0].Unreported {
		t.Fatalf("first deletion %+v, want item 3 at change 11", got[0])
	}
	if got[1].ID != 5 || got[1].Change != 0 || !got[1].Unreported || !got[1].At.Equal(t0.Add(time.Minute)) {
		t.Fatalf("second deletion %+v, want item 5 unreported", got[1])
	}
	for _, d := range got[2:] {
		if _, live := e.list.Fields(d.ID); live || d.Change == 0 {
			t.Fatalf("churn deletion %+v: item still live or no change number", d)
		}
	}

	admin := httptest.NewServer(e.sim.AdminHandler())
	t.Cleanup(admin.Close)
	resp, err := http.Get(admin.URL + "/_sim/deletions")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var body struct {
		Count     int                 `json:"count"`
		Deletions []graphsim.Deletion `json:"deletions"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
		t.Fatal(err)
	}
	if body.Count != 4 || len(body.Deletions) != 4 || body.Deletions[1] != got[1] {
		t.Fatalf("GET /_sim/deletions: %+v", body)
	}
}
