"""The publisher and subscriber processes of the throughput benchmarks, and a thread that
listens to the bus.

Publishers and subscribers are separate processes (multiprocessing, spawn) so that neither
steals the GIL of the other nor of the process being measured. Their worker functions live
in this importable module because spawn pickles them by qualified name.

Parent <-> child protocol (one Pipe per child): the child sends ``("ready", info)`` once
set up; a subscriber sends ``("joined", None)`` once its subscription is live; the parent
sends ``"go"`` to the publisher, which answers ``("sent", stats)`` when it has sent
everything and stays connected (reading acks) until the parent sends ``"close"``, after
the subscriber's ``("done", result)``; the publisher then ends with ``("done", result)``.
A failing child sends ``("error", text)`` instead.
"""

from __future__ import annotations

import multiprocessing as mp
import threading
import time
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import msgspec
import zmq

from shoal.bench._frames import bus_frames, ingest_frames, multipart_frames, shard_ids
from shoal.protocol import codec

# The subscriber gives up when no frame came for this long after the first one.
IDLE_TIMEOUT_S = 3.0
# After the subscriber is done, how long the publisher waits for the relay's last acks.
ACK_GRACE_S = 2.0
# Topic of the slow-joiner probes: never matches b"rec|".
PROBE_TOPIC = b"prb|"

_ctx = mp.get_context("spawn")


@dataclass(frozen=True)
class PubSpec:
    endpoint: str
    kind: str  # "pub": PUB bind (raw baseline, framing); "dealer": DEALER connect (relay)
    frames: str  # "bus", "multipart", or "ingest"
    n_records: int
    batch: int = 1
    seq_start: int = 0
    # PUB: send probes until the parent says go, so the subscriber is live (slow joiner).
    probe: bool = False
    # A keys directory: the DEALER is a Curve client with its key ``key`` (None: plain).
    keys: str | None = None
    key: str = "gateway"
    # "ingest" frames: only the nodes of relay shard ``shard`` of ``shards`` (bench/shards.py).
    shard: int = 0
    shards: int = 1


@dataclass(frozen=True)
class SubSpec:
    endpoint: str
    expect_records: int
    # "probe": live after the first probe frame; "beat": after the first svc heartbeat
    # (the relay's bus, where the benchmark cannot inject probes).
    join: str = "probe"
    # "records": count NodeRecords.records (decoded lightly); "frames": count messages and
    # multiply by records_per_msg (pure transport, no decoding).
    count: str = "records"
    records_per_msg: int = 1
    multipart: bool = False
    # A multipart stream's first frame is the bare topic, without the separator.
    topic: bytes = b"rec|"
    deadline_s: float = 120.0
    keys: str | None = None  # as PubSpec's: a Curve client with its key ``key``
    key: str = "reader"


def curve_client(sock: zmq.Socket[Any], keys: str | None, key: str) -> None:
    """Make sock a Curve client with key of the keys directory (before it connects); the
    socket keeps every other option it had, so a Curve stream differs from a plain one by
    the security alone."""
    if keys is None:
        return

    from shoal.services.runtime.security import Security

    server, public, secret = Security(keys_dir=Path(keys), name=key).client_keys()
    sock.setsockopt(zmq.CURVE_SERVERKEY, server)
    sock.setsockopt(zmq.CURVE_PUBLICKEY, public)
    sock.setsockopt(zmq.CURVE_SECRETKEY, secret)


def _build(spec: PubSpec) -> list[Any]:
    if spec.frames == "bus":
        return bus_frames(spec.n_records, spec.batch)
    if spec.frames == "multipart":
        return multipart_frames(spec.n_records)
    return ingest_frames(spec.n_records, spec.batch, seq_start=spec.seq_start, ids=_ids(spec))


def _ids(spec: PubSpec) -> list[str]:
    return shard_ids(spec.shard, spec.shards)


def pub_worker(conn: Connection, spec: PubSpec) -> None:
    try:
        _pub(conn, spec)
    except Exception as err:  # report, never hang the parent
        conn.send(("error", repr(err)))


def _pub(conn: Connection, spec: PubSpec) -> None:
    frames = _build(spec)  # before "ready": encoding is not part of any measurement
    ctx = zmq.Context()
    if spec.kind == "pub":
        sock = ctx.socket(zmq.PUB)
        sock.setsockopt(zmq.SNDHWM, 0)  # unlimited: nothing dropped by the HWM
        sock.bind(spec.endpoint)
    else:
        sock = ctx.socket(zmq.DEALER)
        curve_client(sock, spec.keys, spec.key)
        sock.connect(spec.endpoint)
    conn.send(("ready", {"frames": len(frames), "bytes": sum(_size(f) for f in frames)}))
    while True:
        if spec.probe:
            sock.send(PROBE_TOPIC + b"probe")
        if conn.poll(0.005 if spec.probe else None) and conn.recv() == "go":
            break
    acks = _AckTally()
    # time.monotonic() is one clock for every process (CLOCK_MONOTONIC on Linux): the
    # parent compares our first send with the subscriber's last receive.
    cpu0, t0 = time.process_time(), time.monotonic()
    if spec.frames == "multipart":
        send_multipart = sock.send_multipart
        for parts in frames:
            send_multipart(parts)
    elif spec.kind == "dealer":
        send = sock.send
        for i, frame in enumerate(frames):
            send(frame)  # blocks at the HWM: as fast as the relay takes them
            if i & 255 == 0:
                # Read the relay's acks now and then, as a node would; unread acks would
                # only fill our queue and then be dropped by the relay's ROUTER.
                acks.drain(sock)
    else:
        send = sock.send
        for frame in frames:
            send(frame)
    send_s, cpu_s = time.monotonic() - t0, time.process_time() - cpu0
    conn.send(("sent", {"start": t0, "send_s": send_s, "cpu_s": cpu_s}))
    # Stay connected until the parent says the subscriber is done. Closing at once would
    # lose records: a TCP socket closed with unread data (acks) in its receive buffer sends
    # RST, and the relay's kernel then discards what it had not read yet.
    reads_acks = spec.kind == "dealer"  # a PUB cannot receive
    while not conn.poll(0.02):
        if reads_acks:
            acks.drain(sock)
    conn.recv()
    unacked = None
    if reads_acks:
        ids = _ids(spec)
        last_seqs = {
            ids[k]: spec.seq_start + (spec.n_records - 1 - k) // len(ids)
            for k in range(min(len(ids), spec.n_records))
        }
        # The last ack may trail the last bus frame: give it a moment.
        deadline = time.monotonic() + ACK_GRACE_S
        while (unacked := acks.unacked(last_seqs)) and time.monotonic() < deadline:
            if sock.poll(50):
                acks.drain(sock)
    sock.close(linger=0)
    ctx.term()
    conn.send(("done", {"acks": acks.frames, "unacked_nodes": unacked}))


class _AckTally:
    """The relay's acks as a node reads them: the highest seq acked per node."""

    def __init__(self) -> None:
        self.frames = 0
        self.high: dict[str, int] = {}

    def drain(self, sock: zmq.Socket[Any]) -> None:
        high = self.high
        with suppress(zmq.Again):
            while True:
                ack = codec.decode_ack(sock.recv(zmq.NOBLOCK))  # typed, as a gateway does
                self.frames += 1
                for entry in ack.acks:
                    if entry.last > high.get(entry.node_id, -1):
                        high[entry.node_id] = entry.last

    def unacked(self, last_seqs: dict[str, int]) -> int:
        """How many nodes have their last seq not acked yet."""
        return sum(1 for node, seq in last_seqs.items() if self.high.get(node, -1) < seq)


def _size(frame: bytes | list[bytes]) -> int:
    return len(frame) if isinstance(frame, bytes) else sum(len(p) for p in frame)


class _CountOnly(msgspec.Struct, tag="records", tag_field="kind"):
    """A NodeRecords frame whose records are left undecoded: counting costs almost nothing."""

    pub: int
    pseq: int
    records: list[msgspec.Raw]


def sub_worker(conn: Connection, spec: SubSpec) -> None:
    try:
        _sub(conn, spec)
    except Exception as err:
        conn.send(("error", repr(err)))


def _sub(conn: Connection, spec: SubSpec) -> None:
    from shoal.protocol import codec
    from shoal.protocol.messages import NodeRecords, Telemetry

    ctx = zmq.Context()
    sock = ctx.socket(zmq.SUB)
    sock.setsockopt(zmq.RCVHWM, 0)  # unlimited: a slow subscriber queues, never drops
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SUBSCRIBE, spec.topic)
    join_topic = PROBE_TOPIC if spec.join == "probe" else codec.TOPIC_SERVICE_BEAT
    sock.setsockopt(zmq.SUBSCRIBE, join_topic)
    curve_client(sock, spec.keys, spec.key)
    sock.connect(spec.endpoint)
    conn.send(("ready", None))

    deadline = time.monotonic() + spec.deadline_s
    while True:  # wait for the subscription to be live
        if time.monotonic() > deadline:
            raise TimeoutError("subscription never became live")
        if sock.poll(100) and sock.recv_multipart()[0].startswith(join_topic):
            break
    conn.send(("joined", None))

    decoder = msgspec.msgpack.Decoder(_CountOnly)
    # bytes, or list[bytes] when multipart
    recv: Callable[[], Any] = sock.recv_multipart if spec.multipart else sock.recv
    by_frames = spec.count == "frames"
    per_msg = spec.records_per_msg
    records = frames = pseq_gaps = 0
    last_pseq = 0
    first = last = 0.0
    sample: bytes | None = None
    cpu0 = time.process_time()
    # A receive timeout rather than a poll per message: poll() would double the per-message
    # cost and make the baseline look slower than pyzmq is.
    sock.setsockopt(zmq.RCVTIMEO, 1000)
    while records < spec.expect_records:
        try:
            msg = recv()
        except zmq.Again:
            if frames or time.monotonic() > deadline:
                break  # idle for IDLE_TIMEOUT_S after the stream started: it is over
            continue
        now = time.monotonic()
        if (msg[0] if spec.multipart else msg).startswith(join_topic):
            continue  # a probe still in flight when the publisher was told to go, or a beat
        if by_frames:
            records += per_msg
        else:
            frame = decoder.decode(codec.split_bus(msg)[1])
            if last_pseq and frame.pseq != last_pseq + 1:
                pseq_gaps += 1  # a frame lost between publisher and us (pseq is per topic)
            last_pseq = frame.pseq
            records += len(frame.records)
        if not frames:
            first = now
            sample = codec.TOPIC_SEP.join(msg) if spec.multipart else msg
            sock.setsockopt(zmq.RCVTIMEO, int(IDLE_TIMEOUT_S * 1000))
        frames += 1
        last = now
    cpu_s = time.process_time() - cpu0
    valid = True
    if sample is not None:
        # Fully decode one frame: what was counted is the real thing.
        _, decoded = codec.decode_bus(sample)
        valid = isinstance(decoded, NodeRecords) and all(
            isinstance(r, Telemetry) for r in decoded.records
        )
    sock.close()
    ctx.term()
    conn.send(
        (
            "done",
            {
                "records": records,
                "frames": frames,
                "first": first,
                "last": last,
                "cpu_s": cpu_s,
                "pseq_gaps": pseq_gaps,
                "valid": valid,
            },
        )
    )


class Child:
    """A spawned worker process and its end of the pipe."""

    def __init__(self, target: Any, spec: Any, name: str) -> None:
        self.conn, child_conn = _ctx.Pipe()
        self.name = name
        self.proc = _ctx.Process(target=target, args=(child_conn, spec), name=name, daemon=True)
        self.proc.start()
        child_conn.close()

    def expect(self, what: str, timeout_s: float) -> Any:
        if not self.conn.poll(timeout_s):
            raise TimeoutError(f"{self.name}: no '{what}' within {timeout_s}s")
        tag, payload = self.conn.recv()
        if tag == "error":
            raise RuntimeError(f"{self.name} failed: {payload}")
        if tag != what:
            raise RuntimeError(f"{self.name}: expected '{what}', got '{tag}'")
        return payload

    def go(self) -> None:
        self.conn.send("go")

    def stop(self) -> None:
        self.proc.join(2.0)
        if self.proc.is_alive():
            self.proc.terminate()
            self.proc.join(2.0)
        self.conn.close()


def pub_sub_run(
    pub: PubSpec, sub: SubSpec, *, label: str, start_timeout_s: float = 60.0
) -> dict[str, Any]:
    """One measured stream: start both, wait until the subscription is live, go, collect."""
    sub_child = Child(sub_worker, sub, f"sub-{label}")
    pub_child = Child(pub_worker, pub, f"pub-{label}")
    try:
        sub_child.expect("ready", start_timeout_s)
        info = pub_child.expect("ready", start_timeout_s)
        sub_child.expect("joined", start_timeout_s)
        pub_child.go()
        sent = pub_child.expect("sent", sub.deadline_s)
        sub_res = sub_child.expect("done", sub.deadline_s + IDLE_TIMEOUT_S + 5)
        pub_child.conn.send("close")
        pub_res = pub_child.expect("done", 10.0)
    finally:
        pub_child.stop()
        sub_child.stop()
    return {
        **sub_res,
        # First send to last receive: the throughput of the whole path. The subscriber's
        # own first-to-last window alone would leave out whatever the relay did before its
        # first frame came out (a whole drain pass: 512 frames, 32,768 records in batches
        # of 64), and overstate its rate.
        "elapsed_s": sub_res["last"] - sent["start"],
        "sub_window_s": sub_res["last"] - sub_res["first"],
        "sent_frames": info["frames"],
        "sent_bytes": info["bytes"],
        "pub_send_s": round(sent["send_s"], 4),
        "pub_cpu_s": round(sent["cpu_s"], 4),
        "pub_acks": pub_res["acks"],
        "unacked_nodes": pub_res["unacked_nodes"],
    }


class BusListener:
    """A SUB socket on one bus topic read by a thread of its own; ``on_frame`` gets each
    decoded frame with the monotonic time it reached this process."""

    def __init__(self, endpoint: str, topic: bytes) -> None:
        from shoal.services.runtime.sockets import Sockets

        self._stop = threading.Event()
        self._ctx = zmq.Context()
        # Through the factory: the keys the cluster registered for its endpoints.
        self._sockets = Sockets(self._ctx)
        self._sock = self._sockets.connect(zmq.SUB, endpoint, hwm=0)
        self._sock.setsockopt(zmq.SUBSCRIBE, topic + codec.TOPIC_SEP)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def on_frame(self, now: float, frame: Any) -> None:
        raise NotImplementedError

    def _run(self) -> None:
        while not self._stop.is_set():
            if not self._sock.poll(50):
                continue
            now = time.monotonic()
            _, frame = codec.decode_bus(self._sock.recv())
            self.on_frame(now, frame)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self._sockets.close_all()
        self._ctx.term()
