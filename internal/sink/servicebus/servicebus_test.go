package servicebus_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/messaging/azservicebus"

	"github.com/sluicehq/sluice/internal/changelog"
	"github.com/sluicehq/sluice/internal/sink"
	"github.com/sluicehq/sluice/internal/sink/servicebus"
	"github.com/sluicehq/sluice/internal/testenv"
)

var t0 = time.Date(2026, 11, 25, 8, 0, 0, 0, time.UTC)

func upsert(seq int64, key string, fields string) changelog.Record {
	return changelog.Record{Seq: seq, TS: t0.Add(time.Duration(seq) * time.Millisecond), Op: changelog.OpUpsert, Key: key,
		Source: changelog.Source{Site: "contoso.sharepoint.com:/sites/ops", List: "Orders", ETag: `"{5944},8"`},
		Fields: json.RawMessage(fields)}
}

func del(seq int64, key string) changelog.Record {
	return changelog.Record{Seq: seq, TS: t0.Add(time.Duration(seq) * time.Millisecond), Op: changelog.OpDelete, Key: key}
}

func openSink(t testing.TB, cfg servicebus.Config) *servicebus.Sink {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := servicebus.Open(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return s
}

func apply(t testing.TB, s *servicebus.Sink, b sink.Batch) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := s.Apply(ctx, b); err != nil {
		t.Fatalf("Apply(%d records): %v", len(b.Records), err)
	}
}

// receiver reads a queue through the SDK, as a consumer of the destination
// would, and keeps everything it has seen.
type receiver struct {
	client *azservicebus.Client
	recv   *azservicebus.Receiver
}

func newReceiver(t testing.TB, connString, queue string) *receiver {
	t.Helper()
	client, err := azservicebus.NewClientFromConnectionString(connString, nil)
	if err != nil {
		t.Fatal(err)
	}
	recv, err := client.NewReceiverForQueue(queue, &azservicebus.ReceiverOptions{ReceiveMode: azservicebus.ReceiveModeReceiveAndDelete})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = recv.Close(ctx)
		_ = client.Close(ctx)
	})
	return &receiver{client: client, recv: recv}
}

// drain returns what arrived until the queue stays empty for quiet. Apply
// returns only after the broker accepted every message, so a short quiet
// period after it means nothing more is coming.
func (r *receiver) drain(t testing.TB, quiet time.Duration) []*azservicebus.ReceivedMessage {
	t.Helper()
	var got []*azservicebus.ReceivedMessage
	for {
		ctx, cancel := context.WithTimeout(context.Background(), quiet)
		msgs, err := r.recv.ReceiveMessages(ctx, 1000, nil)
		cancel()
		got = append(got, msgs...)
		if len(msgs) == 0 {
			if err != nil && !errors.Is(err, context.DeadlineExceeded) {
				t.Fatalf("receive: %v", err)
			}
			return got
		}
	}
}

func (r *receiver) want(t testing.TB, n int) []*azservicebus.ReceivedMessage {
	t.Helper()
	got := r.drain(t, 500*time.Millisecond)
	if len(got) != n {
		t.Fatalf("received %d messages, want %d", len(got), n)
	}
	return got
}

func TestMessages(t *testing.T) {
	cs, queue := testenv.ServiceBus(t)
	s := openSink(t, servicebus.Config{ConnectionString: cs, Entity: queue})
	r := newReceiver(t, cs, queue)

	recs := []changelog.Record{upsert(1, "17", `{"id":"17","Title":"PO-1001","Amount":1234.5}`), del(2, "3"), upsert(3, "17", `{"id":"17","Title":"PO-1001b"}`)}
	apply(t, s, sink.Batch{Pipeline: "orders", Destination: "bus", Records: recs})
	check := func(msgs []*azservicebus.ReceivedMessage, recs []changelog.Record, gen int64, idSuffix string) {
		t.Helper()
		for i, m := range msgs {
			rec := recs[i]
			wantID := fmt.Sprintf("orders-%d%s", rec.Seq, idSuffix)
			if m.MessageID != wantID {
				t.Errorf("message %d: MessageID %q, want %q", i, m.MessageID, wantID)
			}
			if m.Subject == nil || *m.Subject != string(rec.Op) {
				t.Errorf("message %d: Subject %v, want %q", i, m.Subject, rec.Op)
			}
			if m.ContentType == nil || *m.ContentType != "application/json" {
				t.Errorf("message %d: ContentType %v", i, m.ContentType)
			}
			if m.SessionID != nil {
				t.Errorf("message %d: SessionID %q without session_key", i, *m.SessionID)
			}
			body, _ := json.Marshal(rec)
			if string(m.Body) != string(body) {
				t.Errorf("message %d: body\n %s\nwant\n %s", i, m.Body, body)
			}
			want := map[string]any{"pipeline": "orders", "key": rec.Key, "seq": rec.Seq, "generation": gen}
			if fmt.Sprint(m.ApplicationProperties) != fmt.Sprint(want) {
				t.Errorf("message %d: application properties %v, want %v", i, m.ApplicationProperties, want)
			}
			for k, v := range want {
				if fmt.Sprintf("%T", m.ApplicationProperties[k]) != fmt.Sprintf("%T", v) {
					t.Errorf("message %d: property %s is %T, want %T", i, k, m.ApplicationProperties[k], v)
				}
			}
		}
	}
	check(r.want(t, 3), recs, 0, "")

	// After a replay the generation is part of the id, so duplicate
	// detection does not drop the replayed messages.
	apply(t, s, sink.Batch{Pipeline: "orders", Destination: "bus", Generation: 2, Records: recs[1:]})
	check(r.want(t, 2), recs[1:], 2, ".2")
}

func TestSessionKey(t *testing.T) {
	cs, queue := testenv.ServiceBus(t)
	s := openSink(t, servicebus.Config{ConnectionString: cs, Entity: queue, SessionKey: true})
	recs := []changelog.Record{upsert(1, "a", `{"id":"a"}`), upsert(2, "b", `{"id":"b"}`), del(3, "a")}
	apply(t, s, sink.Batch{Pipeline: "p", Destination: "bus", Records: recs})

	// A session receiver for key "a" gets exactly that item's changes, in order.
	client, err := azservicebus.NewClientFromConnectionString(cs, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close(context.Background())
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	sr, err := client.AcceptSessionForQueue(ctx, queue, "a", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer sr.Close(context.Background())
	var got []string
	for len(got) < 2 {
		msgs, err := sr.ReceiveMessages(ctx, 10, nil)
		if err != nil {
			t.Fatalf("receive session a: %v (got %v)", err, got)
		}
		for _, m := range msgs {
			if m.SessionID == nil || *m.SessionID != "a" {
				t.Errorf("message %s: SessionID %v, want a", m.MessageID, m.SessionID)
			}
			got = append(got, m.MessageID)
			if err := sr.CompleteMessage(ctx, m, nil); err != nil {
				t.Fatal(err)
			}
		}
	}
	if strings.Join(got, ",") != "p-1,p-3" {
		t.Errorf("session a received %v, want [p-1 p-3]", got)
	}
	r := newReceiver(t, cs, queue)
	if m := r.want(t, 1)[0]; m.SessionID == nil || *m.SessionID != "b" || m.MessageID != "p-2" {
		t.Errorf("left over: %s with SessionID %v, want p-2 with b", m.MessageID, m.SessionID)
	}
}

// fields makes an item whose JSON is about n bytes.
func fields(key string, n int) string {
	return fmt.Sprintf(`{"id":%q,"Notes":%q}`, key, strings.Repeat("x", n))
}

func TestSplitsBatches(t *testing.T) {
	cs, queue := testenv.ServiceBus(t)
	s := openSink(t, servicebus.Config{ConnectionString: cs, Entity: queue})
	r := newReceiver(t, cs, queue)
	// 1,500 messages of about 1 KB cannot fit one 256 KiB AMQP batch.
	var recs []changelog.Record
	for i := range 1500 {
		recs = append(recs, upsert(int64(i+1), fmt.Sprint(i%37), fields(fmt.Sprint(i%37), 800)))
	}
	apply(t, s, sink.Batch{Pipeline: "p", Destination: "bus", Records: recs})
	for i, m := range r.want(t, len(recs)) {
		if want := fmt.Sprintf("p-%d", i+1); m.MessageID != want {
			t.Fatalf("message %d is %s, want %s: order lost", i, m.MessageID, want)
		}
	}
}

func TestBatchSizeCapsSends(t *testing.T) {
	cs, queue := testenv.ServiceBus(t)
	s := openSink(t, servicebus.Config{ConnectionString: cs, Entity: queue, BatchSize: 7})
	r := newReceiver(t, cs, queue)
	var recs []changelog.Record
	for i := range 50 {
		recs = append(recs, upsert(int64(i+1), "k", `{"id":"k"}`))
	}
	apply(t, s, sink.Batch{Pipeline: "p", Destination: "bus", Records: recs})
	for i, m := range r.want(t, len(recs)) {
		if want := fmt.Sprintf("p-%d", i+1); m.MessageID != want {
			t.Fatalf("message %d is %s, want %s", i, m.MessageID, want)
		}
	}
}

func TestOversizeRecordIsRejectedAlone(t *testing.T) {
	cs, queue := testenv.ServiceBus(t)
	s := openSink(t, servicebus.Config{ConnectionString: cs, Entity: queue})
	r := newReceiver(t, cs, queue)
	recs := []changelog.Record{
		upsert(1, "a", fields("a", 100)),
		upsert(2, "b", fields("b", 100)),
		upsert(3, "huge", fields("huge", 300*1024)), // over the 256 KiB Standard limit
		upsert(4, "c", fields("c", 100)),
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	err := s.Apply(ctx, sink.Batch{Pipeline: "p", Destination: "bus", Records: recs})
	re, ok := sink.AsRecordErrors(err)
	if !ok {
		t.Fatalf("Apply: %v, want *sink.RecordErrors", err)
	}
	if len(re.Failed) != 1 || re.Failed[0].Seq != 3 || re.Failed[0].Key != "huge" {
		t.Fatalf("rejected %+v, want only seq 3", re.Failed)
	}
	if !strings.Contains(re.Failed[0].Reason, "maximum message size") {
		t.Errorf("reason %q does not say the message is too large", re.Failed[0].Reason)
	}
	var ids []string
	for _, m := range r.want(t, 3) {
		ids = append(ids, m.MessageID)
	}
	if strings.Join(ids, ",") != "p-1,p-2,p-4" {
		t.Errorf("received %v, want p-1,p-2,p-4", ids)
	}
}

func TestBadFieldsAreRejectedAlone(t *testing.T) {
	cs, queue := testenv.ServiceBus(t)
	s := openSink(t, servicebus.Config{ConnectionString: cs, Entity: queue})
	r := newReceiver(t, cs, queue)
	recs := []changelog.Record{upsert(1, "a", `{"id":"a"}`), upsert(2, "b", `{"id":`), upsert(3, "c", `{"id":"c"}`)}
	err := s.Apply(context.Background(), sink.Batch{Pipeline: "p", Destination: "bus", Records: recs})
	if re, ok := sink.AsRecordErrors(err); !ok || len(re.Failed) != 1 || re.Failed[0].Seq != 2 {
		t.Fatalf("Apply: %v, want only seq 2 rejected", err)
	}
	r.want(t, 2)
}

func TestContextCancellation(t *testing.T) {
	cs, queue := testenv.ServiceBus(t)
	s := openSink(t, servicebus.Config{ConnectionString: cs, Entity: queue})
	var recs []changelog.Record
	for i := range 20000 {
		recs = append(recs, upsert(int64(i+1), fmt.Sprint(i%100), fields("k", 200)))
	}
	b := sink.Batch{Pipeline: "p", Destination: "bus", Records: recs}

	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	err := s.Apply(ctx, b)
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("Apply with a cancelled context: %v, want context.Canceled", err)
	}

	ctx, cancel = context.WithCancel(context.Background())
	time.AfterFunc(20*time.Millisecond, cancel)
	start := time.Now()
	err = s.Apply(ctx, b)
	if el := time.Since(start); el > 3*time.Second {
		t.Errorf("Apply cancelled after 20ms returned after %v", el)
	}
	if _, ok := sink.AsRecordErrors(err); ok {
		t.Fatalf("cancelled Apply reported rejections: %v", err)
	}
	if err != nil && !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled Apply: %v, want nil or context.Canceled", err)
	}
	// The sink still works afterwards.
	apply(t, s, sink.Batch{Pipeline: "p", Destination: "bus", Records: recs[:10]})
}

func TestBrokerDown(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close() // nothing listens there any more
	s := openSink(t, servicebus.Config{ConnectionString: testenv.ServiceBusConnString(port), Entity: "q", MaxRetries: -1})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err = s.Apply(ctx, sink.Batch{Pipeline: "p", Destination: "bus", Records: []changelog.Record{upsert(1, "a", `{}`)}})
	if err == nil {
		t.Fatal("Apply with the broker down succeeded")
	}
	if _, ok := sink.AsRecordErrors(err); ok {
		t.Fatalf("broker down reported as per-record rejections: %v", err)
	}
	if ctx.Err() != nil {
		t.Fatalf("Apply ran into the test's deadline instead of failing: %v", err)
	}
	t.Log(err)
}

func TestMissingEntity(t *testing.T) {
	cs, _ := testenv.ServiceBus(t)
	// The test broker refuses entities named missing-* with amqp:not-found.
	s := openSink(t, servicebus.Config{ConnectionString: cs, Entity: "missing-orders", MaxRetries: -1})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err := s.Apply(ctx, sink.Batch{Pipeline: "p", Destination: "bus", Records: []changelog.Record{upsert(1, "a", `{}`)}})
	if err == nil {
		t.Fatal("Apply to a missing entity succeeded")
	}
	if _, ok := sink.AsRecordErrors(err); ok {
		t.Fatalf("missing entity reported as per-record rejections (would dead-letter good data): %v", err)
	}
	if !strings.Contains(err.Error(), "does not exist") || !strings.Contains(err.Error(), "missing-orders") {
		t.Errorf("error does not say which entity is missing: %v", err)
	}
}

func TestOpenValidates(t *testing.T) {
	for _, cfg := range []servicebus.Config{
		{ConnectionString: "Endpoint=sb://x/;SharedAccessKeyName=k;SharedAccessKey=v"},
		{Entity: "q"},
		{Entity: "q", ConnectionString: "Endpoint=sb://x/;SharedAccessKeyName=k;SharedAccessKey=v", Namespace: "x.servicebus.windows.net"},
		{Entity: "q", ConnectionString: "Endpoint=sb://x/;SharedAccessKeyName=k;SharedAccessKey=secretvalue;Bogus"},
	} {
		if _, err := servicebus.Open(context.Background(), cfg); err == nil {
			t.Errorf("Open(%+v) succeeded", cfg)
		} else if strings.Contains(err.Error(), "secretvalue") {
			t.Errorf("Open error reveals the key: %v", err)
		}
	}
}

func TestEventID(t *testing.T) {
	for _, tc := range []struct {
		seq, gen int64
		want     string
	}{{42, 0, "orders-42"}, {42, 1, "orders-42.1"}, {1, 12, "orders-1.12"}} {
		if got := servicebus.EventID("orders", tc.seq, tc.gen); got != tc.want {
			t.Errorf("EventID(orders, %d, %d) = %q, want %q", tc.seq, tc.gen, got, tc.want)
		}
	}
}

// BenchmarkSend reports messages/s into the local test broker (a Python
// process, so this measures the broker as much as the sink: orientation only).
func BenchmarkSend(b *testing.B) {
	cs, queue := testenv.ServiceBus(b)
	s := openSink(b, servicebus.Config{ConnectionString: cs, Entity: queue})
	const n = 1000
	recs := make([]changelog.Record, n)
	for i := range recs {
		recs[i] = upsert(int64(i+1), fmt.Sprint(i%200), `{"id":"1","Title":"PO-1001","Status":"Shipped","Amount":1234.5,"Tags":["a","b"]}`)
	}
	b.ResetTimer()
	for b.Loop() {
		apply(b, s, sink.Batch{Pipeline: "bench", Destination: "bus", Records: recs})
	}
	b.ReportMetric(float64(n*b.N)/b.Elapsed().Seconds(), "messages/s")
}

func TestTopicSubscription(t *testing.T) {
	cs, topic := testenv.ServiceBus(t)
	client, err := azservicebus.NewClientFromConnectionString(cs, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close(context.Background())
	recv, err := client.NewReceiverForSubscription(topic, "audit", &azservicebus.ReceiverOptions{ReceiveMode: azservicebus.ReceiveModeReceiveAndDelete})
	if err != nil {
		t.Fatal(err)
	}
	// The first receive attaches the link, which creates the subscription.
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	_, _ = recv.ReceiveMessages(ctx, 1, nil)
	cancel()

	s := openSink(t, servicebus.Config{ConnectionString: cs, Entity: topic})
	apply(t, s, sink.Batch{Pipeline: "p", Destination: "bus", Records: []changelog.Record{upsert(1, "a", `{"id":"a"}`)}})
	ctx, cancel = context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	msgs, err := recv.ReceiveMessages(ctx, 10, nil)
	if err != nil || len(msgs) != 1 || msgs[0].MessageID != "p-1" {
		t.Fatalf("subscription received %d messages (%v), want p-1", len(msgs), err)
	}
}
