package servicebus_test

import (
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/sluicehq/sluice/internal/changelog"
	"github.com/sluicehq/sluice/internal/sink"
	"github.com/sluicehq/sluice/internal/sink/servicebus"
)

// TestLiveNamespace sends to a real Service Bus queue and reads it back. It
// runs only when SLUICE_TEST_SERVICEBUS holds a namespace connection string;
// the queue is SLUICE_TEST_SERVICEBUS_QUEUE (default sluice-test), which must
// exist and is drained by the test.
func TestLiveNamespace(t *testing.T) {
	conn := os.Getenv("SLUICE_TEST_SERVICEBUS")
	if conn == "" {
		t.Skip("set SLUICE_TEST_SERVICEBUS to a Service Bus connection string to run against a real namespace")
	}
	queue := os.Getenv("SLUICE_TEST_SERVICEBUS_QUEUE")
	if queue == "" {
		queue = "sluice-test"
	}
	s := openSink(t, servicebus.Config{ConnectionString: conn, Entity: queue})
	var recs []changelog.Record
	for i := int64(1); i <= 20; i++ {
		recs = append(recs, upsert(i, fmt.Sprint(i%5), fmt.Sprintf(`{"N":%d}`, i)))
	}
	recs = append(recs, del(21, "3"))
	apply(t, s, sink.Batch{Pipeline: "live", Destination: "bus", Generation: 2, Records: recs})
	r := newReceiver(t, conn, queue)
	got := r.drain(t, 5*time.Second)
	seen := map[string]bool{}
	for _, m := range got {
		seen[m.MessageID] = true
	}
	for i := 1; i <= 21; i++ {
		if id := fmt.Sprintf("live-%d.2", i); !seen[id] {
			t.Fatalf("message %s did not arrive (got %d messages)", id, len(got))
		}
	}
}
