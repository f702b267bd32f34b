"""The hostile-input stress test (issue 13, "No input loses data": Done when).

A real cluster (`shoal up --headless`, 8 simulated nodes) while a hostile client on the
same host streams bad frames of every kind at the relay's ingest, paced by a token bucket
at 5,000 frames/s: deep nesting, garbage, truncated msgpack, frames just under and over
65,536 bytes, multi-frame messages, batches of 256 invalid records, invalid node ids,
records for the fleet's node ids from the wrong connection (impersonation, forged: their
ts_ms says so), replays of the fleet's old records, NaN, JSON, huge declared lengths,
wrong versions.

Checked: every record the fleet's nodes sent is on the relay's bus (a subscriber from
before the attack: per node, the seqs seen from its first one to the snapshot's last_seq,
no hole), the relay counts no gap for them, nothing forged reached the bus, and the
liveness monitor declared no node dead. No timing is asserted: the figures are printed.
The quick version (10 s) runs in `just test`; the full one (30 s) in `just bench`.
"""

from __future__ import annotations

import itertools
import json
import random
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
import zmq

sys.path.insert(0, str(Path(__file__).resolve().parent))
from hostile import HUGE_HEADERS, IDS, deep_msgpack

from shoal.protocol import codec, limits
from shoal.protocol.messages import Membership, NodeRecords, NodeView, RelaySnapshot
from shoal.services.runtime.ctl_client import CtlClient, CtlUnavailable
from shoal.services.testing import GATEWAY_KEY, BusListener, Cluster, raw_socket, wait_for

NODES = 8
FLEET = [f"sim-{i:03d}" for i in range(NODES)]
RATE_HZ = 5_000.0
FORGED_TS = 4_242_424_242  # the ts_ms of every forged record: none may reach the bus
FORGED_BOOT = 4_242_424_242  # a boot no simulated node draws (would replace the real one)
NAN64 = b"\xcb\x7f\xf8\x00\x00\x00\x00\x00\x00"
NAN32 = b"\xca\x7f\xc0\x00\x00"
HOLE = "@@NAN@@"
BAD_IDS = [i for i in IDS if not codec.valid_node_id(i)]  # "shim" is a board's reserved id only
SHORT_BAD_IDS = [i for i in BAD_IDS if len(i) < 100]  # 256 of them still fit in a frame

# --- the hostile frames ---------------------------------------------------------------------


def heartbeat(node_id: Any, boot_id: Any, seq: Any, **extra: Any) -> dict[str, Any]:
    return {
        "v": 1,
        "kind": "heartbeat",
        "node_id": node_id,
        "boot_id": boot_id,
        "seq": seq,
        **extra,
    }


def telemetry(node_id: str, boot_id: int, seq: int, **extra: Any) -> dict[str, Any]:
    values = {"cpu_pct": 10.0, "queue_depth": 1, "queue_capacity": 8, "load_factor": 0.1}
    return {"v": 1, "kind": "telemetry", "node_id": node_id, "boot_id": boot_id, "seq": seq, **values, **extra}  # fmt: skip


def mp(value: Any) -> bytes:
    return msgspec.msgpack.encode(value)


def with_nan(record: dict[str, Any], field: str, nan: bytes) -> bytes:
    """The record in msgpack with field NaN (float64 or float32: msgspec writes float64)."""
    return mp({**record, field: HOLE}).replace(mp(HOLE), nan)


def sized(size: int, node_id: str = "Bad_ID") -> bytes:
    """A heartbeat padded with an unknown field to exactly size bytes."""
    pad = size - 80
    while True:
        frame = mp(heartbeat(node_id, 1, 1, pad="x" * pad))
        if len(frame) == size:
            return frame
        pad += size - len(frame)


def batch(records: list[Any]) -> bytes:
    return mp({"v": 1, "kind": "batch", "records": records})


def hostile_kinds(fleet: list[NodeView], replays: list[bytes]) -> dict[str, list[list[bytes]]]:
    """Each kind of bad message, in a few variants; a message is a list of frames."""
    rng = random.Random(13)
    own = fleet[0]
    good = mp(telemetry(own.node_id, own.boot_id, own.last_seq))
    kinds: dict[str, list[list[bytes]]] = {
        "deep": [[deep_msgpack(d, m)] for d in (100, 999, 1000, 2000, 5000) for m in (True, False)],
        "garbage": [[rng.randbytes(rng.randrange(1, 600))] for _ in range(50)],
        "truncated": [[f[: rng.randrange(1, len(f))]] for f in [good, batch([heartbeat("x", 1, 1)] * 20)] * 20],
        "near_limit": [[sized(65_000)], [sized(limits.MAX_FRAME_BYTES)]],
        "oversize": [[sized(limits.MAX_FRAME_BYTES + 1)], [sized(70_000)]],
        "multi_frame": [[good, good], [b"", good], [good, b"", good, good]],
        "batch_256_invalid": [
            [batch([telemetry(n.node_id, n.boot_id, n.last_seq, cpu_pct=-1.0) for n in fleet] * 32)],
            [batch([heartbeat(node_id, 1, i) for i, node_id in enumerate((SHORT_BAD_IDS * 20)[:256])])],
            [batch([{"v": 1, "kind": "heartbeat", "node_id": "a"}] * 256)],
        ],
        "bad_ids": [[mp(heartbeat(node_id, 1, 1))] for node_id in BAD_IDS],
        "impersonation": [
            [mp(heartbeat(n.node_id, n.boot_id, n.last_seq + k, ts_ms=FORGED_TS))]
            for n in fleet
            for k in (1, 2, 3, 50, 5000)
        ]
        + [[mp(heartbeat(n.node_id, FORGED_BOOT, 0, ts_ms=FORGED_TS))] for n in fleet]
        + [[batch([heartbeat(n.node_id, n.boot_id, n.last_seq + 1, ts_ms=FORGED_TS) for n in fleet])]],
        "replay": [[frame] for frame in replays] + [[batch([msgspec.msgpack.decode(f) for f in replays[:64]])]],
        "nan": [
            [with_nan(telemetry(n.node_id, n.boot_id, n.last_seq + 1, ts_ms=FORGED_TS), field, nan)]
            for n in fleet
            for field in ("cpu_pct", "load_factor")
            for nan in (NAN64, NAN32)
        ],
        "json": [[msgspec.json.encode(telemetry(n.node_id, n.boot_id, n.last_seq + 1))] for n in fleet],
        "huge_header": [[h + b"\x00" * 8] for h in HUGE_HEADERS]
        + [[b"\x83\xa1v\x01\xa4kind\xa9heartbeat\xa7node_id" + h] for h in HUGE_HEADERS],
        "version": [[mp({**heartbeat(n.node_id, n.boot_id, n.last_seq + 1, ts_ms=FORGED_TS), "v": 2})] for n in fleet],
    }  # fmt: skip
    return kinds


# How often each kind comes (per 200 messages): small frames mostly, so 5,000/s is frames
# a relay must refuse one by one, not bytes. The 64 KiB ones and the batches are the few:
# a batch of 256 invalid records costs the relay's decoder about 2 ms (an exception each).
WEIGHTS = {
    "deep": 20, "garbage": 20, "truncated": 20, "near_limit": 2, "oversize": 2,
    "multi_frame": 12, "batch_256_invalid": 1, "bad_ids": 20, "impersonation": 30,
    "replay": 25, "nan": 20, "json": 10, "huge_header": 9, "version": 9,
}  # fmt: skip


def schedule(kinds: dict[str, list[list[bytes]]]) -> list[tuple[str, list[bytes]]]:
    """One round of messages, the kinds interleaved by weight, variants in turn."""
    rng = random.Random(5)
    order = [kind for kind, weight in WEIGHTS.items() for _ in range(weight)]
    rng.shuffle(order)
    turns: Counter[str] = Counter()
    out = []
    for _ in range(10):
        for kind in order:
            variants = kinds[kind]
            out.append((kind, variants[turns[kind] % len(variants)]))
            turns[kind] += 1
    return out


class HostileClient:
    """A raw DEALER on the relay's ingest, streaming a schedule of bad messages at a rate
    set by a token bucket, in a thread. It reads the acks the relay sends it (for invalid
    records that say who sent them), so its queue never fills."""

    def __init__(self, endpoint: str, messages: list[tuple[str, list[bytes]]]) -> None:
        self.endpoint = endpoint
        self.messages = messages
        self.sent: Counter[str] = Counter()  # messages sent, by kind
        self.sent_each: Counter[int] = Counter()  # and by their index in messages
        self.refused = 0  # sends the socket refused (its queue full): not counted as sent
        self.acks = 0
        self.elapsed_s = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, duration_s: float, rate_hz: float) -> None:
        self._thread = threading.Thread(target=self._run, args=(duration_s, rate_hz))
        self._thread.start()

    def join(self) -> None:
        assert self._thread is not None
        self._thread.join(60)

    def stop(self) -> None:
        self._stop.set()

    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def frames(self) -> int:
        return sum(self.sent.values())

    def _run(self, duration_s: float, rate_hz: float) -> None:
        sock = raw_socket(zmq.DEALER, self.endpoint, key=GATEWAY_KEY, hwm=100_000)
        try:
            self._pace(sock, duration_s, rate_hz)
        finally:
            # What send() took is sent: a close with linger 0 (the factory's default) would
            # drop what still waits in this socket's queue when the relay lags behind, and
            # the test would wait for refusals of frames the relay can never see.
            sock.close(linger=LINGER_MS)

    def _pace(self, sock: zmq.Socket[Any], duration_s: float, rate_hz: float) -> None:
        burst = rate_hz / 100  # 10 ms worth of tokens at most
        tokens, i, n = 0.0, 0, len(self.messages)
        start = last = time.monotonic()
        end = start + duration_s
        while not self._stop.is_set() and (now := time.monotonic()) < end:
            tokens = min(burst, tokens + (now - last) * rate_hz)
            last = now
            while tokens >= 1:
                kind, frames = self.messages[i % n]
                try:
                    sock.send_multipart(frames, zmq.NOBLOCK)
                    self.sent[kind] += 1
                    self.sent_each[i % n] += 1
                except zmq.Again:
                    self.refused += 1
                tokens -= 1
                i += 1
            self._drain_acks(sock)
            time.sleep(max(0.0, (1 - tokens) / rate_hz))
        self.elapsed_s = time.monotonic() - start

    def _drain_acks(self, sock: zmq.Socket[Any]) -> None:
        try:
            while True:
                sock.recv(zmq.NOBLOCK)
                self.acks += 1
        except zmq.Again:
            pass


LINGER_MS = 30_000


def refusals(frames: list[bytes]) -> Counter[str]:
    """The reject reasons the relay counts for one message (docs/protocol.md section 5):
    what the codec refuses, and impersonation for any valid record (each is the fleet's)."""
    if len(frames) != 1:
        return Counter(malformed=1)
    try:
        records, bad = codec.decode_ingest(frames[0])
    except codec.Rejected as rej:
        return Counter({rej.reason: 1})
    assert all(r.node_id in FLEET for r in records), "a hostile record that would get in"
    return Counter([r.reason for r in bad] + ["impersonation"] * len(records))


def expected_refusals(attacker: HostileClient) -> Counter[str]:
    total: Counter[str] = Counter()
    for i, count in attacker.sent_each.items():
        for reason, n in refusals(attacker.messages[i][1]).items():
            total[reason] += n * count
    return total


# --- watching the cluster ------------------------------------------------------------------


def members(cluster: Cluster) -> dict[str, str]:
    with CtlClient(cluster.config.liveness.ctl) as lv:
        snap = lv.call("members", timeout_s=2.0, retries=1)
    return {m["node_id"]: m["state"] for m in snap["members"]}


def snapshot(cluster: Cluster) -> RelaySnapshot:
    with CtlClient(cluster.config.relay.ctl) as relay:
        return relay.call("snapshot", result_type=RelaySnapshot, timeout_s=2.0, retries=1)


class Watch:
    """The relay's bus (every record) and the monitor's membership events, from now on."""

    def __init__(self, cluster: Cluster) -> None:
        self.bus = BusListener(cluster.config.relay.bus)
        topics = (codec.TOPIC_MEMBERSHIP, codec.TOPIC_SERVICE_BEAT)
        self.mem = BusListener(cluster.config.liveness.bus, topics=topics)
        # Subscribed once a frame of each came (no slow-joiner loss after that).
        wait_for(lambda: self.pump() and self.bus.frames and self.mem.frames, 10)

    def pump(self) -> bool:
        self.bus.pump(0.02)
        self.mem.pump(0.02)
        return True

    def seqs(self) -> dict[tuple[str, int], set[int]]:
        seen: dict[tuple[str, int], set[int]] = {}
        for r in self.bus.records:
            seen.setdefault((r.node_id, r.boot_id), set()).add(r.seq)
        return seen

    def last_pseq(self) -> int:
        return max((f.pseq for f in self.bus.frames if isinstance(f, NodeRecords)), default=0)

    def bus_frames_lost(self) -> int:
        """rec frames this subscriber missed (pseq holes): 0, or the holes mean nothing."""
        pseqs = [f.pseq for f in self.bus.frames if isinstance(f, NodeRecords)]
        return sum(b - a - 1 for a, b in itertools.pairwise(pseqs))

    def events(self, kind: str) -> list[str]:
        return [
            e.node_id
            for f in self.mem.frames
            if isinstance(f, Membership)
            for e in f.events
            if e.event == kind
        ]

    def close(self) -> None:
        self.bus.close()
        self.mem.close()


def holes(watch: Watch, before: RelaySnapshot, snap: RelaySnapshot) -> dict[str, int]:
    """Per fleet node: seqs after its last_seq before the attack, up to its last_seq in
    snap, missing on the bus. The relay accepted each of them after the first snapshot
    (or counts a gap), so this subscriber, there since before it, saw every one."""
    seen = watch.seqs()
    start = {n.node_id: n.last_seq for n in before.nodes}
    out = {}
    for n in snap.nodes:
        if n.node_id in FLEET:
            got = seen.get((n.node_id, n.boot_id), set())
            out[n.node_id] = len(set(range(start[n.node_id] + 1, n.last_seq + 1)) - got)
    return out


def caught_up(
    cluster: Cluster, watch: Watch, before: RelaySnapshot, timeout_s: float
) -> RelaySnapshot:
    """The relay's snapshot once the fleet caught up (a node resends what was not acked):
    every seq up to the relay's last_seq is on the bus. Or the last one taken when the
    time is up, its holes to report. Each is compared with the bus up to its pseq."""
    deadline = time.monotonic() + timeout_s
    while True:
        snap = snapshot(cluster)
        pseq = snap.pseq
        wait_for(lambda: watch.pump() and watch.last_pseq() >= pseq, 10)  # noqa: B023
        if not any(holes(watch, before, snap).values()) or time.monotonic() > deadline:
            return snap
        time.sleep(0.2)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    with Cluster(tmp_path, nodes=NODES) as c:
        try:
            wait_for(
                lambda: members(c) == dict.fromkeys(FLEET, "alive"), 30, ignore=(CtlUnavailable,)
            )
        except AssertionError:
            raise AssertionError("cluster did not come up:\n" + c.log()[-3000:]) from None
        yield c


@pytest.mark.parametrize(
    "attack_s", [pytest.param(10, id="10s"), pytest.param(30, id="30s", marks=pytest.mark.slow)]
)
def test_a_hostile_client_costs_the_fleet_no_record_and_no_node(
    cluster: Cluster, attack_s: float, capsys: pytest.CaptureFixture[str]
) -> None:
    watch = Watch(cluster)
    try:
        wait_for(lambda: watch.pump() and len({r.node_id for r in watch.bus.records}) == NODES, 10)
        before = snapshot(cluster)
        replays = [codec.encode(r) for r in watch.bus.records[:200]]
        fleet = [n for n in before.nodes if n.node_id in FLEET]
        attacker = HostileClient(
            cluster.config.relay.ingest, schedule(hostile_kinds(fleet, replays))
        )
        attacker.start(attack_s, RATE_HZ)
        try:
            while attacker.alive():
                watch.pump()
        finally:
            attacker.stop()
            attacker.join()
        ended = time.monotonic()
        expected = expected_refusals(attacker)
        refused = refused_all(cluster, watch, before, expected, 60 + 2 * attack_s)
        backlog_s = time.monotonic() - ended
        after = caught_up(cluster, watch, before, 15)
        figures = measured(attacker, watch, before, after, members(cluster))
        figures["relay_backlog_s"] = round(backlog_s, 1)
        figures["refused_as_expected"] = refused == expected
        with capsys.disabled():
            print(f"\nhostile_stress {attack_s:g}s: " + json.dumps(figures))
    finally:
        watch.close()
    assert figures["bus_frames_lost"] == 0, "the subscriber missed bus frames: holes unknown"
    # Gaps from before the attack are the cluster's start (a heartbeat refused while the
    # relay was not up yet takes a seq for good: docs/protocol.md section 3.1).
    assert figures["lost"] == 0 and figures["new_gaps"] == 0, figures["per_node"]
    assert figures["forged_on_bus"] == 0 and figures["strangers_on_bus"] == 0
    assert figures["dead"] == 0 and figures["not_alive"] == [], figures
    assert figures["reboots"] == 0 and not figures["relay_restarted"]
    assert figures["relay_frame_errors"] == 0 and figures["relay_handler_errors"] == 0
    # Every hostile message was read and refused, for its reason: none dropped unread.
    assert refused == expected, (refused, expected)


def rejects_since(before: RelaySnapshot, snap: RelaySnapshot) -> Counter[str]:
    """The relay's refusals since the first snapshot, but duplicates (the fleet's resends)."""
    delta = Counter({k: v - before.rejects.get(k, 0) for k, v in snap.rejects.items()})
    del delta["duplicate"]
    return +delta


def refused_all(
    cluster: Cluster,
    watch: Watch,
    before: RelaySnapshot,
    expected: Counter[str],
    timeout_s: float,
) -> Counter[str]:
    """The relay's refusals once it has read the whole attack (it may lag behind it: what
    it has not read waits in its socket's queue), or when the time is up."""
    deadline = time.monotonic() + timeout_s
    while True:
        refused = rejects_since(before, snapshot(cluster))
        if refused.total() >= expected.total() or time.monotonic() > deadline:
            return refused
        watch.pump()


def measured(
    attacker: HostileClient,
    watch: Watch,
    before: RelaySnapshot,
    after: RelaySnapshot,
    states: dict[str, str],
) -> dict[str, Any]:
    per_node = holes(watch, before, after)
    nodes = {n.node_id: n for n in after.nodes if n.node_id in FLEET}
    boots_before = {n.node_id: n.boot_id for n in before.nodes}
    gaps_before = {n.node_id: n.gaps for n in before.nodes}
    good = [r for r in watch.bus.records if r.node_id in FLEET and r.ts_ms != FORGED_TS]
    counters = after.counters
    return {
        "frames_sent": attacker.frames(),
        "rate_hz": round(attacker.frames() / attacker.elapsed_s) if attacker.elapsed_s else 0,
        "target_hz": RATE_HZ,
        "send_refused": attacker.refused,
        "acks_to_attacker": attacker.acks,
        "by_kind": dict(attacker.sent),
        "good_records": len(good),
        "lost": sum(per_node.values()),
        "gaps": sum(n.gaps for n in nodes.values()),  # since each node's boot
        # A gap from before the attack may be filled by a late resend during it: never < 0.
        "new_gaps": sum(max(0, n.gaps - gaps_before.get(k, 0)) for k, n in nodes.items()),
        "per_node": {k: {"lost": per_node.get(k, 0), "gaps": n.gaps} for k, n in nodes.items()},
        "forged_on_bus": sum(r.ts_ms == FORGED_TS for r in watch.bus.records),
        "strangers_on_bus": sum(r.node_id not in FLEET for r in watch.bus.records),
        "bus_frames_lost": watch.bus_frames_lost(),
        "dead": len([n for n in watch.events("dead") if n in FLEET]),
        "suspect": len([n for n in watch.events("suspect") if n in FLEET]),
        "not_alive": sorted(k for k in FLEET if states.get(k) != "alive"),
        "reboots": sum(boots_before.get(k) != n.boot_id for k, n in nodes.items()),
        "relay_refused": dict(rejects_since(before, after)),
        "fleet_duplicates": after.rejects["duplicate"] - before.rejects["duplicate"],
        "relay_restarted": after.pub != before.pub,
        "relay_frame_errors": counters.get("frame_errors", 0),
        "relay_handler_errors": counters.get("handler_errors", 0),
    }
