package testenv

// This file owns the AMQP 1.0 test broker that the real azservicebus SDK
// talks to (internal/sink/servicebus/testbroker): it starts one per test and
// stops it when the test ends. It never reaches a real namespace.

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// ServiceBusBrokerEnv names the connection string of an already running test
// broker; when set, ServiceBus uses it instead of starting one.
const ServiceBusBrokerEnv = "SLUICE_TEST_SERVICEBUS_BROKER"

// brokerPython is Debian's interpreter: the python3 on PATH may be a pyenv
// shim that does not see Debian's python3-qpid-proton.
const brokerPython = "/usr/bin/python3"

// ServiceBus returns a connection string for the test broker and a queue name
// no other test uses (the broker creates entities on first use). Without
// SLUICE_TEST_SERVICEBUS_BROKER it starts a broker of its own for this test
// and kills it in t.Cleanup. Without python3-qpid-proton the test is skipped,
// or fails when SLUICE_REQUIRE_SERVICES=1.
func ServiceBus(t testing.TB) (connString, queue string) {
	t.Helper()
	queue = UniqueName("q")
	if cs := os.Getenv(ServiceBusBrokerEnv); cs != "" {
		return cs, queue
	}
	port := StartServiceBusBroker(t)
	return ServiceBusConnString(port), queue
}

// ServiceBusConnString is the connection string of a test broker on a
// loopback port: plain AMQP, and the SDK's emulator mode skips TLS.
func ServiceBusConnString(port int) string {
	return fmt.Sprintf("Endpoint=sb://127.0.0.1:%d;SharedAccessKeyName=k;SharedAccessKey=v;UseDevelopmentEmulator=true;", port)
}

// StartServiceBusBroker starts a test broker for t and returns its port; the
// broker is killed in t.Cleanup. Extra args go to broker.py (for example
// "--max-message-size", "4096").
func StartServiceBusBroker(t testing.TB, args ...string) int {
	t.Helper()
	if out, err := exec.Command(brokerPython, "-c", "import proton").CombinedOutput(); err != nil {
		what := fmt.Sprintf("the Service Bus test broker needs Debian's python3-qpid-proton for %s "+
			"(apt-get install -y python3-qpid-proton): %v %s", brokerPython, err, bytes.TrimSpace(out))
		if os.Getenv("SLUICE_REQUIRE_SERVICES") == "1" {
			t.Fatal(what)
		}
		t.Skip(what)
	}
	script := filepath.Join(repoRoot(t), "internal", "sink", "servicebus", "testbroker", "broker.py")
	cmd := exec.Command(brokerPython, append([]string{script, "0", "--exit-on-eof"}, args...)...)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	stderr := &lockedBuffer{}
	cmd.Stderr = stderr
	if err := cmd.Start(); err != nil {
		t.Fatalf("start Service Bus test broker: %v", err)
	}
	t.Cleanup(func() {
		_ = stdin.Close()
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		if t.Failed() && stderr.Len() > 0 {
			t.Logf("Service Bus test broker stderr:\n%s", stderr)
		}
	})

	ready := make(chan int, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			if p, ok := strings.CutPrefix(sc.Text(), "LISTENING "); ok {
				if n, err := strconv.Atoi(strings.TrimSpace(p)); err == nil {
					ready <- n
				}
			}
		}
		close(ready)
		_, _ = io.Copy(io.Discard, stdout)
	}()
	select {
	case port, ok := <-ready:
		if !ok {
			t.Fatalf("Service Bus test broker exited before listening:\n%s", stderr)
		}
		return port
	case <-time.After(30 * time.Second):
		t.Fatalf("Service Bus test broker did not print LISTENING within 30s:\n%s", stderr)
	}
	return 0
}

// repoRoot walks up from the working directory (a package directory under
// go test) to the directory holding go.mod.
func repoRoot(t testing.TB) string {
	t.Helper()
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir
		} else if !errors.Is(err, os.ErrNotExist) {
			t.Fatal(err)
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Fatal("no go.mod above the working directory: run the test with go test inside the repository")
		}
		dir = parent
	}
}

// lockedBuffer collects a child's stderr while tests may read it.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) Len() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Len()
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
