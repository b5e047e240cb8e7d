package graphsim_test

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"reflect"
	"sort"
	"strings"
	"testing"

	"github.com/sluicehq/sluice/internal/graphsim"
)

// This file is a minimal delta consumer, written the way the reference says
// a client must behave: follow nextLinks verbatim to the deltaLink, fold
// every page by item id with the last occurrence winning, treat the deleted
// facet or @removed as a delete, and strip annotations from fields.

const testToken = "test-token"

type page struct {
	Context string           `json:"@odata.context"`
	Next    string           `json:"@odata.nextLink"`
	Delta   string           `json:"@odata.deltaLink"`
	Value   []map[string]any `json:"value"`
}

type client struct {
	t     testing.TB
	hc    *http.Client
	token string
}

// get fetches url with the bearer token and returns the response and body.
func (c *client) get(url string) (*http.Response, []byte) {
	c.t.Helper()
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		c.t.Fatalf("new request %s: %v", url, err)
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	req.Header.Set("User-Agent", "NONISV|sluice|sluice/test")
	resp, err := c.hc.Do(req)
	if err != nil {
		c.t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		c.t.Fatalf("read %s: %v", url, err)
	}
	return resp, body
}

// page fetches one delta page and fails the test on anything but a 200.
func (c *client) page(url string) page {
	c.t.Helper()
	resp, body := c.get(url)
	if resp.StatusCode != http.StatusOK {
		c.t.Fatalf("GET %s: %d %s", url, resp.StatusCode, body)
	}
	var p page
	if err := json.Unmarshal(body, &p); err != nil {
		c.t.Fatalf("GET %s: decode page: %v", url, err)
	}
	if (p.Next == "") == (p.Delta == "") {
		c.t.Fatalf("GET %s: page must carry exactly one of nextLink and deltaLink: %s", url, body)
	}
	return p
}

// round follows links from start until a deltaLink, folding into state.
// between, if set, runs after each page with the page number (from 1).
func (c *client) round(start string, state map[string]map[string]any, between func(n int)) (string, []page) {
	c.t.Helper()
	var pages []page
	link := start
	for n := 1; ; n++ {
		if n > 100000 {
			c.t.Fatal("round does not end")
		}
		p := c.page(link)
		pages = append(pages, p)
		fold(state, p)
		if between != nil {
			between(n)
		}
		if p.Delta != "" {
			return p.Delta, pages
		}
		link = p.Next
	}
}

func fold(state map[string]map[string]any, p page) {
	for _, it := range p.Value {
		id, _ := it["id"].(string)
		if it["deleted"] != nil || it["@removed"] != nil {
			delete(state, id)
			continue
		}
		fields, _ := it["fields"].(map[string]any)
		state[id] = strip(fields)
	}
}

// strip removes OData annotations: every key containing "@".
func strip(fields map[string]any) map[string]any {
	out := make(map[string]any, len(fields))
	for k, v := range fields {
		if !strings.Contains(k, "@") {
			out[k] = v
		}
	}
	return out
}

type env struct {
	sim  *graphsim.Sim
	srv  *httptest.Server
	c    *client
	list *graphsim.List
}

func newEnv(t testing.TB, opts graphsim.Options) *env {
	t.Helper()
	if opts.Token == "" {
		opts.Token = testToken
	}
	sim := graphsim.New(opts)
	list := sim.AddList("contoso.sharepoint.com", "/sites/ops", "Orders")
	srv := httptest.NewServer(sim)
	t.Cleanup(srv.Close)
	return &env{sim: sim, srv: srv, list: list, c: &client{t: t, hc: srv.Client(), token: opts.Token}}
}

// deltaURL is the first request of a round on the env's list.
func (e *env) deltaURL(query string) string {
	u := e.srv.URL + "/v1.0/sites/" + e.list.SiteID() + "/lists/" + e.list.ID() + "/items/delta"
	if query != "" {
		u += "?" + query
	}
	return u
}

func assertFold(t testing.TB, got map[string]map[string]any, list *graphsim.List) {
	t.Helper()
	want := list.Snapshot()
	if reflect.DeepEqual(got, want) {
		return
	}
	var missing, extra, differ []string
	for k := range want {
		if _, ok := got[k]; !ok {
			missing = append(missing, k)
		} else if !reflect.DeepEqual(got[k], want[k]) {
			differ = append(differ, k)
		}
	}
	for k := range got {
		if _, ok := want[k]; !ok {
			extra = append(extra, k)
		}
	}
	sort.Strings(missing)
	sort.Strings(extra)
	sort.Strings(differ)
	msg := fmt.Sprintf("fold (%d items) != snapshot (%d items): missing %v, extra %v, differ %v", len(got), len(want), head(missing), head(extra), head(differ))
	if len(differ) > 0 {
		msg += fmt.Sprintf("\nfirst differing item %s:\n got  %v\n want %v", differ[0], got[differ[0]], want[differ[0]])
	}
	t.Fatal(msg)
}

func head(s []string) []string {
	if len(s) > 10 {
		return append(s[:10:10], "...")
	}
	return s
}

// graphErr decodes a Graph error body.
type graphErr struct {
	Error struct {
		Code       string `json:"code"`
		Message    string `json:"message"`
		InnerError struct {
			Code      string `json:"code"`
			Date      string `json:"date"`
			RequestID string `json:"request-id"`
		} `json:"innerError"`
	} `json:"error"`
}

func decodeErr(t testing.TB, body []byte) graphErr {
	t.Helper()
	var e graphErr
	if err := json.Unmarshal(body, &e); err != nil {
		t.Fatalf("error body is not JSON: %v: %s", err, body)
	}
	if e.Error.Code == "" || e.Error.InnerError.RequestID == "" {
		t.Fatalf("error body lacks code or innerError.request-id: %s", body)
	}
	return e
}
