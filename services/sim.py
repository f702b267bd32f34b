"""A fleet of simulated nodes in one process, running the firmware's node core.

Each node has its own id, boot id, sequence numbers, retry ring and simulated CPU and task
queue. The process talks to the relay like a gateway would: one DEALER connection, records
of many nodes batched per frame, acks routed back to the node they name.

Usage: ``shoal sim --nodes 50`` (or ``shoal up``, which starts one).
"""

from __future__ import annotations

import os
import time
from typing import Annotated, Any

import msgspec
import zmq

from shoal.firmware.nodecore.loadmodel import SimulatedLoad
from shoal.firmware.nodecore.node import NodeCore
from shoal.firmware.nodecore.prng import XorShift32
from shoal.protocol import codec, limits

from .config import ShoalConfig, SimConfig
from .runtime import CtlError, Service, parse_args, received

_encoder = msgspec.msgpack.Encoder()


class SetRateArgs(msgspec.Struct, forbid_unknown_fields=True):
    """Args of the sim's "set_rate" op: tasks per second for some nodes (default: all)."""

    rate_hz: Annotated[float, msgspec.Meta(ge=0, le=10_000)]
    nodes: list[str] = []


class SimHal:
    """The simulator's hardware: a CPU and task queue model, plus heap and radio figures."""

    def __init__(self, rng: XorShift32, cfg: SimConfig, now_ms: int) -> None:
        self.rng = rng
        speed = cfg.service_rate_hz * cfg.task_cost_ms / 1000 if cfg.service_rate_hz else 1.0
        self.load = SimulatedLoad(
            rng.random, cfg.arrival_rate_hz, cfg.task_cost_ms, cfg.queue_capacity, now_ms, speed
        )
        self.base_heap = 110_000 + int(rng.random() * 20_000)
        self.base_rssi = -45 - int(rng.random() * 30)

    def rand(self) -> float:
        return self.rng.random()

    def sample(self, now_ms: int) -> dict[str, Any]:
        cpu, depth, load = self.load.sample(now_ms)
        return {
            "cpu_pct": cpu,
            "queue_depth": depth,
            "queue_capacity": self.load.queue_capacity,
            "load_factor": min(load, limits.LOAD_FACTOR_MAX),
            "free_heap": self.base_heap - 180 * depth,
            "rssi": max(-127, min(0, self.base_rssi + int(self.rng.random() * 7) - 3)),
        }


class GatewayLink:
    """The shared connection, as each node's transport sees it."""

    def __init__(self) -> None:
        self.outbox: list[dict[str, Any]] = []
        self.up = True  # optimistic until a send to the relay fails

    def send(self, msg: dict[str, Any]) -> bool:
        if not self.up:
            return False
        self.outbox.append(msg)
        return True


class SimNode:
    """One simulated node: its core, its hardware, and a crashed flag for later faults."""

    def __init__(
        self, node_id: str, index: int, cfg: SimConfig, link: GatewayLink, now_ms: int
    ) -> None:
        rng = XorShift32((cfg.seed * 1_000_003 + index * 7919) & 0xFFFFFFFF)
        self.hal = SimHal(rng, cfg, now_ms)
        boot_id = int.from_bytes(os.urandom(4), "big") or 1
        settings = {
            "telemetry_interval_ms": cfg.telemetry_interval_ms,
            "heartbeat_interval_ms": cfg.heartbeat_interval_ms,
            "ring_capacity": cfg.ring_capacity,
            "ack_timeout_ms": cfg.ack_timeout_ms,
            "backoff_min_ms": cfg.backoff_min_ms,
            "backoff_max_ms": cfg.backoff_max_ms,
            "fw": "shoal-sim/0.1",
            "queue_capacity": cfg.queue_capacity,
        }
        self.core = NodeCore(node_id, boot_id, self.hal, link, settings, now_ms)
        # Spread the fleet's telemetry over the interval, as real boards booted apart would.
        self.core.next_telemetry_ms = now_ms + int(rng.random() * cfg.telemetry_interval_ms)


class Fleet(Service):
    name = "sim"

    def __init__(self, config: ShoalConfig, **kwargs: Any) -> None:
        super().__init__(config, **kwargs)
        self.cfg = config.sim
        self.link = GatewayLink()
        self.t0 = time.monotonic()
        now = self.now_ms()
        self.nodes: dict[str, SimNode] = {}
        for i in range(self.cfg.nodes):
            node_id = f"{self.cfg.id_prefix}-{i:03d}"
            self.nodes[node_id] = SimNode(node_id, i, self.cfg, self.link, now)
        self.ctl_ops["nodes"] = self._op_nodes
        self.ctl_ops["set_rate"] = self._op_set_rate

    def now_ms(self) -> int:
        return int((time.monotonic() - self.t0) * 1000) + 1

    def setup(self) -> None:
        # IMMEDIATE: a send with no live connection fails at once instead of queueing
        # silently, so nodes know the link is down and keep their own buffers.
        self.dealer = self.sockets.connect(
            zmq.DEALER, self.config.relay.ingest, immediate=1, linger=500, hwm=50_000
        )
        self.endpoints["ingest"] = self.config.relay.ingest
        self.serve_ctl(self.cfg.ctl)
        self.on_readable(self.dealer, self._drain_acks)
        self.every(self.cfg.tick_ms / 1000, self._tick)

    def _tick(self) -> None:
        now = self.now_ms()
        self.link.up = True
        for node in self.nodes.values():
            node.core.tick(now)
        self._flush()

    def _flush(self) -> None:
        outbox = self.link.outbox
        if not outbox:
            return
        self.link.outbox = []
        step = limits.MAX_BATCH_RECORDS
        chunks = [outbox[start : start + step] for start in range(0, len(outbox), step)]
        while chunks:
            chunk = chunks.pop(0)
            frame = _encoder.encode({"v": 1, "kind": "batch", "records": chunk})
            if len(frame) > limits.MAX_FRAME_BYTES and len(chunk) > 1:
                half = len(chunk) // 2  # records are small; halving converges at once
                chunks[:0] = [chunk[:half], chunk[half:]]
                continue
            try:
                self.dealer.send(frame, zmq.NOBLOCK)
                self.counters["frames_sent"] += 1
                self.counters["records_sent"] += len(chunk)
            except zmq.Again:
                # Nothing is lost: these stay in the nodes' rings until acked.
                self.link.up = False
                self.counters["send_failed"] += 1
                return

    def _drain_acks(self) -> None:
        now = self.now_ms()
        for body in received(self.dealer):
            try:
                ack = codec.decode_ack(body)
            except codec.Rejected as rej:
                self.counters["bad_acks"] += 1
                self.rejects.add(rej.reason, rej.detail)
                continue
            for entry in ack.acks:
                node = self.nodes.get(entry.node_id)
                if node is not None:
                    node.core.on_ack(entry.boot_id, entry.first, entry.last, now)
        self._flush()  # a probe's ack brings a node UP with a backlog to send

    def on_stop(self) -> None:
        now = self.now_ms()
        for node in self.nodes.values():
            node.core.goodbye(now, "shutdown")
        self._flush()

    def status_counters(self) -> dict[str, int]:
        counters = dict(self.counters)
        counters["nodes"] = len(self.nodes)
        for key in ("sent", "resent", "acked", "reconnects", "disconnects"):
            counters[f"node_{key}"] = sum(n.core.stats[key] for n in self.nodes.values())
        counters["node_dropped"] = sum(n.core.ring.dropped for n in self.nodes.values())
        counters["node_buffered"] = sum(len(n.core.ring) for n in self.nodes.values())
        return counters

    def _op_nodes(self, _args: dict[str, Any]) -> dict[str, Any]:
        return {node_id: node.core.snapshot() for node_id, node in self.nodes.items()}

    def _op_set_rate(self, args: dict[str, Any]) -> dict[str, Any]:
        req = parse_args(args, SetRateArgs)
        unknown = [n for n in req.nodes if n not in self.nodes]
        if unknown:
            raise CtlError(f"unknown nodes: {', '.join(unknown[:10])}")
        now = self.now_ms()
        targets = req.nodes or list(self.nodes)
        for node_id in targets:
            self.nodes[node_id].hal.load.set_arrival_rate(req.rate_hz, now)
        return {"changed": targets}
