package graphsim_test

import (
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/sluicehq/sluice/internal/graphsim"
)

func TestFoldMatchesSnapshot(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name  string
		knobs graphsim.Knobs
	}{
		{"well-behaved", graphsim.Knobs{}},
		{"duplicates on every item", graphsim.Knobs{DuplicateRate: 1}},
		{"duplicates on some items", graphsim.Knobs{DuplicateRate: 0.3}},
		{"shuffled", graphsim.Knobs{Shuffle: true}},
		{"empty pages", graphsim.Knobs{EmptyPageEvery: 2}},
		{"empty final page", graphsim.Knobs{EmptyFinalPage: true}},
		{"short pages", graphsim.Knobs{ShortPages: true}},
		{"replays", graphsim.Knobs{Replay: 25}},
		{"@removed tombstones", graphsim.Knobs{Tombstones: graphsim.RemovedAnnotation}},
		{"both tombstone shapes", graphsim.Knobs{Tombstones: graphsim.BothShapes}},
		{"mutations mid-round", graphsim.Knobs{MutatePerPage: graphsim.Mutations{Adds: 2, Edits: 3, Deletes: 1}}},
		{"everything", graphsim.Knobs{DuplicateRate: 0.5, Shuffle: true, EmptyPageEvery: 3, ShortPages: true, Replay: 10,
			Tombstones: graphsim.BothShapes, MutatePerPage: graphsim.Mutations{Adds: 1, Edits: 2, Deletes: 1}}},
	}
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t, graphsim.Options{})
			e.list.Populate(300, uint64(i))
			e.list.SetKnobs(tc.knobs)
			mutating := tc.knobs.MutatePerPage != graphsim.Mutations{}
			state := map[string]map[string]any{}
			rng := rand.New(rand.NewPCG(uint64(i), 9))

			link, pages := e.c.round(e.deltaURL("$expand=fields&$top=37"), state, nil)
			checkLinks(t, e, pages)
			if !mutating {
				assertFold(t, state, e.list)
			}
			sawDup, sawEmpty := hasDuplicate(pages), hasEmptyMiddlePage(pages)
			for range 6 {
				e.list.Churn(rng, 5, 20, 5)
				link, pages = e.c.round(link, state, nil)
				checkLinks(t, e, pages)
				sawDup = sawDup || hasDuplicate(pages)
				sawEmpty = sawEmpty || hasEmptyMiddlePage(pages)
				if !mutating {
					assertFold(t, state, e.list)
				}
			}
			if mutating {
				// Mid-round changes show up in a later round: once the list
				// holds still, one more round must converge.
				e.list.SetKnobs(graphsim.Knobs{})
				e.c.round(link, state, nil)
				assertFold(t, state, e.list)
			}
			if tc.knobs.DuplicateRate == 1 && !sawDup {
				t.Error("DuplicateRate 1: no round delivered an item twice")
			}
			if tc.knobs.EmptyPageEvery > 0 && !sawEmpty {
				t.Error("EmptyPageEvery: no empty page with a nextLink")
			}
		})
	}
}

// checkLinks verifies that links are absolute, point back at the server and
// carry the original query options.
func checkLinks(t *testing.T, e *env, pages []page) {
	t.Helper()
	for _, p := range pages {
		link := p.Next + p.Delta
		if !strings.HasPrefix(link, e.srv.URL+"/v1.0/sites/") {
			t.Fatalf("link %q is not an absolute URL on the server", link)
		}
		if !strings.Contains(link, "$expand=fields") || !strings.Contains(link, "$top=37") || !strings.Contains(link, "token=") {
			t.Fatalf("link %q lost the original query options or the token", link)
		}
		if !strings.HasPrefix(p.Context, e.srv.URL+"/v1.0/$metadata#Collection(microsoft.graph.listItem)") {
			t.Fatalf("@odata.context = %q", p.Context)
		}
	}
}

func hasDuplicate(pages []page) bool {
	seen := map[string]bool{}
	for _, p := range pages {
		for _, it := range p.Value {
			id := it["id"].(string)
			if seen[id] {
				return true
			}
			seen[id] = true
		}
	}
	return false
}

func hasEmptyMiddlePage(pages []page) bool {
	for _, p := range pages {
		if len(p.Value) == 0 && p.Next != "" {
			return true
		}
	}
	return false
}

func TestDuplicatesComeOlderFirst(t *testing.T) {
	t.Parallel()
	e := newEnv(t, graphsim.Options{})
	e.list.Populate(10, 1)
	state := map[string]map[string]any{}
	link, _ := e.c.round(e.deltaURL("$expand=fields&$top=3"), state, nil)
	e.list.SetKnobs(graphsim.Knobs{DuplicateRate: 1})
	e.list.Upsert(3, map[string]any{"Title": "changed"})
	e.list.Delete(4)
	_, pages := e.c.round(link, state, nil)
	var seen3, seen4 []map[string]any
	for _, p := range pages {
		for _, it := range p.Value {
			switch it["id"] {
			case "3":
				seen3 = append(seen3, it)
			case "4":
				seen4 = append(seen4, it)
			}
		}
	}
	if len(seen3) != 2 || len(seen4) != 2 {
		t.Fatalf("want items 3 and 4 twice each, got %d and %d", len(seen3), len(seen4))
	}
	v := func(it map[string]any) any { return it["fields"].(map[string]any)["_UIVersionString"] }
	if v(seen3[0]) != "1.0" || v(seen3[1]) != "2.0" {
		t.Errorf("item 3 versions in order: %v, %v; want 1.0 then 2.0", v(seen3[0]), v(seen3[1]))
	}
	if seen4[0]["deleted"] != nil || seen4[1]["deleted"] == nil {
		t.Errorf("item 4: want its live version first, then the tombstone; got %v then %v", seen4[0], seen4[1])
	}
	assertFold(t, state, e.list)
}

func TestMutationsMidRoundAreNeverLost(t *testing.T) {
	t.Parallel()
	for _, incremental := range []bool{false, true} {
		t.Run(map[bool]string{false: "full round", true: "incremental round"}[incremental], func(t *testing.T) {
			t.Parallel()
			e := newEnv(t, graphsim.Options{})
			e.list.Populate(100, 3)
			state := map[string]map[string]any{}
			start := e.deltaURL("$expand=fields&$top=10")
			if incremental {
				start, _ = e.c.round(start, state, nil)
				for id := 1; id <= 100; id++ {
					e.list.Upsert(id, map[string]any{"Title": "v2", "N": id})
				}
			}
			var added int
			link, _ := e.c.round(start, state, func(n int) {
				if n != 1 {
					return
				}
				// Page 1 delivered ids 1..10 (full) or the first 10 changes.
				e.list.Upsert(1, map[string]any{"Title": "already delivered, changed"})
				e.list.Upsert(90, map[string]any{"Title": "not yet delivered, changed"})
				e.list.Delete(95)
				added = e.list.Add(map[string]any{"Title": "added mid-round"})
			})
			_, pages := e.c.round(link, state, nil)
			got := map[string]bool{}
			for _, p := range pages {
				for _, it := range p.Value {
					got[it["id"].(string)] = true
				}
			}
			for _, id := range []string{"1", "90", "95", strconv.Itoa(added)} {
				if !got[id] {
					t.Errorf("item %s changed mid-round is missing from the next round", id)
				}
			}
			assertFold(t, state, e.list)
		})
	}
}

func TestTokenLatest(t *testing.T) {
	t.Parallel()
	e := newEnv(t, graphsim.Options{})
	e.list.Populate(50, 1)
	p := e.c.page(e.deltaURL("$expand=fields&token=latest"))
	if len(p.Value) != 0 || p.Delta == "" || p.Next != "" {
		t.Fatalf("token=latest: want an empty page with only a deltaLink, got %d items, next %q", len(p.Value), p.Next)
	}
	if strings.Contains(p.Delta, "token=latest") || !strings.Contains(p.Delta, "$expand=fields") {
		t.Fatalf("deltaLink %q must carry a real token and the query options", p.Delta)
	}
	e.list.Upsert(7, map[string]any{"Title": "x"})
	e.list.Delete(8)
	state := map[string]map[string]any{}
	_, pages := e.c.round(p.Delta, state, nil)
	var ids []string
	for _, p := range pages {
		for _, it := range p.Value {
			ids = append(ids, it["id"].(string))
		}
	}
	if strings.Join(ids, ",") != "7,8" {
		t.Fatalf("after token=latest, want only the later changes 7,8; got %v", ids)
	}
}

func TestSelect(t *testing.T) {
	t.Parallel()
	e := newEnv(t, graphsim.Options{})
	e.list.Populate(20, 1)
	q := "$select=id,lastModifiedDateTime&$expand=fields($select=Title,Status,Regions)&$top=5"
	state := map[string]map[string]any{}
	_, pages := e.c.round(e.deltaURL(q), state, nil)
	for _, p := range pages {
		if link := p.Next + p.Delta; !strings.Contains(link, "$expand=fields($select=Title,Status,Regions)") {
			t.Fatalf("link %q must carry $expand verbatim", link)
		}
		for _, it := range p.Value {
			for k := range it {
				switch k {
				case "@odata.etag", "id", "lastModifiedDateTime", "fields":
				default:
					t.Fatalf("$select=id,lastModifiedDateTime: unexpected property %q", k)
				}
			}
			for k := range it["fields"].(map[string]any) {
				switch k {
				case "@odata.etag", "Title", "Status", "Regions", "Regions@odata.type":
				default:
					t.Fatalf("fields($select=Title,Status,Regions): unexpected field %q", k)
				}
			}
		}
	}
	if len(state) != 20 {
		t.Fatalf("want 20 items, got %d", len(state))
	}
	// Without $expand=fields, items carry no fields.
	p := e.c.page(e.deltaURL(""))
	if _, ok := p.Value[0]["fields"]; ok {
		t.Fatal("fields returned without $expand=fields")
	}
	// Unknown properties are rejected like Graph does.
	resp, body := e.c.get(e.deltaURL("$select=nope"))
	if resp.StatusCode != http.StatusBadRequest {
		t.Fatalf("$select=nope: %d %s", resp.StatusCode, body)
	}
}

func TestRetriedNextLinkReturnsSamePage(t *testing.T) {
	t.Parallel()
	e := newEnv(t, graphsim.Options{})
	e.list.Populate(50, 1)
	e.list.SetKnobs(graphsim.Knobs{Shuffle: true, DuplicateRate: 0.5, ShortPages: true})
	p := e.c.page(e.deltaURL("$expand=fields&$top=10"))
	_, a := e.c.get(p.Next)
	_, b := e.c.get(p.Next)
	stripLinks := func(b []byte) string { return strings.Split(string(b), `"value"`)[1] }
	if stripLinks(a) != stripLinks(b) {
		t.Fatal("the same nextLink fetched twice gave different items")
	}
}

func TestDroppedTombstoneOnlyAFullRoundReveals(t *testing.T) {
	t.Parallel()
	e := newEnv(t, graphsim.Options{})
	e.list.Populate(20, 1)
	state := map[string]map[string]any{}
	link, _ := e.c.round(e.deltaURL("$expand=fields"), state, nil)
	e.list.DeleteUnreported(5)
	e.list.Upsert(6, map[string]any{"Title": "x"})
	e.c.round(link, state, nil)
	if _, ok := state["5"]; !ok {
		t.Fatal("an unreported delete was reported")
	}
	fresh := map[string]map[string]any{}
	e.c.round(e.deltaURL("$expand=fields"), fresh, nil)
	if _, ok := fresh["5"]; ok {
		t.Fatal("a full enumeration still shows the deleted item")
	}
	assertFold(t, fresh, e.list)
}

func TestFieldShapes(t *testing.T) {
	t.Parallel()
	e := newEnv(t, graphsim.Options{})
	e.list.Populate(200, 1)
	p := e.c.page(e.deltaURL("$expand=fields&$top=200"))
	seen := map[string]bool{}
	for _, it := range p.Value {
		for _, k := range []string{"@odata.etag", "eTag", "createdDateTime", "lastModifiedDateTime", "webUrl", "id"} {
			if _, ok := it[k].(string); !ok {
				t.Fatalf("item lacks string %s: %v", k, it)
			}
		}
		f := it["fields"].(map[string]any)
		if f["@odata.etag"] != it["@odata.etag"] || f["id"] != it["id"] {
			t.Fatalf("fields etag/id disagree with the item: %v", f)
		}
		check := func(name string, ok bool) {
			if _, present := f[name]; present {
				if !ok {
					t.Fatalf("field %s has the wrong shape: %#v", name, f[name])
				}
				seen[name] = true
			}
		}
		_, s := f["OwnerLookupId"].(string)
		check("OwnerLookupId", s)
		_, s = f["CustomerLookupId"].(string)
		check("CustomerLookupId", s)
		_, s = f["ItemChildCount"].(string)
		check("ItemChildCount", s)
		_, n := f["Amount"].(float64)
		check("Amount", n)
		_, bo := f["IsUrgent"].(bool)
		check("IsUrgent", bo)
		if revs, ok := f["Reviewers"].([]any); ok {
			r0 := revs[0].(map[string]any)
			_, num := r0["LookupId"].(float64)
			check("Reviewers", num && r0["Email"] != nil)
		}
		if rel, ok := f["RelatedOrders"].([]any); ok {
			_, num := rel[0].(map[string]any)["LookupId"].(float64)
			check("RelatedOrders", num)
		}
		if c, ok := f["Category"].(map[string]any); ok {
			check("Category", c["TermGuid"] != nil && c["Label"] != nil && c["WssId"] != nil)
		}
		if _, ok := f["Tags"]; ok {
			check("Tags", f["Tags@odata.type"] == "#Collection(microsoft.graph.Json)")
		}
		check("Regions", f["Regions@odata.type"] == "Collection(Edm.String)")
		if l, ok := f["SpecLink"].(map[string]any); ok {
			check("SpecLink", l["Url"] != nil && l["Description"] != nil)
		}
		_, s = f["Ship_x0020_To"].(string)
		check("Ship_x0020_To", s)
		if d, ok := f["DueDate"].(string); ok {
			check("DueDate", strings.HasSuffix(d, "T07:00:00Z") || strings.HasSuffix(d, "T08:00:00Z"))
		}
	}
	for _, k := range []string{"OwnerLookupId", "CustomerLookupId", "ItemChildCount", "Amount", "IsUrgent", "Reviewers",
		"RelatedOrders", "Category", "Tags", "Regions", "SpecLink", "Ship_x0020_To", "DueDate"} {
		if !seen[k] {
			t.Errorf("no item carried %s", k)
		}
	}
}

func TestUpsertSnapshot(t *testing.T) {
	t.Parallel()
	e := newEnv(t, graphsim.Options{Clock: graphsim.NewManualClock(time.Date(2026, 3, 1, 10, 0, 0, 0, time.UTC))})
	e.list.Upsert(1, map[string]any{"Title": "A", "Amount": 12.5, "Tags@odata.type": "#Collection(microsoft.graph.Json)", "Tags": []any{}})
	snap := e.list.Snapshot()
	got := snap["1"]
	if got["Title"] != "A" || got["Amount"] != 12.5 || got["id"] != "1" || got["_UIVersionString"] != "1.0" ||
		got["Modified"] != "2026-03-01T10:00:00Z" || got["ContentType"] != "Item" {
		t.Fatalf("snapshot of an upserted item: %v", got)
	}
	if _, ok := got["Tags@odata.type"]; ok {
		t.Fatal("snapshot keeps annotations")
	}
	state := map[string]map[string]any{}
	e.c.round(e.deltaURL("$expand=fields"), state, nil)
	assertFold(t, state, e.list)
}

func TestTLS(t *testing.T) {
	t.Parallel()
	sim := graphsim.New(graphsim.Options{Token: testToken})
	list := sim.AddList("contoso.sharepoint.com", "/sites/ops", "Orders")
	list.Populate(30, 1)
	srv := httptest.NewTLSServer(sim)
	defer srv.Close()
	c := &client{t: t, hc: srv.Client(), token: testToken}
	state := map[string]map[string]any{}
	link, _ := c.round(srv.URL+"/v1.0/sites/"+list.SiteID()+"/lists/Orders/items/delta?$expand=fields&$top=7", state, nil)
	if !strings.HasPrefix(link, "https://") {
		t.Fatalf("deltaLink over TLS is %q", link)
	}
	assertFold(t, state, list)
}

// A round's order and duplicates are fixed when it starts, as a real
// nextLink's are. Knobs changed while a client is mid-round (the chaos
// suite turns Graph's habits off at its end) used to change the meaning of
// the nextLink's position: a full round resumed in id order after shuffled
// pages skipped thousands of items, and a reader reconciled them as deletes.
func TestKnobsChangedMidRoundKeepTheRoundWhole(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name          string
		before, after graphsim.Knobs
	}{
		{"shuffle off", graphsim.Knobs{Shuffle: true}, graphsim.Knobs{}},
		{"shuffle on", graphsim.Knobs{}, graphsim.Knobs{Shuffle: true}},
		{"duplicates off", graphsim.Knobs{DuplicateRate: 0.3, Shuffle: true}, graphsim.Knobs{}},
		{"duplicates on", graphsim.Knobs{}, graphsim.Knobs{DuplicateRate: 0.3}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t, graphsim.Options{})
			e.list.Populate(500, 9)
			e.list.SetKnobs(tc.before)
			state := map[string]map[string]any{}
			_, pages := e.c.round(e.deltaURL("$expand=fields&$top=40"), state, func(n int) {
				if n == 4 {
					e.list.SetKnobs(tc.after)
				}
			})
			seen := map[string]bool{}
			for _, p := range pages {
				for _, it := range p.Value {
					seen[it["id"].(string)] = true
				}
			}
			if len(seen) != 500 {
				t.Fatalf("a full round of 500 items whose knobs changed after page 4 delivered %d of them", len(seen))
			}
			assertFold(t, state, e.list)
		})
	}
}
