package graphsim_test

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/sluicehq/sluice/internal/graphsim"
)

func TestResyncCodes(t *testing.T) {
	t.Parallel()
	for _, code := range graphsim.ResyncCodes {
		t.Run(code.Code+"/"+code.InnerCode, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t, graphsim.Options{})
			e.list.Populate(20, 1)
			e.list.SetKnobs(graphsim.Knobs{Resync: code})
			state := map[string]map[string]any{}
			link, _ := e.c.round(e.deltaURL("$expand=fields&$top=7"), state, nil)
			mid := e.c.page(e.deltaURL("$expand=fields&$top=7")).Next
			e.list.ExpireTokens()
			for _, old := range []string{link, mid} {
				resp, body := e.c.get(old)
				if resp.StatusCode != http.StatusGone {
					t.Fatalf("expired token: %d %s", resp.StatusCode, body)
				}
				ge := decodeErr(t, body)
				if ge.Error.Code != code.Code || ge.Error.InnerError.Code != code.InnerCode {
					t.Fatalf("410 body codes %q/%q, want %q/%q", ge.Error.Code, ge.Error.InnerError.Code, code.Code, code.InnerCode)
				}
				loc := resp.Header.Get("Location")
				if loc != e.deltaURL("$expand=fields&$top=7") {
					t.Fatalf("Location %q: want a fresh enumeration with the original options", loc)
				}
			}
			// Following Location is a full resync; the fold of it alone is the truth.
			e.list.Delete(3)
			fresh := map[string]map[string]any{}
			loc, _ := e.c.get(link)
			newLink, _ := e.c.round(loc.Header.Get("Location"), fresh, nil)
			assertFold(t, fresh, e.list)
			if p := e.c.page(newLink); len(p.Value) != 0 {
				t.Fatalf("a token issued after expiry must work: %v", p.Value)
			}
		})
	}
	t.Run("without Location", func(t *testing.T) {
		t.Parallel()
		e := newEnv(t, graphsim.Options{})
		e.list.SetKnobs(graphsim.Knobs{ResyncWithoutLocation: true})
		p := e.c.page(e.deltaURL("token=latest"))
		e.sim.ExpireTokens()
		resp, _ := e.c.get(p.Delta)
		if resp.StatusCode != http.StatusGone || resp.Header.Get("Location") != "" {
			t.Fatalf("want 410 without Location, got %d %q", resp.StatusCode, resp.Header.Get("Location"))
		}
	})
}

func TestTombstoneRetention(t *testing.T) {
	t.Parallel()
	clock := graphsim.NewManualClock(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	e := newEnv(t, graphsim.Options{Clock: clock, TombstoneRetention: 30 * 24 * time.Hour})
	e.list.Populate(10, 1)
	state := map[string]map[string]any{}
	before, _ := e.c.round(e.deltaURL("$expand=fields"), state, nil)
	clock.Advance(time.Hour)
	e.list.Delete(3)
	after, _ := e.c.round(before, map[string]map[string]any{}, nil) // covers the delete

	clock.Advance(29 * 24 * time.Hour) // the tombstone is 29 days old: still reported
	if p := e.c.page(before); len(p.Value) != 1 || p.Value[0]["deleted"] == nil {
		t.Fatalf("within retention, want the tombstone of 3, got %v", p.Value)
	}
	clock.Advance(2 * 24 * time.Hour) // purged
	if resp, body := e.c.get(before); resp.StatusCode != http.StatusGone {
		t.Fatalf("a token older than a purged tombstone: %d %s", resp.StatusCode, body)
	}
	if p := e.c.page(after); len(p.Value) != 0 {
		t.Fatalf("a token newer than the purged tombstone must still work, got %v", p.Value)
	}
}

func TestTokenLifetime(t *testing.T) {
	t.Parallel()
	clock := graphsim.NewManualClock(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	e := newEnv(t, graphsim.Options{Clock: clock, TokenLifetime: 7 * 24 * time.Hour})
	p := e.c.page(e.deltaURL("token=latest"))
	clock.Advance(6 * 24 * time.Hour)
	if resp, _ := e.c.get(p.Delta); resp.StatusCode != http.StatusOK {
		t.Fatalf("young token: %d", resp.StatusCode)
	}
	clock.Advance(2 * 24 * time.Hour)
	if resp, _ := e.c.get(p.Delta); resp.StatusCode != http.StatusGone {
		t.Fatalf("old token: %d, want 410", resp.StatusCode)
	}
}

func TestThrottle(t *testing.T) {
	t.Parallel()
	date := graphsim.RetryAfterDate(time.Date(2026, 5, 1, 12, 0, 30, 0, time.UTC))
	tests := []struct {
		status     int
		retryAfter string
	}{
		{429, "2"}, {429, "2.128"}, {429, "120"}, {429, date}, {429, ""},
		{503, "3360"}, {503, "0.5"}, {503, date}, {503, ""},
	}
	for _, tc := range tests {
		t.Run(strconv.Itoa(tc.status)+"/"+tc.retryAfter, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t, graphsim.Options{})
			e.sim.Throttle(2, tc.status, tc.retryAfter)
			for range 2 {
				resp, body := e.c.get(e.deltaURL(""))
				if resp.StatusCode != tc.status {
					t.Fatalf("status %d, want %d", resp.StatusCode, tc.status)
				}
				got, present := resp.Header["Retry-After"]
				if tc.retryAfter == "" && present || tc.retryAfter != "" && (len(got) != 1 || got[0] != tc.retryAfter) {
					t.Fatalf("Retry-After %q (present %v), want %q", got, present, tc.retryAfter)
				}
				decodeErr(t, body)
			}
			e.c.page(e.deltaURL(""))
			if st := e.sim.Stats(); st.Throttled != 2 || st.Requests != 3 {
				t.Fatalf("stats: %+v", st)
			}
		})
	}
}

func TestThrottleBodiesRotate(t *testing.T) {
	t.Parallel()
	e := newEnv(t, graphsim.Options{})
	e.sim.Throttle(3, 429, "1")
	codes := map[string]bool{}
	for range 3 {
		_, body := e.c.get(e.deltaURL(""))
		ge := decodeErr(t, body)
		codes[ge.Error.Code+"/"+ge.Error.InnerError.Code] = true
	}
	if len(codes) != 3 {
		t.Fatalf("want three distinct throttle bodies, got %v", codes)
	}
}

func TestFaultTargets(t *testing.T) {
	t.Parallel()
	e := newEnv(t, graphsim.Options{})
	e.list.Populate(10, 1)
	link := e.c.page(e.deltaURL("token=latest")).Delta
	e.sim.Inject(graphsim.Fault{Status: 500, Target: graphsim.FullEnumeration})
	if resp, _ := e.c.get(link); resp.StatusCode != 200 {
		t.Fatalf("a full-enumeration fault hit a token request: %d", resp.StatusCode)
	}
	if resp, _ := e.c.get(e.srv.URL + "/v1.0/sites/" + e.list.SiteID()); resp.StatusCode != 200 {
		t.Fatalf("a full-enumeration fault hit a site request: %d", resp.StatusCode)
	}
	if resp, body := e.c.get(e.deltaURL("")); resp.StatusCode != 500 {
		t.Fatalf("want 500 on the full enumeration, got %d %s", resp.StatusCode, body)
	}
	e.c.page(e.deltaURL(""))
}

func TestRUBudget(t *testing.T) {
	t.Parallel()
	clock := graphsim.NewManualClock(time.Date(2026, 1, 1, 0, 0, 10, 0, time.UTC))
	e := newEnv(t, graphsim.Options{Clock: clock, RUPerMinute: 10})
	for i := 1; i <= 5; i++ { // token-less delta: 2 RU each
		resp, _ := e.c.get(e.deltaURL(""))
		if resp.StatusCode != 200 {
			t.Fatalf("request %d: %d", i, resp.StatusCode)
		}
		if i >= 4 && resp.Header.Get("RateLimit-Remaining") == "" {
			t.Fatalf("request %d at ≥80%% of the budget lacks RateLimit headers", i)
		}
	}
	clock.Advance(20 * time.Second)
	resp, _ := e.c.get(e.deltaURL(""))
	if resp.StatusCode != 429 || resp.Header.Get("Retry-After") != "40" || resp.Header.Get("RateLimit-Remaining") != "0" {
		t.Fatalf("over budget: %d Retry-After %q Remaining %q", resp.StatusCode, resp.Header.Get("Retry-After"), resp.Header.Get("RateLimit-Remaining"))
	}
	clock.Advance(40 * time.Second)
	if resp, _ := e.c.get(e.deltaURL("")); resp.StatusCode != 200 {
		t.Fatalf("new window: %d", resp.StatusCode)
	}
	if st := e.sim.Stats(); st.ResourceUnits != 14 {
		t.Fatalf("RU %d, want 14 (7 token-less delta requests)", st.ResourceUnits)
	}
}

func TestAuth(t *testing.T) {
	t.Parallel()
	e := newEnv(t, graphsim.Options{})
	e.list.Populate(3, 1)
	for _, tc := range []struct{ name, header string }{
		{"missing", ""}, {"wrong token", "Bearer nope"}, {"empty bearer", "Bearer "}, {"basic", "Basic dXNlcjpwdw=="},
	} {
		req, _ := http.NewRequest("GET", e.deltaURL(""), nil)
		if tc.header != "" {
			req.Header.Set("Authorization", tc.header)
		}
		resp, err := e.c.hc.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		var ge graphErr
		json.NewDecoder(resp.Body).Decode(&ge)
		resp.Body.Close()
		if resp.StatusCode != 401 || ge.Error.Code != "InvalidAuthenticationToken" || !strings.HasPrefix(resp.Header.Get("WWW-Authenticate"), "Bearer ") {
			t.Fatalf("%s: %d %q %q", tc.name, resp.StatusCode, ge.Error.Code, resp.Header.Get("WWW-Authenticate"))
		}
	}
	// 403 for a site without a grant, on every path under it.
	if err := e.sim.DenySite("contoso.sharepoint.com:/sites/ops", true); err != nil {
		t.Fatal(err)
	}
	for _, u := range []string{
		e.srv.URL + "/v1.0/sites/contoso.sharepoint.com:/sites/ops",
		e.srv.URL + "/v1.0/sites/" + e.list.SiteID() + "/lists/Orders",
		e.deltaURL("$expand=fields"),
	} {
		resp, body := e.c.get(u)
		if resp.StatusCode != 403 || decodeErr(t, body).Error.Code != "accessDenied" {
			t.Fatalf("denied site %s: %d %s", u, resp.StatusCode, body)
		}
	}
	e.sim.DenySite(e.list.SiteID(), false)
	e.c.page(e.deltaURL(""))
	// A rotated token makes the old one fail.
	e.sim.SetToken("rotated")
	if resp, _ := e.c.get(e.deltaURL("")); resp.StatusCode != 401 {
		t.Fatalf("old token after rotation: %d", resp.StatusCode)
	}
	if st := e.sim.Stats(); st.Unauthorized != 5 || st.Forbidden != 3 {
		t.Fatalf("stats %+v", st)
	}
}

func TestMalformedPageAndForeignLink(t *testing.T) {
	t.Parallel()
	e := newEnv(t, graphsim.Options{})
	e.list.Populate(30, 1)
	e.sim.Inject(graphsim.Fault{Malformed: true, Target: graphsim.DeltaRequests})
	resp, body := e.c.get(e.deltaURL("$top=10"))
	var p page
	if resp.StatusCode != 200 || json.Unmarshal(body, &p) == nil {
		t.Fatalf("want a 200 with broken JSON, got %d %s", resp.StatusCode, body)
	}
	e.sim.Inject(graphsim.Fault{ForeignLink: true})
	p = e.c.page(e.deltaURL("$top=10"))
	u, err := url.Parse(p.Next)
	if err != nil || u.Host != graphsim.ForeignHost {
		t.Fatalf("nextLink %q does not point at the foreign host", p.Next)
	}
	p = e.c.page(e.deltaURL("$top=10"))
	if !strings.HasPrefix(p.Next, e.srv.URL) {
		t.Fatalf("the fault must be one-shot; nextLink %q", p.Next)
	}
}

func TestSiteAndListResolution(t *testing.T) {
	t.Parallel()
	e := newEnv(t, graphsim.Options{})
	e.sim.AddList("contoso.sharepoint.com", "/sites/ops", "Order Lines")
	e.list.Populate(5, 1)
	base := e.srv.URL + "/v1.0"
	getJSON := func(u string) map[string]any {
		t.Helper()
		resp, body := e.c.get(u)
		if resp.StatusCode != 200 {
			t.Fatalf("GET %s: %d %s", u, resp.StatusCode, body)
		}
		var m map[string]any
		if err := json.Unmarshal(body, &m); err != nil {
			t.Fatal(err)
		}
		return m
	}
	site := getJSON(base + "/sites/contoso.sharepoint.com:/sites/ops")
	id, _ := site["id"].(string)
	if parts := strings.Split(id, ","); len(parts) != 3 || parts[0] != "contoso.sharepoint.com" || id != e.list.SiteID() {
		t.Fatalf("site id %q is not hostname,guid,guid", id)
	}
	if got := getJSON(base + "/sites/" + url.PathEscape(id))["webUrl"]; got != "https://contoso.sharepoint.com/sites/ops" {
		t.Fatalf("site by id: webUrl %v", got)
	}
	for _, ref := range []string{"Orders", e.list.ID()} {
		if got := getJSON(base + "/sites/" + id + "/lists/" + ref)["id"]; got != e.list.ID() {
			t.Fatalf("list %s resolved to %v", ref, got)
		}
	}
	lists := getJSON(base + "/sites/" + id + "/lists?$filter=" + url.QueryEscape("displayName eq 'Order Lines'"))
	if v := lists["value"].([]any); len(v) != 1 || v[0].(map[string]any)["displayName"] != "Order Lines" {
		t.Fatalf("$filter=displayName eq: %v", lists)
	}
	p := e.c.page(base + "/sites/contoso.sharepoint.com:/sites/ops:/lists/Orders/items/delta?$expand=fields")
	if len(p.Value) != 5 {
		t.Fatalf("delta by site path: %d items", len(p.Value))
	}
	item := getJSON(base + "/sites/" + id + "/lists/Orders/items/2?$expand=fields")
	if item["lastModifiedBy"] == nil || item["fields"] == nil {
		t.Fatalf("items/{id}: %v", item)
	}
	for _, u := range []string{
		base + "/sites/contoso.sharepoint.com:/sites/nope",
		base + "/sites/" + id + "/lists/Nope",
		base + "/sites/" + id + "/lists/Orders/items/99",
	} {
		resp, body := e.c.get(u)
		if resp.StatusCode != 404 || decodeErr(t, body).Error.Code != "itemNotFound" {
			t.Fatalf("GET %s: %d %s", u, resp.StatusCode, body)
		}
	}
}

func TestStats(t *testing.T) {
	t.Parallel()
	e := newEnv(t, graphsim.Options{})
	e.list.Populate(25, 1)
	_, pages := e.c.round(e.deltaURL("$expand=fields&$top=10"), map[string]map[string]any{}, nil)
	st := e.sim.Stats()
	// First request token-less (2 RU), then nextLinks with a token (1 RU each).
	if len(pages) != 3 || st.Pages != 3 || st.Items != 25 || st.ResourceUnits != 4 || st.DeltaRequests != 3 {
		t.Fatalf("pages %d, stats %+v", len(pages), st)
	}
	if st.UserAgents["NONISV|sluice|sluice/test"] != 3 {
		t.Fatalf("user agents %v", st.UserAgents)
	}
}

func TestAdminHandler(t *testing.T) {
	t.Parallel()
	e := newEnv(t, graphsim.Options{})
	e.list.Populate(40, 1)
	admin := httptest.NewServer(e.sim.AdminHandler())
	defer admin.Close()
	post := func(path, body string) {
		t.Helper()
		resp, err := http.Post(admin.URL+path, "application/json", strings.NewReader(body))
		if err != nil || resp.StatusCode != 200 {
			t.Fatalf("POST %s: %v %v", path, err, resp.Status)
		}
		resp.Body.Close()
	}
	post("/_sim/knobs", `{"duplicateRate":0.5,"shuffle":true}`)
	if k := e.list.Knobs(); k.DuplicateRate != 0.5 || !k.Shuffle {
		t.Fatalf("knobs %+v", k)
	}
	post("/_sim/churn", `{"adds":3,"edits":4,"deletes":2}`)
	post("/_sim/items", `{"id":2,"fields":{"Title":"from admin"}}`)
	post("/_sim/delete", `{"id":3}`)
	state := map[string]map[string]any{}
	e.c.round(e.deltaURL("$expand=fields"), state, nil)

	resp, err := http.Get(admin.URL + "/_sim/snapshot")
	if err != nil {
		t.Fatal(err)
	}
	var snap struct {
		Count int
		Items map[string]map[string]any
	}
	if err := json.NewDecoder(resp.Body).Decode(&snap); err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if snap.Count != len(snap.Items) || snap.Items["2"]["Title"] != "from admin" {
		t.Fatalf("snapshot count %d, item 2 %v", snap.Count, snap.Items["2"])
	}
	assertFold(t, snap.Items, e.list)
	assertFold(t, state, e.list)

	post("/_sim/faults", `{"status":429,"retryAfter":"2.128"}`)
	if resp, _ := e.c.get(e.deltaURL("")); resp.StatusCode != 429 || resp.Header.Get("Retry-After") != "2.128" {
		t.Fatalf("fault via admin: %d", resp.StatusCode)
	}
	link := e.c.page(e.deltaURL("token=latest")).Delta
	post("/_sim/expire", ``)
	if resp, _ := e.c.get(link); resp.StatusCode != 410 {
		t.Fatalf("expire via admin: %d", resp.StatusCode)
	}
}
