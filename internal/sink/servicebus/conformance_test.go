package servicebus_test

import (
	"encoding/json"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sluicehq/sluice/internal/changelog"
	"github.com/sluicehq/sluice/internal/sink"
	"github.com/sluicehq/sluice/internal/sink/servicebus"
	"github.com/sluicehq/sluice/internal/sink/sinktest"
	"github.com/sluicehq/sluice/internal/testenv"
)

func TestConformance(t *testing.T) {
	sinktest.Run(t, harness{})
}

// harness: the observed state is every message received from the queue,
// folded by key with the highest seq winning (what a consumer that keeps the
// newest event per item sees).
type harness struct{}

func (harness) Capabilities() sinktest.Capabilities {
	return sinktest.Capabilities{Transient: true, Permanent: true, Parallel: true}
}

func (harness) NewDestination(t *testing.T) sinktest.Destination {
	cs, queue := testenv.ServiceBus(t)
	return &destination{
		connString: cs, queue: queue,
		proxy: newProxy(t, brokerAddr(t, cs)),
		recv:  newReceiver(t, cs, queue),
		state: map[string]sinktest.Observed{},
	}
}

type destination struct {
	connString, queue string
	proxy             *proxy
	recv              *receiver
	state             map[string]sinktest.Observed
}

// NewSink sends through the proxy, so Break can cut the sink off while the
// observing receiver keeps its direct connection.
func (d *destination) NewSink(t *testing.T) sink.Sink {
	cs := strings.Replace(d.connString, brokerAddr(t, d.connString), d.proxy.addr, 1)
	return openSink(t, servicebus.Config{ConnectionString: cs, Entity: d.queue})
}

func (d *destination) State(t *testing.T) map[string]sinktest.Observed {
	for _, m := range d.recv.drain(t, 500*time.Millisecond) {
		var r changelog.Record
		if err := json.Unmarshal(m.Body, &r); err != nil {
			t.Fatalf("message %s: body is not a change record: %v", m.MessageID, err)
		}
		if cur, ok := d.state[r.Key]; ok && cur.Seq >= r.Seq {
			continue
		}
		o := sinktest.Observed{Seq: r.Seq, Deleted: r.Op == changelog.OpDelete}
		if !o.Deleted {
			o.Fields = map[string]any{}
			if len(r.Fields) > 0 {
				if err := json.Unmarshal(r.Fields, &o.Fields); err != nil {
					t.Fatalf("message %s: fields: %v", m.MessageID, err)
				}
			}
		}
		d.state[r.Key] = o
	}
	out := make(map[string]sinktest.Observed, len(d.state))
	for k, v := range d.state {
		out[k] = v
	}
	return out
}

// BadRecord is too large for any message: Service Bus refuses it for good.
func (d *destination) BadRecord(seq int64, key string) changelog.Record {
	return upsert(seq, key, fields(key, 300*1024))
}

func (d *destination) Break(t *testing.T) { d.proxy.stop() }
func (d *destination) Heal(t *testing.T)  { d.proxy.start(t) }

func brokerAddr(t testing.TB, cs string) string {
	for part := range strings.SplitSeq(cs, ";") {
		if ep, ok := strings.CutPrefix(part, "Endpoint=sb://"); ok {
			return strings.TrimSuffix(ep, "/")
		}
	}
	t.Fatalf("no Endpoint=sb://host:port in %s", testenv.ServiceBusBrokerEnv)
	return ""
}

// proxy forwards TCP to the broker until stopped: stopping closes the
// listener and every connection, as a network outage would.
type proxy struct {
	target, addr string
	mu           sync.Mutex
	ln           net.Listener
	conns        map[net.Conn]bool
}

func newProxy(t *testing.T, target string) *proxy {
	p := &proxy{target: target, addr: "127.0.0.1:0", conns: map[net.Conn]bool{}}
	p.start(t)
	t.Cleanup(p.stop)
	return p
}

func (p *proxy) start(t *testing.T) {
	ln, err := net.Listen("tcp", p.addr)
	if err != nil {
		t.Fatalf("proxy: %v", err)
	}
	p.mu.Lock()
	p.ln, p.addr = ln, ln.Addr().String()
	p.mu.Unlock()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			up, err := net.Dial("tcp", p.target)
			if err != nil {
				c.Close()
				continue
			}
			p.mu.Lock()
			p.conns[c], p.conns[up] = true, true
			p.mu.Unlock()
			go func() { io.Copy(up, c); up.Close() }()
			go func() { io.Copy(c, up); c.Close() }()
		}
	}()
}

func (p *proxy) stop() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.ln != nil {
		p.ln.Close()
		p.ln = nil
	}
	for c := range p.conns {
		c.Close()
	}
	clear(p.conns)
}
