"""A fleet of simulated nodes in one process, running the firmware's node core.

Each node has its own id, boot id, sequence numbers, retry ring, and a task engine (the
node core's engine.py: a bounded task queue served by a simulated CPU, Poisson arrivals at
``sim.arrival_rate_hz``, real handlers) with the node side of task delegation
(delegation.py). The process talks to the relay like a gateway would: one DEALER
connection, records of many nodes batched per frame, acks routed back to the node they
name. It talks to the delegator (``delegator.tasks``) over a second DEALER, one message per
frame, and routes the delegator's messages to the node they name. With no delegator there
(the DEALER's immediate=1 refuses at once), offers are given back and every node runs its
tasks locally: degraded mode, nothing lost.

Usage: ``shoal sim --nodes 50`` (or ``shoal up``, which starts one).

Ctl ops besides ping and status: ``nodes`` (each node's core counters, boot and fault),
``set_rate`` (task arrival rate), and ``fault``, which injects faults inside the fleet:

- ``crash``: the node stops at once: no ticks, no sends, acks ignored; what it had not
  delivered is gone with it. ``resume`` boots it again (a new boot_id, hello at seq 0).
- ``hang``: it stops ticking and sending, acks ignored, but its "connection" stays open;
  ``resume`` continues the same boot, which catches up (heartbeats, then its buffer).
- ``reboot``: a new boot at once (new boot_id), running.
- ``leave``: the node sends a goodbye (reason "leave"), then stops like a crash.
- ``link``: a lossy, slow link: each message node -> relay and each ack entry relay -> node
  is dropped with probability ``drop``; the surviving messages are held for ``delay_ms`` +
  U[0, ``jitter_ms``] (released on the sim tick, so they may be reordered). ``heal``
  clears it. The node does not know: a dropped message counts as sent.

Args: ``action``, ``nodes`` (default all), ``duration_ms`` (> 0: crash/hang/leave resume
and link heals by itself after that long), ``drop``/``delay_ms``/``jitter_ms`` (link only).
The reply is ``{"applied_at": time.monotonic() of this process, "nodes": [ids]}``: the
same CLOCK_MONOTONIC other processes on the machine read, to measure detection latency.
Fault randomness comes from its own generator seeded from ``sim.seed``, so faults do not
change the load model's stream. A node without a link fault uses the shared gateway link
directly: the hot path costs nothing extra.
"""

from __future__ import annotations

import heapq
import os
import time
from collections import defaultdict
from typing import Annotated, Any, Literal

import msgspec
import zmq

from shoal.firmware.nodecore.delegation import Delegation
from shoal.firmware.nodecore.engine import Engine
from shoal.firmware.nodecore.node import NodeCore
from shoal.firmware.nodecore.prng import XorShift32
from shoal.protocol import codec, limits
from shoal.protocol.tasks import DelegatorMessage

from .config import ShoalConfig, SimConfig
from .runtime import CtlError, Service, parse_args, received

_encoder = msgspec.msgpack.Encoder()
_task_decoder = msgspec.msgpack.Decoder(DelegatorMessage)


class SetRateArgs(msgspec.Struct, forbid_unknown_fields=True):
    """Args of the sim's "set_rate" op: tasks per second for some nodes (default: all)."""

    rate_hz: Annotated[float, msgspec.Meta(ge=0, le=10_000)]
    nodes: list[str] = []


# Task counters summed over the fleet in status (as tasks_<key>): the current boots' only.
TASK_TOTALS = (
    "created",
    "shed",
    "done_local",
    "offered",
    "taken",
    "given_back",
    "delegated_in",
    "executed_delegated",
    "results_acked",
    "completed_remote",
)

FaultAction = Literal["crash", "hang", "reboot", "leave", "resume", "link", "heal"]
STOPPING = {"crash": "crashed", "hang": "hung", "leave": "left"}


class FaultArgs(msgspec.Struct, forbid_unknown_fields=True):
    """Args of the sim's "fault" op (see the module docstring)."""

    action: FaultAction
    nodes: list[str] = []
    duration_ms: Annotated[int, msgspec.Meta(ge=0)] = 0
    drop: Annotated[float, msgspec.Meta(ge=0, le=1)] = 0.0
    delay_ms: Annotated[int, msgspec.Meta(ge=0)] = 0
    jitter_ms: Annotated[int, msgspec.Meta(ge=0)] = 0


class SimHal:
    """The simulator's hardware: heap and radio figures. The CPU and the task queue are the
    node's task engine (``engine``), whose depth the free heap follows."""

    def __init__(self, rng: XorShift32) -> None:
        self.rng = rng
        self.engine: Engine | None = None
        self.base_heap = 110_000 + int(rng.random() * 20_000)
        self.base_rssi = -45 - int(rng.random() * 30)

    def rand(self) -> float:
        return self.rng.random()

    def sample(self, now_ms: int) -> dict[str, Any]:
        depth = self.engine.depth() if self.engine is not None else 0
        return {
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


class LinkFault:
    """A node's faulty link: a transport in front of the gateway that drops and delays."""

    __slots__ = ("delay_ms", "drop", "fleet", "jitter_ms")

    def __init__(self, fleet: Fleet, drop: float, delay_ms: int, jitter_ms: int) -> None:
        self.fleet = fleet
        self.drop = drop
        self.delay_ms = delay_ms
        self.jitter_ms = jitter_ms

    def send(self, msg: dict[str, Any]) -> bool:
        fleet = self.fleet
        if self.drop and fleet.fault_rng.random() < self.drop:
            fleet.counters["link_dropped"] += 1
            return True  # lost on the way: the node believes it was sent
        if self.delay_ms or self.jitter_ms:
            delay = self.delay_ms + fleet.fault_rng.random() * self.jitter_ms
            fleet.hold(msg, fleet.now_ms() + int(delay))
            return True
        return fleet.link.send(msg)

    def describe(self) -> dict[str, Any]:
        return {"drop": self.drop, "delay_ms": self.delay_ms, "jitter_ms": self.jitter_ms}


class TaskLink:
    """The fleet's connection to the delegator, as each node's delegation sees it: one
    msgpack frame per message, False at once when no delegator is connected."""

    def __init__(self, counters: Any) -> None:
        self.dealer: zmq.Socket[Any] | None = None  # set by Fleet.setup
        self.counters = counters

    def send(self, msg: dict[str, Any]) -> bool:
        if self.dealer is None:
            return False
        try:
            self.dealer.send(_encoder.encode(msg), zmq.NOBLOCK)
        except zmq.Again:
            self.counters["task_send_failed"] += 1
            return False
        self.counters["task_frames_sent"] += 1
        return True


class SimNode:
    """One simulated node: its core, its hardware, its tasks, and its faults.

    ``fault`` is None (running), "crashed", "hung" or "left"; ``link`` is its LinkFault or
    None. ``transport`` is what its core sends through: the shared gateway link, or the
    LinkFault in front of it. Task messages go through ``task_link`` (link faults do not
    apply to them). ``rate_hz`` (its task arrival rate) survives reboots."""

    def __init__(
        self,
        node_id: str,
        index: int,
        cfg: SimConfig,
        link: GatewayLink,
        now_ms: int,
        task_link: TaskLink | None = None,
        accept_fill: float = 0.5,
    ) -> None:
        self.node_id = node_id
        self.cfg = cfg
        rng = XorShift32((cfg.seed * 1_000_003 + index * 7919) & 0xFFFFFFFF)
        self.rng = rng
        self.hal = SimHal(rng)
        self.rate_hz = cfg.arrival_rate_hz
        self.task_link = task_link if task_link is not None else TaskLink(defaultdict(int))
        self.accept_fill = accept_fill
        self.fault: str | None = None
        self.link: LinkFault | None = None
        self.transport: GatewayLink | LinkFault = link
        self.resume_at_ms: int | None = None  # a timed crash, hang or leave ends then
        self.heal_at_ms: int | None = None  # a timed link fault ends then
        self.boot(now_ms)
        # Spread the fleet's telemetry over the interval, as real boards booted apart would.
        self.core.next_telemetry_ms = now_ms + int(rng.random() * cfg.telemetry_interval_ms)

    @property
    def engine(self) -> Engine:
        return self.delegation.engine

    def boot(self, now_ms: int) -> None:
        """A new boot: a fresh core (new boot_id, empty ring, hello at seq 0) and a fresh
        task engine (empty queue: what the last boot had queued died with it)."""
        cfg = self.cfg
        old = getattr(self, "core", None)
        boot_id = int.from_bytes(os.urandom(4), "big") or 1
        while old is not None and boot_id == old.boot_id:
            boot_id = int.from_bytes(os.urandom(4), "big") or 1
        settings = {
            "telemetry_interval_ms": cfg.telemetry_interval_ms,
            "heartbeat_interval_ms": cfg.heartbeat_interval_ms,
            "ring_capacity": cfg.ring_capacity,
            "ack_timeout_ms": cfg.ack_timeout_ms,
            "backoff_min_ms": cfg.backoff_min_ms,
            "backoff_max_ms": cfg.backoff_max_ms,
            "fw": "shoal-sim/0.1",
            # Tasks (engine.py, overload.py and delegation.py have the rest of the defaults).
            "queue_capacity": cfg.queue_capacity,
            "rate_hz": self.rate_hz,
            "task_cost_ms": cfg.task_cost_ms,
            "speed": cfg.service_rate_hz * cfg.task_cost_ms / 1000 if cfg.service_rate_hz else 1.0,
            "accept_fill": self.accept_fill,
        }
        engine = Engine(self.node_id, boot_id, self.rng.random, settings, now_ms)
        self.hal.engine = engine
        self.delegation = Delegation(engine, self.task_link, settings, now_ms)
        self.core = NodeCore(
            self.node_id,
            boot_id,
            self.hal,
            self.transport,
            settings,
            now_ms,
            delegation=self.delegation,
        )

    def set_rate(self, rate_hz: float, now_ms: int) -> None:
        self.rate_hz = rate_hz
        self.engine.set_rate(rate_hz, now_ms)

    def set_transport(self, transport: GatewayLink | LinkFault) -> None:
        self.transport = transport
        self.core.transport = transport


class Fleet(Service):
    name = "sim"

    def __init__(self, config: ShoalConfig, **kwargs: Any) -> None:
        super().__init__(config, **kwargs)
        self.cfg = config.sim
        self.link = GatewayLink()
        self.task_link = TaskLink(self.counters)
        self.t0 = time.monotonic()
        now = self.now_ms()
        self.nodes: dict[str, SimNode] = {}
        accept_fill = config.delegator.accept_fill
        for i in range(self.cfg.nodes):
            node_id = f"{self.cfg.id_prefix}-{i:03d}"
            self.nodes[node_id] = SimNode(
                node_id, i, self.cfg, self.link, now, self.task_link, accept_fill
            )
        # Faults draw from their own generator: the load model's streams stay unchanged.
        self.fault_rng = XorShift32((self.cfg.seed * 2_654_435_761 + 0x5EED) & 0xFFFFFFFF)
        self._running: list[SimNode] = list(self.nodes.values())  # the nodes that tick
        self._timed: dict[str, SimNode] = {}  # nodes with a fault that ends by itself
        self._held: list[tuple[int, int, dict[str, Any]]] = []  # (due_ms, n, msg): delayed
        self._held_n = 0
        self.ctl_ops["nodes"] = self._op_nodes
        self.ctl_ops["set_rate"] = self._op_set_rate
        self.ctl_ops["fault"] = self._op_fault

    def now_ms(self) -> int:
        return int((time.monotonic() - self.t0) * 1000) + 1

    def setup(self) -> None:
        # IMMEDIATE: a send with no live connection fails at once instead of queueing
        # silently, so nodes know the link is down and keep their own buffers.
        self.dealer = self.sockets.connect(
            zmq.DEALER, self.config.relay.ingest, immediate=1, linger=500, hwm=50_000
        )
        self.endpoints["ingest"] = self.config.relay.ingest
        # The delegator: immediate too, so with none there a node's offer fails at once
        # (degraded mode: it runs its tasks locally) instead of waiting in a queue.
        self.task_dealer = self.sockets.connect(
            zmq.DEALER, self.config.delegator.tasks, immediate=1, linger=0, hwm=10_000
        )
        self.task_link.dealer = self.task_dealer
        self.endpoints["tasks"] = self.config.delegator.tasks
        self.serve_ctl(self.cfg.ctl)
        self.on_readable(self.dealer, self._drain_acks)
        self.on_readable(self.task_dealer, self._drain_tasks)
        self.every(self.cfg.tick_ms / 1000, self._tick)

    def _tick(self) -> None:
        now = self.now_ms()
        self.link.up = True
        if self._timed:
            self._end_timed_faults(now)
        held = self._held
        if held and held[0][0] <= now:
            outbox = self.link.outbox
            while held and held[0][0] <= now:
                outbox.append(heapq.heappop(held)[2])
        for node in self._running:
            node.core.tick(now)
        self._flush()

    def hold(self, msg: dict[str, Any], due_ms: int) -> None:
        """Delay a message on a faulty link until due_ms (released by the tick)."""
        self._held_n += 1
        heapq.heappush(self._held, (due_ms, self._held_n, msg))
        self.counters["link_delayed"] += 1

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
                # Buffered messages stay in the nodes' rings until acked; the heartbeats
                # of the unsent chunks are lost (best effort: never resent). The nodes
                # whose messages did not leave go DOWN now (a backoff, then a probe),
                # instead of waiting an ack timeout for a probe that never left.
                self.link.up = False
                self.counters["send_failed"] += 1
                now = self.now_ms()
                unsent = {rec["node_id"] for part in (chunk, *chunks) for rec in part}
                for node_id in unsent:
                    node = self.nodes.get(node_id)
                    if node is not None and node.fault is None:
                        node.core.link_lost(now)
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
                if node is None or node.fault is not None:
                    continue  # unknown, or stopped: a stopped node hears nothing
                link = node.link
                if link is not None and link.drop and self.fault_rng.random() < link.drop:
                    self.counters["link_acks_dropped"] += 1
                    continue
                node.core.on_ack(entry.boot_id, entry.first, entry.last, now)
        self._flush()  # a probe's ack brings a node UP with a backlog to send

    def _drain_tasks(self) -> None:
        """The delegator's messages, each to the node it names (a stopped node hears none)."""
        now = self.now_ms()
        counters = self.counters
        for body in received(self.task_dealer):
            try:
                msg = _task_decoder.decode(body)
            except (msgspec.ValidationError, msgspec.DecodeError) as err:
                counters["task_bad_frames"] += 1
                self.rejects.add("task_frame", str(err))
                continue
            node = self.nodes.get(msg.node_id)
            if node is None:
                counters["task_unknown_node"] += 1
                continue
            if node.fault is not None:
                counters["task_to_stopped"] += 1
                continue
            counters["task_frames_in"] += 1
            node.core.on_task_message(msgspec.to_builtins(msg), now)

    def on_stop(self) -> None:
        now = self.now_ms()
        for node in self._running:
            node.core.goodbye(now, "shutdown")
        self._flush()

    def status_counters(self) -> dict[str, int]:
        counters = dict(self.counters)
        counters["nodes"] = len(self.nodes)
        for key in ("sent", "resent", "acked", "reconnects", "disconnects"):
            counters[f"node_{key}"] = sum(n.core.stats[key] for n in self.nodes.values())
        counters["node_dropped"] = sum(n.core.ring.dropped for n in self.nodes.values())
        counters["node_buffered"] = sum(len(n.core.ring) for n in self.nodes.values())
        counters["nodes_stopped"] = len(self.nodes) - len(self._running)
        for key in ("link_dropped", "link_acks_dropped", "link_delayed", "faults_applied"):
            counters[key] = self.counters[key]
        for key in TASK_TOTALS:
            counters[f"tasks_{key}"] = sum(n.engine.stats[key] for n in self.nodes.values())
        counters["tasks_overloaded"] = sum(
            n.delegation.detector.overloaded for n in self.nodes.values()
        )
        return counters

    def _op_nodes(self, _args: dict[str, Any]) -> dict[str, Any]:
        out = {}
        for node_id, node in self.nodes.items():
            snap = node.core.snapshot()
            snap["boot_id"] = node.core.boot_id
            snap["fault"] = node.fault
            snap["link"] = node.link.describe() if node.link is not None else None
            out[node_id] = snap
        return out

    def _op_set_rate(self, args: dict[str, Any]) -> dict[str, Any]:
        req = parse_args(args, SetRateArgs)
        unknown = [n for n in req.nodes if n not in self.nodes]
        if unknown:
            raise CtlError(f"unknown nodes: {', '.join(unknown[:10])}")
        now = self.now_ms()
        targets = req.nodes or list(self.nodes)
        for node_id in targets:
            self.nodes[node_id].set_rate(req.rate_hz, now)
        return {"changed": targets}

    # --- faults ---------------------------------------------------------------------------

    def _op_fault(self, args: dict[str, Any]) -> dict[str, Any]:
        req = parse_args(args, FaultArgs)
        unknown = [n for n in req.nodes if n not in self.nodes]
        if unknown:
            raise CtlError(f"unknown nodes: {', '.join(unknown[:10])}")
        if req.action != "link" and (req.drop or req.delay_ms or req.jitter_ms):
            raise CtlError("drop, delay_ms and jitter_ms apply to action 'link' only")
        if req.duration_ms and req.action not in ("crash", "hang", "leave", "link"):
            raise CtlError("duration_ms applies to crash, hang, leave and link only")
        now = self.now_ms()
        targets = req.nodes or list(self.nodes)
        for node_id in targets:
            self._apply(self.nodes[node_id], req, now)
        self._running = [n for n in self.nodes.values() if n.fault is None]
        applied_at = time.monotonic()
        self.counters["faults_applied"] += len(targets)
        self._flush()  # a leave's goodbye, a reboot's hello: out now, not at the next tick
        return {"applied_at": applied_at, "nodes": targets}

    def _apply(self, node: SimNode, req: FaultArgs, now: int) -> None:
        action = req.action
        until = now + req.duration_ms if req.duration_ms else None
        if action in STOPPING:
            if action == "crash":
                node.fault = "crashed"  # whatever it was doing, hung or not
            elif node.fault is None:  # a stopped node can neither hang nor say goodbye
                if action == "leave":
                    node.core.goodbye(now, "leave")
                node.fault = STOPPING[action]
            node.resume_at_ms = until
            self._untime(node)
        elif action == "resume":
            self._resume(node, now)
        elif action == "reboot":
            node.fault = None
            node.resume_at_ms = None
            node.boot(now)
            self._untime(node)
        elif action == "link":
            if req.drop or req.delay_ms or req.jitter_ms:
                node.link = LinkFault(self, req.drop, req.delay_ms, req.jitter_ms)
                node.set_transport(node.link)
                node.heal_at_ms = until
                self._untime(node)
            else:
                self._heal(node)
        else:  # heal
            self._heal(node)

    def _resume(self, node: SimNode, now: int) -> None:
        if node.fault in ("crashed", "left"):
            node.boot(now)  # a new boot: what it had not delivered died with it
        node.fault = None  # a hung node carries on with the same core
        node.resume_at_ms = None
        self._untime(node)

    def _heal(self, node: SimNode) -> None:
        node.link = None
        node.heal_at_ms = None
        node.set_transport(self.link)
        self._untime(node)

    def _untime(self, node: SimNode) -> None:
        if node.resume_at_ms is None and node.heal_at_ms is None:
            self._timed.pop(node.node_id, None)
        else:
            self._timed[node.node_id] = node

    def _end_timed_faults(self, now: int) -> None:
        ended = False
        for node in list(self._timed.values()):
            if node.resume_at_ms is not None and now >= node.resume_at_ms:
                self._resume(node, now)
                ended = True
            if node.heal_at_ms is not None and now >= node.heal_at_ms:
                self._heal(node)
        if ended:
            self._running = [n for n in self.nodes.values() if n.fault is None]
