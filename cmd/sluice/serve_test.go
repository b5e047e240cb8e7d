package main

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/sluicehq/sluice/internal/azstore"
	"github.com/sluicehq/sluice/internal/changelog"
	"github.com/sluicehq/sluice/internal/testenv"
)

// TestServeDrainsAWriteInvocation runs `sluice serve` as the host would and
// posts the host's queue payload for a wake-up.
func TestServeDrainsAWriteInvocation(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	container := testenv.UniqueName("srv")
	settings := testenv.StorageSettings(t)
	st, err := azstore.Open(ctx, settings, container, azstore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	l := changelog.New(st, "orders", changelog.Options{})
	s, _ := l.LoadState(ctx)
	a, err := l.NewAppender(ctx, s)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 100 {
		if err := a.Add(ctx, &changelog.Record{Op: changelog.OpUpsert, Key: strconv.Itoa(i), Fields: json.RawMessage(`{"Title":"x"}`)}); err != nil {
			t.Fatal(err)
		}
	}
	if err := a.Commit(ctx, nil); err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := strconv.Itoa(ln.Addr().(*net.TCPAddr).Port)
	ln.Close()
	cfg := writeConfig(t, container)
	env := map[string]string{"AzureWebJobsStorage": settings.ConnectionString, "FUNCTIONS_CUSTOMHANDLER_PORT": port,
		"FUNCTIONS_APP_ROOT_PATH": "../.."}
	sctx, cancel := context.WithCancel(ctx)
	done := make(chan result, 1)
	go func() {
		var out, errb bytes.Buffer
		code := run(sctx, []string{"--config", cfg, "serve"}, &out, &errb, func(k string) (string, bool) { v, ok := env[k]; return v, ok })
		done <- result{code, out.String(), errb.String()}
	}()
	base := "http://127.0.0.1:" + port
	for i := 0; ; i++ {
		resp, err := http.Get(base + "/")
		if err == nil {
			resp.Body.Close()
			break
		}
		if i > 200 {
			t.Fatalf("serve never answered GET /: %v", err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	// The host's queue payload: the message double-encoded, DequeueCount a string.
	msg, _ := json.Marshal(`{"pipeline":"orders","destination":"warehouse","head":100}`)
	body := fmt.Sprintf(`{"Data":{"msg":%s},"Metadata":{"DequeueCount":"1","Id":"\"m1\"","sys":{"MethodName":"write"}}}`, msg)
	resp, err := http.Post(base+"/write", "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	reply, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "application/json" || !json.Valid(reply) {
		t.Fatalf("write reply %d %q: %s", resp.StatusCode, resp.Header.Get("Content-Type"), reply)
	}
	db, err := sql.Open("sqlite", filepath.Join(filepath.Dir(cfg), "orders.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var n int
	if err := db.QueryRow(`SELECT count(*) FROM "orders"`).Scan(&n); err != nil || n != 100 {
		t.Fatalf("rows = %d, %v", n, err)
	}
	cancel()
	r := <-done
	if r.code != 0 {
		t.Fatalf("serve exited %d: %s", r.code, r.stderr)
	}
	if r.stderr != "" {
		t.Fatalf("serve wrote to stderr (the host logs that as errors): %s", r.stderr)
	}
}
