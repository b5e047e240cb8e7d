package devhost

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"net/http"
	"testing"
	"time"

	"github.com/sluicehq/sluice/internal/azstore"
	"github.com/sluicehq/sluice/internal/functions"
	"github.com/sluicehq/sluice/internal/testenv"
)

// queueApp writes an app with one queue function on a queue of its own.
func queueApp(t *testing.T, queue string) string {
	return writeApp(t, `{"version":"2.0","functionTimeout":"00:01:00","extensions":{"queues":{
		"maxPollingInterval":"00:00:00.200","visibilityTimeout":"00:00:00","batchSize":4,
		"newBatchThreshold":2,"maxDequeueCount":3,"messageEncoding":"base64"}}}`,
		map[string]string{"write": `{"bindings":[{"name":"msg","type":"queueTrigger","direction":"in","queueName":"` + queue + `","connection":"AzureWebJobsStorage"}]}`})
}

// drain returns what is visible in queue now.
func drain(t *testing.T, st *azstore.Store, queue string) []azstore.Message {
	t.Helper()
	msgs, err := st.Dequeue(context.Background(), queue, 32, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	return msgs
}

func TestQueueInvokesWithTheHostsPayloadAndDeletes(t *testing.T) {
	t.Parallel()
	st := testenv.Store(t)
	queue := testenv.UniqueName("dq")
	s := newStub()
	start(t, Options{AppDir: queueApp(t, queue), Handler: s, Store: st})
	text := `{"pipeline":"orders","destination":"warehouse","head":7}`
	if err := st.EnqueueText(context.Background(), queue, base64.StdEncoding.EncodeToString([]byte(text)), 0); err != nil {
		t.Fatal(err)
	}
	c := s.next(t, 10*time.Second)
	if c.Function != "write" {
		t.Fatalf("invoked /%s", c.Function)
	}
	var raw struct {
		Data     map[string]json.RawMessage
		Metadata map[string]json.RawMessage
	}
	if err := json.Unmarshal(c.Body, &raw); err != nil {
		t.Fatal(err)
	}
	// §7.2: the message JSON-encoded twice.
	var once, twice string
	if err := json.Unmarshal(raw.Data["msg"], &once); err != nil {
		t.Fatalf("Data.msg is not a string: %s", raw.Data["msg"])
	}
	if err := json.Unmarshal([]byte(once), &twice); err != nil || twice != text {
		t.Fatalf("Data.msg = %s, want %q encoded twice", raw.Data["msg"], text)
	}
	if got := string(raw.Metadata["DequeueCount"]); got != `"1"` {
		t.Errorf("DequeueCount = %s, want the string \"1\"", got)
	}
	var id string
	_ = json.Unmarshal(raw.Metadata["Id"], &id)
	if len(id) < 3 || id[0] != '"' || id[len(id)-1] != '"' {
		t.Errorf("Id = %s, want a quoted string inside the string", raw.Metadata["Id"])
	}
	for _, k := range []string{"PopReceipt", "InsertionTime", "ExpirationTime", "NextVisibleTime", "sys"} {
		if _, ok := raw.Metadata[k]; !ok {
			t.Errorf("Metadata.%s missing", k)
		}
	}
	// Top-level message fields become metadata strings (§7.2).
	if got := string(raw.Metadata["pipeline"]); got != `"\"orders\""` {
		t.Errorf("Metadata.pipeline = %s", got)
	}
	if got := string(raw.Metadata["head"]); got != `"\"7\""` {
		t.Errorf("Metadata.head = %s", got)
	}
	// The real handler's decoders read it.
	inv, err := functions.DecodeInvocation(c.Body)
	if err != nil {
		t.Fatal(err)
	}
	m, err := functions.DecodeQueue(inv, functions.QueueBinding)
	if err != nil || string(m.Text) != text || m.DequeueCount != 1 || m.ID == "" || m.ID[0] == '"' {
		t.Fatalf("DecodeQueue = %+v, %v", m, err)
	}
	// Succeeded: deleted.
	time.Sleep(500 * time.Millisecond)
	if left := drain(t, st, queue); len(left) != 0 || s.count() != 1 {
		t.Fatalf("after success: %d left in the queue, %d invocations", len(left), s.count())
	}
}

func TestQueueFailingMessageGoesToPoisonAfterMaxDequeueCount(t *testing.T) {
	t.Parallel()
	st := testenv.Store(t)
	queue := testenv.UniqueName("fq")
	s := newStub()
	s.respond = func(_ call, w http.ResponseWriter, _ *http.Request) {
		answer(w, 500, `{"Outputs":{},"Logs":["boom"],"ReturnValue":null}`)
	}
	start(t, Options{AppDir: queueApp(t, queue), Handler: s, Store: st})
	wire := base64.StdEncoding.EncodeToString([]byte(`{"pipeline":"p","destination":"d"}`))
	if err := st.EnqueueText(context.Background(), queue, wire, 0); err != nil {
		t.Fatal(err)
	}
	var poisoned []azstore.Message
	deadline := time.Now().Add(20 * time.Second)
	for len(poisoned) == 0 && time.Now().Before(deadline) {
		time.Sleep(200 * time.Millisecond)
		if st.EnsureQueue(context.Background(), queue+"-poison") == nil {
			poisoned = drain(t, st, queue+"-poison")
		}
	}
	if len(poisoned) != 1 || poisoned[0].Text != wire {
		t.Fatalf("poison queue holds %+v, want the original text %q", poisoned, wire)
	}
	time.Sleep(500 * time.Millisecond)
	if n := s.count(); n != 3 {
		t.Errorf("invoked %d times, want maxDequeueCount = 3", n)
	}
	for i, c := range s.all() {
		var raw struct{ Metadata map[string]json.RawMessage }
		_ = json.Unmarshal(c.Body, &raw)
		if want := `"` + string(rune('1'+i)) + `"`; string(raw.Metadata["DequeueCount"]) != want {
			t.Errorf("attempt %d: DequeueCount %s, want %s", i+1, raw.Metadata["DequeueCount"], want)
		}
	}
	if left := drain(t, st, queue); len(left) != 0 {
		t.Errorf("%d messages left in %s", len(left), queue)
	}
}

func TestQueueUndecodableMessageIsPoisonedWithoutInvoking(t *testing.T) {
	t.Parallel()
	st := testenv.Store(t)
	queue := testenv.UniqueName("uq")
	s := newStub()
	start(t, Options{AppDir: queueApp(t, queue), Handler: s, Store: st})
	const text = `{"pipeline":"p","destination":"d"} not base64!`
	if err := st.EnqueueText(context.Background(), queue, text, 0); err != nil {
		t.Fatal(err)
	}
	var poisoned []azstore.Message
	deadline := time.Now().Add(15 * time.Second)
	for len(poisoned) == 0 && time.Now().Before(deadline) {
		time.Sleep(200 * time.Millisecond)
		if st.EnsureQueue(context.Background(), queue+"-poison") == nil {
			poisoned = drain(t, st, queue+"-poison")
		}
	}
	if len(poisoned) != 1 || poisoned[0].Text != text {
		t.Fatalf("poison queue holds %+v, want %q", poisoned, text)
	}
	if n := s.count(); n != 0 {
		t.Fatalf("the handler was invoked %d times for an undecodable message", n)
	}
}

// TestQueueShutdownLetsInFlightFinish: an invocation running when the host
// stops completes (and its message is deleted) if it ends within the grace.
func TestQueueShutdownLetsInFlightFinish(t *testing.T) {
	t.Parallel()
	st := testenv.Store(t)
	queue := testenv.UniqueName("gq")
	s := newStub()
	release := make(chan struct{})
	finished := make(chan struct{})
	s.respond = func(_ call, w http.ResponseWriter, _ *http.Request) {
		<-release
		answer(w, 200, `{"Outputs":{},"Logs":[],"ReturnValue":null}`)
		close(finished)
	}
	r := start(t, Options{AppDir: queueApp(t, queue), Handler: s, Store: st, Grace: 20 * time.Second})
	if err := st.Enqueue(context.Background(), queue, map[string]string{"pipeline": "p", "destination": "d"}); err != nil {
		t.Fatal(err)
	}
	s.next(t, 10*time.Second)
	stopped := make(chan struct{})
	go func() { r.stop(t); close(stopped) }()
	select {
	case <-stopped:
		t.Fatal("Run returned while an invocation was in flight")
	case <-time.After(700 * time.Millisecond):
	}
	close(release)
	<-finished
	select {
	case <-stopped:
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return after the invocation finished")
	}
	if left := drain(t, st, queue); len(left) != 0 {
		t.Fatalf("the completed message was not deleted")
	}
}

// TestQueueShutdownLeavesUnfinishedMessage: an invocation still running at
// the end of the grace is cancelled; its message is not deleted and comes
// back for another attempt.
func TestQueueShutdownLeavesUnfinishedMessage(t *testing.T) {
	t.Parallel()
	st := testenv.Store(t)
	queue := testenv.UniqueName("sq")
	s := newStub()
	cancelled := make(chan struct{})
	s.respond = func(_ call, w http.ResponseWriter, r *http.Request) {
		<-r.Context().Done() // runs until the host gives up on it
		close(cancelled)
	}
	r := start(t, Options{AppDir: queueApp(t, queue), Handler: s, Store: st, Grace: 500 * time.Millisecond})
	if err := st.Enqueue(context.Background(), queue, map[string]string{"pipeline": "p", "destination": "d"}); err != nil {
		t.Fatal(err)
	}
	s.next(t, 10*time.Second)
	r.stop(t)
	select {
	case <-cancelled:
	case <-time.After(5 * time.Second):
		t.Fatal("the in-flight invocation was never cancelled")
	}
	var left []azstore.Message
	for deadline := time.Now().Add(5 * time.Second); len(left) == 0 && time.Now().Before(deadline); {
		left = drain(t, st, queue)
		time.Sleep(100 * time.Millisecond)
	}
	if len(left) != 1 || left[0].DequeueCount != 2 {
		t.Fatalf("want the unfinished message back for attempt 2, got %+v", left)
	}
	c := s.all()
	if len(c) != 1 {
		t.Fatalf("%d invocations", len(c))
	}
	if err := st.EnsureQueue(context.Background(), queue+"-poison"); err != nil {
		t.Fatal(err)
	}
	if p := drain(t, st, queue+"-poison"); len(p) != 0 {
		t.Fatalf("a cancelled message was poisoned")
	}
}
