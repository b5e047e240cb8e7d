// Package config owns the pipelines file (DESIGN §3.2): it reads the YAML,
// expands ${VAR} from the environment, applies defaults and validates every
// key, reporting all problems at once with file, line and key path.
// It must never let a secret (DSN, token, password) reach an error or a log:
// such values are of type Secret.
package config

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"time"
)

// Defaults applied by Parse.
const (
	DefaultContainer       = "sluice"
	DefaultGraphURL        = "https://graph.microsoft.com/v1.0"
	DefaultHTTPBatchSize   = 100
	DefaultSQLBatchSize    = 5000
	DefaultBusBatchSize    = 100
	DefaultHTTPTimeout     = 30 * time.Second
	DefaultHTTPMaxInFlight = 1
)

// Values of the enumerated keys.
const (
	SourceSharePoint = "sharepoint"

	AuthDefault           = "default"
	AuthClientSecret      = "client_secret"
	AuthClientCertificate = "client_certificate"
	AuthManagedIdentity   = "managed_identity"
	AuthBearer            = "bearer"

	DestSQL        = "sql"
	DestServiceBus = "servicebus"
	DestHTTP       = "http"

	DriverPostgres  = "postgres"
	DriverSQLServer = "sqlserver"
	DriverSQLite    = "sqlite"

	DeletesHard = "hard"
	DeletesSoft = "soft"

	OnErrorDeadletter = "deadletter"
	OnErrorHalt       = "halt"
)

// ErrNotFound is wrapped by Config.Pipeline and Pipeline.Destination when
// the name is not configured.
var ErrNotFound = errors.New("not found")

// Config is a parsed, validated pipelines file with defaults applied.
type Config struct {
	File      string // the path it was read from, for messages
	Storage   Storage
	Pipelines []Pipeline
}

// Storage says where the change logs and state live in the storage account
// given by AzureWebJobsStorage.
type Storage struct {
	Container string // default "sluice"
}

// Pipeline is one SharePoint list and the destinations its changes go to.
// A pipeline may have no destinations yet: its log is still captured and a
// destination added later can replay it from the start.
type Pipeline struct {
	Name         string // [a-z0-9-]{1,48}, unique in the file
	Source       Source
	Destinations []Destination
}

// Source is the SharePoint list a pipeline reads.
type Source struct {
	Type     string   // always "sharepoint"
	Site     string   // host:/sites/path or a Graph site id
	List     string   // list id or display name
	Fields   []string // nil: all fields
	GraphURL string   // no trailing slash; default https://graph.microsoft.com/v1.0
	Auth     Auth
}

// Auth says how to get a Graph token. Only the fields of the chosen Type
// are set; Parse rejects the others so that none is silently ignored:
//
//	default             DefaultAzureCredential; no other field
//	client_secret       TenantID, ClientID, ClientSecret (all required)
//	client_certificate  TenantID, ClientID, Certificate (a PEM file path; all required)
//	managed_identity    ClientID optional (user-assigned identity)
//	bearer              Token (a ready access token)
type Auth struct {
	Type         string
	TenantID     string
	ClientID     string
	ClientSecret Secret
	Certificate  string
	Token        Secret
}

// Destination is one sink of a pipeline. Only the fields of its Type are
// set; keys of another type are errors in the file.
//
// BatchSize is how many records one drain step hands to the sink (one
// transaction for sql, one send batch for servicebus, one POST for http).
// Defaults: sql 5000, servicebus 100, http 100.
type Destination struct {
	Name      string // [a-z0-9-]{1,48}, unique in its pipeline
	Type      string // sql | servicebus | http
	OnError   string // deadletter (default) | halt
	BatchSize int

	// sql
	Driver  string // postgres | sqlserver | sqlite
	DSN     Secret
	Table   string
	Deletes string // hard (default) | soft

	// servicebus: exactly one of ConnectionString and Namespace (identity).
	ConnectionString Secret
	Namespace        string
	Entity           string // queue or topic
	SessionKey       bool   // SessionID = record key

	// http
	URL         string
	Timeout     time.Duration // per request; default 30s
	MaxInFlight int           // default 1; > 1 allows reordering between batches
	Secret      Secret        // HMAC-SHA256 signing key; empty: unsigned
	// Headers are added to every request. They are plain strings and so are
	// printed by %v and slog like any other field: a credential belongs in
	// Secret (signing), not here, or the caller must redact Headers itself.
	Headers map[string]string
}

// Load reads and parses the pipelines file at path, expanding ${VAR} from the
// process environment.
func Load(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read pipelines file: %w", err)
	}
	return Parse(path, data, os.LookupEnv)
}

// Parse parses and validates a pipelines file. filename is used only in
// messages; lookupEnv resolves ${VAR} (nil means no variable is set).
//
// ${NAME} is expanded in every value (keys are never expanded) before it is
// interpreted, so numbers and booleans may come from the environment too;
// $$ stands for a literal $ and any other $ is kept as written.
//
// On failure the error is an Errors holding every problem found, in line
// order, and the Config is nil.
func Parse(filename string, data []byte, lookupEnv func(string) (string, bool)) (*Config, error) {
	if lookupEnv == nil {
		lookupEnv = func(string) (string, bool) { return "", false }
	}
	d := &decoder{file: filename, env: lookupEnv}
	var cfg *Config
	if root := d.document(data); root != nil {
		cfg = d.config(root)
	}
	if len(d.errs) > 0 {
		sortErrors(d.errs)
		return nil, d.errs
	}
	return cfg, nil
}

// Pipeline returns the pipeline called name; the error lists the known ones.
func (c *Config) Pipeline(name string) (*Pipeline, error) {
	names := make([]string, len(c.Pipelines))
	for i := range c.Pipelines {
		if c.Pipelines[i].Name == name {
			return &c.Pipelines[i], nil
		}
		names[i] = c.Pipelines[i].Name
	}
	return nil, fmt.Errorf("pipeline %q: %w in %s (pipelines: %s)", name, ErrNotFound, c.File, known(names))
}

// Destination returns the destination called name; the error lists the known ones.
func (p *Pipeline) Destination(name string) (*Destination, error) {
	names := make([]string, len(p.Destinations))
	for i := range p.Destinations {
		if p.Destinations[i].Name == name {
			return &p.Destinations[i], nil
		}
		names[i] = p.Destinations[i].Name
	}
	return nil, fmt.Errorf("destination %q: %w in pipeline %q (destinations: %s)", name, ErrNotFound, p.Name, known(names))
}

func known(names []string) string {
	if len(names) == 0 {
		return "none"
	}
	return strings.Join(names, ", ")
}
