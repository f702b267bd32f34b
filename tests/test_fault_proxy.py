"""The fault proxy on a service-to-service link, with real sockets: it forwards both halves
(bus and control socket), a cut drops everything both ways and heals, timed faults end by
themselves, drop and delay act on messages, and the delay heap is bounded."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Any

import pytest
import zmq

from shoal.services.chaos.fault_proxy import FaultProxy
from shoal.services.liveness.service import Liveness
from shoal.services.relay.service import Relay
from shoal.services.runtime.config import liveness_for, relay_for
from shoal.services.runtime.ctl_client import CtlClient, CtlUnavailable
from shoal.services.runtime.sockets import BindError, Sockets
from shoal.services.testing import config_on_free_ports, running, tcp, wait_for


class Link:
    """A PUB and a service-like ctl ROUTER upstream, the proxy, a SUB and a DEALER below."""

    def __init__(self, **proxy_args: Any) -> None:
        self.ctx = zmq.Context()
        # Curve on every socket, as in a cluster: the test's keys (services/testing.py).
        self.sockets = Sockets(self.ctx)
        self.up_bus, self.up_ctl, self.down_bus, self.down_ctl = tcp(), tcp(), tcp(), tcp()
        self.pub = self.sockets.bind(zmq.PUB, self.up_bus)
        self.service = self.sockets.bind(zmq.ROUTER, self.up_ctl)
        self.proxy = FaultProxy(
            bus=(self.up_bus, self.down_bus), ctl=(self.up_ctl, self.down_ctl), **proxy_args
        ).start()
        self.sub = self.sockets.connect(zmq.SUB, self.down_bus)
        self.sub.setsockopt(zmq.SUBSCRIBE, b"rec|")
        self.client = self.sockets.connect(zmq.DEALER, self.down_ctl)
        self.received: list[bytes] = []
        self.requests: list[list[bytes]] = []
        self.replies: list[bytes] = []
        self.n = 0

    def close(self) -> None:
        self.proxy.close()
        self.sockets.close_all()
        self.ctx.term()

    def publish(self, count: int = 1, topic: bytes = b"rec|") -> None:
        for _ in range(count):
            self.n += 1
            self.pub.send(topic + str(self.n).encode())

    def pump(self) -> int:
        """Read what arrived below and what the service was asked; answer each request
        as a shoal service does (exactly two frames: identity, request)."""
        while self.sub.poll(0):
            self.received.append(self.sub.recv())
        while self.service.poll(0):
            frames = self.service.recv_multipart()
            self.requests.append(frames)
            if len(frames) == 2:
                self.service.send_multipart([frames[0], b"re:" + frames[1]])
        while self.client.poll(0):
            self.replies.append(self.client.recv())
        return len(self.received)

    def connected(self, topic: bytes = b"rec|") -> bool:
        """Data of ``topic`` flows end to end (its subscription reached the PUB through
        the proxy): one message published, and it (or a later one) arrives within 50 ms."""
        self.publish(topic=topic)
        want = topic + str(self.n).encode()
        deadline = time.monotonic() + 0.05
        while (left := deadline - time.monotonic()) > 0 and self.sub.poll(int(left * 1000) + 1):
            self.received.append(self.sub.recv())
            if self.received[-1] == want:
                return True
        return False

    def reply(self) -> bytes | None:
        self.pump()
        return self.replies[-1] if self.replies else None


@contextlib.contextmanager
def link(**proxy_args: Any) -> Iterator[Link]:
    ln = Link(**proxy_args)
    try:
        wait_for(ln.connected, 5)
        yield ln
    finally:
        ln.close()


def test_a_healthy_link_forwards_data_subscriptions_requests_and_replies() -> None:
    with link() as ln:
        start = len(ln.received)
        ln.publish(50)
        ln.publish(5, topic=b"other|")  # nobody below subscribed: the PUB filters it
        wait_for(lambda: ln.pump() >= start + 50, 5)
        assert all(m.startswith(b"rec|") for m in ln.received)
        ln.client.send(b"ping")
        assert wait_for(ln.reply, 5) == b"re:ping"
        # The service got the requester's frames as they were sent: identity and request.
        assert len(ln.requests[-1]) == 2 and ln.requests[-1][1] == b"ping"
        # The proxy's thread counts a message after sending it: the reply can arrive first.
        wait_for(lambda: ln.proxy.counters()["forwarded_ctl_down"] >= 1, 5)
        c = ln.proxy.counters()
        assert c["forwarded_bus_down"] >= 50 and c["forwarded_bus_up"] >= 1
        assert c["forwarded_ctl_up"] == 1 and c["forwarded_ctl_down"] == 1
        assert ln.proxy.dropped() == 0


def test_a_cut_drops_both_ways_and_heal_restores_the_link() -> None:
    with link() as ln:
        ln.proxy.cut()
        assert ln.proxy.state()["fault"] == "cut"
        before = len(ln.received)
        ln.publish(20)
        ln.client.send(b"ping")
        # A new subscription while cut does not reach the publisher either.
        ln.sub.setsockopt(zmq.SUBSCRIBE, b"late|")
        wait_for(
            lambda: (
                ln.proxy.counters()["dropped_bus_down"] >= 20
                and ln.proxy.counters()["dropped_ctl_up"] >= 1
                and ln.proxy.counters()["dropped_bus_up"] >= 1
            ),
            5,
        )
        ln.pump()
        assert len(ln.received) == before and ln.replies == [] and ln.requests == []

        ln.proxy.heal()
        wait_for(ln.connected, 5)
        ln.client.send(b"again")
        assert wait_for(ln.reply, 5) == b"re:again"
        assert ln.replies == [b"re:again"]  # the request sent while cut is gone for good
        # The subscription made while cut was sent up when the cut ended.
        wait_for(lambda: ln.connected(b"late|"), 5)


def test_a_reply_on_its_way_back_is_lost_when_the_link_is_cut() -> None:
    with link() as ln:
        ln.client.send(b"slow")
        wait_for(lambda: ln.service.poll(0), 5)
        identity, body = ln.service.recv_multipart()
        ln.proxy.cut()
        ln.service.send_multipart([identity, b"re:" + body])
        wait_for(lambda: ln.proxy.counters()["dropped_ctl_down"] == 1, 5)
        ln.pump()
        assert ln.replies == []


def test_a_timed_cut_ends_by_itself() -> None:
    with link() as ln:
        ln.proxy.cut(0.3)
        ln.publish(5)
        during = {b"rec|%d" % k for k in range(ln.n - 4, ln.n + 1)}
        # The proxy's own timer heals it; nobody calls heal().
        wait_for(lambda: ln.proxy.state()["fault"] == "none", 5)
        wait_for(ln.connected, 5)
        assert ln.proxy.counters()["dropped_bus_down"] >= 5
        assert not during & set(ln.received)


def test_a_fault_replaces_the_one_before_and_timed_drop_and_delay_end_too() -> None:
    with link() as ln:
        ln.proxy.cut()
        ln.proxy.drop(0.5, 0.2)
        assert ln.proxy.state()["fault"] == "drop"
        wait_for(lambda: ln.proxy.state()["fault"] == "none", 5)
        ln.proxy.delay(50, 0.2)
        wait_for(lambda: ln.proxy.state()["fault"] == "none", 5)
        with pytest.raises(ValueError):
            ln.proxy.drop(1.5)
        with pytest.raises(ValueError):
            ln.proxy.cut(0)


def test_drop_loses_about_its_share_of_messages() -> None:
    with link(seed=3) as ln:
        ln.proxy.drop(0.5)
        start = len(ln.received)
        base = ln.proxy.counters()
        ln.publish(400)

        def delta(key: str) -> int:
            return ln.proxy.counters()[key] - base[key]

        # Every message decided on, and every one forwarded arrived.
        # (>=: the counter of the last message before ``base`` may be counted just after.)
        wait_for(lambda: delta("forwarded_bus_down") + delta("dropped_bus_down") >= 400, 5)
        dropped = delta("dropped_bus_down")
        wait_for(lambda: ln.pump() - start == 400 - dropped, 5)
        assert 120 <= dropped <= 280  # binomial(400, 0.5): 200 +- 8 sigma
        assert len(ln.received) - start == 400 - dropped


def test_delay_holds_messages_and_keeps_their_order() -> None:
    with link() as ln:
        ln.proxy.delay(300)
        start = len(ln.received)
        ln.publish(10)
        ln.client.send(b"later")
        # Held, not dropped: the heap has them until they are due.
        wait_for(lambda: len(ln.proxy._delayed) == 11, 5)
        ln.pump()
        assert len(ln.received) == start and ln.requests == []
        wait_for(lambda: ln.pump() - start >= 10, 5)
        numbers = [int(m[4:]) for m in ln.received[start:]]
        assert numbers == sorted(numbers)
        assert wait_for(ln.reply, 5) == b"re:later"
        assert ln.proxy.dropped() == 0


def test_the_delay_heap_is_bounded_and_counts_what_it_refused() -> None:
    with link(max_delayed=5) as ln:
        ln.proxy.delay(10_000)
        ln.publish(30)
        wait_for(lambda: ln.proxy.counters()["delay_overflow"] == 25, 5)
        c = ln.proxy.counters()
        assert c["dropped_bus_down"] == 25 and len(ln.proxy._delayed) == 5
        # A cut loses what was waiting too.
        ln.proxy.cut()
        wait_for(lambda: ln.proxy.counters()["dropped_bus_down"] == 30, 5)
        assert ln.proxy._delayed == []


def test_opaque_frames_of_any_shape_never_stop_the_proxy() -> None:
    with link() as ln:
        ln.client.send_multipart([b"", b"\xff\x00", b"x" * 10_000])  # a REQ-like envelope
        ln.client.send(b"")
        ln.pub.send_multipart([b"rec|", b"\x00\x01"])
        wait_for(lambda: ln.pump() is not None and len(ln.requests) == 2, 5)
        assert ln.requests[0][1:] == [b"", b"\xff\x00", b"x" * 10_000]
        assert ln.requests[1][1:] == [b""]
        wait_for(ln.connected, 5)  # still forwarding


def test_a_real_service_answers_through_the_proxy_and_not_while_cut() -> None:
    config = config_on_free_ports()
    down = tcp()
    with (
        running(Relay(config)),
        FaultProxy(ctl=(config.relay.ctl, down)) as proxy,
        CtlClient(down) as relay,
    ):
        assert relay.call("status", timeout_s=2.0, retries=2)["service"] == "relay"
        proxy.cut()
        with pytest.raises(CtlUnavailable):
            relay.call("status", timeout_s=0.3, retries=0)
        proxy.heal()
        assert relay.call("status", timeout_s=2.0, retries=2)["service"] == "relay"


def test_a_downstream_port_in_use_fails_at_start() -> None:
    with link() as ln, pytest.raises(BindError, match="cannot bind"):
        FaultProxy(bus=(ln.up_bus, ln.down_bus)).start()


def test_consumers_reach_a_service_through_their_overrides_or_its_own_endpoints() -> None:
    config = config_on_free_ports()
    assert relay_for(config, "liveness") == config.relay
    assert liveness_for(config) == config.liveness
    moved = config_on_free_ports(
        config,
        liveness={"relay_bus": "tcp://127.0.0.1:1"},
        delegator={"relay_ctl": "tcp://127.0.0.1:2", "liveness_bus": "tcp://127.0.0.1:3"},
    )
    assert relay_for(moved, "liveness").bus == "tcp://127.0.0.1:1"
    assert relay_for(moved, "liveness").ctl == moved.relay.ctl
    assert relay_for(moved, "delegator").bus == moved.relay.bus
    assert relay_for(moved, "delegator").ctl == "tcp://127.0.0.1:2"
    assert liveness_for(moved).bus == "tcp://127.0.0.1:3"
    assert liveness_for(moved).ctl == moved.liveness.ctl


def test_a_monitor_cut_off_from_the_relay_distrusts_its_view_until_healed() -> None:
    down_bus, down_ctl = tcp(), tcp()
    config = config_on_free_ports(
        runtime={"heartbeat_interval_ms": 50},
        liveness={"relay_bus": down_bus, "relay_ctl": down_ctl},
    )
    with (
        running(Relay(config)),
        FaultProxy(bus=(config.relay.bus, down_bus), ctl=(config.relay.ctl, down_ctl)) as proxy,
        running(Liveness(config)) as monitor,
    ):
        assert monitor.endpoints["relay_sub"] == down_bus
        wait_for(lambda: monitor.healthy and monitor.relay.frames() > 0, 5)
        proxy.cut()
        wait_for(lambda: not monitor.healthy and "relay_silent" in monitor.reasons, 5)
        assert proxy.counters()["dropped_bus_down"] > 0
        proxy.heal()
        wait_for(lambda: monitor.healthy, 5)
