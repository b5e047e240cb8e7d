package config

import (
	"fmt"
	"net"
	"net/textproto"
	"net/url"
	"slices"
	"strings"

	"go.yaml.in/yaml/v3"
)

// Keys of each mapping (DESIGN §3.2 is the contract for them) and the values
// of each enum. Read-only tables: nothing assigns to them after init.
var (
	rootKeys     = []string{"storage", "pipelines"}
	storageKeys  = []string{"container"}
	pipelineKeys = []string{"name", "source", "destinations"}
	sourceKeys   = []string{"type", "site", "list", "fields", "graph_url", "auth"}
	authKeys     = []string{"type", "tenant_id", "client_id", "client_secret", "certificate", "token"}
	commonKeys   = []string{"name", "type", "on_error", "batch_size"}
	sqlKeys      = []string{"driver", "dsn", "table", "deletes"}
	busKeys      = []string{"connection_string", "namespace", "entity", "session_key"}
	httpKeys     = []string{"url", "timeout", "max_in_flight", "secret", "headers"}
	destKeys     = slices.Concat(commonKeys, sqlKeys, busKeys, httpKeys)

	authTypes = []string{AuthDefault, AuthClientSecret, AuthClientCertificate, AuthManagedIdentity, AuthBearer}
	destTypes = []string{DestSQL, DestServiceBus, DestHTTP}
	drivers   = []string{DriverPostgres, DriverSQLServer, DriverSQLite}
	deletes   = []string{DeletesHard, DeletesSoft}
	onErrors  = []string{OnErrorDeadletter, OnErrorHalt}
)

// authFields lists, per auth type, the keys it requires and the ones it
// merely allows.
func authFields(typ string) (required, optional []string) {
	switch typ {
	case AuthClientSecret:
		return []string{"tenant_id", "client_id", "client_secret"}, nil
	case AuthClientCertificate:
		return []string{"tenant_id", "client_id", "certificate"}, nil
	case AuthManagedIdentity:
		return nil, []string{"client_id"}
	case AuthBearer:
		return []string{"token"}, nil
	}
	return nil, nil
}

// tableRef locates a sql destination for the same-table check.
type tableRef struct {
	pipeline, dest, path string
	line                 int
}

func (d *decoder) config(root *yaml.Node) *Config {
	cfg := &Config{File: d.file, Storage: Storage{Container: DefaultContainer}}
	o := d.object(root, "", root.Line, rootKeys, nil)
	if o == nil {
		return cfg
	}
	if s := o.child("storage", storageKeys, nil); s != nil {
		if c, ok := s.need("container"); ok {
			if why := containerProblem(c); why != "" {
				s.errorf("container", "%s is not a valid container name: %s", quote(s.m["container"].val.Value), why)
			} else {
				cfg.Storage.Container = c
			}
		}
	}

	if !o.present("pipelines") {
		o.missing("pipelines", "required: at least one pipeline")
		return cfg
	}
	items, ok := o.list("pipelines")
	if !ok {
		return cfg
	}
	if len(items) == 0 {
		o.errorf("pipelines", "at least one pipeline is required")
	}
	names := map[string]int{}       // pipeline name → line
	tables := map[string]tableRef{} // driver, dsn, table → first destination writing it
	for i, item := range items {
		path := fmt.Sprintf("pipelines[%d]", i)
		p, line := d.pipeline(item, path, tables)
		if p.Name != "" {
			if first, dup := names[p.Name]; dup {
				d.errorf(line, path+".name", "duplicate pipeline name %q (first at line %d)", p.Name, first)
			} else {
				names[p.Name] = line
			}
		}
		cfg.Pipelines = append(cfg.Pipelines, p)
	}
	return cfg
}

// pipeline decodes one pipeline and returns it with the line of its name.
func (d *decoder) pipeline(n *yaml.Node, path string, tables map[string]tableRef) (Pipeline, int) {
	var p Pipeline
	o := d.object(n, path, n.Line, pipelineKeys, nil)
	if o == nil {
		return p, 0
	}
	if name, ok := o.need("name"); ok {
		if nameOK(name) {
			p.Name = name
		} else {
			o.errorf("name", "%s is not a valid pipeline name: use 1 to 48 of a-z, 0-9 and -", quote(o.m["name"].val.Value))
		}
	}
	if !o.present("source") {
		o.missing("source", "required")
	} else if s := o.child("source", sourceKeys, nil); s != nil {
		p.Source = d.source(s)
	}
	items, _ := o.list("destinations")
	seen := map[string]int{}
	for i, item := range items {
		dpath := fmt.Sprintf("%s.destinations[%d]", path, i)
		dest, line, ref := d.destination(item, dpath)
		if dest.Name == "" {
			p.Destinations = append(p.Destinations, dest)
			continue
		}
		if first, dup := seen[dest.Name]; dup {
			d.errorf(line, dpath+".name", "duplicate destination name %q in this pipeline (first at line %d)", dest.Name, first)
		} else {
			seen[dest.Name] = line
		}
		if ref != nil {
			ref.pipeline, ref.dest = p.Name, dest.Name
			d.sameTable(tables, dest, *ref)
		}
		p.Destinations = append(p.Destinations, dest)
	}
	return p, o.lineOf("name")
}

func (d *decoder) source(o *obj) Source {
	s := Source{GraphURL: DefaultGraphURL, Auth: Auth{Type: AuthDefault}}
	if !o.present("type") {
		o.missing("type", "required: the only source type is %q", SourceSharePoint)
	} else if t, ok := o.enum("type", []string{SourceSharePoint}, ""); ok {
		s.Type = t
	}
	s.Site, _ = o.need("site")
	s.List, _ = o.need("list")
	if fields, ok := o.stringList("fields"); ok {
		if len(fields) == 0 {
			o.errorf("fields", "must list at least one field; remove the key to read all fields")
		}
		seen := map[string]bool{}
		for _, f := range fields {
			if seen[f] {
				o.errorf("fields", "field %s is listed twice", quote(f))
			}
			seen[f] = true
		}
		s.Fields = fields
	}
	if u, ok := o.optional("graph_url"); ok {
		if httpURLOK(u) {
			s.GraphURL = strings.TrimRight(u, "/")
		} else {
			o.errorf("graph_url", "must be an absolute http:// or https:// URL")
		}
	}
	if a := o.child("auth", authKeys, nil); a != nil {
		s.Auth = d.auth(a)
	}
	if s.GraphURL != "" && !tokenSafeURL(s.GraphURL) {
		o.errorf("graph_url", "plain http would carry the access token in clear text; use https "+
			"(plain http is allowed only to a simulator on this machine: 127.0.0.1, localhost or [::1])")
	}
	return s
}

// tokenSafeURL reports whether an access token may be sent to u: over
// https, or over plain http to this machine (a local simulator).
func tokenSafeURL(u string) bool {
	p, err := url.Parse(u)
	if err != nil {
		return false
	}
	if p.Scheme == "https" {
		return true
	}
	host := p.Hostname()
	ip := net.ParseIP(host)
	return host == "localhost" || ip != nil && ip.IsLoopback()
}

func (d *decoder) auth(o *obj) Auth {
	a := Auth{Type: AuthDefault}
	t, ok := o.enum("type", authTypes, AuthDefault)
	if !ok {
		return a // the type is wrong: which other keys are wrong is unknowable
	}
	a.Type = t
	required, optional := authFields(t)
	allowed := slices.Concat([]string{"type"}, required, optional)
	o.restrict(allowed, func(k string) string {
		if len(required)+len(optional) == 0 {
			return fmt.Sprintf("not used by auth type %q, which takes no other settings", t)
		}
		return fmt.Sprintf("not used by auth type %q (it takes %s)", t, strings.Join(slices.Concat(required, optional), ", "))
	})
	get := func(k string) string {
		var v string
		if slices.Contains(required, k) {
			v, _ = o.need(k)
		} else {
			v, _ = o.optional(k)
		}
		return v
	}
	for _, k := range slices.Concat(required, optional) {
		switch k {
		case "tenant_id":
			a.TenantID = get(k)
		case "client_id":
			a.ClientID = get(k)
		case "client_secret":
			a.ClientSecret = Secret(get(k))
		case "certificate":
			a.Certificate = get(k)
		case "token":
			a.Token = Secret(get(k))
		}
	}
	return a
}

// destination decodes one destination and returns it with the line of its
// name and, for sql, where it is for the same-table check.
func (d *decoder) destination(n *yaml.Node, path string) (Destination, int, *tableRef) {
	var dest Destination
	o := d.object(n, path, n.Line, destKeys, nil)
	if o == nil {
		return dest, 0, nil
	}
	if name, ok := o.need("name"); ok {
		if nameOK(name) {
			dest.Name = name
		} else {
			o.errorf("name", "%s is not a valid destination name: use 1 to 48 of a-z, 0-9 and -", quote(o.m["name"].val.Value))
		}
	}
	dest.OnError, _ = o.enum("on_error", onErrors, OnErrorDeadletter)

	if !o.present("type") {
		o.missing("type", "required: one of %s", strings.Join(destTypes, ", "))
		return dest, o.lineOf("name"), nil
	}
	t, ok := o.enum("type", destTypes, "")
	if !ok {
		return dest, o.lineOf("name"), nil // keys of the intended type are unknowable
	}
	dest.Type = t
	var own []string
	switch t {
	case DestSQL:
		own = sqlKeys
	case DestServiceBus:
		own = busKeys
	case DestHTTP:
		own = httpKeys
	}
	o.restrict(slices.Concat(commonKeys, own), func(k string) string {
		owner := DestHTTP
		switch {
		case slices.Contains(sqlKeys, k):
			owner = DestSQL
		case slices.Contains(busKeys, k):
			owner = DestServiceBus
		}
		return fmt.Sprintf("not a setting of %s destinations (it belongs to type %s)", t, owner)
	})

	var ref *tableRef
	switch t {
	case DestSQL:
		dest.BatchSize = o.integer("batch_size", DefaultSQLBatchSize, 1)
		dest.Driver, _ = o.enum("driver", drivers, "")
		if !o.present("driver") {
			o.missing("driver", "required: one of %s", strings.Join(drivers, ", "))
		}
		dsn, _ := o.need("dsn")
		dest.DSN = Secret(dsn)
		dest.Table, _ = o.need("table")
		dest.Deletes, _ = o.enum("deletes", deletes, DeletesHard)
		if dest.Driver != "" && dsn != "" && dest.Table != "" {
			ref = &tableRef{path: path, line: o.lineOf("table")}
		}
	case DestServiceBus:
		dest.BatchSize = o.integer("batch_size", DefaultBusBatchSize, 1)
		dest.Entity, _ = o.need("entity")
		dest.SessionKey = o.boolean("session_key")
		hasConn, hasNS := o.present("connection_string"), o.present("namespace")
		switch {
		case hasConn && hasNS:
			o.errorf("namespace", "give either connection_string or namespace, not both")
		case !hasConn && !hasNS:
			o.missing("connection_string", "required: give connection_string, or namespace to connect with an Azure identity")
		case hasConn:
			if cs, ok := o.need("connection_string"); ok {
				// Checked without quoting: the value is a secret.
				if !strings.Contains(strings.ToLower(cs), "endpoint=") {
					o.errorf("connection_string", "is not a Service Bus connection string (no Endpoint=sb://...)")
				}
				dest.ConnectionString = Secret(cs)
			}
		default:
			if ns, ok := o.need("namespace"); ok {
				if strings.ContainsAny(ns, "/;= \t") {
					o.errorf("namespace", "must be a host name such as x.servicebus.windows.net (a connection string goes in connection_string)")
				} else {
					dest.Namespace = ns
				}
			}
		}
	case DestHTTP:
		dest.BatchSize = o.integer("batch_size", DefaultHTTPBatchSize, 1)
		if u, ok := o.need("url"); ok {
			// Not quoted: URLs may carry credentials or tokens.
			if httpURLOK(u) {
				dest.URL = u
			} else {
				o.errorf("url", "must be an absolute http:// or https:// URL")
			}
		}
		dest.Timeout = o.duration("timeout", DefaultHTTPTimeout)
		dest.MaxInFlight = o.integer("max_in_flight", DefaultHTTPMaxInFlight, 1)
		if s, ok := o.optional("secret"); ok {
			dest.Secret = Secret(s)
		}
		// Check the headers that did decode even if others did not: all
		// problems at once.
		h, lines, _ := o.stringMap("headers")
		if h != nil {
			d.checkHeaders(o, h, lines)
			dest.Headers = h
		}
	}
	return dest, o.lineOf("name"), ref
}

// reservedHeaders are set by the http sink itself (DESIGN §3.4).
var reservedHeaders = []string{"Content-Type", "Content-Length", "Host", "Idempotency-Key", "X-Sluice-Timestamp", "X-Sluice-Signature"}

// checkHeaders rejects header names the sink owns or HTTP forbids. Values are
// never quoted: an Authorization header is a credential.
func (d *decoder) checkHeaders(o *obj, h map[string]string, lines map[string]int) {
	names := make([]string, 0, len(h))
	for k := range h {
		names = append(names, k)
	}
	slices.Sort(names)
	canon := map[string]string{}
	for _, k := range names {
		line := lines[k]
		path := joinPath(o.keyPath("headers"), k)
		c := textproto.CanonicalMIMEHeaderKey(k)
		switch {
		case !tokenOK(k):
			d.errorf(line, path, "is not a valid HTTP header name")
		case slices.Contains(reservedHeaders, c):
			d.errorf(line, path, "is set by sluice and cannot be overridden")
		case canon[c] != "":
			d.errorf(line, path, "repeats header %s (names are case-insensitive)", canon[c])
		case strings.ContainsAny(h[k], "\r\n\x00"):
			d.errorf(line, path, "header value must not contain line breaks or NUL")
		}
		canon[c] = k
	}
}

// sameTable rejects a second destination writing the table of an earlier
// one: their upserts and tombstones would fight.
func (d *decoder) sameTable(tables map[string]tableRef, dest Destination, ref tableRef) {
	table := dest.Table
	if dest.Driver != DriverPostgres {
		// SQL Server and SQLite fold identifier case; Postgres keeps a quoted one.
		table = strings.ToLower(table)
	}
	key := dest.Driver + "\x00" + dest.DSN.Reveal() + "\x00" + table
	first, dup := tables[key]
	if !dup {
		tables[key] = ref
		return
	}
	// The DSN is a secret: name the destinations, never the DSN.
	d.errorf(ref.line, ref.path+".table", "writes the same SQL table (%s %q, same dsn) as %s (pipeline %q, destination %q, line %d); give each destination its own table",
		dest.Driver, dest.Table, first.path, first.pipeline, first.dest, first.line)
}

// nameOK is the rule for pipeline and destination names: they appear in blob
// paths, queue messages and event ids.
func nameOK(s string) bool {
	if len(s) < 1 || len(s) > 48 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '-') {
			return false
		}
	}
	return true
}

// containerProblem applies Azure's container naming rules, so a bad name
// fails here instead of at the first storage call.
func containerProblem(s string) string {
	if len(s) < 3 || len(s) > 63 {
		return "it must be 3 to 63 characters"
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '-') {
			return "use only a-z, 0-9 and -"
		}
	}
	if s[0] == '-' || s[len(s)-1] == '-' || strings.Contains(s, "--") {
		return "it must start and end with a letter or digit and not contain --"
	}
	return ""
}

func httpURLOK(s string) bool {
	u, err := url.Parse(s)
	return err == nil && (u.Scheme == "http" || u.Scheme == "https") && u.Host != "" && u.Opaque == ""
}

// tokenOK reports whether s is an HTTP token (RFC 9110 §5.6.2), the syntax
// of header names.
func tokenOK(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0 {
			continue
		}
		return false
	}
	return true
}
