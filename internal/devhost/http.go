package devhost

import (
	"bytes"
	"context"
	"crypto/subtle"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"mime"
	"net/http"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"time"
)

// maxRequestBody bounds what the HTTP routes accept (the host's limit is
// 100 MB).
const maxRequestBody = 100 << 20

// httpRoute is one httpTrigger binding (§6.3, §7.3).
type httpRoute struct {
	h           *Host
	fn, binding string
	template    string // the public path template, "/api/replay/{pipeline}/{destination}"
	segs        []segment
	methods     map[string]bool // upper case; empty: all
	authLevel   string          // anonymous, function or admin
	output      string          // name of the http out binding ("res", "$return"), or ""
}

// segment is one path segment of an ASP.NET-style route template.
type segment struct {
	literal    string
	param      string
	optional   bool
	catchAll   bool
	constraint string
	def        string
	hasDef     bool
}

func (h *Host) newRoute(fn *function, b binding) (*httpRoute, error) {
	r := &httpRoute{h: h, fn: fn.Name, binding: b.Name, methods: map[string]bool{}, authLevel: strings.ToLower(b.AuthLevel)}
	if r.authLevel == "" {
		r.authLevel = "function" // §6.3 default
	}
	switch r.authLevel {
	case "anonymous", "function", "admin":
	default:
		return nil, fmt.Errorf("devhost: function %s: authLevel %q: want anonymous, function or admin", fn.Name, b.AuthLevel)
	}
	for _, m := range b.Methods {
		r.methods[strings.ToUpper(m)] = true
	}
	for _, o := range fn.Bindings {
		if strings.EqualFold(o.Type, "http") && strings.EqualFold(o.Direction, "out") {
			r.output = o.Name
		}
	}
	route := strings.Trim(b.Route, "/")
	if route == "" {
		route = fn.Name // §6.3: the route defaults to the function name
	}
	prefix := strings.Trim(h.settings.RoutePrefix, "/")
	if prefix != "" {
		r.template = "/" + prefix + "/" + route
	} else {
		r.template = "/" + route
	}
	segs, err := parseRoute(strings.Trim(r.template, "/"))
	if err != nil {
		return nil, fmt.Errorf("devhost: function %s: route %q: %w", fn.Name, b.Route, err)
	}
	r.segs = segs
	return r, nil
}

// parseRoute parses literal segments and {name}, {name?}, {name:int},
// {name=default} and {*rest}.
func parseRoute(t string) ([]segment, error) {
	var segs []segment
	optional := false
	for i, p := range strings.Split(t, "/") {
		if p == "" {
			return nil, errors.New("empty path segment")
		}
		if !strings.Contains(p, "{") && !strings.Contains(p, "}") {
			if optional {
				return nil, errors.New("a literal segment may not follow an optional parameter")
			}
			segs = append(segs, segment{literal: p})
			continue
		}
		if p[0] != '{' || p[len(p)-1] != '}' || strings.Count(p, "{") != 1 {
			return nil, fmt.Errorf("segment %q: a parameter must fill its whole segment", p)
		}
		s := segment{param: p[1 : len(p)-1]}
		if strings.HasPrefix(s.param, "*") {
			s.catchAll, s.param = true, strings.TrimPrefix(strings.TrimPrefix(s.param, "*"), "*")
		}
		if name, def, ok := strings.Cut(s.param, "="); ok {
			s.param, s.def, s.hasDef = name, def, true
		}
		if strings.HasSuffix(s.param, "?") {
			s.optional, s.param = true, strings.TrimSuffix(s.param, "?")
		}
		if name, c, ok := strings.Cut(s.param, ":"); ok {
			s.param, s.constraint = name, strings.ToLower(c)
		}
		if s.param == "" {
			return nil, fmt.Errorf("segment %q: parameter without a name", p)
		}
		if s.catchAll && i != strings.Count(t, "/") {
			return nil, fmt.Errorf("segment %q: a catch-all must be last", p)
		}
		if optional && !s.optional && !s.hasDef && !s.catchAll {
			return nil, fmt.Errorf("segment %q: a required parameter may not follow an optional one", p)
		}
		optional = optional || s.optional || s.hasDef
		segs = append(segs, s)
	}
	return segs, nil
}

// match returns the route values of path, or false.
func (r *httpRoute) match(path string) (map[string]string, bool) {
	parts := strings.Split(strings.Trim(path, "/"), "/")
	if len(parts) == 1 && parts[0] == "" {
		parts = nil
	}
	params := map[string]string{}
	for i, s := range r.segs {
		if s.catchAll {
			rest := make([]string, 0, len(parts))
			for _, p := range parts[min(i, len(parts)):] {
				v, err := url.PathUnescape(p)
				if err != nil {
					return nil, false
				}
				rest = append(rest, v)
			}
			if len(rest) > 0 {
				params[s.param] = strings.Join(rest, "/")
			} else if s.hasDef {
				params[s.param] = s.def
			}
			return params, true
		}
		if i >= len(parts) {
			if s.hasDef {
				params[s.param] = s.def
				continue
			}
			if s.optional {
				continue
			}
			return nil, false
		}
		v, err := url.PathUnescape(parts[i])
		if err != nil {
			return nil, false
		}
		if s.param == "" {
			if !strings.EqualFold(v, s.literal) {
				return nil, false
			}
			continue
		}
		if !constraintOK(s.constraint, v) {
			return nil, false
		}
		params[s.param] = v
	}
	if len(parts) > len(r.segs) {
		return nil, false
	}
	return params, true
}

// constraintOK checks the common route constraints; others are not checked.
func constraintOK(c, v string) bool {
	switch c {
	case "int", "long":
		_, err := strconv.ParseInt(v, 10, 64)
		return err == nil
	case "bool":
		_, err := strconv.ParseBool(v)
		return err == nil
	case "alpha":
		for _, r := range v {
			if (r < 'a' || r > 'z') && (r < 'A' || r > 'Z') {
				return false
			}
		}
		return v != ""
	}
	return true
}

func (r *httpRoute) literals() int {
	n := 0
	for _, s := range r.segs {
		if s.param == "" {
			n++
		}
	}
	return n
}

func (r *httpRoute) methodList() []string {
	if len(r.methods) == 0 {
		return []string{"*"}
	}
	var ms []string
	for m := range r.methods {
		ms = append(ms, m)
	}
	sort.Strings(ms)
	return ms
}

// sortRoutes orders routes so that more specific templates match first.
func sortRoutes(rs []*httpRoute) {
	sort.SliceStable(rs, func(i, j int) bool {
		if a, b := rs[i].literals(), rs[j].literals(); a != b {
			return a > b
		}
		return len(rs[i].segs) > len(rs[j].segs)
	})
}

// serveHTTP is the host's public side: /admin/functions/<name> and the
// functions' routes.
func (h *Host) serveHTTP(w http.ResponseWriter, r *http.Request) {
	if name, ok := strings.CutPrefix(r.URL.Path, "/admin/functions/"); ok {
		h.serveAdmin(w, r, name)
		return
	}
	var allowed []string
	for _, rt := range h.routes {
		params, ok := rt.match(r.URL.Path)
		if !ok {
			continue
		}
		if len(rt.methods) > 0 && !rt.methods[r.Method] {
			allowed = append(allowed, rt.methodList()...)
			continue
		}
		rt.serve(w, r, params)
		return
	}
	if len(allowed) > 0 {
		w.Header().Set("Allow", strings.Join(allowed, ", "))
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	http.NotFound(w, r)
}

// authorize checks the function key (§9): the x-functions-key header, else
// the code query parameter; the header wins when both are there. It
// returns the caller's identities, or false after answering 401.
func (h *Host) authorize(w http.ResponseWriter, r *http.Request, level string) ([]wireIdentity, bool) {
	given := r.URL.Query().Get("code")
	if vs, ok := r.Header["X-Functions-Key"]; ok && len(vs) > 0 {
		given = vs[0]
	}
	switch {
	case h.key == "":
		// Open on loopback: every caller is admin, as under Core Tools (§9).
		return []wireIdentity{keyIdentity("Admin", "")}, true
	case given != "" && subtle.ConstantTimeCompare([]byte(given), []byte(h.key)) == 1:
		return []wireIdentity{keyIdentity("Function", "default")}, true
	case level == "anonymous":
		return []wireIdentity{}, true
	}
	w.Header().Set("WWW-Authenticate", `FunctionsKey realm="sluice devhost"`)
	http.Error(w, "unauthorized: send the function key in the x-functions-key header or the code query parameter", http.StatusUnauthorized)
	return nil, false
}

// Identities (§7.3, §9): a serialized ClaimsIdentity of the key level.
type wireIdentity struct {
	AuthenticationType string      `json:"AuthenticationType"`
	IsAuthenticated    bool        `json:"IsAuthenticated"`
	Actor              any         `json:"Actor"`
	BootstrapContext   any         `json:"BootstrapContext"`
	Claims             []wireClaim `json:"Claims"`
	Label              any         `json:"Label"`
	Name               any         `json:"Name"`
	NameClaimType      string      `json:"NameClaimType"`
	RoleClaimType      string      `json:"RoleClaimType"`
}

type wireClaim struct {
	Issuer         string            `json:"Issuer"`
	OriginalIssuer string            `json:"OriginalIssuer"`
	Properties     map[string]string `json:"Properties"`
	Type           string            `json:"Type"`
	Value          string            `json:"Value"`
	ValueType      string            `json:"ValueType"`
}

func keyIdentity(level, keyID string) wireIdentity {
	claim := func(typ, v string) wireClaim {
		return wireClaim{Issuer: "LOCAL AUTHORITY", OriginalIssuer: "LOCAL AUTHORITY", Properties: map[string]string{},
			Type: "http://schemas.microsoft.com/2017/07/functions/claims/" + typ, Value: v,
			ValueType: "http://www.w3.org/2001/XMLSchema#string"}
	}
	claims := []wireClaim{claim("authlevel", level), claim("invoke", "true")}
	if keyID != "" {
		claims = append(claims, claim("keyid", keyID))
	}
	return wireIdentity{AuthenticationType: "WebJobsAuthLevel", IsAuthenticated: true, Claims: claims,
		NameClaimType: "http://schemas.xmlsoap.org/ws/2005/05/identity/claims/name",
		RoleClaimType: "http://schemas.microsoft.com/ws/2008/06/identity/claims/role"}
}

// wireRequest is Data.req (§7.3), fields in the host's order.
type wireRequest struct {
	URL        string              `json:"Url"`
	Method     string              `json:"Method"`
	Query      map[string]string   `json:"Query"`
	Headers    map[string][]string `json:"Headers"`
	Params     map[string]string   `json:"Params"`
	Identities []wireIdentity      `json:"Identities"`
	Body       *string             `json:"Body,omitempty"`
}

type httpPayload struct {
	Data     map[string]wireRequest `json:"Data"`
	Metadata map[string]any         `json:"Metadata"`
}

// serve runs one HTTP invocation: the request as Data.req, Outputs.res
// back to the caller; a failed invocation is a bare 500 (§7.3).
func (rt *httpRoute) serve(w http.ResponseWriter, r *http.Request, params map[string]string) {
	began := time.Now()
	h := rt.h
	ids, ok := h.authorize(w, r, rt.authLevel)
	attrs := []slog.Attr{slog.String("method", r.Method), slog.String("path", r.URL.Path)}
	if !ok {
		h.logInvocation(rt.fn, "http", began, "unauthorized", reply{}, nil, append(attrs, slog.Int("httpStatus", http.StatusUnauthorized))...)
		return
	}
	data, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxRequestBody))
	if err != nil {
		http.Error(w, "request body: "+err.Error(), http.StatusRequestEntityTooLarge)
		return
	}
	req := wireRequest{
		URL:        "http://" + r.Host + r.URL.RequestURI(),
		Method:     r.Method,
		Query:      map[string]string{},
		Headers:    map[string][]string{},
		Params:     params,
		Identities: ids,
	}
	for k, vs := range r.URL.Query() {
		req.Query[k] = strings.Join(vs, ",") // §7.3: repeated keys joined with ","
	}
	for k, vs := range r.Header {
		req.Headers[k] = vs
	}
	req.Headers["Host"] = []string{r.Host}
	// §7.3: Body only for Content-Length > 0; base64 for binary types.
	if r.ContentLength > 0 {
		s := string(data)
		if binaryMedia(r.Header.Get("Content-Type")) {
			s = base64.StdEncoding.EncodeToString(data)
		}
		req.Body = &s
	}
	meta := map[string]any{"Query": req.Query, "Headers": joinHeaders(req.Headers)}
	for k, v := range params {
		meta[k] = hostString(v)
	}
	addBodyData(meta, data)
	meta["sys"] = h.sys(rt.fn)

	ctx, cancel := context.WithCancel(r.Context())
	defer cancel()
	stop := context.AfterFunc(h.invCtx, cancel)
	defer stop()
	res, err := h.invoke(ctx, rt.fn, httpPayload{Data: map[string]wireRequest{rt.binding: req}, Metadata: meta})
	if err != nil {
		w.WriteHeader(http.StatusInternalServerError)
		h.logInvocation(rt.fn, "http", began, "failed", res, err, append(attrs, slog.Int("httpStatus", 500))...)
		return
	}
	var out json.RawMessage
	if rt.output == "$return" {
		out = res.ReturnValue
	} else if rt.output != "" {
		out = lookupRaw(res.Outputs, rt.output)
	}
	status, err := writeResponse(w, out)
	outcome := "succeeded"
	if err != nil {
		outcome = "failed"
	}
	h.logInvocation(rt.fn, "http", began, outcome, res, err, append(attrs, slog.Int("httpStatus", status))...)
}

// writeResponse writes Outputs.res to the caller (§7.3): statusCode (a
// number or numeric string, default 200), headers, body (a string as is;
// other JSON as its text). A res that is not an object is a 500.
func writeResponse(w http.ResponseWriter, raw json.RawMessage) (int, error) {
	t := bytes.TrimSpace(raw)
	if len(t) == 0 || string(t) == "null" {
		w.WriteHeader(http.StatusNoContent)
		return http.StatusNoContent, nil
	}
	var res struct {
		StatusCode json.RawMessage            `json:"statusCode"`
		Status     json.RawMessage            `json:"status"`
		Headers    map[string]json.RawMessage `json:"headers"`
		Body       json.RawMessage            `json:"body"`
	}
	if t[0] != '{' || json.Unmarshal(t, &res) != nil {
		w.WriteHeader(http.StatusInternalServerError)
		return 500, fmt.Errorf("the http output is not an object: %s", clip(t, 100))
	}
	status := 200
	sc := res.StatusCode
	if len(sc) == 0 || string(sc) == "null" {
		sc = res.Status
	}
	if len(sc) > 0 && string(sc) != "null" {
		n, err := strconv.Atoi(scalar(sc))
		if err != nil || n < 100 || n > 999 {
			w.WriteHeader(http.StatusInternalServerError)
			return 500, fmt.Errorf("the http output's statusCode %s is not a status", sc)
		}
		status = n
	}
	for k, v := range res.Headers {
		w.Header().Set(k, scalar(v))
	}
	var body []byte
	if b := bytes.TrimSpace(res.Body); len(b) > 0 && string(b) != "null" {
		if b[0] == '"' {
			var s string
			_ = json.Unmarshal(b, &s)
			body = []byte(s)
		} else if b[0] == '{' || b[0] == '[' {
			var buf bytes.Buffer
			_ = json.Indent(&buf, b, "", "  ")
			body = buf.Bytes()
		} else {
			body = b
		}
	}
	if w.Header().Get("Content-Type") == "" && len(body) > 0 {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	}
	w.WriteHeader(status)
	_, _ = w.Write(body)
	return status, nil
}

// serveAdmin runs a timer function now: POST /admin/functions/<name> with
// {"input":""} (§7.1 manual trigger). It needs the key when one is set.
func (h *Host) serveAdmin(w http.ResponseWriter, r *http.Request, name string) {
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	if _, ok := h.authorize(w, r, "admin"); !ok {
		return
	}
	for _, t := range h.timers {
		if strings.EqualFold(t.fn, name) {
			go t.invoke(time.Time{}, nil, false)
			w.WriteHeader(http.StatusAccepted)
			return
		}
	}
	http.Error(w, "no timer function "+name+" (only timer functions can be run here)", http.StatusNotFound)
}

func binaryMedia(ct string) bool {
	mt, _, err := mime.ParseMediaType(ct)
	if err != nil {
		return false
	}
	return mt == "application/octet-stream" || strings.HasPrefix(mt, "multipart/")
}

func joinHeaders(hs map[string][]string) map[string]string {
	out := make(map[string]string, len(hs))
	for k, vs := range hs {
		out[k] = strings.Join(vs, ",")
	}
	return out
}

// scalar is the text of a JSON scalar: a string unquoted, else as written.
func scalar(raw json.RawMessage) string {
	t := bytes.TrimSpace(raw)
	if len(t) > 0 && t[0] == '"' {
		var s string
		if json.Unmarshal(t, &s) == nil {
			return s
		}
	}
	return string(t)
}

// lookupRaw finds key in m, case-insensitively as the host does (§5).
func lookupRaw(m map[string]json.RawMessage, key string) json.RawMessage {
	if v, ok := m[key]; ok {
		return v
	}
	for k, v := range m {
		if strings.EqualFold(k, key) {
			return v
		}
	}
	return nil
}
