package azstore

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore/to"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/lease"
)

// Lease is a held blob lease. Leases keep two processes from doing the same
// work; they do not keep data safe (a paused process may still send a request
// after its lease expired) — the conditional writes do that.
type Lease struct {
	client *lease.BlobClient
	name   string
	dur    time.Duration

	mu       sync.Mutex
	released bool
}

// AcquireLease takes a lease of dur (15 s to 60 s, as Azure allows) on the
// blob name, creating an empty blob first when it does not exist.
// A lease another process holds is ErrLeaseHeld.
func (s *Store) AcquireLease(ctx context.Context, name string, dur time.Duration) (*Lease, error) {
	secs := int32(dur / time.Second)
	if secs < 15 || secs > 60 {
		return nil, fmt.Errorf("lease %s: duration %s outside 15s..60s", name, dur)
	}
	bc := s.container.NewBlobClient(name)
	lc, err := lease.NewBlobClient(bc, nil)
	if err != nil {
		return nil, fmt.Errorf("lease %s: %w", name, err)
	}
	for attempt := 0; ; attempt++ {
		_, err = lc.AcquireLease(ctx, secs, nil)
		if err == nil {
			return &Lease{client: lc, name: name, dur: time.Duration(secs) * time.Second}, nil
		}
		err = classify(err)
		if errors.Is(err, ErrNotFound) && attempt == 0 {
			// Leases need a blob; create it (losing that race is fine).
			if _, cerr := s.Create(ctx, name, nil, nil); cerr != nil && !errors.Is(cerr, ErrConflict) && !errors.Is(cerr, ErrLeaseHeld) {
				return nil, fmt.Errorf("lease %s: create lease blob: %w", name, cerr)
			}
			continue
		}
		if errors.Is(err, ErrConflict) {
			// Azurite answers 409 without LeaseAlreadyPresent in some versions.
			err = fmt.Errorf("%w (%w)", ErrLeaseHeld, err)
		}
		return nil, fmt.Errorf("lease %s: %w", name, err)
	}
}

// Name is the leased blob's name.
func (l *Lease) Name() string { return l.name }

// Renew extends the lease by its duration. ErrLeaseLost means another process
// may now hold it: stop the work the lease guarded.
func (l *Lease) Renew(ctx context.Context) error {
	if _, err := l.client.RenewLease(ctx, nil); err != nil {
		err = classify(err)
		if !errors.Is(err, ErrLeaseLost) && isLeaseGone(err) {
			err = fmt.Errorf("%w (%w)", ErrLeaseLost, err)
		}
		return fmt.Errorf("renew lease %s: %w", l.name, err)
	}
	return nil
}

func isLeaseGone(err error) bool {
	return errors.Is(err, ErrConflict) || errors.Is(err, ErrNotFound)
}

// Release gives the lease up; releasing twice is harmless.
func (l *Lease) Release(ctx context.Context) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.released {
		return nil
	}
	l.released = true
	if _, err := l.client.ReleaseLease(ctx, nil); err != nil {
		err = classify(err)
		if errors.Is(err, ErrLeaseLost) {
			return nil // expired or taken already: nothing to give up
		}
		return fmt.Errorf("release lease %s: %w", l.name, err)
	}
	return nil
}

// Keep renews the lease every third of its duration until ctx ends, and
// calls lost (once) when a renewal fails, so the caller can cancel the work
// the lease guards. It returns a stop function that waits for the renewer.
func (l *Lease) Keep(ctx context.Context, lost func(error)) (stop func()) {
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		t := time.NewTicker(l.dur / 3)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				rctx, rcancel := context.WithTimeout(ctx, l.dur/3)
				err := l.Renew(rctx)
				rcancel()
				if err != nil && ctx.Err() == nil {
					lost(err)
					return
				}
			}
		}
	}()
	return func() { cancel(); <-done }
}

// BreakLease ends any lease on name at once (an operator's tool, and tests).
func (s *Store) BreakLease(ctx context.Context, name string) error {
	lc, err := lease.NewBlobClient(s.container.NewBlobClient(name), nil)
	if err != nil {
		return err
	}
	if _, err := lc.BreakLease(ctx, &lease.BlobBreakOptions{BreakPeriod: to.Ptr(int32(0))}); err != nil {
		return fmt.Errorf("break lease %s: %w", name, classify(err))
	}
	return nil
}
