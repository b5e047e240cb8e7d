package main

import (
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sluicehq/sluice/internal/azstore"
)

// Options configure a run of the suite.
type Options struct {
	Seed     int64
	Duration time.Duration // the fault phase
	Short    bool
	Keep     bool
	Verbose  bool
	Root     string
	// Bin holds sluice and graphsim binaries built already (see
	// buildBinaries); empty: the run builds them first.
	Bin string
}

// Report is what a run found.
type Report struct {
	Seed           int64
	Passed, Failed int
	Lines          []string // PASS/FAIL lines
}

const (
	graphToken    = "chaos-token"
	hookSecret    = "chaos-secret"
	container     = "chaos"
	writeQueue    = "sluice-write"
	poisonQueue   = "sluice-write-poison"
	readSchedule  = "*/3 * * * * *"
	maxDequeue    = 5 // host.json extensions.queues.maxDequeueCount
	sluiceTimeout = 3 * time.Minute
)

// counters are the counts the suite prints.
type counters struct {
	kills           map[string]int // by what was killed
	unexpectedExits int
	exitSamples     []string
	pgOutages       int
	pgDown          time.Duration
	recvFailing     time.Duration
	azRestarts      int
	azMidDrain      int
	azKilled        int
	expiries        int
	throttles       int
	dupes           map[string]int // by kind
	garbage         int
	churnCalls      int
	bursts          int
	oneshots        map[string]int
	faultErrors     []string
	leaseBreaks     int
	replays         int      // destinations replayed
	quietExpiries   int      // 410s injected while the list was quiet
	quietNotes      []string // what each quiet 410 did
	burstsHeld      int      // bursts that waited for a quiet 410 to end
	killsHeld       int      // kills that waited for a quiet 410 to end
}

type suite struct {
	o     Options
	out   io.Writer
	plan  plan
	dir   string
	bin   string
	root  string
	ps    *procSet
	az    *azurite
	pg    *postgres
	sim   *graphsim
	recv  *receiver
	st    *azstore.Store
	cfg   string
	env   []string
	t0    time.Time // start of the fault phase
	begin time.Time

	runs    []*runSlot
	oneshot *oneShotSlot

	mu      sync.Mutex
	c       counters
	garbage map[string]bool // texts of the undecodable messages we sent

	churnStop atomic.Bool
	// quiet is set during a quiet 410 and closed at its end: churn,
	// bursts and kills past quietKills wait for it.
	quietMu    sync.Mutex
	quiet      chan struct{}
	quietKills int // kills let through during this quiet 410
}

// Run runs the suite; the report is nil only when it could not start.
func Run(ctx context.Context, o Options, out io.Writer) (rep *Report, err error) {
	if o.Seed == 0 {
		o.Seed = time.Now().UnixNano() % 1_000_000_000
	}
	if o.Duration == 0 {
		o.Duration = 8 * time.Minute
		if o.Short {
			o.Duration = 100 * time.Second
		}
	}
	s := &suite{o: o, out: out, ps: newProcSet(), begin: time.Now(), garbage: map[string]bool{},
		c: counters{kills: map[string]int{}, dupes: map[string]int{}, oneshots: map[string]int{}}}
	s.plan = makePlan(o.Seed, o.Short, o.Duration)
	mode := "full"
	if o.Short {
		mode = "short"
	}
	fmt.Fprintf(out, "sluice-chaos: seed %d (%s run, fault phase %v; reproduce with --seed %d%s)\n",
		o.Seed, mode, o.Duration, o.Seed, map[bool]string{true: " --short"}[o.Short])

	if s.root = o.Root; s.root == "" {
		if s.root, err = findRoot(); err != nil {
			return nil, err
		}
	}
	if s.dir, err = os.MkdirTemp("", "sluice-chaos-"); err != nil {
		return nil, err
	}
	// PostgreSQL runs as the postgres user when we are root: let it in.
	if err := os.Chmod(s.dir, 0o755); err != nil {
		return nil, err
	}
	defer func() {
		s.cleanup()
		keep := o.Keep || err != nil || (rep != nil && rep.Failed > 0)
		if err != nil {
			fmt.Fprintf(out, "kept %s (logs of every process, Azurite and PostgreSQL data)\n", s.dir)
		}
		if !keep {
			_ = os.RemoveAll(s.dir)
		}
		if rep != nil {
			rep.print(out) // the last lines, whatever happens
		}
	}()
	if err := s.setup(ctx); err != nil {
		return nil, err
	}
	if err := s.faultPhase(ctx); err != nil {
		return nil, err
	}
	if err := s.finalPasses(ctx); err != nil {
		// Still check: what the destinations hold is the evidence.
		fmt.Fprintf(out, "final passes did not settle: %v\n", err)
	}
	if ctx.Err() != nil {
		return nil, ctx.Err()
	}
	rep = s.check(ctx)
	rep.Seed = o.Seed
	if o.Keep || rep.Failed > 0 {
		fmt.Fprintf(out, "work dir kept: %s (logs of every process, Azurite and PostgreSQL data)\n", s.dir)
	}
	return rep, nil
}

func (s *suite) logf(format string, args ...any) {
	el := time.Since(s.begin)
	if !s.t0.IsZero() {
		el = time.Since(s.t0)
	}
	s.mu.Lock()
	fmt.Fprintf(s.out, "[%6.1fs] %s\n", el.Seconds(), fmt.Sprintf(format, args...))
	s.mu.Unlock()
}

func (s *suite) vlogf(format string, args ...any) {
	if s.o.Verbose {
		s.logf(format, args...)
	}
}

func (s *suite) faultErr(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	s.mu.Lock()
	s.c.faultErrors = append(s.c.faultErrors, msg)
	s.mu.Unlock()
	s.logf("fault injection problem: %s", msg)
}

func (s *suite) cleanup() {
	if s.runs != nil {
		for _, r := range s.runs {
			r.setStopping()
		}
	}
	if s.oneshot != nil {
		s.oneshot.setStopping()
	}
	s.ps.killAll()
	if s.pg != nil && s.pg.running() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		_ = s.pg.stop(ctx)
		cancel()
	}
	if s.recv != nil {
		s.recv.close()
	}
}

// setup builds the binaries and starts the services.
func (s *suite) setup(ctx context.Context) error {
	if s.bin = s.o.Bin; s.bin == "" {
		s.bin = filepath.Join(s.dir, "bin")
		if err := os.MkdirAll(s.bin, 0o755); err != nil {
			return err
		}
		start := time.Now()
		if err := buildBinaries(ctx, s.root, s.bin); err != nil {
			return err
		}
		s.logf("built sluice and graphsim in %v", time.Since(start).Round(100*time.Millisecond))
	}

	// Azurite on ports we choose, so that a restart gets the same ones.
	azBin := filepath.Join(s.root, "node_modules", ".bin", "azurite")
	if !fileExists(azBin) {
		return fmt.Errorf("%s is missing: run `make deps` (npm ci)", azBin)
	}
	ports, err := freePorts(4)
	if err != nil {
		return err
	}
	s.az = &azurite{ps: s.ps, bin: azBin, dir: filepath.Join(s.dir, "azurite"), logPath: filepath.Join(s.dir, "azurite.log"),
		blobPort: ports[0], queuePort: ports[1], tablePort: ports[2]}
	if err := os.MkdirAll(s.az.dir, 0o755); err != nil {
		return err
	}
	if err := s.az.start(ctx); err != nil {
		return err
	}
	if s.st, err = openStore(ctx, s.az.connString(), container); err != nil {
		return err
	}
	for _, q := range []string{writeQueue, poisonQueue} {
		if err := s.st.EnsureQueue(ctx, q); err != nil {
			return err
		}
	}

	pgBin, err := findPGBin()
	if err != nil {
		return err
	}
	s.pg = &postgres{bin: pgBin, dir: filepath.Join(s.dir, "pg"), port: ports[3]}
	if err := os.MkdirAll(s.pg.dir, 0o755); err != nil {
		return err
	}
	if err := s.pg.init(ctx); err != nil {
		return err
	}

	if s.sim, err = startGraphsim(ctx, s.ps, filepath.Join(s.bin, "graphsim"), s.dir, s.plan.items, s.o.Seed); err != nil {
		return err
	}
	if s.recv, err = startReceiver(hookSecret); err != nil {
		return err
	}

	s.cfg = filepath.Join(s.dir, "chaos.yaml")
	if err := os.WriteFile(s.cfg, []byte(s.config()), 0o644); err != nil {
		return err
	}
	s.env = sluiceEnv(s.az.connString(), s.cfg)
	if out, code := s.sluice(ctx, "validate"); code != 0 {
		return fmt.Errorf("sluice validate: %s", out)
	}
	s.logf("services up: Azurite blob :%d queue :%d, PostgreSQL :%d, graphsim %s (%d items), receiver %s; pipelines %s; work dir %s",
		s.az.blobPort, s.az.queuePort, s.pg.port, s.sim.url, s.plan.items, s.recv.url, strings.Join(pipelineNames(), ", "), s.dir)
	// The first load of the big list, before any fault and at full speed:
	// at Graph's pace and under the kills it would take most of the fault
	// phase (a reader commits every 10 s, and a kill loses what was read
	// since the last commit). The phase starts from logs that hold the
	// list, to be drained, read incrementally and resynced.
	start := time.Now()
	out, code := s.sluice(ctx, "read")
	_, heads, ok := parseRead(out)
	if code != 0 || !ok {
		return fmt.Errorf("first load (sluice read, exit %d): %s", code, tailString(out, 2000))
	}
	// Graph's awkward but legal habits and its latency, all along the
	// fault phase.
	if err := s.sim.admin(ctx, "POST", "/_sim/knobs", phaseKnobs, nil); err != nil {
		return err
	}
	s.logf("first load: heads %v in %v; from now on pages take %s plus up to %s", heads,
		time.Since(start).Round(100*time.Millisecond), phaseKnobs["pageDelay"], phaseKnobs["pageJitter"])
	return nil
}

// phaseKnobs are the simulator's knobs during the fault phase: Graph's
// awkward but legal habits, and its latency — pages of 0.3 to 1.5 s, as
// real Graph serves list items (0.5–2 s per page is common).
var phaseKnobs = map[string]any{
	"duplicateRate": 0.05, "shuffle": true, "shortPages": true, "emptyPageEvery": 7,
	"mutatePerPage": map[string]int{"edits": 1},
	"pageDelay":     "300ms", "pageJitter": "1200ms",
}

// sluiceEnv is our environment without any storage or sluice settings of
// the developer's, plus the suite's.
func sluiceEnv(conn, cfg string) []string {
	var env []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		if strings.HasPrefix(k, "AzureWebJobsStorage") || strings.HasPrefix(k, "SLUICE_") || strings.HasPrefix(k, "FUNCTIONS_") {
			continue
		}
		env = append(env, kv)
	}
	return append(env, "AzureWebJobsStorage="+conn, "SLUICE_CONFIG="+cfg, "SLUICE_READ_SCHEDULE="+readSchedule)
}

// sluice runs one sluice command to its end and returns its output and
// exit code (-1: killed or timed out).
func (s *suite) sluice(ctx context.Context, args ...string) (string, int) {
	var buf tailBuffer
	buf.max = 1 << 20
	p, err := s.ps.start("sluice "+args[0], filepath.Join(s.bin, "sluice"), args, s.env, s.root,
		filepath.Join(s.dir, "sluice-"+args[0]+".log"), &buf)
	if err != nil {
		return err.Error(), -1
	}
	ctx, cancel := context.WithTimeout(ctx, sluiceTimeout)
	defer cancel()
	if err := p.wait(ctx); err != nil && ctx.Err() != nil {
		return buf.String() + "\n(killed after " + sluiceTimeout.String() + ")", -1
	}
	return buf.String(), p.exitCode()
}

// ---- the fault phase ----

func (s *suite) faultPhase(ctx context.Context) error {
	phaseCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	s.t0 = time.Now()
	s.logf("fault phase starts: %d events scheduled (%d kills)", len(s.plan.events), s.countPlanned(evKill))

	var wg sync.WaitGroup
	// Two hosts on the same storage, each with its own HTTP port.
	ports, err := freePorts(2)
	if err != nil {
		return err
	}
	for i, name := range []string{targetRunA, targetRunB} {
		r := &runSlot{s: s, name: name, addr: fmt.Sprintf("127.0.0.1:%d", ports[i])}
		s.runs = append(s.runs, r)
		wg.Go(func() { r.loop(phaseCtx) })
	}
	s.oneshot = &oneShotSlot{s: s, rng: rand.New(rand.NewPCG(uint64(s.o.Seed), 0x1e5)), done: make(chan struct{})}
	go s.oneshot.loop(phaseCtx)

	churnDone := make(chan struct{})
	go func() { defer close(churnDone); s.churn(phaseCtx) }()
	// A progress line now and then.
	go func() {
		every := time.Minute
		if s.o.Short {
			every = 20 * time.Second
		}
		for sleepCtx(phaseCtx, every) {
			s.mu.Lock()
			kills := 0
			for _, n := range s.c.kills {
				kills += n
			}
			s.mu.Unlock()
			s.logf("progress: %d kills so far; %s", kills, s.lagLine(phaseCtx))
		}
	}()

	// The schedule.
	var evwg sync.WaitGroup
	dupRng := rand.New(rand.NewPCG(uint64(s.o.Seed), 0xd0b))
	for _, e := range s.plan.events {
		if !sleepCtx(phaseCtx, time.Until(s.t0.Add(e.At))) {
			break
		}
		if e.Kind == evDuplicates {
			// Drawn here, in schedule order, to stay reproducible.
			seed := dupRng.Uint64()
			evwg.Go(func() { s.duplicates(phaseCtx, rand.New(rand.NewPCG(seed, 7))) })
			continue
		}
		evwg.Go(func() { s.apply(phaseCtx, e) })
	}
	sleepCtx(phaseCtx, time.Until(s.t0.Add(s.plan.phase)))
	evwg.Wait()
	if ctx.Err() != nil {
		return ctx.Err()
	}
	// Everything healthy again (the schedule ends healthy; make sure).
	s.recv.setMode(recvOK, "")
	if !s.pg.running() {
		if err := s.pg.start(ctx); err != nil {
			return err
		}
	}
	s.logf("fault phase over: stopping churn, the one-shot runner and both hosts (SIGTERM)")
	s.churnStop.Store(true)
	<-churnDone
	// Plain pages again, at once: a host lets its running invocations end
	// (up to 30 s), and a read in a full round at Graph's pace would use
	// all of it.
	if err := s.sim.admin(ctx, "POST", "/_sim/knobs", map[string]any{}, nil); err != nil {
		return err
	}
	// All at once: each may take a while to finish its page and commit.
	var stops sync.WaitGroup
	stops.Go(s.oneshot.stop)
	for _, r := range s.runs {
		stops.Go(r.stop)
	}
	stops.Wait()
	cancel()
	wg.Wait()
	// No sluice process is alive now: what killed ones still hold would
	// only expire; break it rather than wait up to 60 s.
	s.logf("no sluice process left; broke %d leases left by killed processes", s.breakLeases())
	return nil
}

func (s *suite) countPlanned(kind string) int {
	n := 0
	for _, e := range s.plan.events {
		if e.Kind == kind {
			n++
		}
	}
	return n
}

func sleepCtx(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
