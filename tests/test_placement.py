"""Placement: power of two choices weighted by spare room."""

from __future__ import annotations

import random
from collections import Counter

from shoal.services.delegator.placement import Peer, choose


def test_no_peer_with_room_means_no_placement() -> None:
    assert choose([], random.Random(1)) is None
    assert choose([Peer("a", 0.0), Peer("b", -1.0)], random.Random(1)) is None


def test_a_single_candidate_is_chosen() -> None:
    peer = choose([Peer("a", 0.0), Peer("b", 2.0)], random.Random(1))
    assert peer is not None and peer.node_id == "b"


def test_the_emptier_peer_wins_most_placements_and_a_full_one_none() -> None:
    rng = random.Random(7)
    peers = [Peer("big", 8.0), Peer("small", 1.0), Peer("full", 0.0)]
    wins = Counter(choose(peers, rng).node_id for _ in range(2000))  # type: ignore[union-attr]
    assert wins["full"] == 0
    assert wins["big"] > 0.95 * 2000


def test_placement_spreads_load_across_equal_peers() -> None:
    rng = random.Random(3)
    peers = [Peer(f"n{i}", 4.0) for i in range(10)]
    load = Counter()
    for _ in range(1000):
        peer = choose(peers, rng)
        assert peer is not None
        load[peer.node_id] += 1
        peer.spare -= 0.01  # what the delegator does with an assignment in flight
    assert max(load.values()) - min(load.values()) < 40
