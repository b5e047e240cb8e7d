package devhost

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/sluicehq/sluice/internal/azstore"
)

// defaultTTL is a queue message's time to live when the sender set none;
// azstore does not report ExpirationTime, so it is derived from this.
const defaultTTL = 7 * 24 * time.Hour

// queueTrigger listens on one queue (§2.4, §7.2).
type queueTrigger struct {
	h           *Host
	fn, binding string
	queue       string
	poison      string // "" when the host would have none (§2.4)

	mu       sync.Mutex
	inflight int
	done     chan struct{} // a message finished
}

var queueNameRE = regexp.MustCompile(`^[a-z0-9](?:[a-z0-9]|-[a-z0-9])*$`)

func (h *Host) newQueue(fn *function, b binding) (*queueTrigger, error) {
	name, err := h.expand("queueName", b.QueueName)
	if err != nil {
		return nil, fmt.Errorf("devhost: function %s: %w", fn.Name, err)
	}
	if len(name) < 3 || len(name) > 63 || !queueNameRE.MatchString(name) {
		return nil, fmt.Errorf("devhost: function %s: queueName %q is not a valid queue name (3-63 lower-case letters, digits and single hyphens, §6.2)", fn.Name, name)
	}
	if c := b.Connection; c != "" && c != "AzureWebJobsStorage" {
		h.log.Warn("devhost: queue connection other than AzureWebJobsStorage; using the host's storage", "function", fn.Name, "connection", c)
	}
	q := &queueTrigger{h: h, fn: fn.Name, binding: b.Name, queue: name, done: make(chan struct{}, 1)}
	// §2.4: no poison queue for a -poison queue or a name that would be too long.
	if p := name + "-poison"; !strings.HasSuffix(name, "-poison") && len(p) <= 63 {
		q.poison = p
	}
	return q, nil
}

// run polls the queue until ctx ends (§2.4): a randomized exponential
// backoff from MinPollInterval to maxPollingInterval while it is empty, at
// once again after it found messages, and a new batch only while no more
// than newBatchThreshold messages are running.
func (q *queueTrigger) run(ctx context.Context) {
	st := q.h.opts.Store
	qs := q.h.settings.Queues
	log := q.h.log.With("function", q.fn, "trigger", "queue", "queue", q.queue)
	if err := st.EnsureQueue(ctx, q.queue); err != nil && ctx.Err() == nil {
		log.Warn("create queue", "error", err.Error())
	}
	backoff := newBackoff(q.h.opts.MinPollInterval, max(qs.MaxPollingInterval, q.h.opts.MinPollInterval))
	failures := 0
	for ctx.Err() == nil {
		if !q.waitForRoom(ctx, qs.NewBatchThreshold) {
			return
		}
		msgs, err := st.Dequeue(ctx, q.queue, qs.BatchSize, q.h.opts.MessageVisibility)
		if ctx.Err() != nil {
			q.release(msgs) // dequeued while stopping: hand them back
			return
		}
		if err != nil {
			if failures++; failures == 1 || failures%20 == 0 {
				log.Warn("poll failed; backing off", "error", err.Error(), "failures", failures)
			}
			sleep(ctx, backoff.next())
			continue
		}
		failures = 0
		if len(msgs) == 0 {
			sleep(ctx, backoff.next())
			continue
		}
		backoff.reset()
		dequeued := time.Now()
		for _, m := range msgs {
			q.mu.Lock()
			q.inflight++
			q.mu.Unlock()
			q.h.inflight.Go(func() {
				defer q.finished()
				q.process(m, dequeued)
			})
		}
	}
}

func (q *queueTrigger) waitForRoom(ctx context.Context, threshold int) bool {
	for {
		q.mu.Lock()
		n := q.inflight
		q.mu.Unlock()
		if n <= threshold {
			return true
		}
		select {
		case <-ctx.Done():
			return false
		case <-q.done:
		}
	}
}

func (q *queueTrigger) finished() {
	q.mu.Lock()
	q.inflight--
	q.mu.Unlock()
	select {
	case q.done <- struct{}{}:
	default:
	}
}

// storeCtx bounds a storage call made after the invocation, which must
// happen even while the host stops.
func storeCtx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), 30*time.Second)
}

// release makes messages visible again at once, unprocessed.
func (q *queueTrigger) release(msgs []azstore.Message) {
	for _, m := range msgs {
		ctx, cancel := storeCtx()
		_, _ = q.h.opts.Store.SetVisibility(ctx, q.queue, m, 0)
		cancel()
	}
}

// process handles one message as QueueProcessor does (§7.2).
func (q *queueTrigger) process(m azstore.Message, dequeued time.Time) {
	qs := q.h.settings.Queues
	began := time.Now()
	attrs := []slog.Attr{slog.String("messageId", m.ID), slog.Int64("dequeueCount", m.DequeueCount)}

	// §2.4: picked up more often than allowed (a crash between attempts):
	// poison without invoking.
	if m.DequeueCount > int64(qs.MaxDequeueCount) {
		err := fmt.Errorf("dequeue count %d exceeds maxDequeueCount %d", m.DequeueCount, qs.MaxDequeueCount)
		q.poisonOrRelease(m, err, began, reply{}, attrs)
		return
	}
	text := []byte(m.Text)
	if qs.MessageEncoding != "none" {
		dec, err := base64.StdEncoding.DecodeString(m.Text)
		if err != nil {
			// §7.2 invalid encoding: straight to the poison queue, never invoked.
			q.poisonOrRelease(m, fmt.Errorf("message is not base64 (messageEncoding base64): %w", err), began, reply{}, attrs)
			return
		}
		text = dec
	}

	// Keep the message hidden while it runs, as the listener does (§2.4).
	var (
		mu  sync.Mutex
		cur = m
	)
	rctx, stopRenew := context.WithCancel(context.Background())
	renewed := make(chan struct{})
	go func() {
		defer close(renewed)
		vis := q.h.opts.MessageVisibility
		for sleep(rctx, vis/2) {
			mu.Lock()
			pr, err := q.h.opts.Store.SetVisibility(rctx, q.queue, cur, vis)
			if err == nil {
				cur.PopReceipt = pr
			}
			mu.Unlock()
			if err != nil && rctx.Err() == nil {
				q.h.log.Warn("renew message visibility", "function", q.fn, "messageId", m.ID, "error", err.Error())
			}
		}
	}()
	r, err := q.h.invoke(q.h.invCtx, q.fn, q.payload(m, text, dequeued))
	stopRenew()
	<-renewed
	m = cur

	ctx, cancel := storeCtx()
	defer cancel()
	switch {
	case err == nil:
		if derr := q.h.opts.Store.DeleteMessage(ctx, q.queue, m); derr != nil {
			q.h.logInvocation(q.fn, "queue", began, "succeeded", r, fmt.Errorf("invocation succeeded but the message could not be deleted (it will run again): %w", derr), attrs...)
			return
		}
		q.h.logInvocation(q.fn, "queue", began, "succeeded", r, nil, attrs...)
	case q.h.invCtx.Err() != nil:
		// Cut off by shutdown: not the message's fault. Leave it to come
		// back, never delete or poison it.
		_, _ = q.h.opts.Store.SetVisibility(ctx, q.queue, m, qs.VisibilityTimeout)
		q.h.logInvocation(q.fn, "queue", began, "cancelled", r, err, attrs...)
	case m.DequeueCount >= int64(qs.MaxDequeueCount):
		q.poisonOrRelease(m, err, began, r, attrs)
	default:
		// §7.2 failure: released, visible again after visibilityTimeout.
		if _, verr := q.h.opts.Store.SetVisibility(ctx, q.queue, m, qs.VisibilityTimeout); verr != nil {
			err = fmt.Errorf("%w; and releasing the message failed (it returns after its visibility lapses): %v", err, verr)
		}
		q.h.logInvocation(q.fn, "queue", began, "failed", r, err, append(attrs, slog.String("retryIn", qs.VisibilityTimeout.String()))...)
	}
}

// poisonOrRelease copies the message, as stored, to the poison queue and
// deletes it (§2.4, §7.2); without a poison queue it is released.
func (q *queueTrigger) poisonOrRelease(m azstore.Message, cause error, began time.Time, r reply, attrs []slog.Attr) {
	ctx, cancel := storeCtx()
	defer cancel()
	st := q.h.opts.Store
	if q.poison == "" {
		_, _ = st.SetVisibility(ctx, q.queue, m, q.h.settings.Queues.VisibilityTimeout)
		q.h.logInvocation(q.fn, "queue", began, "failed", r, fmt.Errorf("%w (no poison queue for %s)", cause, q.queue), attrs...)
		return
	}
	if err := st.EnqueueText(ctx, q.poison, m.Text, 0); err != nil {
		_, _ = st.SetVisibility(ctx, q.queue, m, q.h.settings.Queues.VisibilityTimeout)
		q.h.logInvocation(q.fn, "queue", began, "failed", r, fmt.Errorf("%w; and copying it to %s failed: %v", cause, q.poison, err), attrs...)
		return
	}
	if err := st.DeleteMessage(ctx, q.queue, m); err != nil {
		cause = fmt.Errorf("%w; copied to %s but not deleted: %v", cause, q.poison, err)
	}
	q.h.logInvocation(q.fn, "queue", began, "poisoned", r, cause, append(attrs, slog.String("poisonQueue", q.poison))...)
}

// queuePayload is the queue invocation (§7.2): the message text as a
// double-encoded string; Metadata from QueueTriggerBinding.
type queuePayload struct {
	Data     map[string]string `json:"Data"`
	Metadata map[string]any    `json:"Metadata"`
}

func (q *queueTrigger) payload(m azstore.Message, text []byte, dequeued time.Time) queuePayload {
	meta := map[string]any{
		"DequeueCount":    strconv.FormatInt(m.DequeueCount, 10), // a long: "1" (§4)
		"ExpirationTime":  dotnetTime(m.InsertedAt.Add(defaultTTL)),
		"Id":              hostString(m.ID),
		"InsertionTime":   dotnetTime(m.InsertedAt),
		"NextVisibleTime": dotnetTime(dequeued.Add(q.h.opts.MessageVisibility)),
		"PopReceipt":      hostString(m.PopReceipt),
	}
	addBodyData(meta, text)
	meta["sys"] = q.h.sys(q.fn)
	return queuePayload{
		Data:     map[string]string{q.binding: hostString(string(text))},
		Metadata: meta,
	}
}

// addBodyData copies a JSON object message's top-level non-array
// properties into the metadata as Utility.ApplyBindingData does (§7.2):
// objects as objects, everything else as its .NET string, then
// string-encoded (§4). Keys the trigger already set are kept; keys ending
// in "trigger" and nulls are skipped (§4).
func addBodyData(meta map[string]any, text []byte) {
	t := bytes.TrimSpace(text)
	if len(t) < 2 || t[0] != '{' || t[len(t)-1] != '}' {
		return
	}
	var props map[string]json.RawMessage
	if json.Unmarshal(t, &props) != nil {
		return
	}
	taken := func(k string) bool {
		for have := range meta {
			if strings.EqualFold(have, k) {
				return true
			}
		}
		return strings.EqualFold(k, "sys")
	}
	for k, v := range props {
		v = bytes.TrimSpace(v)
		if len(v) == 0 || v[0] == '[' || string(v) == "null" || taken(k) || strings.HasSuffix(strings.ToLower(k), "trigger") {
			continue
		}
		switch v[0] {
		case '{':
			meta[k] = v
		case '"':
			var s string
			_ = json.Unmarshal(v, &s)
			meta[k] = hostString(s)
		case 't':
			meta[k] = hostString("True")
		case 'f':
			meta[k] = hostString("False")
		default:
			meta[k] = hostString(string(v))
		}
	}
}

// backoff is the listener's randomized exponential backoff (§2.4).
type backoff struct {
	lo, hi time.Duration
	n      int
}

func newBackoff(lo, hi time.Duration) *backoff { return &backoff{lo: lo, hi: hi} }

func (b *backoff) reset() { b.n = 0 }

// next is lo × (2^n − 1) with ±20 % jitter, at most hi.
func (b *backoff) next() time.Duration {
	if b.n < 30 {
		b.n++
	}
	d := time.Duration(float64(b.lo) * float64(int64(1)<<b.n-1) * (0.8 + 0.4*rand.Float64()))
	if d > b.hi || d <= 0 {
		return b.hi
	}
	return d
}
