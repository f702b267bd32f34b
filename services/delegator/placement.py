"""Where a delegated task goes: power of two choices among healthy peers with room.

Sampling two peers and keeping the one with more spare room (Mitzenmacher's "power of two
choices") spreads load almost as well as always picking the emptiest peer, without every
placement herding onto the same node between two telemetry samples. Here the two are drawn
with probability proportional to their spare room, so a nearly full peer is rarely drawn at
all.

Usage::

    peer = choose([Peer("n1", 5.0), Peer("n2", 1.0)], random.Random(1))
"""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(slots=True)
class Peer:
    node_id: str
    spare: float  # task slots it can still take: > 0 to be a candidate at all


def choose(peers: list[Peer], rng: random.Random) -> Peer | None:
    """The peer a task goes to, or None when no peer has room."""
    candidates = [p for p in peers if p.spare > 0]
    if not candidates:
        return None
    if len(candidates) == 1:
        return candidates[0]
    first = _draw(candidates, rng)
    rest = [p for p in candidates if p is not first]
    second = _draw(rest, rng)
    return first if first.spare >= second.spare else second


def _draw(peers: list[Peer], rng: random.Random) -> Peer:
    total = sum(p.spare for p in peers)
    x = rng.random() * total
    for peer in peers:
        x -= peer.spare
        if x < 0:
            return peer
    return peers[-1]
