package main

import (
	"context"
	"net"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestMakeDemo runs scripts/demo (what `make demo` runs) for 60 seconds with
// the list changing all along, then lets it catch up: the demo itself checks
// that the SQLite table equals the simulator's list and fails otherwise.
func TestMakeDemo(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the demo for a minute")
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	// Build what the demo builds first, outside its time limit: on a fresh
	// machine with an empty build cache, compiling the Azure SDK next to
	// the other packages' tests on two cores can take minutes by itself,
	// which once made this test time out (issue 11).
	build := exec.Command("go", "build", "-o", t.TempDir()+"/", "../../cmd/sluice", "../../cmd/graphsim", "../../cmd/sluice-receiver", ".")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build the demo's programs: %v\n%s", err, out)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "../demo")
	cmd.Env = append(cmd.Environ(), "SLUICE_DEMO_SECONDS=60", "SLUICE_DEMO_PORT="+strconv.Itoa(port), "SLUICE_DEMO_SEED=7")
	out, err := cmd.CombinedOutput()
	text := string(out)
	if err != nil || !strings.Contains(text, "demo check passed") || !strings.Contains(text, "replay check passed") {
		t.Fatalf("make demo: %v\n%s", err, tail(text, 60))
	}
	for _, want := range []string{"[sluice]  read (timer", "[sluice]  write (queue", "[webhook] event upsert"} {
		if !strings.Contains(text, want) {
			t.Fatalf("the demo's console lacks %q:\n%s", want, tail(text, 40))
		}
	}
	t.Log(tail(text, 8))
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
