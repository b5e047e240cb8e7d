// Package testenv finds the services tests run against: real Azurite and
// PostgreSQL (started by scripts/with-services for `make test`, or a private
// PostgreSQL cluster for outage tests), and, for Service Bus, which cannot run
// here, a local AMQP 1.0 broker that the real azservicebus SDK talks to. A
// test either gets the service or is skipped — and under
// SLUICE_REQUIRE_SERVICES=1 (make test, CI) a missing service fails the test.
package testenv

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/sluicehq/sluice/internal/azstore"
)

// StorageEnv holds the Azurite connection string.
const StorageEnv = "SLUICE_TEST_STORAGE"

func missing(t testing.TB, what string) {
	t.Helper()
	if os.Getenv("SLUICE_REQUIRE_SERVICES") == "1" {
		t.Fatalf("%s is required but not configured", what)
	}
	t.Skipf("%s not configured: run the tests with `make test` (scripts/with-services)", what)
}

// StorageSettings returns the settings of the test storage account.
func StorageSettings(t testing.TB) azstore.Settings {
	t.Helper()
	cs := os.Getenv(StorageEnv)
	if cs == "" {
		missing(t, "Azurite ("+StorageEnv+")")
	}
	s, err := azstore.ParseConnectionString(cs)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// Store returns a store on a fresh container of its own, so that tests run in
// parallel without seeing each other's blobs.
func Store(t testing.TB) *azstore.Store {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	st, err := azstore.Open(ctx, StorageSettings(t), UniqueName("t"), azstore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// UniqueName returns a name usable for containers, queues and databases:
// lower-case letters and digits after prefix.
func UniqueName(prefix string) string {
	b := make([]byte, 8)
	_, _ = rand.Read(b)
	return strings.ToLower(prefix) + hex.EncodeToString(b)
}
