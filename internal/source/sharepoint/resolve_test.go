package sharepoint

import (
	"context"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
)

const (
	siteID   = "contoso.sharepoint.com,2c712604-1370-44e7-a1f5-426573fda80a,2d2244c3-251a-49ea-93a8-39e1c3a060fe"
	guidA    = "22e03ef3-6ef4-424d-a1d3-92a337807c30"
	guidB    = "9dc50fd1-0a7e-48a6-a9d7-73c3608b4104"
	guidC    = "823b7c38-0000-4000-8000-000000000001"
	guidD    = "823b7c38-0000-4000-8000-000000000002"
	guidE    = "823b7c38-0000-4000-8000-000000000003"
	guidName = "11111111-2222-3333-4444-555555555555" // a display name that looks like a GUID
)

// resolveServer serves GET /sites/{host}:/{path}, /sites/{id}, /sites/{id}/lists
// (two pages) and /sites/{id}/lists/{id}, as the Graph site and list docs show.
func resolveServer(t *testing.T) (*env, *atomic.Int32) {
	var n atomic.Int32
	var e *env
	e = newEnv(t, true, func(w http.ResponseWriter, r *http.Request) {
		n.Add(1)
		p := r.URL.EscapedPath()
		site := `{"id":"` + siteID + `","displayName":"Legal","webUrl":"https://contoso.sharepoint.com/sites/legal"}`
		switch {
		case p == "/v1.0/sites/contoso.sharepoint.com:/sites/legal",
			p == "/v1.0/sites/contoso.sharepoint.com:/sites/Team%20Site/sub",
			p == "/v1.0/sites/"+siteID:
			writeJSON(w, 200, site)
		case p == "/v1.0/sites/"+siteID+"/lists" && r.URL.Query().Get("page") == "":
			writeJSON(w, 200, `{"value":[
				{"id":"`+guidA+`","displayName":"Contracts","name":"Contracts"},
				{"id":"`+guidB+`","displayName":"Bob's \"Q1\" list & more","name":"BobsQ1"}],
				"@odata.nextLink":"`+e.graph+`/sites/`+siteID+`/lists?page=2"}`)
		case p == "/v1.0/sites/"+siteID+"/lists":
			writeJSON(w, 200, `{"value":[
				{"id":"`+guidC+`","displayName":"Dup","name":"Dup1"},
				{"id":"`+guidD+`","displayName":"dup","name":"Dup2"},
				{"id":"`+guidE+`","displayName":"`+guidName+`","name":"Weird"}]}`)
		case strings.HasPrefix(p, "/v1.0/sites/"+siteID+"/lists/"):
			id := strings.TrimPrefix(p, "/v1.0/sites/"+siteID+"/lists/")
			for _, g := range []string{guidA, guidB, guidC, guidD, guidE} {
				if strings.EqualFold(id, g) {
					writeJSON(w, 200, `{"id":"`+g+`","displayName":"x"}`)
					return
				}
			}
			writeJSON(w, 404, `{"error":{"code":"itemNotFound","message":"The specified list was not found"}}`)
		case strings.HasPrefix(p, "/v1.0/sites/denied"):
			writeJSON(w, 403, `{"error":{"code":"accessDenied","message":"Access denied"}}`)
		default:
			writeJSON(w, 404, `{"error":{"code":"itemNotFound","message":"Requested site could not be found"}}`)
		}
	})
	return e, &n
}

func TestResolve(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name, site, list string
		wantList         string
		wantErr          string
	}{
		{name: "path and display name", site: "contoso.sharepoint.com:/sites/legal", list: "Contracts", wantList: guidA},
		{name: "path with trailing slash and space", site: "contoso.sharepoint.com:/sites/Team Site/sub/", list: "Contracts", wantList: guidA},
		{name: "site id and list id", site: siteID, list: guidB, wantList: guidB},
		{name: "list id in braces, upper case", site: siteID, list: "{" + strings.ToUpper(guidA) + "}", wantList: guidA},
		{name: "name with quotes, spaces, ampersand (second page)", site: siteID, list: `Bob's "Q1" list & more`, wantList: guidB},
		{name: "case-insensitive name", site: siteID, list: "contracts", wantList: guidA},
		{name: "exact case wins", site: siteID, list: "dup", wantList: guidD},
		{name: "ambiguous", site: siteID, list: "DUP", wantErr: `2 lists in site "` + siteID + `" match`},
		{name: "URL name", site: siteID, list: "bobsq1", wantList: guidB},
		{name: "GUID-looking display name", site: siteID, list: guidName, wantList: guidE},
		{name: "list not found", site: siteID, list: "Nope", wantErr: `list "Nope" not found in site "` + siteID + `" (lists: "Contracts", "Bob's \"Q1\" list & more"`},
		{name: "list GUID not found", site: siteID, list: "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee", wantErr: `list "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee" not found`},
		{name: "site not found", site: "contoso.sharepoint.com:/sites/missing", list: "Contracts", wantErr: `site "contoso.sharepoint.com:/sites/missing" not found`},
		{name: "site denied", site: "denied", list: "Contracts", wantErr: "Graph answered 403 for site denied: grant the app Sites.Read.All or a Sites.Selected read role on the site"},
		{name: "empty list", site: siteID, list: " ", wantErr: "site and list are required"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			e, _ := resolveServer(t)
			s, l, err := e.client.Resolve(context.Background(), tt.site, tt.list)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if s != siteID || l != tt.wantList {
				t.Errorf("got %s / %s, want %s / %s", s, l, siteID, tt.wantList)
			}
		})
	}
}

// Resolving by id costs one request per object, not a list enumeration.
func TestResolveByIDIsCheap(t *testing.T) {
	t.Parallel()
	e, n := resolveServer(t)
	if _, _, err := e.client.Resolve(context.Background(), siteID, guidA); err != nil {
		t.Fatal(err)
	}
	if n.Load() != 2 {
		t.Errorf("requests = %d, want 2", n.Load())
	}
}
