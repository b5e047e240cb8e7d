package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/sluicehq/sluice/internal/azstore"
)

const modulePath = "github.com/sluicehq/sluice"

// findRoot walks up from the current directory to the module's go.mod.
func findRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		data, err := os.ReadFile(filepath.Join(dir, "go.mod"))
		if err == nil && bytes.Contains(data, []byte("module "+modulePath+"\n")) {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("not inside the sluice repository (no go.mod of " + modulePath + " above the current directory): run from the repository or pass --root")
		}
		dir = parent
	}
}

// buildBinaries builds sluice and graphsim into dir, once per run. It
// builds with the go command's settings as they are, so that what `go test`
// and `go vet` compiled already is reused: forcing CGO_ENABLED=0 (as a
// release build does) made it compile every dependency anew, which on a
// fresh machine took over a minute of the short run's budget.
func buildBinaries(ctx context.Context, root, dir string) error {
	// The go command that runs us (go run, go test) is the one to use.
	goBin := filepath.Join(runtime.GOROOT(), "bin", "go")
	if !fileExists(goBin) {
		goBin = "go"
	}
	for _, b := range []string{"sluice", "graphsim"} {
		cmd := exec.CommandContext(ctx, goBin, "build", "-o", filepath.Join(dir, b), "./cmd/"+b)
		cmd.Dir = root
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("go build ./cmd/%s: %v\n%s", b, err, out)
		}
	}
	return nil
}

func fileExists(p string) bool { _, err := os.Stat(p); return err == nil }

// freePorts returns n distinct free loopback ports.
func freePorts(n int) ([]int, error) {
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	var ports []int
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

// waitPort waits until something accepts connections on addr.
func waitPort(ctx context.Context, addr string, p *proc, limit time.Duration) error {
	deadline := time.Now().Add(limit)
	for time.Now().Before(deadline) {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
			return nil
		}
		if p != nil && !p.running() {
			return fmt.Errorf("%s exited before listening on %s: %s", p.name, addr, lastLine(p.tail.String()))
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
	return fmt.Errorf("nothing listens on %s after %v", addr, limit)
}

// ---- Azurite ----

// azurite is Azurite on fixed ports with its data in dir, so that it can be
// stopped and started again with its data kept and the same connection
// string.
type azurite struct {
	ps                *procSet
	bin, dir, logPath string
	blobPort          int
	queuePort         int
	tablePort         int
	p                 *proc
}

const devAccountKey = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="

func (a *azurite) connString() string {
	return fmt.Sprintf("DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey=%s;BlobEndpoint=http://127.0.0.1:%d/devstoreaccount1;QueueEndpoint=http://127.0.0.1:%d/devstoreaccount1;",
		devAccountKey, a.blobPort, a.queuePort)
}

func (a *azurite) start(ctx context.Context) error {
	args := []string{"--silent", "--location", a.dir,
		"--blobHost", "127.0.0.1", "--queueHost", "127.0.0.1", "--tableHost", "127.0.0.1",
		"--blobPort", fmt.Sprint(a.blobPort), "--queuePort", fmt.Sprint(a.queuePort), "--tablePort", fmt.Sprint(a.tablePort),
		"--skipApiVersionCheck", "--disableTelemetry", "--loose"}
	p, err := a.ps.start("azurite", a.bin, args, os.Environ(), a.dir, a.logPath, nil)
	if err != nil {
		return err
	}
	a.p = p
	for _, port := range []int{a.blobPort, a.queuePort} {
		if err := waitPort(ctx, fmt.Sprintf("127.0.0.1:%d", port), p, 60*time.Second); err != nil {
			p.kill()
			return fmt.Errorf("azurite: %w", err)
		}
	}
	return nil
}

// stop shuts Azurite down gracefully (SIGTERM makes it save its
// metadata); it reports false when it had to be killed, which may lose
// acknowledged writes and so invalidates the run. The grace is generous:
// saving takes longer on a loaded machine, and a kill fails the run.
func (a *azurite) stop() bool {
	if a.p == nil {
		return true
	}
	return a.p.stop(60 * time.Second)
}

// ---- PostgreSQL ----

// postgres is a throwaway cluster on a fixed loopback port, run as the
// postgres user when we are root (PostgreSQL refuses to run as root).
type postgres struct {
	bin, dir string
	port     int
}

func asRoot() bool {
	u, err := user.Current()
	return err == nil && u.Uid == "0"
}

func (pg *postgres) command(ctx context.Context, tool string, args ...string) *exec.Cmd {
	path := filepath.Join(pg.bin, tool)
	var cmd *exec.Cmd
	if asRoot() {
		cmd = exec.CommandContext(ctx, "runuser", append([]string{"-u", "postgres", "--", path}, args...)...)
	} else {
		cmd = exec.CommandContext(ctx, path, args...)
	}
	// pg_ctl leaves the server running: keep it out of our process group so
	// that Ctrl-C on a terminal does not reach it before we stop it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	return cmd
}

func findPGBin() (string, error) {
	bins, _ := filepath.Glob("/usr/lib/postgresql/*/bin/initdb")
	if len(bins) == 0 {
		return "", errors.New("PostgreSQL server binaries not found under /usr/lib/postgresql/*/bin (apt-get install postgresql)")
	}
	sort.Strings(bins)
	return filepath.Dir(bins[len(bins)-1]), nil
}

func (pg *postgres) dsn() string {
	return fmt.Sprintf("postgres://postgres@127.0.0.1:%d/postgres?sslmode=disable&connect_timeout=5", pg.port)
}

func (pg *postgres) init(ctx context.Context) error {
	if err := os.Chmod(pg.dir, 0o755); err != nil {
		return err
	}
	data := filepath.Join(pg.dir, "data")
	if err := os.Mkdir(data, 0o700); err != nil {
		return err
	}
	if asRoot() {
		if out, err := exec.Command("chown", "-R", "postgres", pg.dir).CombinedOutput(); err != nil {
			return fmt.Errorf("chown %s: %v: %s", pg.dir, err, out)
		}
	}
	if out, err := pg.command(ctx, "initdb", "-D", data, "-U", "postgres", "--auth=trust", "-E", "UTF8").CombinedOutput(); err != nil {
		return fmt.Errorf("initdb: %v: %s", err, out)
	}
	return pg.start(ctx)
}

func (pg *postgres) start(ctx context.Context) error {
	// synchronous_commit stays on: an outage is an immediate shutdown, and
	// with it off PostgreSQL loses commits it has already acknowledged
	// (the WAL is still in shared memory), which would look like sluice
	// losing data. fsync can be off: the machine does not crash, only the
	// server's processes die, and the kernel keeps what they wrote.
	opts := fmt.Sprintf("-p %d -k %s -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=on -c full_page_writes=off -c max_connections=100", pg.port, pg.dir)
	cmd := pg.command(ctx, "pg_ctl", "-D", filepath.Join(pg.dir, "data"), "-o", opts, "-l", filepath.Join(pg.dir, "server.log"), "-w", "-t", "60", "start")
	if out, err := cmd.CombinedOutput(); err != nil {
		log, _ := os.ReadFile(filepath.Join(pg.dir, "server.log"))
		return fmt.Errorf("start PostgreSQL: %v: %s\n%s", err, out, tailString(string(log), 2000))
	}
	return nil
}

// stop stops the server at once, dropping every connection (an outage).
func (pg *postgres) stop(ctx context.Context) error {
	if out, err := pg.command(ctx, "pg_ctl", "-D", filepath.Join(pg.dir, "data"), "-m", "immediate", "-w", "stop").CombinedOutput(); err != nil {
		return fmt.Errorf("stop PostgreSQL: %v: %s", err, out)
	}
	return nil
}

func (pg *postgres) running() bool {
	return fileExists(filepath.Join(pg.dir, "data", "postmaster.pid"))
}

func tailString(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[len(s)-n:]
}

// ---- the Graph simulator ----

type graphsim struct {
	p        *proc
	url      string // http://127.0.0.1:port
	graphURL string
	client   *http.Client
}

func startGraphsim(ctx context.Context, ps *procSet, bin, dir string, items int, seed int64) (*graphsim, error) {
	pr, pw := io.Pipe()
	args := []string{"--addr", "127.0.0.1:0", "--token", graphToken, "--site", "contoso.sharepoint.com:/sites/ops",
		"--list", "Orders", "--items", fmt.Sprint(items), "--seed", fmt.Sprint(uint64(seed))}
	p, err := ps.start("graphsim", bin, args, os.Environ(), dir, filepath.Join(dir, "graphsim.log"), pw)
	if err != nil {
		return nil, err
	}
	first := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(pr)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		sent := false
		for sc.Scan() {
			if !sent && strings.Contains(sc.Text(), `"listening"`) {
				first <- sc.Text()
				sent = true
			}
		}
		_, _ = io.Copy(io.Discard, pr)
	}()
	go func() { <-p.done; pw.Close() }()
	select {
	case line := <-first:
		var l struct {
			URL      string `json:"url"`
			GraphURL string `json:"graph_url"`
		}
		if err := json.Unmarshal([]byte(line), &l); err != nil || l.URL == "" {
			p.kill()
			return nil, fmt.Errorf("graphsim: unexpected first line %q", line)
		}
		return &graphsim{p: p, url: l.URL, graphURL: l.GraphURL, client: &http.Client{Timeout: 30 * time.Second}}, nil
	case <-p.done:
		return nil, fmt.Errorf("graphsim exited: %s", lastLine(p.tail.String()))
	case <-time.After(30 * time.Second):
		p.kill()
		return nil, errors.New("graphsim did not start in 30s")
	case <-ctx.Done():
		p.kill()
		return nil, ctx.Err()
	}
}

// admin calls the simulator's control API; out may be nil.
func (g *graphsim) admin(ctx context.Context, method, path string, body, out any) error {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, g.url+path, rd)
	if err != nil {
		return err
	}
	resp, err := g.client.Do(req)
	if err != nil {
		return fmt.Errorf("graphsim %s %s: %w", method, path, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 1000))
		return fmt.Errorf("graphsim %s %s: %s: %s", method, path, resp.Status, bytes.TrimSpace(b))
	}
	if out == nil {
		_, _ = io.Copy(io.Discard, resp.Body)
		return nil
	}
	dec := json.NewDecoder(resp.Body)
	dec.UseNumber()
	return dec.Decode(out)
}

// snapshot is the list's live items, as GET /_sim/snapshot answers.
type snapshot struct {
	Count int                       `json:"count"`
	Seq   uint64                    `json:"seq"`
	Items map[string]map[string]any `json:"items"`
}

func (g *graphsim) snapshot(ctx context.Context) (*snapshot, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, g.url+"/_sim/snapshot", nil)
	if err != nil {
		return nil, err
	}
	resp, err := g.client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var s snapshot
	// Decoded as the log's fields are (float64 numbers), to compare alike.
	if err := json.NewDecoder(resp.Body).Decode(&s); err != nil {
		return nil, fmt.Errorf("graphsim snapshot: %w", err)
	}
	return &s, nil
}

// deletion is one delete in the simulator's history (graphsim.Deletion).
type deletion struct {
	ID int       `json:"id"`
	At time.Time `json:"at"`
}

// deletions is every delete the list has seen, as GET /_sim/deletions
// answers.
func (g *graphsim) deletions(ctx context.Context) ([]deletion, error) {
	var out struct {
		Count     int        `json:"count"`
		Deletions []deletion `json:"deletions"`
	}
	if err := g.admin(ctx, http.MethodGet, "/_sim/deletions", nil, &out); err != nil {
		return nil, err
	}
	if out.Count != len(out.Deletions) {
		return nil, fmt.Errorf("graphsim deletions: count %d, %d listed", out.Count, len(out.Deletions))
	}
	return out.Deletions, nil
}

// openStore connects to the suite's Azurite.
func openStore(ctx context.Context, connString, container string) (*azstore.Store, error) {
	s, err := azstore.ParseConnectionString(connString)
	if err != nil {
		return nil, err
	}
	return azstore.Open(ctx, s, container, azstore.Options{})
}
