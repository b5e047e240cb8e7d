package sharepoint

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"os"
	"strconv"
	"strings"
	"testing"

	"github.com/sluicehq/sluice/internal/changelog"
)

func readTestdata(t *testing.T, name string) string {
	t.Helper()
	b, err := os.ReadFile("testdata/" + name)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// The reference's examples (A) and (B) of §1.7, served as a two-page round.
func TestPageReferenceExamples(t *testing.T) {
	t.Parallel()
	modes(t, func(t *testing.T, tls bool) {
		var e *env
		e = newEnv(t, tls, func(w http.ResponseWriter, r *http.Request) {
			switch {
			case strings.Contains(r.URL.RawQuery, "skiptoken"):
				writeJSON(w, 200, e.fix(readTestdata(t, "delta_page_b.json")))
			default:
				writeJSON(w, 200, e.fix(readTestdata(t, "delta_page_a.json")))
			}
		})
		ctx := context.Background()
		first := DeltaURL(e.graph, "contoso.sharepoint.com,2c712604-1370-44e7-a1f5-426573fda80a,2d2244c3-251a-49ea-93a8-39e1c3a060fe", "22e03ef3-6ef4-424d-a1d3-92a337807c30", nil)
		a, err := e.client.Page(ctx, first)
		if err != nil {
			t.Fatal(err)
		}
		if a.DeltaLink != "" || !strings.HasPrefix(a.NextLink, e.graph+"/sites/contoso.sharepoint.com,") || !strings.HasSuffix(a.NextLink, "&$skiptoken=UGFnZWQ9VFJVRSZwX0lEPTI") {
			t.Fatalf("page A links: next %q delta %q", a.NextLink, a.DeltaLink)
		}
		if len(a.Items) != 2 {
			t.Fatalf("page A: %d items", len(a.Items))
		}
		it := a.Items[0]
		if it.ID != "1" || it.Deleted || it.ETag != `"{5944DFE3-A088-4802-993E-56A664E78A2F},7"` || it.Modified != "2024-07-10T19:55:45Z" {
			t.Errorf("item 1 = %+v", it)
		}
		var f map[string]any
		if err := json.Unmarshal(it.Fields, &f); err != nil {
			t.Fatal(err)
		}
		for k := range f {
			if strings.Contains(k, "@") {
				t.Errorf("annotation %q kept", k)
			}
		}
		if f["id"] != "1" || f["Amount"] != 1234.5 || f["OwnerLookupId"] != "12" || f["IsUrgent"] != true {
			t.Errorf("item 1 fields = %v", f)
		}
		if regions, _ := f["Regions"].([]any); len(regions) != 2 {
			t.Errorf("Regions = %v", f["Regions"])
		}
		if !bytes.Contains(a.Items[1].Fields, []byte(`"Tags":[{"Label":"sign"`)) || bytes.Contains(a.Items[1].Fields, []byte("@odata")) {
			t.Errorf("item 2 fields = %s", a.Items[1].Fields)
		}

		// The nextLink is followed verbatim: the server sees the skiptoken.
		b, err := e.client.Page(ctx, a.NextLink)
		if err != nil {
			t.Fatal(err)
		}
		if b.NextLink != "" || !strings.Contains(b.DeltaLink, "&token=NDslMjM0") {
			t.Fatalf("page B links: next %q delta %q", b.NextLink, b.DeltaLink)
		}
		recs := b.Records("contoso.sharepoint.com:/sites/ops", "Orders")
		want := []changelog.Record{
			{Op: changelog.OpUpsert, Key: "1", Source: changelog.Source{Site: "contoso.sharepoint.com:/sites/ops", List: "Orders", ETag: `"{5944DFE3-A088-4802-993E-56A664E78A2F},8"`, Modified: "2024-07-11T08:02:10Z"},
				Fields: json.RawMessage(`{"id":"1","Title":"PO-1001","Status":"Shipped","Modified":"2024-07-11T08:02:10Z","EditorLookupId":"12"}`)},
			{Op: changelog.OpDelete, Key: "3", Source: changelog.Source{Site: "contoso.sharepoint.com:/sites/ops", List: "Orders"}},
		}
		assertRecords(t, recs, want)
		if st := e.client.Stats(); st.Pages != 2 || st.Items != 4 || st.Requests != 2 {
			t.Errorf("stats = %+v", st)
		}
	})
}

func assertRecords(t *testing.T, got, want []changelog.Record) {
	t.Helper()
	g, _ := json.Marshal(got)
	w, _ := json.Marshal(want)
	if !bytes.Equal(g, w) {
		t.Errorf("records:\n got %s\nwant %s", g, w)
	}
}

func TestCleanFields(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name, in, want string
		modified       string
		err            bool
	}{
		{name: "no fields", in: ``, want: ``},
		{name: "null", in: `null`, want: ``},
		{name: "plain", in: `{ "id": "7", "Title": "a" }`, want: `{"id":"7","Title":"a"}`},
		{name: "annotations",
			in:   `{"@odata.etag":"\"{X},1\"","id":"7","Tags@odata.type":"#Collection(microsoft.graph.Json)","Tags":[{"Label":"x"}],"Regions@odata.type":"Collection(Edm.String)","Regions":[],"Title":"t"}`,
			want: `{"id":"7","Tags":[{"Label":"x"}],"Regions":[],"Title":"t"}`},
		{name: "values untouched",
			in:   `{"a@odata.type":"x","Html":"<b>&amp;</b> \u00e9 \"q\"","Amount":1.50,"Big":12345678901234567890,"Email":"a@b.c","N":null}`,
			want: `{"Html":"<b>&amp;</b> \u00e9 \"q\"","Amount":1.50,"Big":12345678901234567890,"Email":"a@b.c","N":null}`},
		{name: "key with html chars", in: `{"@x":1,"A<&>":2}`, want: `{"A<&>":2}`},
		{name: "modified fallback", in: `{"Modified":"2024-01-02T03:04:05Z","modified":"no"}`, want: `{"Modified":"2024-01-02T03:04:05Z","modified":"no"}`, modified: "2024-01-02T03:04:05Z"},
		{name: "not an object", in: `[1,2]`, err: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got, mod, err := cleanFields(json.RawMessage(tt.in), true)
			if (err != nil) != tt.err {
				t.Fatalf("err = %v", err)
			}
			if string(got) != tt.want || mod != tt.modified {
				t.Errorf("got %s (modified %q), want %s (%q)", got, mod, tt.want, tt.modified)
			}
			if tt.err {
				return
			}
			// The fast path (no Modified needed) gives the same fields.
			fast, _, _ := cleanFields(json.RawMessage(tt.in), false)
			if string(fast) != tt.want {
				t.Errorf("fast path: got %s, want %s", fast, tt.want)
			}
		})
	}
}

func TestDeleteShapes(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name, item string
		deleted    bool
	}{
		{"deleted facet (listItem doc)", `{"id":"3","parentReference":{"siteId":"x"},"contentType":{"id":"0x01","name":"Item"},"deleted":{"state":"deleted"}}`, true},
		{"empty deleted facet", `{"id":"3","deleted":{}}`, true},
		{"@removed (directory style)", `{"id":"3","@removed":{"reason":"deleted"}}`, true},
		{"@removed changed", `{"id":"3","@removed":{"reason":"changed"}}`, true},
		{"deleted null is no delete", `{"id":"3","deleted":null,"fields":{"Title":"x"}}`, false},
		{"deleted with fields drops them", `{"id":"3","deleted":{"state":"deleted"},"fields":{"Title":"x"}}`, true},
		{"numeric id", `{"id":3,"fields":{"Title":"x"}}`, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t, false, nil)
			e.srv.Config.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				writeJSON(w, 200, deltaPage(e.graph, tt.item))
			})
			p, err := e.client.Page(context.Background(), DeltaURL(e.graph, "s", "l", nil))
			if err != nil {
				t.Fatal(err)
			}
			recs := p.Records("site", "list")
			if len(recs) != 1 || recs[0].Key != "3" {
				t.Fatalf("records = %+v", recs)
			}
			wantOp := changelog.OpUpsert
			if tt.deleted {
				wantOp = changelog.OpDelete
			}
			if recs[0].Op != wantOp || (tt.deleted && recs[0].Fields != nil) || (!tt.deleted && string(recs[0].Fields) != `{"Title":"x"}`) {
				t.Errorf("record = %+v fields %s", recs[0], recs[0].Fields)
			}
		})
	}
}

func TestRecordsLastOccurrenceWins(t *testing.T) {
	t.Parallel()
	p := &Page{Items: []Item{
		{ID: "1", ETag: "v1", Fields: json.RawMessage(`{"T":"old"}`)},
		{ID: "2", ETag: "a", Fields: json.RawMessage(`{"T":"two"}`)},
		{ID: "3", ETag: "x", Fields: json.RawMessage(`{"T":"three"}`)},
		{ID: "1", ETag: "v2", Fields: json.RawMessage(`{"T":"new"}`)},
		{ID: "3", ETag: "y", Deleted: true},
		{ID: "2", ETag: "b", Deleted: true},
		{ID: "2", ETag: "c", Fields: json.RawMessage(`{"T":"back"}`)},
	}}
	src := func(etag string) changelog.Source { return changelog.Source{Site: "S", List: "L", ETag: etag} }
	assertRecords(t, p.Records("S", "L"), []changelog.Record{
		{Op: changelog.OpUpsert, Key: "1", Source: src("v2"), Fields: json.RawMessage(`{"T":"new"}`)},
		{Op: changelog.OpDelete, Key: "3", Source: src("y")},
		{Op: changelog.OpUpsert, Key: "2", Source: src("c"), Fields: json.RawMessage(`{"T":"back"}`)},
	})
	if got := (&Page{}).Records("S", "L"); len(got) != 0 {
		t.Errorf("empty page gave %v", got)
	}
}

func TestPageValidation(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		body    func(graph string) string
		maxPage int64
		want    string // substring of the error
	}{
		{name: "nextLink to another host", body: func(g string) string {
			return `{"value":[],"@odata.nextLink":"https://evil.example.com/v1.0/sites/s/lists/l/items/delta?token=x"}`
		}, want: "points to another host"},
		{name: "deltaLink with another scheme", body: func(g string) string {
			return `{"value":[],"@odata.deltaLink":"` + strings.Replace(g, "http", "ftp", 1) + `/x"}`
		}, want: "another host"},
		{name: "relative link", body: func(g string) string { return `{"value":[],"@odata.nextLink":"/v1.0/sites/s"}` }, want: "not an absolute URL"},
		{name: "neither link", body: func(g string) string { return `{"value":[]}` }, want: "Graph page has neither @odata.nextLink nor @odata.deltaLink"},
		{name: "both links", body: func(g string) string {
			return `{"value":[],"@odata.nextLink":"` + g + `/a","@odata.deltaLink":"` + g + `/b"}`
		}, want: "both @odata.nextLink and @odata.deltaLink"},
		{name: "no value", body: func(g string) string { return `{"@odata.deltaLink":"` + g + `/b"}` }, want: "no value array"},
		{name: "value null", body: func(g string) string { return `{"value":null,"@odata.deltaLink":"` + g + `/b"}` }, want: `want "[", found null`},
		{name: "value object", body: func(g string) string { return `{"value":{},"@odata.deltaLink":"` + g + `/b"}` }, want: `want "["`},
		{name: "not an object", body: func(g string) string { return `[]` }, want: `at byte 1: want "{"`},
		{name: "malformed JSON names the byte", body: func(g string) string { return `{"value":[{"id":"1",}]}` }, want: "malformed Graph page from "},
		{name: "trailing data", body: func(g string) string { return deltaPage(g, "") + `{}` }, want: "data after the page object"},
		{name: "item without id", body: func(g string) string { return deltaPage(g, `{"fields":{"Title":"x"}}`) }, want: "item 0 of value: item has no id"},
		{name: "item with empty id", body: func(g string) string { return deltaPage(g, `{"id":"1"},{"id":""}`) }, want: "item 1 of value: item has an empty id"},
		{name: "item with object id", body: func(g string) string { return deltaPage(g, `{"id":{}}`) }, want: "item id is not a string"},
		{name: "fields not an object", body: func(g string) string { return deltaPage(g, `{"id":"1","fields":"x"}`) }, want: "fields is not an object"},
		{name: "huge body", maxPage: 100, body: func(g string) string {
			return deltaPage(g, `{"id":"1","fields":{"T":"`+strings.Repeat("x", 200)+`"}}`)
		}, want: "larger than the limit of 100 bytes"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			var e *env
			e = newEnv(t, false, func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Content-Type", "application/json")
				// No Content-Length: make the limit trip while streaming.
				w.(http.Flusher).Flush()
				_, _ = w.Write([]byte(tt.body(e.graph)))
			}, func(o *Options) { o.MaxPageBytes = tt.maxPage })
			link := e.graph + "/sites/s/lists/l/items/delta?token=secret-token-value"
			_, err := e.client.Page(context.Background(), link)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v, want %q", err, tt.want)
			}
			if strings.Contains(err.Error(), "secret-token-value") || strings.Contains(err.Error(), testToken) {
				t.Errorf("error leaks the query or token: %v", err)
			}
			if st := e.client.Stats(); st.Requests != 1 {
				t.Errorf("requests = %d, want 1 (no retry of a bad page)", st.Requests)
			}
		})
	}
}

func TestMalformedPageOffset(t *testing.T) {
	t.Parallel()
	body := `{"value":[{"id":"1"},{"id":"2" "x"}]}`
	e := newEnv(t, true, func(w http.ResponseWriter, r *http.Request) { writeJSON(w, 200, body) })
	_, err := e.client.Page(context.Background(), e.graph+"/sites/s/lists/l/items/delta")
	want := "malformed Graph page from " + e.graph + "/sites/s/lists/l/items/delta at byte " + strconv.Itoa(strings.Index(body, `"x"`))
	if err == nil || !strings.Contains(err.Error(), want) {
		t.Fatalf("err = %v\nwant %q", err, want)
	}
}

func TestPageContentLengthTooLarge(t *testing.T) {
	t.Parallel()
	e := newEnv(t, false, func(w http.ResponseWriter, r *http.Request) {
		body := deltaPage("http://"+r.Host+"/v1.0", strings.Repeat(" ", 5000))
		w.Header().Set("Content-Length", strconv.Itoa(len(body)))
		writeJSON(w, 200, body)
	}, func(o *Options) { o.MaxPageBytes = 1000 })
	_, err := e.client.Page(context.Background(), e.graph+"/x")
	if err == nil || !strings.Contains(err.Error(), "more than the limit of 1000 (MaxPageBytes)") {
		t.Fatalf("err = %v", err)
	}
}

// A link to another host is refused before any request: it would carry the token.
func TestPageRefusesForeignLink(t *testing.T) {
	t.Parallel()
	other := newEnv(t, false, func(w http.ResponseWriter, r *http.Request) {
		t.Errorf("request reached the other host with Authorization %q", r.Header.Get("Authorization"))
	})
	e := newEnv(t, false, func(w http.ResponseWriter, r *http.Request) { t.Error("unexpected request") })
	for _, link := range []string{other.graph + "/sites/s/lists/l/items/delta", "not a url\x7f", "/v1.0/relative"} {
		if _, err := e.client.Page(context.Background(), link); err == nil {
			t.Errorf("Page(%q) succeeded", link)
		}
	}
	if e.client.Stats().Requests != 0 {
		t.Error("requests were sent")
	}
}

// A 5 MB field value is data like any other.
func TestLargeFieldValue(t *testing.T) {
	t.Parallel()
	big := strings.Repeat("abcdefghij", 512*1024) // 5 MB
	var e *env
	e = newEnv(t, true, func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, 200, deltaPage(e.graph, `{"id":"1","fields":{"@odata.etag":"x","Notes":"`+big+`"}},{"id":"2","fields":{"Title":"small"}}`))
	})
	p, err := e.client.Page(context.Background(), e.graph+"/sites/s/lists/l/items/delta")
	if err != nil {
		t.Fatal(err)
	}
	var f struct{ Notes string }
	if err := json.Unmarshal(p.Items[0].Fields, &f); err != nil || f.Notes != big || len(p.Items) != 2 {
		t.Fatalf("big field lost: err %v, len %d, items %d", err, len(f.Notes), len(p.Items))
	}
	if p.Bytes < int64(len(big)) {
		t.Errorf("Bytes = %d", p.Bytes)
	}
}

func TestDeltaURL(t *testing.T) {
	t.Parallel()
	tests := []struct {
		fields []string
		want   string
	}{
		{nil, "https://graph.microsoft.com/v1.0/sites/contoso.sharepoint.com,2c71,2d22/lists/22e0/items/delta?$expand=fields&$top=1000"},
		{[]string{"Title", "Status", "My_x0020_Column"}, "https://graph.microsoft.com/v1.0/sites/contoso.sharepoint.com,2c71,2d22/lists/22e0/items/delta?$expand=fields($select=Title,Status,My_x0020_Column)&$top=1000"},
		{[]string{"A B&C"}, "https://graph.microsoft.com/v1.0/sites/contoso.sharepoint.com,2c71,2d22/lists/22e0/items/delta?$expand=fields($select=A%20B%26C)&$top=1000"},
	}
	for _, tt := range tests {
		if got := DeltaURL("https://graph.microsoft.com/v1.0/", "contoso.sharepoint.com,2c71,2d22", "22e0", tt.fields); got != tt.want {
			t.Errorf("DeltaURL(%v) =\n %s\nwant %s", tt.fields, got, tt.want)
		}
	}
}

func TestRequestHeaders(t *testing.T) {
	t.Parallel()
	modes(t, func(t *testing.T, tls bool) {
		var e *env
		e = newEnv(t, tls, func(w http.ResponseWriter, r *http.Request) {
			for k, want := range map[string]string{
				"Authorization": "Bearer " + testToken,
				"Accept":        "application/json",
				"User-Agent":    "NONISV|sluice|sluice/1.2.3",
			} {
				if got := r.Header.Get(k); got != want {
					t.Errorf("%s = %q, want %q", k, got, want)
				}
			}
			if r.Header.Get("Prefer") != "" {
				t.Errorf("Prefer %q sent: none is documented for list-item delta", r.Header.Get("Prefer"))
			}
			writeJSON(w, 200, deltaPage(e.graph, ""))
		})
		p, err := e.client.Page(context.Background(), e.graph+"/sites/s/lists/l/items/delta?token=latest")
		if err != nil || len(p.Items) != 0 || p.DeltaLink == "" {
			t.Fatalf("page %+v err %v", p, err)
		}
	})
}

// An empty final page with only a deltaLink is a valid page (reference §1.2,
// elastic/connectors PR #4370).
func TestEmptyFinalPage(t *testing.T) {
	t.Parallel()
	var e *env
	e = newEnv(t, false, func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, 200, `{"@odata.context":"x","@odata.deltaLink":"`+e.graph+`/d?token=1","value":[]}`)
	})
	p, err := e.client.Page(context.Background(), e.graph+"/d")
	if err != nil || p.DeltaLink != e.graph+"/d?token=1" || len(p.Records("s", "l")) != 0 {
		t.Fatalf("page %+v err %v", p, err)
	}
}
