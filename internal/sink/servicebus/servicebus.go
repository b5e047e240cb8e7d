// Package servicebus is the Azure Service Bus destination: one message per
// change record, sent in seq order in size-limited AMQP batches (DESIGN §3.4).
// It must never let an azservicebus type or a connection string escape, and
// never report a destination-wide failure as a per-record rejection.
package servicebus

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azidentity"
	"github.com/Azure/azure-sdk-for-go/sdk/messaging/azservicebus"

	"github.com/sluicehq/sluice/internal/changelog"
	"github.com/sluicehq/sluice/internal/sink"
)

// Config says where to send. Exactly one of ConnectionString and Namespace
// is set.
type Config struct {
	// ConnectionString is a namespace connection string (SAS); callers pass
	// config.Secret.Reveal() here and the sink never prints it.
	ConnectionString string
	// Namespace is a fully qualified namespace (x.servicebus.windows.net)
	// reached with Credential.
	Namespace string
	// Entity is the queue or topic.
	Entity string
	// SessionKey sets SessionID = record key, so a session-enabled entity
	// keeps per-item order.
	SessionKey bool
	// BatchSize caps the messages of one AMQP send; 0 means only the
	// entity's size limit does.
	BatchSize int
	// Credential is used with Namespace; nil means DefaultAzureCredential.
	Credential azcore.TokenCredential
	// MaxRetries is how often the SDK retries one operation before Apply
	// fails: 0 means 2, negative means never. The engine retries whole
	// batches with its own backoff, so the SDK's retries stay short.
	MaxRetries int
}

// Sink sends change records to one Service Bus queue or topic.
type Sink struct {
	cfg    Config
	client *azservicebus.Client
	sender *azservicebus.Sender

	// mu keeps one batch in flight: a second Apply waits, so messages leave
	// in seq order even if a caller shares the sink.
	mu sync.Mutex
}

// Open creates the client and the sender. It does no network I/O: a missing
// entity or bad credentials show up as the first Apply's error.
func Open(ctx context.Context, cfg Config) (*Sink, error) {
	if cfg.Entity == "" {
		return nil, errors.New("open Service Bus destination: entity (queue or topic) is required")
	}
	if (cfg.ConnectionString == "") == (cfg.Namespace == "") {
		return nil, fmt.Errorf("open Service Bus destination %q: set exactly one of connection_string and namespace", cfg.Entity)
	}
	retries := int32(2)
	if cfg.MaxRetries < 0 {
		retries = -1
	} else if cfg.MaxRetries > 0 {
		retries = int32(cfg.MaxRetries)
	}
	opts := &azservicebus.ClientOptions{RetryOptions: azservicebus.RetryOptions{
		MaxRetries: retries, RetryDelay: 500 * time.Millisecond, MaxRetryDelay: 10 * time.Second,
	}}
	var client *azservicebus.Client
	var err error
	if cfg.ConnectionString != "" {
		// The SDK's parse errors name keys, never values, so they are safe to wrap.
		client, err = azservicebus.NewClientFromConnectionString(cfg.ConnectionString, opts)
		if err != nil {
			return nil, fmt.Errorf("open Service Bus destination %q: connection string: %v", cfg.Entity, err)
		}
	} else {
		cred := cfg.Credential
		if cred == nil {
			if cred, err = azidentity.NewDefaultAzureCredential(nil); err != nil {
				return nil, fmt.Errorf("open Service Bus destination %q on %s: no Azure identity: %v", cfg.Entity, cfg.Namespace, err)
			}
		}
		client, err = azservicebus.NewClient(cfg.Namespace, cred, opts)
		if err != nil {
			return nil, fmt.Errorf("open Service Bus destination %q on %s: %v", cfg.Entity, cfg.Namespace, err)
		}
	}
	sender, err := client.NewSender(cfg.Entity, nil)
	if err != nil {
		_ = client.Close(ctx)
		return nil, fmt.Errorf("open Service Bus sender for %q: %v", cfg.Entity, err)
	}
	return &Sink{cfg: cfg, client: client, sender: sender}, nil
}

// EventID is the id of DESIGN §3.4: <pipeline>-<seq>, and .<generation>
// after the first replay, so duplicate detection drops retries but not an
// operator's replay.
func EventID(pipeline string, seq, generation int64) string {
	id := pipeline + "-" + strconv.FormatInt(seq, 10)
	if generation != 0 {
		id += "." + strconv.FormatInt(generation, 10)
	}
	return id
}

// Apply sends one message per record, in seq order. Messages fill AMQP
// batches up to the entity's size limit; a full batch is sent before the
// next one starts, so at most one batch is in flight. A record too large for
// a batch of its own is rejected (RecordErrors) and the others are sent.
// Any other failure is the destination's: a plain error, and the engine
// retries the whole batch — messages already sent go again with the same
// MessageID, which duplicate detection drops.
func (s *Sink) Apply(ctx context.Context, b sink.Batch) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := ctx.Err(); err != nil {
		return s.fail(ctx, "send", err)
	}
	var rejected []sink.RecordError
	reject := func(r *changelog.Record, reason string) {
		rejected = append(rejected, sink.RecordError{Seq: r.Seq, Key: r.Key, Reason: reason})
	}

	batch, err := s.sender.NewMessageBatch(ctx, nil)
	if err != nil {
		return s.fail(ctx, "prepare a batch for", err)
	}
	for i := range b.Records {
		r := &b.Records[i]
		msg, err := s.message(b, r)
		if err != nil {
			reject(r, err.Error())
			continue
		}
		if s.cfg.BatchSize > 0 && int(batch.NumMessages()) >= s.cfg.BatchSize {
			if batch, err = s.flush(ctx, batch); err != nil {
				return err
			}
		}
		err = batch.AddMessage(msg, nil)
		if errors.Is(err, azservicebus.ErrMessageTooLarge) && batch.NumMessages() > 0 {
			if batch, err = s.flush(ctx, batch); err != nil {
				return err
			}
			err = batch.AddMessage(msg, nil)
		}
		switch {
		case errors.Is(err, azservicebus.ErrMessageTooLarge):
			// Alone in an empty batch and still too big: no retry can help.
			reject(r, fmt.Sprintf("message of %d body bytes exceeds the entity's maximum message size: "+
				"shrink the item or use a Premium namespace with a larger max message size", len(msg.Body)))
		case err != nil:
			// Encoding this one message failed; the cause is in its content.
			reject(r, "encode as an AMQP message: "+err.Error())
		}
	}
	if batch.NumMessages() > 0 {
		if _, err := s.flush(ctx, batch); err != nil {
			return err
		}
	}
	if len(rejected) > 0 {
		return &sink.RecordErrors{Failed: rejected}
	}
	return nil
}

// flush sends batch and returns a fresh, empty one.
func (s *Sink) flush(ctx context.Context, batch *azservicebus.MessageBatch) (*azservicebus.MessageBatch, error) {
	if err := s.sender.SendMessageBatch(ctx, batch, nil); err != nil {
		return nil, s.fail(ctx, "send", err)
	}
	next, err := s.sender.NewMessageBatch(ctx, nil)
	if err != nil {
		return nil, s.fail(ctx, "prepare a batch for", err)
	}
	return next, nil
}

// message builds the message of DESIGN §3.4 for one record.
func (s *Sink) message(b sink.Batch, r *changelog.Record) (*azservicebus.Message, error) {
	body, err := r.MarshalJSON()
	if err != nil {
		return nil, fmt.Errorf("encode record as JSON: %v", err)
	}
	id := EventID(b.Pipeline, r.Seq, b.Generation)
	subject := string(r.Op)
	contentType := "application/json"
	msg := &azservicebus.Message{
		MessageID:   &id,
		Subject:     &subject,
		ContentType: &contentType,
		Body:        body,
		ApplicationProperties: map[string]any{
			"pipeline":   b.Pipeline,
			"key":        r.Key,
			"seq":        r.Seq,
			"generation": b.Generation,
		},
	}
	if s.cfg.SessionKey {
		key := r.Key
		msg.SessionID = &key
	}
	return msg, nil
}

// fail turns an SDK error into a destination-wide error that says what to
// do about it. SDK types stay behind: the result wraps only context errors.
func (s *Sink) fail(ctx context.Context, op string, err error) error {
	where := fmt.Sprintf("%s Service Bus entity %q", op, s.cfg.Entity)
	if ctxErr := ctx.Err(); ctxErr != nil {
		return fmt.Errorf("%s: %w", where, ctxErr)
	}
	var sbErr *azservicebus.Error
	if errors.As(err, &sbErr) {
		switch sbErr.Code {
		case azservicebus.CodeNotFound:
			return fmt.Errorf("%s: the entity does not exist: create the queue or topic, or fix entity in the pipelines file (%v)", where, err)
		case azservicebus.CodeUnauthorizedAccess:
			return fmt.Errorf("%s: not authorized: check the connection string's key, or grant the identity the Azure Service Bus Data Sender role (%v)", where, err)
		case azservicebus.CodeConnectionLost, azservicebus.CodeTimeout, azservicebus.CodeClosed:
			return fmt.Errorf("%s: connection failed, will retry (%v)", where, err)
		}
	}
	return fmt.Errorf("%s: %s", where, strings.TrimSpace(err.Error()))
}

// Close closes the sender and the client (and so the AMQP connection).
func (s *Sink) Close() error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return errors.Join(s.sender.Close(ctx), s.client.Close(ctx))
}
