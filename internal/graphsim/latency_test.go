package graphsim_test

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/sluicehq/sluice/internal/graphsim"
)

func TestPageDelay(t *testing.T) {
	t.Parallel()
	e := newEnv(t, graphsim.Options{})
	e.list.Populate(30, 1)
	const delay = 150 * time.Millisecond
	e.list.SetKnobs(graphsim.Knobs{PageDelay: delay, PageJitter: 100 * time.Millisecond})

	state := map[string]map[string]any{}
	link := e.deltaURL("$expand=fields&$top=10")
	pages := 0
	for link != "" {
		start := time.Now()
		p := e.c.page(link)
		if took := time.Since(start); took < delay {
			t.Fatalf("page %d answered in %v, want at least the %v delay", pages+1, took, delay)
		}
		fold(state, p)
		pages++
		link = p.Next
		if p.Delta != "" {
			link = ""
		}
	}
	if pages != 3 {
		t.Fatalf("%d pages, want 3", pages)
	}
	assertFold(t, state, e.list)

	start := time.Now()
	latest := e.c.page(e.deltaURL("token=latest"))
	if took := time.Since(start); took < delay {
		t.Fatalf("token=latest answered in %v, want at least %v", took, delay)
	}

	// A token that expires while its request waits is judged when the
	// answer goes out: 410, not a fresh token that escaped the expiry.
	e.list.SetKnobs(graphsim.Knobs{PageDelay: time.Second})
	before := e.sim.Stats().DeltaRequests
	status := make(chan int, 1)
	go func() {
		req, _ := http.NewRequest(http.MethodGet, latest.Delta, nil)
		req.Header.Set("Authorization", "Bearer "+testToken)
		resp, err := e.c.hc.Do(req)
		if err != nil {
			status <- 0
			return
		}
		resp.Body.Close()
		status <- resp.StatusCode
	}()
	for e.sim.Stats().DeltaRequests == before {
		time.Sleep(10 * time.Millisecond) // until the request is in
	}
	e.list.ExpireTokens()
	if got := <-status; got != http.StatusGone {
		t.Fatalf("a token expired while its request waited: %d, want 410", got)
	}
}

func TestPageDelayEndsWhenTheClientGoes(t *testing.T) {
	t.Parallel()
	sim := graphsim.New(graphsim.Options{Token: testToken})
	list := sim.AddList("contoso.sharepoint.com", "/sites/ops", "Orders")
	list.Populate(5, 1)
	list.SetKnobs(graphsim.Knobs{PageDelay: time.Minute})
	returned := make(chan time.Time, 1)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		sim.ServeHTTP(w, r)
		returned <- time.Now()
	}))
	t.Cleanup(srv.Close)

	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	url := srv.URL + "/v1.0/sites/" + list.SiteID() + "/lists/" + list.ID() + "/items/delta"
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	req.Header.Set("Authorization", "Bearer "+testToken)
	resp, err := srv.Client().Do(req)
	if err == nil {
		resp.Body.Close()
		t.Fatalf("a page delayed by a minute answered %d within 200 ms", resp.StatusCode)
	}
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("client error %v, want its deadline", err)
	}
	gone := time.Now()
	select {
	case at := <-returned:
		t.Logf("the handler returned %v after the client left", at.Sub(gone).Round(time.Millisecond))
	case <-time.After(10 * time.Second):
		t.Fatal("the handler still waits for its page delay after the client left")
	}
}

func TestAdminKnobsLatency(t *testing.T) {
	t.Parallel()
	e := newEnv(t, graphsim.Options{})
	admin := httptest.NewServer(e.sim.AdminHandler())
	t.Cleanup(admin.Close)
	post := func(body string) (int, string) {
		t.Helper()
		resp, err := http.Post(admin.URL+"/_sim/knobs", "application/json", strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, body := post(`{"shortPages":true,"pageDelay":"300ms","pageJitter":"1.2s"}`); code != http.StatusOK {
		t.Fatalf("POST knobs: %d %s", code, body)
	}
	want := graphsim.Knobs{ShortPages: true, PageDelay: 300 * time.Millisecond, PageJitter: 1200 * time.Millisecond}
	if k := e.list.Knobs(); k != want {
		t.Fatalf("knobs %+v, want %+v", k, want)
	}
	resp, err := http.Get(admin.URL + "/_sim/knobs")
	if err != nil {
		t.Fatal(err)
	}
	var got map[string]any
	err = json.NewDecoder(resp.Body).Decode(&got)
	resp.Body.Close()
	if err != nil || got["pageDelay"] != "300ms" || got["pageJitter"] != "1.2s" || got["shortPages"] != true {
		t.Fatalf("GET knobs: %v %v", got, err)
	}

	for _, bad := range []string{`{"pageDelay":"soon"}`, `{"pageDelay":"-1s"}`, `{"pageDelay":300}`, `{"pageDelai":"1s"}`} {
		if code, _ := post(bad); code != http.StatusBadRequest {
			t.Errorf("POST knobs %s: %d, want 400", bad, code)
		}
	}
	if k := e.list.Knobs(); k != want {
		t.Fatalf("a refused POST changed the knobs to %+v", k)
	}
	if code, body := post(`{}`); code != http.StatusOK || e.list.Knobs() != (graphsim.Knobs{}) {
		t.Fatalf("POST {}: %d %s, knobs %+v", code, body, e.list.Knobs())
	}
}

func TestKnobsJSONRoundTrip(t *testing.T) {
	t.Parallel()
	k := graphsim.Knobs{DuplicateRate: 0.25, Shuffle: true, EmptyPageEvery: 3, ShortPages: true, Replay: 2,
		Tombstones: graphsim.BothShapes, MutatePerPage: graphsim.Mutations{Edits: 1},
		Resync: graphsim.ResyncCodes[1], PageDelay: 1500 * time.Millisecond, PageJitter: 250 * time.Millisecond}
	b, err := json.Marshal(k)
	if err != nil {
		t.Fatal(err)
	}
	var back graphsim.Knobs
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatalf("unmarshal %s: %v", b, err)
	}
	if !reflect.DeepEqual(back, k) {
		t.Fatalf("round trip %s: %+v, want %+v", b, back, k)
	}
	if b, _ := json.Marshal(graphsim.Knobs{}); string(b) != "{}" {
		t.Fatalf("zero knobs encode as %s, want {}", b)
	}
}
