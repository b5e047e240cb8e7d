package testenv

// This file owns throwaway PostgreSQL databases; it never touches a database
// it did not create.

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"net/url"
	"os"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// Postgres returns the DSN of a fresh, empty database on the server named by
// SLUICE_TEST_POSTGRES_DSN (an admin DSN such as
// postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable), and drops it
// when the test ends. Without the variable the test is skipped, or fails when
// SLUICE_REQUIRE_SERVICES=1 (CI must not pass by skipping).
func Postgres(t testing.TB) string {
	t.Helper()
	admin := os.Getenv("SLUICE_TEST_POSTGRES_DSN")
	if admin == "" {
		if os.Getenv("SLUICE_REQUIRE_SERVICES") == "1" {
			t.Fatal("PostgreSQL not configured: set SLUICE_TEST_POSTGRES_DSN (make test does)")
		}
		t.Skip("PostgreSQL not configured: run make test")
	}
	u, err := url.Parse(admin)
	if err != nil || (u.Scheme != "postgres" && u.Scheme != "postgresql") {
		t.Fatalf("SLUICE_TEST_POSTGRES_DSN %q: want a postgres:// URL", admin)
	}
	var b [6]byte
	rand.Read(b[:])
	name := "sluice_test_" + hex.EncodeToString(b[:])

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, admin)
	if err != nil {
		t.Fatalf("connect to SLUICE_TEST_POSTGRES_DSN: %v", err)
	}
	defer conn.Close(context.Background())
	// The name is ours (hex), so plain concatenation is safe here.
	if _, err := conn.Exec(ctx, `CREATE DATABASE "`+name+`"`); err != nil {
		t.Fatalf("create test database %s: %v", name, err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		conn, err := pgx.Connect(ctx, admin)
		if err != nil {
			t.Errorf("drop test database %s: %v", name, err)
			return
		}
		defer conn.Close(context.Background())
		// WITH (FORCE) ends sessions a test left open (PostgreSQL 13+).
		if _, err := conn.Exec(ctx, `DROP DATABASE IF EXISTS "`+name+`" WITH (FORCE)`); err != nil {
			t.Errorf("drop test database %s: %v", name, err)
		}
	})
	u.Path = "/" + name
	return u.String()
}
