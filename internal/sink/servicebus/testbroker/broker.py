#!/usr/bin/python3
"""A local AMQP 1.0 broker just big enough for the azservicebus SDK in tests.

It owns in-memory queues keyed by link address and nothing else: it accepts
any claims-based-security token, persists nothing, and is never a stand-in
for Service Bus semantics beyond what sluice's tests exercise (no duplicate
detection, no TTL, no dead-lettering, no lock renewal). Entities exist on
first use, except that names starting with "missing-" are refused with
amqp:not-found, as Service Bus refuses an entity that does not exist.

Usage: /usr/bin/python3 broker.py PORT [--max-message-size BYTES] [--exit-on-eof]
PORT 0 picks a free port; the broker prints "LISTENING <port>" once ready.
With --exit-on-eof it exits when stdin closes, so a test binary that dies
without cleaning up does not leave it running.
Needs Debian's python3-qpid-proton (run /usr/bin/python3, not a pyenv shim).
"""

import argparse
import collections
import datetime
import os
import sys
import threading
import uuid

from proton import (Condition, Data, Delivery, Described, Endpoint, Link, Message, Terminus, int32, symbol,
                    timestamp, ulong)
from proton.handlers import IncomingMessageHandler, MessagingHandler
from proton.reactor import Container

CBS = "$cbs"
SESSION_FILTER = symbol("com.microsoft:session-filter")
# The SDK sends a MessageBatch as one AMQP message whose data sections each
# hold a whole encoded message (message-format 0x80013700). Python proton
# cannot read a delivery's message-format, so a batch is recognised by data
# sections that start like an encoded message: 0x00 0x53 then a section code.
SECTION_CODES = range(0x70, 0x79)


def sections(raw):
    """Split an encoded message into its described sections."""
    out = []
    while raw:
        d = Data()
        n = d.decode(raw)
        raw = raw[n:]
        d.rewind()
        d.next()
        out.append(d.get_object())
    return out


def unpack(raw):
    """Return the messages carried by one transfer: the batch's, or itself."""
    try:
        secs = sections(raw)
        datas = [s.value for s in secs if getattr(s, "descriptor", None) == 0x75]
        if datas and all(len(b) > 2 and b[0] == 0 and b[1] == 0x53 and b[2] in SECTION_CODES for b in datas):
            msgs = []
            for b in datas:
                m = Message()
                m.decode(b)
                msgs.append(m)
            return msgs
    except Exception:
        pass  # not a batch we understand: decode it as one message
    m = Message()
    m.decode(raw)
    return [m]


def session_filter(terminus):
    """The session id a receiver asked for: (present, value)."""
    terminus.filter.rewind()
    f = terminus.filter.get_object() if terminus.filter.next() else None
    if not f or SESSION_FILTER not in f:
        return False, None
    v = f[SESSION_FILTER]
    return True, getattr(v, "value", v)


class Broker(MessagingHandler):
    def __init__(self, port, max_size):
        super().__init__(prefetch=200, auto_accept=False, auto_settle=True)
        # We read raw transfers ourselves (batches), so drop proton's decoder.
        self.handlers = [h for h in self.handlers if not isinstance(h, IncomingMessageHandler)]
        self.port = port
        self.max_size = max_size
        self.queues = collections.defaultdict(collections.deque)  # address -> messages
        self.subs = collections.defaultdict(set)  # topic -> subscription addresses
        self.consumers = []  # broker-side sender links with an address
        self.unsettled = {}  # delivery tag -> (queue address, message)
        self.seq = 0

    def on_start(self, event):
        acceptor = event.container.listen("127.0.0.1:%d" % self.port)
        port = acceptor._selectable._delegate.getsockname()[1]
        print("LISTENING %d" % port, flush=True)

    def on_connection_bound(self, event):
        # The SDK authenticates with SASL ANONYMOUS, then with a $cbs token.
        sasl = event.transport.sasl()
        sasl.allowed_mechs("ANONYMOUS")

    def on_link_remote_open(self, event):
        link = event.link
        term = link.remote_target if link.is_receiver else link.remote_source
        if (term.address or "").startswith("missing-") and link.state & Endpoint.LOCAL_UNINIT:
            # Attach with no terminus, then detach with the error: the AMQP
            # way to refuse a link, which the SDK maps to CodeNotFound.
            link.condition = Condition("amqp:not-found", "entity %s does not exist" % term.address)
            link.source.type = link.target.type = Terminus.UNSPECIFIED
            link.snd_settle_mode = link.remote_snd_settle_mode
            link.rcv_settle_mode = link.remote_rcv_settle_mode
            link.open()
            link.close()

    def on_link_opening(self, event):
        link = event.link
        link.source.copy(link.remote_source)
        link.target.copy(link.remote_target)
        if link.is_receiver:
            # The SDK sizes its batches from the max-message-size we announce.
            link.max_message_size = self.max_size
            return
        link.snd_settle_mode = link.remote_snd_settle_mode
        link.rcv_settle_mode = link.remote_rcv_settle_mode
        addr = link.remote_source.address or ""
        if addr == CBS or addr.endswith("/$management"):
            return  # a reply link: answers are routed by reply-to
        topic, sep, _ = addr.partition("/Subscriptions/")
        if sep:  # a subscription gets what is sent to its topic from now on
            self.subs[topic].add(addr)
        asked, sid = session_filter(link.remote_source)
        if asked:
            if sid is None:  # accept-next-session: the oldest waiting session
                sid = next((m.group_id for m in self.queues[addr] if m.group_id), None)
            # Echo the filter with the session we chose: the SDK reads it back.
            link.source.filter.clear()
            link.source.filter.put_dict({SESSION_FILTER: Described(ulong(0x137000000C), sid)})
        link.sluice_addr = addr
        link.sluice_session = (asked, sid)
        self.consumers.append(link)

    def on_delivery(self, event):
        dlv = event.delivery
        link = dlv.link
        if not link.is_receiver or dlv.partial:
            return
        if dlv.aborted:
            dlv.settle()
            return
        raw = link.recv(dlv.pending)
        addr = link.remote_target.address or ""
        msgs = unpack(raw)
        if addr == CBS or addr.endswith("/$management"):
            for m in msgs:
                self.reply(link.connection, addr, m)
        else:
            for m in msgs:
                self.enqueue(addr, m)
        dlv.update(Delivery.ACCEPTED)
        dlv.settle()

    def reply(self, conn, addr, req):
        # $cbs put-token: accept any token (202). $management: answer 200 with
        # an empty map; the sender never needs more than that.
        code = 202 if addr == CBS else 200
        res = Message(correlation_id=req.id, body={},
                      properties={"status-code": int32(code), "status-description": "OK"})
        for link in self.links(conn):
            if link.is_sender and link.remote_target.address == req.reply_to:
                link.send(res)
                return

    def enqueue(self, addr, m):
        self.seq += 1
        m.annotations = dict(m.annotations or {})
        m.annotations[symbol("x-opt-sequence-number")] = self.seq
        now = datetime.datetime.now(datetime.timezone.utc).timestamp()
        m.annotations[symbol("x-opt-enqueued-time")] = timestamp(int(now * 1000))
        # A topic's subscriptions each get a copy; sends to a queue stay put.
        for target in [addr] + sorted(self.subs.get(addr, ())):
            self.queues[target].append(m)
        self.pump()

    def links(self, conn):
        link = conn.link_head(Endpoint.LOCAL_ACTIVE)
        while link:
            yield link
            link = link.next(Endpoint.LOCAL_ACTIVE)

    def on_sendable(self, event):
        self.pump()

    def pump(self):
        for link in self.consumers:
            if not (link.state & Endpoint.LOCAL_ACTIVE) or not (link.state & Endpoint.REMOTE_ACTIVE):
                continue
            q = self.queues[link.sluice_addr]
            asked, sid = link.sluice_session
            while link.credit > 0:
                m = next((x for x in q if not asked or x.group_id == sid), None)
                if m is None:
                    break
                q.remove(m)
                # The SDK reads the lock token from a 16-byte delivery tag.
                tag = uuid.uuid4().hex[:16]
                link.send(m, tag=tag)
                if link.snd_settle_mode != Link.SND_SETTLED:
                    self.unsettled[tag] = (link.sluice_addr, m, link)

    # Peek-lock receivers (rcv-settle-mode second) wait for us to settle
    # after their disposition, so every outcome settles here.
    def on_accepted(self, event):
        self.unsettled.pop(event.delivery.tag, None)
        event.delivery.settle()

    def on_rejected(self, event):
        self.unsettled.pop(event.delivery.tag, None)  # no dead-letter queue here
        event.delivery.settle()

    def on_released(self, event):
        self.requeue(event.delivery.tag)
        event.delivery.settle()

    def requeue(self, tag):
        held = self.unsettled.pop(tag, None)
        if held:
            self.queues[held[0]].appendleft(held[1])
            self.pump()

    def on_link_closing(self, event):
        self.forget(event.link)

    def on_disconnected(self, event):
        for link in list(self.consumers):
            if link.connection == event.connection:
                self.forget(link)

    def forget(self, link):
        if link in self.consumers:
            self.consumers.remove(link)
        # Unsettled deliveries of a closed link go back to their queue.
        for tag in [t for t, held in self.unsettled.items() if held[2] is link]:
            self.requeue(tag)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("port", type=int)
    ap.add_argument("--max-message-size", type=int, default=256 * 1024,
                    help="announced on every link; Standard tier is 256 KiB")
    ap.add_argument("--exit-on-eof", action="store_true", help="exit when stdin closes")
    args = ap.parse_args()
    if args.exit_on_eof:
        def watch():
            sys.stdin.buffer.read()
            os._exit(0)
        threading.Thread(target=watch, daemon=True).start()
    try:
        Container(Broker(args.port, args.max_message_size)).run()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    sys.exit(main())
