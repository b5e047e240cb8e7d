package azstore

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore/to"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azqueue/v2"
)

// Message is one queue message as received.
type Message struct {
	ID           string
	PopReceipt   string
	Text         string // as stored: base64 for messages sluice writes
	DequeueCount int64
	InsertedAt   time.Time
}

// EnsureQueue creates the queue when it is missing.
func (s *Store) EnsureQueue(ctx context.Context, queue string) error {
	if _, err := s.queues.NewQueueClient(queue).Create(ctx, nil); err != nil && !isCode(err, http.StatusConflict) {
		return fmt.Errorf("create queue %s: %w", queue, classify(err))
	}
	return nil
}

// Enqueue sends v as base64 of its JSON — the Functions host's default
// encoding for queue triggers (messageEncoding "base64"). The queue is
// created when missing.
func (s *Store) Enqueue(ctx context.Context, queue string, v any) error {
	return s.EnqueueAfter(ctx, queue, v, 0)
}

// EnqueueAfter is Enqueue with the message visible only after delay.
func (s *Store) EnqueueAfter(ctx context.Context, queue string, v any, delay time.Duration) error {
	data, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("enqueue to %s: encode: %w", queue, err)
	}
	return s.EnqueueText(ctx, queue, base64.StdEncoding.EncodeToString(data), delay)
}

// EnqueueText sends text exactly as given, visible after delay.
func (s *Store) EnqueueText(ctx context.Context, queue, text string, delay time.Duration) error {
	qc := s.queues.NewQueueClient(queue)
	opts := &azqueue.EnqueueMessageOptions{}
	if delay > 0 {
		opts.VisibilityTimeout = to.Ptr(int32(delay / time.Second))
	}
	_, err := qc.EnqueueMessage(ctx, text, opts)
	if isCode(err, http.StatusNotFound) {
		if err = s.EnsureQueue(ctx, queue); err == nil {
			_, err = qc.EnqueueMessage(ctx, text, opts)
		}
	}
	if err != nil {
		return fmt.Errorf("enqueue to %s: %w", queue, classify(err))
	}
	return nil
}

// Dequeue receives up to n messages and hides them for visibility.
func (s *Store) Dequeue(ctx context.Context, queue string, n int, visibility time.Duration) ([]Message, error) {
	resp, err := s.queues.NewQueueClient(queue).DequeueMessages(ctx, &azqueue.DequeueMessagesOptions{
		NumberOfMessages:  to.Ptr(int32(n)),
		VisibilityTimeout: to.Ptr(int32(max(1, visibility/time.Second))),
	})
	if err != nil {
		return nil, fmt.Errorf("dequeue from %s: %w", queue, classify(err))
	}
	out := make([]Message, 0, len(resp.Messages))
	for _, m := range resp.Messages {
		out = append(out, Message{
			ID: deref(m.MessageID), PopReceipt: deref(m.PopReceipt), Text: deref(m.MessageText),
			DequeueCount: deref(m.DequeueCount), InsertedAt: deref(m.InsertionTime),
		})
	}
	return out, nil
}

// DeleteMessage removes a received message.
func (s *Store) DeleteMessage(ctx context.Context, queue string, m Message) error {
	if _, err := s.queues.NewQueueClient(queue).DeleteMessage(ctx, m.ID, m.PopReceipt, nil); err != nil {
		return fmt.Errorf("delete message %s from %s: %w", m.ID, queue, classify(err))
	}
	return nil
}

// SetVisibility makes a received message visible again after d (0: at once)
// and returns its new pop receipt.
func (s *Store) SetVisibility(ctx context.Context, queue string, m Message, d time.Duration) (string, error) {
	resp, err := s.queues.NewQueueClient(queue).UpdateMessage(ctx, m.ID, m.PopReceipt, m.Text, &azqueue.UpdateMessageOptions{
		VisibilityTimeout: to.Ptr(int32(d / time.Second)),
	})
	if err != nil {
		return "", fmt.Errorf("update message %s in %s: %w", m.ID, queue, classify(err))
	}
	return deref(resp.PopReceipt), nil
}

// DecodeMessage undoes Enqueue's encoding into v.
func DecodeMessage(text string, v any) error {
	data, err := base64.StdEncoding.DecodeString(text)
	if err != nil {
		return fmt.Errorf("queue message is not base64: %w", err)
	}
	if err := json.Unmarshal(data, v); err != nil {
		return fmt.Errorf("queue message is not JSON: %w", err)
	}
	return nil
}
