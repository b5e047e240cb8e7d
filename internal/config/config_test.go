package config

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"reflect"
	"strings"
	"testing"
	"time"
)

// envOf returns a lookup over a fixed map, so tests never read the real
// environment and can run in parallel.
func envOf(m map[string]string) func(string) (string, bool) {
	return func(k string) (string, bool) {
		v, ok := m[k]
		return v, ok
	}
}

// lines joins YAML lines so that a test can count line numbers: the n-th
// argument is line n.
func lines(ls ...string) []byte { return []byte(strings.Join(ls, "\n") + "\n") }

// head is a valid pipeline without destinations: lines 1-7, so the first
// destination starts at line 8.
func head(more ...string) []byte {
	return lines(append([]string{
		"pipelines:",             // 1
		"  - name: p",            // 2
		"    source:",            // 3
		"      type: sharepoint", // 4
		"      site: s",          // 5
		"      list: l",          // 6
		"    destinations:",      // 7
	}, more...)...)
}

// goodYAML is DESIGN §3.2's example with concrete values.
const goodYAML = `storage:
  container: sluice-prod
pipelines:
  - name: contracts
    source:
      type: sharepoint
      site: contoso.sharepoint.com:/sites/legal
      list: Contracts
      fields: [Title, Status, Amount]
      graph_url: https://graph.microsoft.com/v1.0/
      auth:
        type: client_secret
        tenant_id: 72f988bf-86f1-41af-91ab-2d7cd011db47
        client_id: 0f1c2d3e-4b5a-6978-8a9b-0c1d2e3f4a5b
        client_secret: ${SP_CLIENT_SECRET}
    destinations:
      - name: warehouse
        type: sql
        driver: sqlserver
        dsn: ${SQL_DSN}
        table: contracts
        deletes: soft
        on_error: halt
      - name: bus
        type: servicebus
        connection_string: ${SB_CONN}
        entity: contract-changes
        session_key: true
      - name: hook
        type: http
        url: https://example.com/hooks/contracts
        batch_size: 50
        timeout: 2m
        max_in_flight: 4
        secret: ${HOOK_SECRET}
        headers: {X-Team: legal, X-Env: "sluice-${DEPLOY_ENV}"}
  - name: orders
    source:
      type: sharepoint
      site: contoso.sharepoint.com:/sites/ops
      list: Orders
      auth: {type: bearer, token: "${GRAPH_TOKEN}"}
    destinations:
      - name: lake
        type: sql
        driver: postgres
        dsn: postgres://sluice:pw@db:5432/sluice
        table: orders
        batch_size: 1000
      - name: bus
        type: servicebus
        namespace: contoso.servicebus.windows.net
        entity: orders
`

func goodEnv() map[string]string {
	return map[string]string{
		"SP_CLIENT_SECRET": "sp-secret-value",
		"SQL_DSN":          "sqlserver://u:p@host?database=legal",
		"SB_CONN":          "Endpoint=sb://contoso.servicebus.windows.net/;SharedAccessKeyName=k;SharedAccessKey=v",
		"HOOK_SECRET":      "hook-secret-value",
		"DEPLOY_ENV":       "prod",
		"GRAPH_TOKEN":      "graph-token-value",
	}
}

func TestParseGood(t *testing.T) {
	t.Parallel()
	cfg, err := Parse("sluice.yaml", []byte(goodYAML), envOf(goodEnv()))
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	want := &Config{
		File:    "sluice.yaml",
		Storage: Storage{Container: "sluice-prod"},
		Pipelines: []Pipeline{
			{
				Name: "contracts",
				Source: Source{
					Type:     "sharepoint",
					Site:     "contoso.sharepoint.com:/sites/legal",
					List:     "Contracts",
					Fields:   []string{"Title", "Status", "Amount"},
					GraphURL: "https://graph.microsoft.com/v1.0",
					Auth: Auth{
						Type:         "client_secret",
						TenantID:     "72f988bf-86f1-41af-91ab-2d7cd011db47",
						ClientID:     "0f1c2d3e-4b5a-6978-8a9b-0c1d2e3f4a5b",
						ClientSecret: "sp-secret-value",
					},
				},
				Destinations: []Destination{
					{Name: "warehouse", Type: "sql", OnError: "halt", BatchSize: 5000,
						Driver: "sqlserver", DSN: Secret(goodEnv()["SQL_DSN"]), Table: "contracts", Deletes: "soft"},
					{Name: "bus", Type: "servicebus", OnError: "deadletter", BatchSize: 100,
						ConnectionString: Secret(goodEnv()["SB_CONN"]), Entity: "contract-changes", SessionKey: true},
					{Name: "hook", Type: "http", OnError: "deadletter", BatchSize: 50,
						URL: "https://example.com/hooks/contracts", Timeout: 2 * time.Minute, MaxInFlight: 4,
						Secret: "hook-secret-value", Headers: map[string]string{"X-Team": "legal", "X-Env": "sluice-prod"}},
				},
			},
			{
				Name: "orders",
				Source: Source{
					Type: "sharepoint", Site: "contoso.sharepoint.com:/sites/ops", List: "Orders",
					GraphURL: DefaultGraphURL,
					Auth:     Auth{Type: "bearer", Token: "graph-token-value"},
				},
				Destinations: []Destination{
					{Name: "lake", Type: "sql", OnError: "deadletter", BatchSize: 1000,
						Driver: "postgres", DSN: "postgres://sluice:pw@db:5432/sluice", Table: "orders", Deletes: "hard"},
					{Name: "bus", Type: "servicebus", OnError: "deadletter", BatchSize: 100,
						Namespace: "contoso.servicebus.windows.net", Entity: "orders"},
				},
			},
		},
	}
	if !reflect.DeepEqual(cfg, want) {
		t.Errorf("Parse mismatch\n got: %#v\nwant: %#v", cfg, want)
		gj, _ := json.MarshalIndent(cfg, "", " ")
		wj, _ := json.MarshalIndent(want, "", " ")
		t.Logf("got JSON:\n%s\nwant JSON:\n%s", gj, wj)
	}
}

func TestParseDefaultsAndExpansion(t *testing.T) {
	t.Parallel()
	data := lines(
		"pipelines:",
		"  - name: p",
		"    source:",
		"      type: sharepoint",
		"      site: ${SITE}",
		"      list: price$ and $$HOME and $${NOT_EXPANDED}",
		"      graph_url: http://127.0.0.1:8080/v1.0//",
		"    destinations:",
		"      - &sql {name: db, type: sql, driver: sqlite, dsn: 'file:x.db', table: t}",
		"      - {name: bus, type: servicebus, namespace: ns.servicebus.windows.net, entity: q}",
		"      - name: hook",
		"        type: http",
		"        url: https://h.example/${PATH_PART}",
		"        batch_size: ${BATCH}",
		"  - name: q",
		"    source: {type: sharepoint, site: s, list: l, auth: {type: managed_identity}}",
	)
	cfg, err := Parse("d.yaml", data, envOf(map[string]string{"SITE": "x.sharepoint.com:/sites/a", "PATH_PART": "in", "BATCH": "7"}))
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	if cfg.Storage.Container != "sluice" {
		t.Errorf("container = %q, want default sluice", cfg.Storage.Container)
	}
	src := cfg.Pipelines[0].Source
	if src.Site != "x.sharepoint.com:/sites/a" {
		t.Errorf("site = %q", src.Site)
	}
	if want := "price$ and $HOME and ${NOT_EXPANDED}"; src.List != want {
		t.Errorf("list = %q, want %q", src.List, want)
	}
	if src.GraphURL != "http://127.0.0.1:8080/v1.0" {
		t.Errorf("graph_url = %q, want trailing slashes stripped", src.GraphURL)
	}
	if src.Auth.Type != "default" || src.Fields != nil {
		t.Errorf("auth/fields defaults: %+v %v", src.Auth, src.Fields)
	}
	if a := cfg.Pipelines[1].Source.Auth; a.Type != "managed_identity" || a.ClientID != "" {
		t.Errorf("managed identity auth = %+v", a)
	}
	ds := cfg.Pipelines[0].Destinations
	if d := ds[0]; d.BatchSize != 5000 || d.Deletes != "hard" || d.OnError != "deadletter" {
		t.Errorf("sql defaults: %+v", d)
	}
	if d := ds[1]; d.BatchSize != 100 || d.OnError != "deadletter" || d.SessionKey {
		t.Errorf("servicebus defaults: %+v", d)
	}
	if d := ds[2]; d.BatchSize != 7 || d.Timeout != 30*time.Second || d.MaxInFlight != 1 ||
		d.OnError != "deadletter" || d.URL != "https://h.example/in" || d.Secret != "" || d.Headers != nil {
		t.Errorf("http defaults: %+v", d)
	}
}

func TestParseErrors(t *testing.T) {
	t.Parallel()
	httpDest := []string{"      - name: d", "        type: http", "        url: https://x.example"} // lines 8-10
	tests := []struct {
		name    string
		data    []byte
		env     map[string]string
		want    []string // each must appear in the error text
		notWant []string // none may appear
	}{
		{
			name: "unknown root key",
			data: lines("pipelins:", "  - name: p"),
			want: []string{
				`bad.yaml:1: pipelins: unknown key (did you mean "pipelines"?)`,
			},
			// The typo is the one problem: "pipelines: required" would be noise.
			notWant: []string{"pipelines: required"},
		},
		{
			name: "unknown storage key",
			data: append(lines("storage:", "  contianer: x"), head(httpDest...)...),
			want: []string{`bad.yaml:2: storage.contianer: unknown key (did you mean "container"?)`},
		},
		{
			name: "unknown pipeline and source keys",
			data: lines(
				"pipelines:",
				"  - name: p",
				"    sources: {}",
				"    source:",
				"      type: sharepoint",
				"      site: s",
				"      lst: l",
				"      graphURL: https://g.example",
			),
			want: []string{
				`bad.yaml:3: pipelines[0].sources: unknown key (did you mean "source"?)`,
				`bad.yaml:7: pipelines[0].source.lst: unknown key (did you mean "list"?)`,
				`bad.yaml:8: pipelines[0].source.graphURL: unknown key (did you mean "graph_url"?)`,
			},
		},
		{
			name: "unknown auth key",
			data: lines(
				"pipelines:",
				"  - name: p",
				"    source:",
				"      type: sharepoint",
				"      site: s",
				"      list: l",
				"      auth:",
				"        type: bearer",
				"        tokn: abc",
			),
			want: []string{
				`bad.yaml:9: pipelines[0].source.auth.tokn: unknown key (did you mean "token"?)`,
			},
		},
		{
			name: "auth key of another auth type",
			data: lines(
				"pipelines:",
				"  - name: p",
				"    source:",
				"      type: sharepoint",
				"      site: s",
				"      list: l",
				"      auth:",
				"        type: bearer",
				"        token: t",
				"        client_id: c",
			),
			want: []string{`bad.yaml:10: pipelines[0].source.auth.client_id: not used by auth type "bearer" (it takes token)`},
		},
		{
			name: "auth settings without a type",
			data: lines(
				"pipelines:",
				"  - name: p",
				"    source:",
				"      type: sharepoint",
				"      site: s",
				"      list: l",
				"      auth:",
				"        tenant_id: t",
			),
			want: []string{`bad.yaml:8: pipelines[0].source.auth.tenant_id: not used by auth type "default"`},
		},
		{
			name: "auth required fields",
			data: lines(
				"pipelines:",
				"  - name: p",
				"    source:",
				"      type: sharepoint",
				"      site: s",
				"      list: l",
				"      auth: {type: client_certificate, client_id: c}",
				"  - name: q",
				"    source:",
				"      type: sharepoint",
				"      site: s",
				"      list: l",
				"      auth: {type: client_secret, tenant_id: t, client_id: c}",
			),
			want: []string{
				`bad.yaml:7: pipelines[0].source.auth.tenant_id: required`,
				`bad.yaml:7: pipelines[0].source.auth.certificate: required`,
				`bad.yaml:13: pipelines[1].source.auth.client_secret: required`,
			},
		},
		{
			name: "unknown destination key",
			data: head("      - name: d", "        type: sql", "        drver: postgres", "        dsn: x", "        table: t"),
			want: []string{
				`bad.yaml:10: pipelines[0].destinations[0].drver: unknown key (did you mean "driver"?)`,
			},
			notWant: []string{"driver: required"},
		},
		{
			name: "key of another destination type",
			data: head("      - name: d", "        type: sql", "        driver: sqlite", "        dsn: x", "        table: t",
				"        url: https://x.example", "        session_key: true"),
			want: []string{
				`bad.yaml:13: pipelines[0].destinations[0].url: not a setting of sql destinations (it belongs to type http)`,
				`bad.yaml:14: pipelines[0].destinations[0].session_key: not a setting of sql destinations (it belongs to type servicebus)`,
			},
		},
		{
			name: "missing environment variable",
			data: head("      - name: d", "        type: sql", "        driver: postgres", "        dsn: ${SQL_DSN}", "        table: t"),
			want: []string{`bad.yaml:11: pipelines[0].destinations[0].dsn: environment variable SQL_DSN is not set`},
		},
		{
			name: "missing environment variables in several places",
			data: head("      - name: d", "        type: http", "        url: https://${HOST}/${PATH}"),
			env:  map[string]string{"PATH": "x"},
			want: []string{`bad.yaml:10: pipelines[0].destinations[0].url: environment variable HOST is not set`},
		},
		{
			name: "malformed variable reference",
			data: head("      - name: d", "        type: http", "        url: https://${HOST", "        secret: ${1X}"),
			want: []string{
				`bad.yaml:10: pipelines[0].destinations[0].url: unterminated ${ (write $$ for a literal $)`,
				`bad.yaml:11: pipelines[0].destinations[0].secret: invalid ${...} reference`,
			},
		},
		{
			name: "bad pipeline name",
			data: lines("pipelines:", "  - name: Contracts_1", "    source: {type: sharepoint, site: s, list: l}"),
			want: []string{`bad.yaml:2: pipelines[0].name: "Contracts_1" is not a valid pipeline name: use 1 to 48 of a-z, 0-9 and -`},
		},
		{
			name: "pipeline name too long",
			data: lines("pipelines:", "  - name: "+strings.Repeat("a", 49), "    source: {type: sharepoint, site: s, list: l}"),
			want: []string{`bad.yaml:2: pipelines[0].name: "aaaa`},
		},
		{
			name: "bad destination name",
			data: head("      - name: my hook", "        type: http", "        url: https://x.example"),
			want: []string{`bad.yaml:8: pipelines[0].destinations[0].name: "my hook" is not a valid destination name`},
		},
		{
			name: "duplicate pipeline names",
			data: lines(
				"pipelines:",
				"  - name: p",
				"    source: {type: sharepoint, site: s, list: l}",
				"  - source: {type: sharepoint, site: s, list: l}",
				"    name: p",
			),
			want: []string{`bad.yaml:5: pipelines[1].name: duplicate pipeline name "p" (first at line 2)`},
		},
		{
			name: "duplicate destination names",
			data: head(
				"      - {name: d, type: http, url: https://a.example}",
				"      - {name: e, type: http, url: https://b.example}",
				"      - {name: d, type: http, url: https://c.example}",
			),
			want: []string{`bad.yaml:10: pipelines[0].destinations[2].name: duplicate destination name "d" in this pipeline (first at line 8)`},
		},
		{
			name: "same destination name in two pipelines is fine but same table is not",
			data: lines(
				"pipelines:",
				"  - name: a",
				"    source: {type: sharepoint, site: s, list: l}",
				"    destinations:",
				"      - {name: db, type: sql, driver: postgres, dsn: 'postgres://h/db', table: items}",
				"  - name: b",
				"    source: {type: sharepoint, site: s, list: l2}",
				"    destinations:",
				"      - name: db",
				"        type: sql",
				"        driver: postgres",
				"        dsn: ${DSN}",
				"        table: items",
			),
			env: map[string]string{"DSN": "postgres://h/db"},
			want: []string{
				`bad.yaml:13: pipelines[1].destinations[0].table: writes the same SQL table (postgres "items", same dsn) as pipelines[0].destinations[0] (pipeline "a", destination "db", line 5)`,
			},
		},
		{
			name: "missing required source fields",
			data: lines("pipelines:", "  - name: p", "    source:", "      fields: [Title]"),
			want: []string{
				`bad.yaml:3: pipelines[0].source.type: required`,
				`bad.yaml:3: pipelines[0].source.site: required`,
				`bad.yaml:3: pipelines[0].source.list: required`,
			},
		},
		{
			name: "missing source",
			data: lines("pipelines:", "  - name: p"),
			want: []string{`bad.yaml:2: pipelines[0].source: required`},
		},
		{
			name: "empty required value",
			data: lines("pipelines:", "  - name: p", "    source:", "      type: sharepoint", "      site: ''", "      list: ${LIST}"),
			env:  map[string]string{"LIST": ""},
			want: []string{
				`bad.yaml:5: pipelines[0].source.site: must not be empty`,
				`bad.yaml:6: pipelines[0].source.list: must not be empty`,
			},
		},
		{
			name: "missing required destination fields",
			data: head(
				"      - name: a", // 8
				"        type: sql",
				"      - name: b", // 10
				"        type: servicebus",
				"      - name: c", // 12
				"        type: http",
				"      - type: http", // 14
				"        url: https://x.example",
				"      - name: e", // 16
			),
			want: []string{
				`bad.yaml:8: pipelines[0].destinations[0].driver: required: one of postgres, sqlserver, sqlite`,
				`bad.yaml:8: pipelines[0].destinations[0].dsn: required`,
				`bad.yaml:8: pipelines[0].destinations[0].table: required`,
				`bad.yaml:10: pipelines[0].destinations[1].entity: required`,
				`bad.yaml:10: pipelines[0].destinations[1].connection_string: required: give connection_string, or namespace`,
				`bad.yaml:12: pipelines[0].destinations[2].url: required`,
				`bad.yaml:14: pipelines[0].destinations[3].name: required`,
				`bad.yaml:16: pipelines[0].destinations[4].type: required: one of sql, servicebus, http`,
			},
		},
		{
			name: "servicebus with both connection forms",
			data: head("      - name: b", "        type: servicebus", "        entity: q",
				"        connection_string: Endpoint=sb://x/", "        namespace: x.servicebus.windows.net"),
			want: []string{`bad.yaml:12: pipelines[0].destinations[0].namespace: give either connection_string or namespace, not both`},
		},
		{
			name: "bad enums",
			data: lines(
				"pipelines:",
				"  - name: p",
				"    source:",
				"      type: onedrive",
				"      site: s",
				"      list: l",
				"      auth: {type: clientsecret, tenant_id: t, client_id: c, client_secret: x}",
				"    destinations:",
				"      - name: d",
				"        type: sql",
				"        driver: postgresql",
				"        dsn: x",
				"        table: t",
				"        deletes: sometimes",
				"        on_error: ignore",
				"      - {name: e, type: webhook}",
			),
			want: []string{
				`bad.yaml:4: pipelines[0].source.type: "onedrive" is not one of sharepoint`,
				`bad.yaml:7: pipelines[0].source.auth.type: "clientsecret" is not one of default, client_secret, client_certificate, managed_identity, bearer (did you mean "client_secret"?)`,
				`bad.yaml:11: pipelines[0].destinations[0].driver: "postgresql" is not one of postgres, sqlserver, sqlite (did you mean "postgres"?)`,
				`bad.yaml:14: pipelines[0].destinations[0].deletes: "sometimes" is not one of hard, soft`,
				`bad.yaml:15: pipelines[0].destinations[0].on_error: "ignore" is not one of deadletter, halt`,
				`bad.yaml:16: pipelines[0].destinations[1].type: "webhook" is not one of sql, servicebus, http`,
			},
		},
		{
			name: "bad durations",
			data: head(
				"      - {name: a, type: http, url: https://x.example, timeout: 30}",
				"      - {name: b, type: http, url: https://x.example, timeout: -1s}",
				"      - {name: c, type: http, url: https://x.example, timeout: soon}",
			),
			want: []string{
				`bad.yaml:8: pipelines[0].destinations[0].timeout: "30" is not a duration: write a number with a unit, such as 30s, 2m or 1m30s`,
				`bad.yaml:9: pipelines[0].destinations[1].timeout: must be positive, got "-1s"`,
				`bad.yaml:10: pipelines[0].destinations[2].timeout: "soon" is not a duration`,
			},
		},
		{
			name: "bad numbers and booleans",
			data: head(
				"      - {name: a, type: http, url: https://x.example, batch_size: 0, max_in_flight: many}",
				"      - {name: b, type: servicebus, namespace: n, entity: q, session_key: yes, batch_size: 1.5}",
			),
			want: []string{
				`bad.yaml:8: pipelines[0].destinations[0].batch_size: must be at least 1, got 0`,
				`bad.yaml:8: pipelines[0].destinations[0].max_in_flight: expected an integer, got "many"`,
				`bad.yaml:9: pipelines[0].destinations[1].session_key: expected true or false, got "yes"`,
				`bad.yaml:9: pipelines[0].destinations[1].batch_size: expected an integer, got "1.5"`,
			},
		},
		{
			name: "wrong-typed values",
			data: lines(
				"pipelines:",
				"  - name: p",
				"    source:",
				"      type: sharepoint",
				"      site: [a, b]",
				"      list: {x: y}",
				"      fields: Title",
				"      auth: bearer",
				"    destinations:",
				"      - name: d",
				"        type: http",
				"        url: https://x.example",
				"        headers: [X-Team]",
				"      - just-a-string",
			),
			want: []string{
				`bad.yaml:5: pipelines[0].source.site: expected a string, got a list`,
				`bad.yaml:6: pipelines[0].source.list: expected a string, got a mapping`,
				`bad.yaml:7: pipelines[0].source.fields: expected a list, got a string`,
				`bad.yaml:8: pipelines[0].source.auth: expected a mapping, got a string`,
				`bad.yaml:13: pipelines[0].destinations[0].headers: expected a mapping, got a list`,
				`bad.yaml:14: pipelines[0].destinations[1]: expected a mapping, got a string`,
			},
		},
		{
			name: "wrong-typed list items",
			data: lines("pipelines:", "  - name: p", "    source:", "      type: sharepoint", "      site: s", "      list: l",
				"      fields:", "        - Title", "        - [Nested]", "        -"),
			want: []string{
				`bad.yaml:9: pipelines[0].source.fields[1]: expected a string, got a list`,
				`bad.yaml:10: pipelines[0].source.fields[2]: expected a string, got nothing (null)`,
			},
		},
		{
			name: "pipelines is not a list",
			data: lines("pipelines:", "  name: p"),
			want: []string{`bad.yaml:1: pipelines: expected a list, got a mapping`},
		},
		{
			name: "no pipelines",
			data: lines("storage: {container: abc}", "pipelines: []"),
			want: []string{`bad.yaml:2: pipelines: at least one pipeline is required`},
		},
		{
			name: "empty file",
			data: []byte(""),
			want: []string{`bad.yaml:1: pipelines: the file is empty; at least one pipeline is required`},
		},
		{
			name: "only comments",
			data: lines("# nothing here", "# yet"),
			want: []string{`bad.yaml:1: pipelines: the file is empty`},
		},
		{
			name: "null document",
			data: lines("---", "~"),
			want: []string{`bad.yaml:2: pipelines: the file is empty`},
		},
		{
			name: "not a mapping",
			data: lines("- a", "- b"),
			want: []string{`bad.yaml:1: expected a mapping, got a list`},
		},
		{
			name: "invalid YAML",
			data: lines("pipelines:", "  - name: p", "    source: {type: sharepoint", "  - name: q"),
			want: []string{`bad.yaml:3: invalid YAML: did not find expected ',' or '}'`},
		},
		{
			name: "invalid YAML on the first line",
			data: []byte("pipelines: [a, b"),
			want: []string{`bad.yaml:1: invalid YAML: did not find expected ',' or ']'`},
		},
		{
			name: "invalid YAML bad byte",
			data: lines("pipelines:", "  - name: p", "  - name: \x01"),
			want: []string{`bad.yaml:3: invalid YAML: control characters are not allowed`},
		},
		{
			name: "invalid YAML unknown anchor",
			data: lines("pipelines:", "  - name: p", "  - *nope"),
			want: []string{`bad.yaml:3: invalid YAML: unknown anchor 'nope' referenced`},
		},
		{
			name: "invalid YAML unclosed quote",
			data: lines("pipelines:", "  - name: p", "    source: {type: 'sharepoint}"),
			want: []string{`bad.yaml:3: invalid YAML: found unexpected end of stream`},
		},
		{
			name: "invalid YAML indentation",
			data: lines("pipelines:", "  - name: p", "     source: x", "    list: y"),
			want: []string{`bad.yaml:3: invalid YAML: mapping values are not allowed in this context`},
		},
		{
			name: "two documents",
			data: append(head(httpDest...), lines("---", "pipelines: []")...),
			want: []string{`bad.yaml:11: the file holds more than one YAML document`},
		},
		{
			name: "empty second document is fine, a null first one is not",
			data: lines("---", "", "---", "pipelines: []", "---"),
			want: []string{
				`bad.yaml:3: the file holds more than one YAML document`,
				`bad.yaml:1: pipelines: the file is empty`,
			},
		},
		{
			name: "duplicate key",
			data: head("      - name: d", "        type: http", "        url: https://x.example", "        url: https://y.example"),
			want: []string{`bad.yaml:11: pipelines[0].destinations[0].url: duplicate key (first at line 10)`},
		},
		{
			name: "merge key",
			data: head("      - name: d", "        <<: {type: http}", "        url: https://x.example"),
			want: []string{`bad.yaml:9: pipelines[0].destinations[0].<<: YAML merge keys are not supported`},
		},
		{
			name: "bad urls and container",
			data: append(lines("storage:", "  container: Sluice_Logs"),
				lines("pipelines:", "  - name: p", "    source: {type: sharepoint, site: s, list: l, graph_url: graph.microsoft.com}",
					"    destinations:", "      - {name: d, type: http, url: 'ftp://x.example/in'}")...),
			want: []string{
				`bad.yaml:2: storage.container: "Sluice_Logs" is not a valid container name`,
				`bad.yaml:5: pipelines[0].source.graph_url: must be an absolute http:// or https:// URL`,
				`bad.yaml:7: pipelines[0].destinations[0].url: must be an absolute http:// or https:// URL`,
			},
		},
		{
			name: "access token over plain http to a remote host",
			data: lines("pipelines:", "  - name: p",
				"    source: {type: sharepoint, site: s, list: l, graph_url: 'http://graph.example/v1.0', auth: {type: bearer, token: tok-marker}}",
				"    destinations:", "      - {name: d, type: http, url: 'https://x.example/in'}"),
			want: []string{`bad.yaml:3: pipelines[0].source.graph_url: plain http would carry the access token in clear text; use https (plain http is allowed only to a simulator on this machine: 127.0.0.1, localhost or [::1])`},
		},
		{
			name: "bad headers",
			data: head("      - name: d", "        type: http", "        url: https://x.example",
				"        headers: {Content-Type: text/plain, 'Bad Name': x, x-team: a, X-Team: b}"),
			want: []string{
				`bad.yaml:11: pipelines[0].destinations[0].headers.Content-Type: is set by sluice and cannot be overridden`,
				`bad.yaml:11: pipelines[0].destinations[0].headers.Bad Name: is not a valid HTTP header name`,
				`bad.yaml:11: pipelines[0].destinations[0].headers.x-team: repeats header X-Team`,
			},
		},
		{
			name: "bad headers in block style",
			data: head("      - name: d", "        type: http", "        url: https://x.example",
				"        headers:",             // 11
				"          X-Ok: fine",         // 12
				"          Idempotency-Key: x", // 13
				"          X-Ok: again",        // 14
				"          X-Null:",            // 15
			),
			want: []string{
				`bad.yaml:13: pipelines[0].destinations[0].headers.Idempotency-Key: is set by sluice and cannot be overridden`,
				`bad.yaml:14: pipelines[0].destinations[0].headers.X-Ok: duplicate key (first at line 12)`,
				`bad.yaml:15: pipelines[0].destinations[0].headers.X-Null: expected a string, got nothing (null)`,
			},
		},
		{
			name: "empty fields list and duplicate field",
			data: lines("pipelines:",
				"  - {name: p, source: {type: sharepoint, site: s, list: l, fields: []}}",
				"  - {name: q, source: {type: sharepoint, site: s, list: l, fields: [A, B, A]}}"),
			want: []string{
				`bad.yaml:2: pipelines[0].source.fields: must list at least one field`,
				`bad.yaml:3: pipelines[1].source.fields: field "A" is listed twice`,
			},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			cfg, err := Parse("bad.yaml", tc.data, envOf(tc.env))
			if err == nil {
				t.Fatalf("Parse succeeded, want errors %q; config: %+v", tc.want, cfg)
			}
			if cfg != nil {
				t.Errorf("Parse returned a config with an error")
			}
			var list Errors
			if !errors.As(err, &list) {
				t.Fatalf("error is %T, want Errors", err)
			}
			for _, e := range list {
				if e.File != "bad.yaml" || e.Line < 1 {
					t.Errorf("error without file or line: %q", e.Error())
				}
			}
			text := err.Error()
			for _, w := range tc.want {
				if !strings.Contains(text, w) {
					t.Errorf("missing %q in:\n%s", w, text)
				}
			}
			for _, w := range tc.notWant {
				if strings.Contains(text, w) {
					t.Errorf("unexpected %q in:\n%s", w, text)
				}
			}
		})
	}
}

func TestParseCollectsAllErrorsInLineOrder(t *testing.T) {
	t.Parallel()
	data := head(
		"      - name: d", // 8
		"        type: sql",
		"        driver: mysql", // 10
		"        tabel: t",      // 11
		"      - name: D",       // 12
		"        type: http",
		"        url: https://x.example",
		"        timeout: 5", // 15
	)
	_, err := Parse("bad.yaml", data, nil)
	var list Errors
	if !errors.As(err, &list) {
		t.Fatalf("error %v is not Errors", err)
	}
	var got []string
	for _, e := range list {
		got = append(got, fmt.Sprintf("%d %s", e.Line, e.Path))
	}
	want := []string{
		"8 pipelines[0].destinations[0].dsn",
		"8 pipelines[0].destinations[0].table",
		"10 pipelines[0].destinations[0].driver",
		"11 pipelines[0].destinations[0].tabel",
		"12 pipelines[0].destinations[1].name",
		"15 pipelines[0].destinations[1].timeout",
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("errors:\n got %q\nwant %q\n%v", got, want, err)
	}
	// Each *Error is reachable through errors.As on the joined error.
	var one *Error
	if !errors.As(err, &one) || one.Line != 8 {
		t.Errorf("errors.As(*Error) = %v", one)
	}
}

func TestSecretsNeverLeak(t *testing.T) {
	t.Parallel()
	const (
		sp   = "SPSECRET-aaaaaaaaaaaa"
		tok  = "TOKEN-bbbbbbbbbbbbbb"
		dsn  = "DSN-cccccccccccccccc"
		conn = "CONN-dddddddddddddd"
		hook = "HOOK-eeeeeeeeeeeeee"
	)
	secrets := []string{sp, tok, dsn, conn, hook}
	env := envOf(map[string]string{"SP": sp, "TOK": tok, "DSN": dsn, "CONN": conn, "HOOK": hook})

	good := lines(
		"pipelines:",
		"  - name: p",
		"    source:",
		"      type: sharepoint",
		"      site: s",
		"      list: l",
		"      auth: {type: client_secret, tenant_id: t, client_id: c, client_secret: '${SP}'}",
		"    destinations:",
		"      - {name: a, type: sql, driver: postgres, dsn: '${DSN}', table: t}",
		"      - {name: b, type: servicebus, connection_string: 'Endpoint=sb://x/;${CONN}', entity: q}",
		"      - {name: c, type: http, url: https://x.example, secret: '${HOOK}'}",
		"  - name: q",
		"    source: {type: sharepoint, site: s, list: l, auth: {type: bearer, token: '${TOK}'}}",
	)
	cfg, err := Parse("s.yaml", good, env)
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	if got := cfg.Pipelines[0].Destinations[0].DSN.Reveal(); got != dsn {
		t.Fatalf("Reveal = %q, want the real value", got)
	}

	var outputs []string
	for _, verb := range []string{"%v", "%+v", "%#v", "%s", "%q", "%x", "%d"} {
		outputs = append(outputs, fmt.Sprintf(verb, cfg), fmt.Sprintf(verb, *cfg), fmt.Sprintf(verb, cfg.Pipelines[0].Destinations[0].DSN))
	}
	js, err := json.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	outputs = append(outputs, string(js))
	var logs bytes.Buffer
	for _, h := range []slog.Handler{slog.NewTextHandler(&logs, nil), slog.NewJSONHandler(&logs, nil)} {
		l := slog.New(h)
		l.Info("loaded", "config", cfg, "pipeline", cfg.Pipelines[0], "dsn", cfg.Pipelines[0].Destinations[0].DSN,
			slog.Any("token", cfg.Pipelines[1].Source.Auth.Token))
	}
	outputs = append(outputs, logs.String())
	if !strings.Contains(logs.String(), "[redacted]") {
		t.Errorf("log output has no [redacted] marker:\n%s", logs.String())
	}

	// Bad files that put secrets in every awkward place.
	bad := [][]byte{
		// Same SQL table twice with a secret DSN.
		head("      - {name: a, type: sql, driver: postgres, dsn: '${DSN}', table: t}",
			"      - {name: b, type: sql, driver: postgres, dsn: '${DSN}', table: t}"),
		// Secrets written inline, next to malformed or missing references.
		head("      - {name: a, type: sql, driver: postgres, dsn: '"+dsn+"${', table: t}",
			"      - {name: b, type: sql, driver: postgres, dsn: '"+dsn+"${MISSING}', table: u}",
			"      - {name: c, type: http, url: https://x.example, secret: '"+hook+"${1}'}"),
		// A connection string that is not one, and a secret where a list is expected.
		head("      - {name: a, type: servicebus, connection_string: '${CONN}', entity: q}",
			"      - {name: b, type: servicebus, connection_string: ['"+conn+"'], entity: q}"),
		// Secrets under keys that are wrong for the type.
		head("      - {name: a, type: http, url: https://x.example, dsn: '${DSN}', connection_string: '"+conn+"'}",
			"      - {name: b, type: sql, driver: sqlite, dsn: x, table: t, secret: '"+hook+"'}"),
		lines("pipelines:", "  - {name: p, source: {type: sharepoint, site: s, list: l, auth: {type: bearer, token: '"+tok+"', client_secret: '${SP}'}}}"),
		lines("pipelines:", "  - {name: p, source: {type: sharepoint, site: s, list: l, auth: {type: default, client_secret: '"+sp+"'}}}"),
		// Secrets from the environment in non-secret keys with value checks.
		head("      - {name: a, type: http, url: '${HOOK}', timeout: '${TOK}', batch_size: '${DSN}', headers: {Authorization: 'x\r\n${TOK}'}}"),
		head("      - {name: a, type: sql, driver: '${DSN}', dsn: x, table: t, deletes: '${TOK}'}"),
		// An unterminated quote after a secret.
		lines("pipelines:", "  - name: p", "    source: {type: sharepoint, site: s, list: l, auth: {type: bearer, token: '"+tok),
	}
	for i, data := range bad {
		_, err := Parse("s.yaml", data, env)
		if err == nil {
			t.Errorf("bad file %d parsed without error", i)
			continue
		}
		outputs = append(outputs, err.Error())
	}

	for _, out := range outputs {
		for _, s := range secrets {
			if strings.Contains(out, s) {
				t.Errorf("secret %q leaked in:\n%s", s, out)
			}
		}
	}
}

func TestSecretFormatting(t *testing.T) {
	t.Parallel()
	s := Secret("hunter2")
	for _, tc := range []struct{ got, want string }{
		{s.String(), "[redacted]"},
		{Secret("").String(), ""},
		{fmt.Sprint(s), "[redacted]"},
		{fmt.Sprintf("%q", s), `"[redacted]"`},
		{fmt.Sprintf("%#v", s), `config.Secret("[redacted]")`},
		{s.LogValue().String(), "[redacted]"},
		{s.Reveal(), "hunter2"},
	} {
		if tc.got != tc.want {
			t.Errorf("got %q, want %q", tc.got, tc.want)
		}
	}
	for _, tc := range []struct {
		s    Secret
		want string
	}{{s, `"[redacted]"`}, {"", `""`}} {
		b, err := json.Marshal(tc.s)
		if err != nil || string(b) != tc.want {
			t.Errorf("json.Marshal(%v) = %s, %v; want %s", tc.s, b, err, tc.want)
		}
	}
}

func TestLookup(t *testing.T) {
	t.Parallel()
	cfg, err := Parse("sluice.yaml", []byte(goodYAML), envOf(goodEnv()))
	if err != nil {
		t.Fatal(err)
	}
	p, err := cfg.Pipeline("orders")
	if err != nil || p.Name != "orders" {
		t.Fatalf("Pipeline(orders) = %v, %v", p, err)
	}
	d, err := p.Destination("lake")
	if err != nil || d.Name != "lake" {
		t.Fatalf("Destination(lake) = %v, %v", d, err)
	}
	// The pointer is into the config, not a copy.
	if d != &cfg.Pipelines[1].Destinations[0] {
		t.Errorf("Destination returned a copy")
	}
	_, err = cfg.Pipeline("nope")
	if !errors.Is(err, ErrNotFound) || err.Error() != `pipeline "nope": not found in sluice.yaml (pipelines: contracts, orders)` {
		t.Errorf("Pipeline(nope) error = %v", err)
	}
	_, err = p.Destination("nope")
	if !errors.Is(err, ErrNotFound) || err.Error() != `destination "nope": not found in pipeline "orders" (destinations: lake, bus)` {
		t.Errorf("Destination(nope) error = %v", err)
	}
	_, err = (&Pipeline{Name: "x"}).Destination("y")
	if err == nil || !strings.Contains(err.Error(), "(destinations: none)") {
		t.Errorf("empty pipeline error = %v", err)
	}
}

func TestExampleFile(t *testing.T) {
	t.Parallel()
	const path = "../../sluice.example.yaml"
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	env := map[string]string{
		"SP_TENANT_ID":     "tenant",
		"SP_CLIENT_ID":     "client",
		"SP_CLIENT_SECRET": "secret",
		"SQL_DSN":          "sqlserver://u:p@h?database=d",
		"SB_CONN":          "Endpoint=sb://x.servicebus.windows.net/;SharedAccessKeyName=k;SharedAccessKey=v",
		"HOOK_SECRET":      "hook",
	}
	cfg, err := Parse(path, data, envOf(env))
	if err != nil {
		t.Fatalf("example does not parse:\n%v", err)
	}
	p, err := cfg.Pipeline("contracts")
	if err != nil {
		t.Fatal(err)
	}
	if len(p.Destinations) != 3 || p.Source.Auth.ClientSecret.Reveal() != "secret" {
		t.Errorf("unexpected example config: %+v", p)
	}
	// Without the environment, every placeholder is reported.
	_, err = Parse(path, data, nil)
	for name := range env {
		if err == nil || !strings.Contains(err.Error(), "environment variable "+name+" is not set") {
			t.Errorf("missing %s not reported: %v", name, err)
		}
	}
}

func TestLoad(t *testing.T) {
	t.Parallel()
	if _, err := Load("../../sluice.example.yaml"); err == nil {
		// It may pass only if the test environment happens to set every variable.
		t.Log("example loaded with the process environment")
	}
	_, err := Load("testdata-does-not-exist.yaml")
	if err == nil || !strings.Contains(err.Error(), "testdata-does-not-exist.yaml") {
		t.Errorf("Load of a missing file: %v", err)
	}
}

func TestExpand(t *testing.T) {
	t.Parallel()
	env := envOf(map[string]string{"A": "x", "B_2": "$y", "EMPTY": ""})
	for _, tc := range []struct {
		in, want string
		errs     int
	}{
		{"plain", "plain", 0},
		{"${A}", "x", 0},
		{"${A}${B_2}", "x$y", 0}, // no re-expansion of values
		{"a$${A}", "a${A}", 0},
		{"$$", "$", 0},
		{"$", "$", 0},
		{"a$b $ c$", "a$b $ c$", 0},
		{"${EMPTY}", "", 0},
		{"${MISSING}", "", 1},
		{"${A", "${A", 1},
		{"${}", "", 1},
		{"${A-B}", "", 1},
		{"${MISSING} ${ALSO}", " ", 2},
	} {
		got, errs := expand(tc.in, env)
		if got != tc.want || len(errs) != tc.errs {
			t.Errorf("expand(%q) = %q, %q; want %q with %d errors", tc.in, got, errs, tc.want, tc.errs)
		}
	}
}

func TestSuggest(t *testing.T) {
	t.Parallel()
	keys := []string{"name", "type", "driver", "dsn", "table", "url", "connection_string", "max_in_flight"}
	for _, tc := range []struct{ in, want string }{
		{"drver", "driver"},
		{"tabel", ""}, // a transposition is two edits: too far for a short key
		{"URL", "url"},
		{"max-in-flight", "max_in_flight"},
		{"conection_strin", "connection_string"},
		{"nmae", ""},
		{"colour", ""},
	} {
		if got := suggest(tc.in, keys); got != tc.want {
			t.Errorf("suggest(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

func FuzzParse(f *testing.F) {
	f.Add([]byte(goodYAML))
	if data, err := os.ReadFile("../../sluice.example.yaml"); err == nil {
		f.Add(data)
	}
	f.Add([]byte(""))
	f.Add([]byte("pipelines: [{name: a, source: {type: sharepoint, site: s, list: l}, destinations: [&d {name: x, type: http, url: 'http://h'}, *d]}]"))
	f.Add([]byte("a: &a [*a]"))
	f.Add([]byte("pipelines:\n  - name: ${X}\n    source: {<<: {type: sharepoint}}\n---\n"))
	f.Add([]byte("pipelines: [{name: p, destinations: [{type: sql, table: [1], dsn: {a: b}, batch_size: 99999999999999999999}]}]"))
	env := envOf(map[string]string{"X": "x", "SQL_DSN": "d", "SB_CONN": "Endpoint=sb://x/", "SP_CLIENT_SECRET": "s"})
	f.Fuzz(func(t *testing.T, data []byte) {
		cfg, err := Parse("f.yaml", data, env)
		if (cfg == nil) == (err == nil) {
			t.Fatalf("Parse returned config %v and error %v", cfg, err)
		}
		if err != nil {
			var list Errors
			if !errors.As(err, &list) || len(list) == 0 {
				t.Fatalf("error %T is not a non-empty Errors", err)
			}
			for _, e := range list {
				if e.File != "f.yaml" {
					t.Fatalf("error without file: %v", e)
				}
			}
			return
		}
		if len(cfg.Pipelines) == 0 {
			t.Fatalf("config without pipelines")
		}
	})
}

func ExampleParse() {
	data := []byte(`pipelines:
  - name: contracts
    source: {type: sharepoint, site: contoso.sharepoint.com:/sites/legal, list: Contracts}
    destinations:
      - name: warehouse
        type: sql
        drver: postgres
        dsn: ${SQL_DSN}
        table: contracts
`)
	_, err := Parse("sluice.yaml", data, func(string) (string, bool) { return "", false })
	fmt.Println(err)
	// Output:
	// sluice.yaml:7: pipelines[0].destinations[0].drver: unknown key (did you mean "driver"?)
	// sluice.yaml:8: pipelines[0].destinations[0].dsn: environment variable SQL_DSN is not set
}
