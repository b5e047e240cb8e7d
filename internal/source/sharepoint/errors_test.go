package sharepoint

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
)

// The 410 body of reference §1.7 (D).
const gone410 = `{
  "error": {
    "code": "resyncRequired",
    "message": "Resync required. Replace any local items with the server's version (including deletes) if you're sure that the service was up to date with your local changes when you last sync'd. Upload any local changes that the server doesn't know about.",
    "innerError": {
      "code": "resyncChangesApplyDifferences",
      "date": "2020-09-02T13:13:42",
      "request-id": "4066dbff-4e0c-48a0-bf94-31934a1aaea4",
      "client-request-id": "4066dbff-4e0c-48a0-bf94-31934a1aaea4"
    }
  }
}`

func TestResync410(t *testing.T) {
	t.Parallel()
	codes := []string{
		"resyncRequired", "ResyncRequired", "resyncChangesApplyDifferences", "resyncChangesUploadDifferences",
		"resyncChangesApplyDifferencesInsertOnly", "resyncApplyDifferences", "resyncUploadDifferences",
		"syncStateNotFound", "SyncStateNotFound", "syncStateInvalid", "SyncStateInvalid",
	}
	type tc struct {
		name, body, location, wantCode string
		wantLoc                        func(graph string) string
	}
	var tests []tc
	same := func(g string) string { return g + "/sites/s/lists/l/items/delta?$expand=fields" }
	for _, code := range codes {
		tests = append(tests,
			tc{"top " + code + " with Location", `{"error":{"code":"` + code + `","message":"x"}}`, "SAME", code, same},
			tc{"top " + code + " no Location", `{"error":{"code":"` + code + `"}}`, "", code, nil},
			tc{"nested innerError " + code, `{"error":{"code":"generalException","innerError":{"code":"` + code + `"}}}`, "SAME", code, same},
			tc{"nested innererror " + code, `{"error":{"code":"generalException","innererror":{"code":"x","innererror":{"code":"` + code + `"}}}}`, "", code, nil},
		)
	}
	tests = append(tests,
		tc{"reference example D", gone410, "SAME", "resyncChangesApplyDifferences", same},
		tc{"no body", "", "SAME", "", same},
		tc{"unknown code", `{"error":{"code":"somethingNew"}}`, "", "somethingNew", nil},
		tc{"Location to another host is dropped", `{"error":{"code":"resyncRequired"}}`, "https://evil.example.com/v1.0/x", "resyncRequired", nil},
		tc{"relative Location is resolved", `{"error":{"code":"resyncRequired"}}`, "/v1.0/sites/s/lists/l/items/delta?$expand=fields", "resyncRequired", same},
	)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			var e *env
			e = newEnv(t, false, func(w http.ResponseWriter, r *http.Request) {
				loc := tt.location
				if loc == "SAME" {
					loc = same(e.graph)
				}
				if loc != "" {
					w.Header().Set("Location", loc)
				}
				writeJSON(w, 410, tt.body)
			})
			_, err := e.client.Page(context.Background(), e.graph+"/sites/s/lists/l/items/delta?token=old")
			var re *ResyncError
			if !errors.As(err, &re) {
				t.Fatalf("err = %v, want *ResyncError", err)
			}
			wantLoc := ""
			if tt.wantLoc != nil {
				wantLoc = tt.wantLoc(e.graph)
			}
			if re.Code != tt.wantCode || re.Location != wantLoc {
				t.Errorf("got code %q location %q, want %q %q", re.Code, re.Location, tt.wantCode, wantLoc)
			}
			if e.client.Stats().Requests != 1 {
				t.Errorf("requests = %d: a 410 must not be retried", e.client.Stats().Requests)
			}
		})
	}
}

// countingCred hands out tok-1, tok-2, ... and counts calls.
type countingCred struct {
	mu    sync.Mutex
	calls int
	scope []string
	err   error
	ttl   time.Duration
	now   func() time.Time
}

func (c *countingCred) GetToken(ctx context.Context, o policy.TokenRequestOptions) (azcore.AccessToken, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.calls++
	c.scope = o.Scopes
	if c.err != nil {
		return azcore.AccessToken{}, c.err
	}
	return azcore.AccessToken{Token: fmt.Sprintf("tok-%d", c.calls), ExpiresOn: c.now().Add(c.ttl)}, nil
}

func TestAuthErrors(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name       string
		status     int
		cred       bool
		wantTries  int32
		wantSubstr []string
	}{
		{"403", 403, false, 1, []string{"Graph answered 403 for site contoso.sharepoint.com,a,b, list L1: grant the app Sites.Read.All or a Sites.Selected read role on the site", "accessDenied"}},
		{"403 with credential", 403, true, 1, []string{"grant the app Sites.Read.All"}},
		{"401 bearer: no retry", 401, false, 1, []string{"Graph answered 401", "the token is missing, expired or not valid for Microsoft Graph", "tenant_id, client_id"}},
		{"401 credential: one retry with a fresh token", 401, true, 2, []string{"Graph answered 401", "managed identity"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			var n atomic.Int32
			var auths sync.Map
			cred := &countingCred{ttl: time.Hour}
			e := newEnv(t, true, func(w http.ResponseWriter, r *http.Request) {
				auths.Store(n.Add(1), r.Header.Get("Authorization"))
				if tt.status == 401 {
					w.Header().Set("WWW-Authenticate", `Bearer realm="", authorization_uri="https://login.microsoftonline.com/common/oauth2/authorize"`)
					writeJSON(w, 401, `{"error":{"code":"InvalidAuthenticationToken","message":"Access token has expired or is not yet valid."}}`)
					return
				}
				w.Header().Set("request-id", "rid-1")
				writeJSON(w, 403, `{"error":{"code":"accessDenied","message":"Access denied"}}`)
			}, func(o *Options) {
				if tt.cred {
					o.Credential = cred
				}
			})
			cred.now = e.clock.Now
			_, err := e.client.Page(context.Background(), e.graph+"/sites/contoso.sharepoint.com,a,b/lists/L1/items/delta?token=x")
			var se *StatusError
			if !errors.As(err, &se) || se.StatusCode != tt.status {
				t.Fatalf("err = %v", err)
			}
			for _, s := range tt.wantSubstr {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("error %q lacks %q", err, s)
				}
			}
			for _, secret := range []string{testToken, "tok-1", "tok-2"} {
				if strings.Contains(err.Error(), secret) {
					t.Errorf("error leaks a token: %v", err)
				}
			}
			if n.Load() != tt.wantTries {
				t.Errorf("requests = %d, want %d", n.Load(), tt.wantTries)
			}
			if tt.cred && tt.status == 401 {
				a1, _ := auths.Load(int32(1))
				a2, _ := auths.Load(int32(2))
				if a1 != "Bearer tok-1" || a2 != "Bearer tok-2" {
					t.Errorf("authorization headers %v, %v: want a fresh token on the retry", a1, a2)
				}
			}
		})
	}
}

func TestTokenCache(t *testing.T) {
	t.Parallel()
	cred := &countingCred{ttl: time.Hour}
	var e *env
	e = newEnv(t, true, func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, 200, deltaPage(e.graph, ""))
	}, func(o *Options) { o.Credential = cred })
	cred.now = e.clock.Now
	for range 3 {
		if _, err := e.client.Page(context.Background(), e.graph+"/d"); err != nil {
			t.Fatal(err)
		}
	}
	if cred.calls != 1 || len(cred.scope) != 1 || cred.scope[0] != "https://graph.microsoft.com/.default" {
		t.Fatalf("GetToken calls %d scopes %v", cred.calls, cred.scope)
	}
	// Within 5 minutes of expiry the token is replaced.
	e.clock.mu.Lock()
	e.clock.t = e.clock.t.Add(56 * time.Minute)
	e.clock.mu.Unlock()
	if _, err := e.client.Page(context.Background(), e.graph+"/d"); err != nil {
		t.Fatal(err)
	}
	if cred.calls != 2 {
		t.Errorf("GetToken calls = %d, want 2", cred.calls)
	}
}

func TestCredentialError(t *testing.T) {
	t.Parallel()
	cred := &countingCred{err: errors.New("ManagedIdentityCredential: no identity endpoint")}
	e := newEnv(t, true, func(w http.ResponseWriter, r *http.Request) { t.Error("request sent without a token") },
		func(o *Options) { o.Credential = cred })
	_, err := e.client.Page(context.Background(), e.graph+"/d")
	if err == nil || !strings.Contains(err.Error(), "get a Graph token: ManagedIdentityCredential") {
		t.Fatalf("err = %v", err)
	}
}

func TestOtherStatus(t *testing.T) {
	t.Parallel()
	e := newEnv(t, false, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("request-id", "rid-9")
		writeJSON(w, 400, `{"error":{"code":"invalidRequest","message":"Invalid request"}}`)
	})
	_, err := e.client.Page(context.Background(), e.graph+"/sites/S/lists/L/items/delta?$expand=fields")
	var se *StatusError
	if !errors.As(err, &se) || se.Code != "invalidRequest" || se.RequestID != "rid-9" || e.client.Stats().Requests != 1 {
		t.Fatalf("err = %#v", err)
	}
	want := "Graph answered 400 for site S, list L (invalidRequest: Invalid request) [GET " + e.graph + "/sites/S/lists/L/items/delta?… request-id rid-9]"
	if err.Error() != want {
		t.Errorf("message\n got %s\nwant %s", err, want)
	}
}

// A redirect to another host is not followed: it would get the request.
func TestRedirectToOtherHostRefused(t *testing.T) {
	t.Parallel()
	other := newEnv(t, false, func(w http.ResponseWriter, r *http.Request) { t.Error("redirect followed") })
	e := newEnv(t, false, func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, other.graph+"/d", http.StatusFound)
	})
	_, err := e.client.Page(context.Background(), e.graph+"/d")
	if err == nil || !strings.Contains(err.Error(), "refusing redirect") || e.client.Stats().Requests != 1 {
		t.Fatalf("err = %v, requests %d", err, e.client.Stats().Requests)
	}
}
