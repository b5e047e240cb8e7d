package devhost

import (
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/sluicehq/sluice/internal/functions"
)

const httpHost = `{"version":"2.0","extensions":{"http":{"routePrefix":"api"}}}`

var httpFunctions = map[string]string{
	"replay": `{"bindings":[{"name":"req","type":"httpTrigger","direction":"in","authLevel":"function","methods":["post"],"route":"replay/{pipeline}/{destination}"},{"name":"res","type":"http","direction":"out"}]}`,
	"status": `{"bindings":[{"name":"req","type":"httpTrigger","direction":"in","authLevel":"function","methods":["get"],"route":"status/{pipeline?}"},{"name":"res","type":"http","direction":"out"}]}`,
}

// resStub answers every invocation with Outputs.res.
func resStub() *stub {
	s := newStub()
	s.respond = func(c call, w http.ResponseWriter, _ *http.Request) {
		answer(w, 200, `{"Outputs":{"res":{"statusCode":"202","headers":{"Content-Type":"application/json","X-Test":1},"body":"{\"ok\":true}"}},"Logs":[],"ReturnValue":null}`)
	}
	return s
}

func do(t *testing.T, method, url, body string, hdr map[string]string) (*http.Response, string) {
	t.Helper()
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, string(b)
}

func TestHTTPRouteMapsTheRequestAndWritesRes(t *testing.T) {
	t.Parallel()
	s := resStub()
	r := start(t, Options{AppDir: writeApp(t, httpHost, httpFunctions), Handler: s})
	base := "http://" + r.h.Addr()

	resp, body := do(t, "POST", base+"/api/replay/orders/ware%20house?from=2025-06-01&x=1&x=2",
		`{"fromSeq":3}`, map[string]string{"Content-Type": "application/json", "X-Custom": "yes"})
	if resp.StatusCode != 202 || body != `{"ok":true}` || resp.Header.Get("Content-Type") != "application/json" || resp.Header.Get("X-Test") != "1" {
		t.Fatalf("client got %d %v %q", resp.StatusCode, resp.Header, body)
	}
	c := s.next(t, 5*time.Second)
	if c.Function != "replay" {
		t.Fatalf("invoked /%s", c.Function)
	}
	p := c.payload(t)
	req := get(t, p, "Data", "req").(map[string]any)
	if req["Method"] != "POST" || !strings.HasSuffix(req["Url"].(string), "/api/replay/orders/ware%20house?from=2025-06-01&x=1&x=2") {
		t.Errorf("Url/Method = %v %v", req["Url"], req["Method"])
	}
	if q := req["Query"].(map[string]any); q["from"] != "2025-06-01" || q["x"] != "1,2" {
		t.Errorf("Query = %v", q)
	}
	if pr := req["Params"].(map[string]any); pr["pipeline"] != "orders" || pr["destination"] != "ware house" {
		t.Errorf("Params = %v", pr)
	}
	hs := req["Headers"].(map[string]any)
	if v, _ := hs["X-Custom"].([]any); len(v) != 1 || v[0] != "yes" {
		t.Errorf("Headers = %v", hs)
	}
	if _, ok := hs["Host"]; !ok {
		t.Errorf("Headers lack Host: %v", hs)
	}
	if req["Body"] != `{"fromSeq":3}` {
		t.Errorf("Body = %#v, want the body as a string", req["Body"])
	}
	if ids, _ := req["Identities"].([]any); len(ids) != 1 {
		t.Errorf("Identities = %v", req["Identities"])
	}
	// The real handler's decoder reads it.
	inv, err := functions.DecodeInvocation(c.Body)
	if err != nil {
		t.Fatal(err)
	}
	hr, err := functions.DecodeHTTP(inv, functions.RequestBinding)
	if err != nil || hr.Param("destination") != "ware house" || string(hr.Body) != `{"fromSeq":3}` || hr.Query["x"] != "1,2" {
		t.Fatalf("DecodeHTTP = %+v, %v", hr, err)
	}

	// Optional parameter, present and absent; no body, no Body key.
	do(t, "GET", base+"/api/status/orders", "", nil)
	if pr := get(t, s.next(t, 5*time.Second).payload(t), "Data", "req", "Params").(map[string]any); pr["pipeline"] != "orders" {
		t.Errorf("status Params = %v", pr)
	}
	do(t, "GET", base+"/api/status", "", nil)
	c = s.next(t, 5*time.Second)
	if pr := get(t, c.payload(t), "Data", "req", "Params").(map[string]any); len(pr) != 0 {
		t.Errorf("status Params = %v, want none", pr)
	}
	if _, ok := get(t, c.payload(t), "Data", "req").(map[string]any)["Body"]; ok {
		t.Errorf("a request without a body has Body")
	}

	// Wrong method, unknown route.
	if resp, _ := do(t, "GET", base+"/api/replay/a/b", "", nil); resp.StatusCode != 405 {
		t.Errorf("GET replay: %d, want 405", resp.StatusCode)
	}
	if resp, _ := do(t, "GET", base+"/api/nope", "", nil); resp.StatusCode != 404 {
		t.Errorf("unknown route: %d, want 404", resp.StatusCode)
	}
	if n := s.count(); n != 3 {
		t.Errorf("%d invocations, want 3", n)
	}
}

func TestHTTPHandlerFailureIs500(t *testing.T) {
	t.Parallel()
	s := newStub()
	s.respond = func(c call, w http.ResponseWriter, _ *http.Request) {
		answer(w, 500, `{"Outputs":{},"Logs":["boom"],"ReturnValue":null}`)
	}
	r := start(t, Options{AppDir: writeApp(t, httpHost, httpFunctions), Handler: s})
	if resp, body := do(t, "GET", "http://"+r.h.Addr()+"/api/status", "", nil); resp.StatusCode != 500 || body != "" {
		t.Fatalf("client got %d %q, want a bare 500", resp.StatusCode, body)
	}
	// A body that is not the {"Outputs",...} object fails too (§5).
	s.respond = func(c call, w http.ResponseWriter, _ *http.Request) { answer(w, 200, ``) }
	if resp, _ := do(t, "GET", "http://"+r.h.Addr()+"/api/status", "", nil); resp.StatusCode != 500 {
		t.Fatalf("empty 200 from the handler: client got %d, want 500", resp.StatusCode)
	}
}

func TestHTTPKeyRequiredWhenSet(t *testing.T) {
	t.Parallel()
	s := resStub()
	env := map[string]string{KeyEnv: "s3cret"}
	r := start(t, Options{AppDir: writeApp(t, httpHost, httpFunctions), Handler: s,
		LookupEnv: func(k string) (string, bool) { v, ok := env[k]; return v, ok }})
	base := "http://" + r.h.Addr() + "/api/status/p"
	for _, tc := range []struct {
		name string
		url  string
		hdr  map[string]string
		want int
	}{
		{"no key", base, nil, 401},
		{"wrong header", base, map[string]string{"x-functions-key": "nope"}, 401},
		{"header", base, map[string]string{"x-functions-key": "s3cret"}, 202},
		{"code", base + "?code=s3cret", nil, 202},
		{"header wins over code", base + "?code=s3cret", map[string]string{"x-functions-key": "nope"}, 401},
	} {
		if resp, _ := do(t, "GET", tc.url, "", tc.hdr); resp.StatusCode != tc.want {
			t.Errorf("%s: %d, want %d", tc.name, resp.StatusCode, tc.want)
		}
	}
	if n := s.count(); n != 2 {
		t.Fatalf("%d invocations, want only the 2 authorized", n)
	}
	// An authorized call carries the key's identity (§9).
	c := s.all()[0]
	var p struct {
		Data map[string]struct{ Identities []functions.Identity }
	}
	if err := json.Unmarshal(c.Body, &p); err != nil {
		t.Fatal(err)
	}
	ids := p.Data["req"].Identities
	if len(ids) != 1 || ids[0].AuthenticationType != "WebJobsAuthLevel" || len(ids[0].Claims) != 3 || ids[0].Claims[0].Value != "Function" {
		t.Fatalf("Identities = %+v", ids)
	}
}

func TestHTTPNonLoopbackWithoutKeyRefused(t *testing.T) {
	t.Parallel()
	dir := writeApp(t, httpHost, httpFunctions)
	noEnv := func(string) (string, bool) { return "", false }
	for _, addr := range []string{"0.0.0.0:7071", ":7071", "192.0.2.1:7071", "[::]:7071"} {
		_, err := New(Options{AppDir: dir, Handler: newStub(), Addr: addr, LookupEnv: noEnv})
		if err == nil || !strings.Contains(err.Error(), KeyEnv) {
			t.Errorf("New on %s without a key: %v, want a refusal naming %s", addr, err, KeyEnv)
		}
	}
	withKey := func(k string) (string, bool) { return "k", k == KeyEnv }
	if _, err := New(Options{AppDir: dir, Handler: newStub(), Addr: "0.0.0.0:7071", LookupEnv: withKey}); err != nil {
		t.Errorf("New on 0.0.0.0 with a key: %v", err)
	}
	for _, addr := range []string{"127.0.0.1:7071", "localhost:7071", "[::1]:7071"} {
		if _, err := New(Options{AppDir: dir, Handler: newStub(), Addr: addr, LookupEnv: noEnv}); err != nil {
			t.Errorf("New on %s: %v", addr, err)
		}
	}
}

func TestNewChecksTheApp(t *testing.T) {
	t.Parallel()
	noEnv := func(string) (string, bool) { return "", false }
	dir := writeApp(t, `{}`, map[string]string{
		"read": `{"bindings":[{"name":"timer","type":"timerTrigger","direction":"in","schedule":"%SLUICE_READ_SCHEDULE%"}]}`,
	})
	_, err := New(Options{AppDir: dir, Handler: newStub(), LookupEnv: noEnv})
	if err == nil || !strings.Contains(err.Error(), "SLUICE_READ_SCHEDULE") {
		t.Errorf("unset schedule setting: %v, want an error naming it", err)
	}
	if _, err := New(Options{AppDir: t.TempDir(), Handler: newStub(), LookupEnv: noEnv}); err == nil {
		t.Errorf("an app without functions was accepted")
	}
	// The repository's own app directory loads (functions/ layout).
	env := map[string]string{"SLUICE_READ_SCHEDULE": "0 */5 * * * *"}
	h, err := New(Options{AppDir: "../..", Handler: newStub(), Store: nil,
		LookupEnv: func(k string) (string, bool) { v, ok := env[k]; return v, ok }})
	if err == nil || !strings.Contains(err.Error(), "storage") {
		t.Errorf("repository app without storage: %v, %v", h, err)
	}
}

func TestRouteTemplates(t *testing.T) {
	for _, tc := range []struct {
		tmpl, path string
		want       map[string]string // nil: no match
	}{
		{"api/replay/{pipeline}/{destination}", "/api/replay/a/b", map[string]string{"pipeline": "a", "destination": "b"}},
		{"api/replay/{pipeline}/{destination}", "/API/Replay/a/b", map[string]string{"pipeline": "a", "destination": "b"}},
		{"api/replay/{pipeline}/{destination}", "/api/replay/a", nil},
		{"api/replay/{pipeline}/{destination}", "/api/replay/a/b/c", nil},
		{"api/status/{pipeline?}", "/api/status", map[string]string{}},
		{"api/status/{pipeline?}", "/api/status/", map[string]string{}},
		{"api/status/{pipeline?}", "/api/status/x", map[string]string{"pipeline": "x"}},
		{"api/items/{id:int}", "/api/items/12", map[string]string{"id": "12"}},
		{"api/items/{id:int}", "/api/items/x", nil},
		{"api/files/{*path}", "/api/files/a/b/c", map[string]string{"path": "a/b/c"}},
		{"api/page/{n=1}", "/api/page", map[string]string{"n": "1"}},
	} {
		segs, err := parseRoute(tc.tmpl)
		if err != nil {
			t.Fatalf("%s: %v", tc.tmpl, err)
		}
		got, ok := (&httpRoute{segs: segs}).match(tc.path)
		if (tc.want == nil) != !ok || (ok && !equalMaps(got, tc.want)) {
			t.Errorf("%s on %s = %v, %v; want %v", tc.tmpl, tc.path, got, ok, tc.want)
		}
	}
	for _, bad := range []string{"api/{a?}/x", "api/x{a}", "api/{*a}/b", "api//x"} {
		if _, err := parseRoute(bad); err == nil {
			t.Errorf("parseRoute(%q) accepted", bad)
		}
	}
}

func equalMaps(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}
