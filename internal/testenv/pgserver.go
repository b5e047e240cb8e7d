package testenv

// This file starts a private PostgreSQL server for tests that must stop and
// restart the database (outages); other tests share the server of
// SLUICE_TEST_POSTGRES_DSN.

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"testing"
)

// PGServer is a throwaway PostgreSQL cluster owned by one test.
type PGServer struct {
	t    testing.TB
	bin  string
	dir  string
	port int
	// DSN reaches the cluster's postgres database.
	DSN string
}

// PrivatePostgres initialises and starts a cluster of its own on a free
// loopback port; it is stopped and removed when the test ends.
func PrivatePostgres(t testing.TB) *PGServer {
	t.Helper()
	bins, _ := filepath.Glob("/usr/lib/postgresql/*/bin/initdb")
	if len(bins) == 0 {
		missing(t, "PostgreSQL server binaries (apt-get install postgresql)")
	}
	sort.Strings(bins)
	s := &PGServer{t: t, bin: filepath.Dir(bins[len(bins)-1])}
	dir, err := os.MkdirTemp("", "sluice-pg-")
	if err != nil {
		t.Fatal(err)
	}
	s.dir = dir
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	data := filepath.Join(dir, "data")
	if err := os.Mkdir(data, 0o700); err != nil {
		t.Fatal(err)
	}
	if asRoot() {
		if out, err := exec.Command("chown", "-R", "postgres", dir).CombinedOutput(); err != nil {
			t.Fatalf("chown %s: %v: %s", dir, err, out)
		}
	}
	if out, err := s.pg("initdb", "-D", data, "-U", "postgres", "--auth=trust", "-E", "UTF8").CombinedOutput(); err != nil {
		t.Fatalf("initdb: %v: %s", err, out)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s.port = l.Addr().(*net.TCPAddr).Port
	l.Close()
	s.DSN = fmt.Sprintf("postgres://postgres@127.0.0.1:%d/postgres?sslmode=disable", s.port)
	s.Start()
	t.Cleanup(func() { _ = s.pg("pg_ctl", "-D", data, "-m", "immediate", "-w", "stop").Run() })
	return s
}

func asRoot() bool {
	u, err := user.Current()
	return err == nil && u.Uid == "0"
}

func (s *PGServer) pg(tool string, args ...string) *exec.Cmd {
	path := filepath.Join(s.bin, tool)
	if asRoot() {
		// PostgreSQL refuses to run as root.
		return exec.Command("runuser", append([]string{"-u", "postgres", "--", path}, args...)...)
	}
	return exec.Command(path, args...)
}

// Start starts (or restarts) the server and waits until it accepts connections.
// synchronous_commit stays on: Stop is an immediate shutdown, which would
// otherwise drop commits the server had already acknowledged.
func (s *PGServer) Start() {
	s.t.Helper()
	data := filepath.Join(s.dir, "data")
	opts := fmt.Sprintf("-p %d -k %s -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=on -c full_page_writes=off", s.port, s.dir)
	if out, err := s.pg("pg_ctl", "-D", data, "-o", opts, "-l", filepath.Join(s.dir, "server.log"), "-w", "start").CombinedOutput(); err != nil {
		log, _ := os.ReadFile(filepath.Join(s.dir, "server.log"))
		s.t.Fatalf("start PostgreSQL: %v: %s\n%s", err, out, log)
	}
}

// Stop stops the server at once, dropping every connection (an outage).
func (s *PGServer) Stop() {
	s.t.Helper()
	if out, err := s.pg("pg_ctl", "-D", filepath.Join(s.dir, "data"), "-m", "immediate", "-w", "stop").CombinedOutput(); err != nil {
		s.t.Fatalf("stop PostgreSQL: %v: %s", err, out)
	}
}
