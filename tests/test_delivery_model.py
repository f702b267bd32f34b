"""Property tests of the delivery protocol: the node core against a model relay, over a link
that loses, and of the de-duplication window against a set that remembers everything."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from shoal.firmware.nodecore.node import UP, NodeCore
from shoal.firmware.nodecore.prng import XorShift32
from shoal.services.relay.dedup import DUPLICATE, NEW, STALE, SeqWindow


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(0, 400), max_size=300), st.sampled_from([8, 16, 64]))
def test_window_verdicts_match_a_model_that_remembers_everything(
    seqs: list[int], width: int
) -> None:
    window = SeqWindow(width)
    seen: set[int] = set()
    high = -1
    for seq in seqs:
        verdict = window.check(seq)
        if high >= 0 and seq <= high - width:
            assert verdict == STALE
        elif seq in seen:
            assert verdict == DUPLICATE
        else:
            assert verdict == NEW
            seen.add(seq)
        high = max(high, seq)


class Hal:
    def __init__(self) -> None:
        self.rng = XorShift32(11)

    def rand(self) -> float:
        return self.rng.random()

    def sample(self, _now: int) -> dict[str, float]:
        return {"cpu_pct": 1.0, "queue_depth": 0, "queue_capacity": 4, "load_factor": 0.1}


class LossyLink:
    """Carries messages to a model relay; drops requests and acks as the schedule says."""

    def __init__(self, drops: list[bool]) -> None:
        self.drops = drops
        self.i = 0
        self.up = True
        self.in_flight: list[dict[str, Any]] = []
        self.kinds: dict[int, str] = {}  # seq -> kind of every message the node tried to send
        self.tries: dict[int, int] = {}  # seq -> how often the node tried to send it

    def lose(self) -> bool:
        self.i += 1
        return self.drops[self.i % len(self.drops)] if self.drops else False

    def send(self, msg: dict[str, Any]) -> bool:
        self.kinds[msg["seq"]] = msg["kind"]
        self.tries[msg["seq"]] = self.tries.get(msg["seq"], 0) + 1
        if not self.up:
            return False
        if not self.lose():
            self.in_flight.append(msg)
        return True


@settings(max_examples=150, deadline=None)
@given(
    drops=st.lists(st.booleans(), min_size=1, max_size=40),
    outages=st.lists(st.tuples(st.integers(0, 20_000), st.integers(50, 4000)), max_size=4),
)
def test_every_buffered_message_is_accepted_exactly_once_whatever_the_link_loses(
    drops: list[bool], outages: list[tuple[int, int]]
) -> None:
    link = LossyLink(drops)
    node = NodeCore(
        "n-1",
        7,
        Hal(),
        link,
        {"ring_capacity": 4096, "ack_timeout_ms": 300, "backoff_min_ms": 50, "backoff_max_ms": 400},
        0,
    )
    relay = SeqWindow(4096)
    accepted: list[int] = []
    now = 0
    end_of_chaos = 25_000
    # Chaos for 25 s (losses and outages), then a clean link until everything is acked.
    while now < end_of_chaos + 60_000:
        now += 20
        chaos = now < end_of_chaos
        link.up = not any(start <= now < start + length for start, length in outages) or not chaos
        if not chaos:
            link.drops = []
        node.tick(now)
        delivered, link.in_flight = link.in_flight, []
        for msg in delivered:
            verdict = relay.check(msg["seq"])
            if verdict == NEW:
                accepted.append(msg["seq"])
            # The relay acks whatever it handled; the ack itself may be lost in chaos.
            if not (chaos and link.lose()):
                node.on_ack(7, msg["seq"], msg["seq"], now)
        if not chaos and len(node.ring) == 0 and node.state == UP:
            break
    assert node.ring.dropped == 0
    assert len(node.ring) == 0, "everything was acked in the end"
    assert set(link.kinds) == set(range(node.seq)), "every seq was handed to the link"
    assert len(set(accepted)) == len(accepted), "nothing accepted twice, heartbeats included"
    buffered = [seq for seq, kind in sorted(link.kinds.items()) if kind != "heartbeat"]
    beats = {seq for seq, kind in link.kinds.items() if kind == "heartbeat"}
    assert sorted(s for s in accepted if s not in beats) == buffered, (
        "every buffered message accepted, exactly once"
    )
    # Heartbeats are best effort: handed to the link once, never resent.
    assert all(link.tries[seq] == 1 for seq in beats)
