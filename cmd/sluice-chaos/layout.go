package main

import (
	"fmt"
	"path/filepath"
	"strings"
)

// Destination kinds.
const (
	kindPostgres = "postgres"
	kindSQLite   = "sqlite"
	kindHTTP     = "http"
)

// destSpec is one destination of a pipeline.
type destSpec struct {
	name  string
	kind  string
	table string // SQL kinds
}

// pipeSpec is one pipeline of the run.
type pipeSpec struct {
	name  string
	dests []destSpec
}

// pipelines are read from the one list, as a real deployment's are: their
// destinations share names (warehouse, hook) and write different tables of
// one PostgreSQL database and of one SQLite file. orders and audit both
// have a warehouse in PostgreSQL; orders' lite and mirror's warehouse share
// the SQLite file; every hook posts to the one receiver.
var pipelines = []pipeSpec{
	{name: "orders", dests: []destSpec{
		{name: "warehouse", kind: kindPostgres, table: "orders"},
		{name: "lite", kind: kindSQLite, table: "orders"},
		{name: "hook", kind: kindHTTP},
	}},
	{name: "audit", dests: []destSpec{
		{name: "warehouse", kind: kindPostgres, table: "audit"},
		{name: "hook", kind: kindHTTP},
	}},
	{name: "mirror", dests: []destSpec{
		{name: "warehouse", kind: kindSQLite, table: "mirror"},
		{name: "hook", kind: kindHTTP},
	}},
}

// replayed is the pipeline whose destinations the schedule replays while
// the others drain.
var replayed = pipelines[0]

func (p pipeSpec) destNames() []string {
	var out []string
	for _, d := range p.dests {
		out = append(out, d.name)
	}
	return out
}

func pipelineNames() []string {
	var out []string
	for _, p := range pipelines {
		out = append(out, p.name)
	}
	return out
}

func knownDestination(pipeline, dest string) bool {
	for _, p := range pipelines {
		if p.name != pipeline {
			continue
		}
		for _, d := range p.dests {
			if d.name == dest {
				return true
			}
		}
	}
	return false
}

// sqlitePath is the one SQLite file of the run.
func (s *suite) sqlitePath() string { return filepath.Join(s.dir, "chaos.db") }

// config is the pipelines file of the run.
func (s *suite) config() string {
	var b strings.Builder
	fmt.Fprintf(&b, "# written by sluice-chaos\nstorage:\n  container: %s\npipelines:\n", container)
	for _, p := range pipelines {
		fmt.Fprintf(&b, `  - name: %s
    source:
      type: sharepoint
      site: contoso.sharepoint.com:/sites/ops
      list: Orders
      graph_url: %q
      auth: {type: bearer, token: %q}
    destinations:
`, p.name, s.sim.graphURL, graphToken)
		for _, d := range p.dests {
			fmt.Fprintf(&b, "      - name: %s\n", d.name)
			switch d.kind {
			case kindPostgres:
				fmt.Fprintf(&b, "        type: sql\n        driver: postgres\n        dsn: %q\n        table: %s\n        batch_size: 250\n",
					s.pg.dsn(), d.table)
			case kindSQLite:
				fmt.Fprintf(&b, "        type: sql\n        driver: sqlite\n        dsn: %q\n        table: %s\n        batch_size: 250\n",
					"file:"+s.sqlitePath(), d.table)
			case kindHTTP:
				fmt.Fprintf(&b, "        type: http\n        url: %q\n        batch_size: 50\n        timeout: 10s\n        secret: %q\n",
					s.recv.url+"/"+p.name, hookSecret)
			}
		}
	}
	return b.String()
}
