package main

import (
	"context"
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"sync"
	"time"
)

// runSlot keeps one `sluice run` host alive: restarted after a kill (after
// the delay the kill chose) and after any exit of its own.
type runSlot struct {
	s    *suite
	name string
	addr string

	mu       sync.Mutex
	cur      *proc
	killed   bool
	delay    time.Duration
	stopping bool
}

func (r *runSlot) loop(ctx context.Context) {
	s := r.s
	for ctx.Err() == nil {
		r.mu.Lock()
		if r.stopping {
			r.mu.Unlock()
			return
		}
		p, err := s.ps.start(r.name, filepath.Join(s.bin, "sluice"), []string{"run", "--addr", r.addr, "--app", s.root},
			s.env, s.root, filepath.Join(s.dir, r.name+".log"), nil)
		r.cur, r.killed, r.delay = p, false, 0
		r.mu.Unlock()
		if err != nil {
			s.faultErr("%v", err)
			sleepCtx(ctx, 2*time.Second)
			continue
		}
		<-p.done
		r.mu.Lock()
		stopping, killed, delay := r.stopping, r.killed, r.delay
		r.mu.Unlock()
		if stopping {
			return
		}
		if !killed {
			delay = 2 * time.Second
			s.noteExit(r.name, p)
		}
		sleepCtx(ctx, delay)
	}
}

// kill SIGKILLs the running host; "" when none was running.
func (r *runSlot) kill(delay time.Duration) string {
	r.mu.Lock()
	p := r.cur
	if r.stopping || p == nil || !p.running() {
		r.mu.Unlock()
		return ""
	}
	r.killed, r.delay = true, delay
	r.mu.Unlock()
	p.kill()
	return r.name
}

func (r *runSlot) setStopping() {
	r.mu.Lock()
	r.stopping = true
	r.mu.Unlock()
}

// stop ends the host gracefully (it releases its leases), or kills it.
func (r *runSlot) stop() {
	r.setStopping()
	r.mu.Lock()
	p := r.cur
	r.mu.Unlock()
	if p != nil && !p.stop(45*time.Second) {
		r.s.logf("%s did not stop within 45 s of SIGTERM; killed", r.name)
	}
}

func (s *suite) noteExit(name string, p *proc) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.c.unexpectedExits++
	if len(s.c.exitSamples) < 8 {
		s.c.exitSamples = append(s.c.exitSamples, fmt.Sprintf("%s exit %d: %s", name, p.exitCode(), truncate(lastLine(p.tail.String()), 240)))
	}
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}

// oneShotSlot runs `sluice read` and `sluice write` one after another.
type oneShotSlot struct {
	s   *suite
	rng *rand.Rand

	mu       sync.Mutex
	cur      *proc
	curName  string
	killed   bool
	delay    time.Duration
	stopping bool
	done     chan struct{}
}

func (o *oneShotSlot) loop(ctx context.Context) {
	defer close(o.done)
	s := o.s
	for ctx.Err() == nil {
		cmd := "read"
		if o.rng.IntN(2) == 0 {
			cmd = "write"
		}
		pause := time.Duration(500+o.rng.IntN(2500)) * time.Millisecond
		o.mu.Lock()
		if o.stopping {
			o.mu.Unlock()
			return
		}
		p, err := s.ps.start("sluice "+cmd, filepath.Join(s.bin, "sluice"), []string{cmd}, s.env, s.root,
			filepath.Join(s.dir, "oneshot.log"), nil)
		o.cur, o.curName, o.killed, o.delay = p, cmd, false, 0
		o.mu.Unlock()
		if err != nil {
			s.faultErr("%v", err)
			sleepCtx(ctx, 2*time.Second)
			continue
		}
		wctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
		_ = p.wait(wctx)
		cancel()
		o.mu.Lock()
		killed, delay, stopping := o.killed, o.delay, o.stopping
		o.mu.Unlock()
		s.mu.Lock()
		switch {
		case killed:
			s.c.oneshots[cmd+" killed"]++
		case stopping && p.exitCode() != 0:
			s.c.oneshots[cmd+" stopped"]++
		case p.exitCode() == 0:
			s.c.oneshots[cmd+" ok"]++
		default:
			s.c.oneshots[cmd+" failed"]++
		}
		s.mu.Unlock()
		if killed {
			pause = delay
		}
		sleepCtx(ctx, pause)
	}
}

func (o *oneShotSlot) kill(delay time.Duration) string {
	o.mu.Lock()
	p, name := o.cur, o.curName
	if o.stopping || p == nil || !p.running() {
		o.mu.Unlock()
		return ""
	}
	o.killed, o.delay = true, delay
	o.mu.Unlock()
	p.kill()
	return "sluice " + name
}

func (o *oneShotSlot) setStopping() {
	o.mu.Lock()
	o.stopping = true
	o.mu.Unlock()
}

// stop ends the running command gracefully (SIGTERM: a read commits what
// it has, a drain its batch; killed after 30 s) and starts no other. It
// does not wait for the command to end by itself: a long read or drain
// would hold the end of the fault phase up.
func (o *oneShotSlot) stop() {
	o.setStopping()
	o.mu.Lock()
	p := o.cur
	o.mu.Unlock()
	if p != nil && !p.stop(30*time.Second) {
		o.s.logf("%s did not stop within 30 s of SIGTERM; killed", p.name)
	}
	<-o.done
}
