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

Ctl ops besides ping and status: ``nodes`` (each node's core counters, boot, and faults:
``fault``, ``link``, ``cpu_hog``, ``skew_ms``), ``set_rate`` (task arrival rate), and
``fault``, which injects faults inside the fleet. Node actions:

- ``crash``: the node stops at once: no ticks, no sends, acks ignored; what it had not
  delivered is gone with it. ``resume`` boots it again (a new boot_id, hello at seq 0).
- ``hang``: it stops ticking and sending, acks ignored, but its "connection" stays open;
  ``resume`` continues the same boot, which catches up (heartbeats, then its buffer).
- ``reboot``: a new boot at once (new boot_id), running.
- ``leave``: the node sends a goodbye (reason "leave"), then stops like a crash.
- ``cpu_hog`` (``percent``, 1..100): another load takes that share of the node's CPU
  (engine.py ``throttle``): its tasks run at (1 - percent/100) x its speed, so a task of
  cost c takes c / (1 - percent/100) ms, and at 100 none progresses (none even starts).
  Its telemetry shows it as the engine derives it: the hog's share counts as busy in
  cpu_pct, and the load factor is work offered over the capacity left (offered work on
  no capacity: the maximum, 1000). The overload detector, and so delegation, react as to
  any overload. Undone by ``heal`` (or ``duration_ms``).
- ``flood`` (``tasks``, 1..100000): that many local tasks arrive at the node at once, at
  the current time, through the engine's arrival path (engine.py ``flood``): each is
  counted as created; those beyond the queue's room are shed and counted (tasks_shed;
  ``flood_shed`` here), never silently lost; those shed are counted at the mean task cost
  in work_offered_ms (no draw each). Instant: no undo, no ``duration_ms``. A stopped node
  (crashed, hung, left) takes none.
- ``clock_skew`` (``skew_ms``, -86400000..86400000): the node's clock steps to now +
  skew_ms (a bad NTP sync): every message it sends to the relay from then on (resends
  too) carries ts_ms + skew_ms, never below 0 (the protocol's range: a clock that would
  read negative reads 0). Its timers run on the tick clock, which does not move (a board
  schedules on a monotonic tick; a step backwards would otherwise freeze it like a hang,
  a step forwards fast-forward its CPU). Task ``created_ms`` (the engine's clock) is not
  skewed. ``skew_ms`` 0, ``heal`` or ``duration_ms`` sets it back.

Link actions:

- ``link``: a faulty link between the node and the services named in ``services``
  (``relay``: its messages and the acks that come back; ``delegator``: task messages
  both ways; default both). It replaces any link fault the node had. On each of the two:

  - drop: each message node -> service and service -> node is lost with probability
    ``drop`` (the node does not know: a dropped message counts as sent). With
    ``correlation`` c, a decision is, with probability c, the same as the previous one on
    that link (one chain per link, both directions), else a fresh draw with ``drop``:
    ``lost_n = lost_(n-1) if U < c else (U' < drop)``. The loss rate stays ``drop``; a run
    of losses lasts 1 / ((1 - c)(1 - drop)) messages on average: bursty loss.
    ``correlation`` needs ``drop`` > 0.
  - duplicate: a message node -> service that survived is sent twice with probability
    ``duplicate`` (``link_duplicated``); each copy is delayed or not by itself. The relay
    de-duplicates, the delegator and nodes are idempotent.
  - delay: without ``reorder``, every surviving message from the node is held
    ``delay_ms`` + U[0, ``jitter_ms``] and released on the sim tick (so jitter may reorder
    them). With ``reorder`` r > 0, a message is held with probability r, for ``delay_ms``
    (50 ms if 0) + U[0, ``jitter_ms``], while the others go straight on: it arrives after
    later ones (netem's reorder; ``link_reordered``). Held messages count in
    ``link_delayed``. Messages to the node are never delayed or duplicated.

  A partition from some services is ``drop`` 1 with those ``services``. All of drop,
  delay_ms, jitter_ms, duplicate and reorder 0: the link is healed.
- ``heal``: undoes the node's link fault, cpu_hog and clock skew, or those of ``kinds``
  (a list of ``link``, ``cpu_hog``, ``clock_skew``).

Args: ``action``, ``nodes`` (default all), ``duration_ms`` (> 0: crash, hang, leave resume
and link, cpu_hog, clock_skew heal by themselves after that long; each kind on a node
keeps its own end), the action's own args above (another action's arg, or an action
without its required one, is refused). Faults other than crash/hang/leave survive
reboots. The reply is ``{"applied_at": time.monotonic() of this process, "nodes":
[ids]}``: the same CLOCK_MONOTONIC other processes on the machine read, to measure
detection latency. Fault randomness comes from its own generator seeded from
``sim.seed``, so faults do not change the load model's stream (a flood's arrivals draw
from the node's, as any arrival). A node without a link fault or skew uses the shared
gateway link directly (no wrapper, no draw): the hot path costs nothing extra; the
engine's CPU step pays one comparison and one multiplication for the hog hook.

The workload is described in workload.py, the faults' arguments in faults.py.
"""

from __future__ import annotations

import functools
import heapq
import time
from collections.abc import Collection
from typing import Any

import msgspec
import zmq

from shoal.firmware.nodecore.prng import XorShift32
from shoal.protocol import codec, limits
from shoal.protocol.tasks import Completed, DelegatorMessage
from shoal.services.runtime.config import ShoalConfig
from shoal.services.runtime.service import CtlError, Service, parse_args, received
from shoal.services.runtime.shards import IngestShards

from .faults import HEALABLE, LINK_SERVICES, STOPPING, FaultArgs, LinkFault, fault_args_error
from .links import GatewayLink, TaskLink
from .node import COMPLETIONS_MEMORY, TASK_TOTALS, SimNode
from .workload import SetRateArgs, base_rates, burst_active, node_ids

_encoder = msgspec.msgpack.Encoder()
_task_decoder = msgspec.msgpack.Decoder(DelegatorMessage)


def _node_of(rec: dict[str, Any]) -> str:
    return rec["node_id"]  # type: ignore[no-any-return]


FLEET_COUNTERS = (
    "link_dropped",
    "link_acks_dropped",
    "link_tasks_dropped",
    "link_tasks_in_dropped",
    "link_delayed",
    "link_duplicated",
    "link_reordered",
    "flood_tasks",
    "flood_shed",
    "faults_applied",
    "bursts_started",
    "work_offered_ms",
    "work_done_local_ms",
    "work_done_delegated_ms",
    "tasks_completed",
    "completions_twice",
    "completions_after_reboot",
)


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
        rates = base_rates(self.cfg)
        place = {node_id: i for i, node_id in enumerate(node_ids(self.cfg))}
        for node_id in rates:
            self.nodes[node_id] = SimNode(
                node_id,
                place[node_id],  # its place in the whole fleet: its streams (sim.only)
                self.cfg,
                self.link,
                now,
                self.task_link,
                accept_fill,
                rates[node_id],
                self.counters,
            )
        # Bursts: each one's nodes, and whether it is on (checked at every tick).
        self._bursts = [
            (b, [n for n in b.nodes if n in self.nodes] or list(self.nodes))
            for b in self.cfg.bursts
            if not b.nodes or any(n in self.nodes for n in b.nodes)
        ]
        self._bursts_on = [False] * len(self._bursts)
        # task id -> (boot, when) of the origin that took its result: completions_twice
        self._completions: dict[str, tuple[int, int]] = {}
        # Faults draw from their own generator: the load model's streams stay unchanged.
        self.fault_rng = XorShift32((self.cfg.seed * 2_654_435_761 + 0x5EED) & 0xFFFFFFFF)
        self._running: list[SimNode] = list(self.nodes.values())  # the nodes that tick
        self._timed: dict[str, SimNode] = {}  # nodes with a fault that ends by itself
        # (due_ms, n, msg, to_tasks): messages delayed by a faulty link
        self._held: list[tuple[int, int, dict[str, Any], bool]] = []
        self._held_n = 0
        self.ctl_ops["nodes"] = self._op_nodes
        self.ctl_ops["set_rate"] = self._op_set_rate
        self.ctl_ops["fault"] = self._op_fault

    def now_ms(self) -> int:
        return int((time.monotonic() - self.t0) * 1000) + 1

    def setup(self) -> None:
        # IMMEDIATE: a send with no live connection fails at once instead of queueing
        # silently, so nodes know the link is down and keep their own buffers.
        # One DEALER per relay shard; each node's records go to its shard (runtime/shards.py).
        self.ingest = IngestShards(self, self.config, immediate=1, linger=500, hwm=50_000)
        for k, endpoint in enumerate(self.ingest.endpoints):
            self.endpoints["ingest" if k == 0 else f"ingest.{k}"] = endpoint
        # The delegator: immediate too, so with none there a node's offer fails at once
        # (degraded mode: it runs its tasks locally) instead of waiting in a queue.
        self.task_dealer = self.sockets.connect(
            zmq.DEALER, self.config.delegator.tasks, immediate=1, linger=0, hwm=10_000
        )
        self.task_link.dealer = self.task_dealer
        self.endpoints["tasks"] = self.config.delegator.tasks
        self.serve_ctl(self.cfg.ctl)
        for dealer in self.ingest.dealers:
            self.on_readable(dealer, functools.partial(self._drain_acks, dealer))
        self.on_readable(self.task_dealer, self._drain_tasks)
        self.every(self.cfg.tick_ms / 1000, self._tick)

    def _tick(self) -> None:
        now = self.now_ms()
        self.link.up = True
        if self._timed:
            self._end_timed_faults(now)
        if self._bursts:
            self._update_bursts(now)
        held = self._held
        if held and held[0][0] <= now:
            outbox = self.link.outbox
            while held and held[0][0] <= now:
                _, _, msg, to_tasks = heapq.heappop(held)
                if to_tasks:
                    self.task_link.send(msg)
                else:
                    outbox.append(msg)
        for node in self._running:
            node.core.tick(now)
        self._flush()

    def hold(self, msg: dict[str, Any], due_ms: int, to_tasks: bool = False) -> None:
        """Delay a message on a faulty link until due_ms (released by the tick) to the
        relay, or to the delegator (to_tasks)."""
        self._held_n += 1
        heapq.heappush(self._held, (due_ms, self._held_n, msg, to_tasks))
        self.counters["link_delayed"] += 1

    def _update_bursts(self, now: int) -> None:
        t_s = (now - 1) / 1000
        changed = False
        for i, (burst, _) in enumerate(self._bursts):
            on = burst_active(burst, t_s)
            if on != self._bursts_on[i]:
                self._bursts_on[i] = on
                changed = True
                self.counters["bursts_started"] += int(on)
        if not changed:
            return
        factors = dict.fromkeys(self.nodes, 1.0)
        for (burst, ids), on in zip(self._bursts, self._bursts_on, strict=True):
            if on:
                for node_id in ids:
                    factors[node_id] *= burst.factor
        for node_id, factor in factors.items():
            self.nodes[node_id].set_burst(factor, now)

    def _flush(self) -> None:
        outbox = self.link.outbox
        if not outbox:
            return
        self.link.outbox = []
        for dealer, records in self.ingest.split(outbox, _node_of):
            self._send_batches(dealer, records)

    def _send_batches(self, dealer: zmq.Socket[Any], outbox: list[dict[str, Any]]) -> None:
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
                dealer.send(frame, zmq.NOBLOCK)
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

    def _drain_acks(self, dealer: zmq.Socket[Any]) -> None:
        now = self.now_ms()
        for body in received(dealer):
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
                if link is not None and link.relay and link.ack_lost():
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
            except codec.MALFORMED as err:
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
            link = node.link
            if link is not None and link.delegator and link.tasks.arrives_lost():
                counters["link_tasks_in_dropped"] += 1
                continue
            counters["task_frames_in"] += 1
            if msg.__class__ is Completed:
                self._completed(node, msg, now)
            else:
                node.core.on_task_message(msgspec.to_builtins(msg), now)

    def _completed(self, node: SimNode, msg: Completed, now: int) -> None:
        """A result for its origin; counted when a boot of the origin takes it as new again."""
        stats = node.engine.stats
        before = stats["completed_remote"]
        node.core.on_task_message(msgspec.to_builtins(msg), now)
        if stats["completed_remote"] == before:
            return  # a repeat the origin recognised, or not a task it handed over
        boot = node.core.boot_id
        seen = self._completions.pop(msg.task_id, None)
        if seen is not None and seen[0] == boot:
            self.counters["completions_twice"] += 1
            self.log.warning(
                "completion_twice", node=node.node_id, task=msg.task_id, after_ms=now - seen[1]
            )
        elif seen is not None:
            self.counters["completions_after_reboot"] += 1
        self._completions[msg.task_id] = (boot, now)
        if len(self._completions) > COMPLETIONS_MEMORY:
            del self._completions[next(iter(self._completions))]

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
        for key in FLEET_COUNTERS:
            counters[key] = self.counters[key]
        for key in TASK_TOTALS:
            counters[f"tasks_{key}"] = sum(n.engine.stats[key] for n in self.nodes.values())
        counters["tasks_overloaded"] = sum(
            n.delegation.detector.overloaded for n in self.nodes.values()
        )
        counters["tasks_unaccounted"] = sum(n.engine.unaccounted() for n in self.nodes.values())
        counters["overload_transitions"] = sum(n.transitions() for n in self.nodes.values())
        counters["clock_ms"] = self.now_ms()
        return counters

    def _op_nodes(self, _args: dict[str, Any]) -> dict[str, Any]:
        out = {}
        for node_id, node in self.nodes.items():
            snap = node.core.snapshot()
            snap["boot_id"] = node.core.boot_id
            snap["fault"] = node.fault
            snap["link"] = node.link.describe() if node.link is not None else None
            snap["cpu_hog"] = node.hog or None
            snap["skew_ms"] = node.skew_ms
            snap["rate_hz"] = node.rate_hz * node.burst_factor
            snap["overload_transitions"] = node.transitions()
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
        error = fault_args_error(req)
        if error is not None:
            raise CtlError(error)
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
            if req.lossy():
                services = LINK_SERVICES if req.services is None else req.services
                link = LinkFault(
                    self,
                    req.drop,
                    req.delay_ms,
                    req.jitter_ms,
                    req.correlation,
                    req.duplicate,
                    req.reorder,
                    services,
                )
                node.set_link(link)
                node.heal_at_ms = until
                self._untime(node)
            else:
                self._heal(node, now, ("link",))
        elif action == "cpu_hog":
            node.set_hog(req.percent or 0, now)
            node.hog_heal_at_ms = until
            self._untime(node)
        elif action == "clock_skew":
            node.set_skew(req.skew_ms or 0)
            node.skew_heal_at_ms = until if node.skew_ms else None
            self._untime(node)
        elif action == "flood":
            if node.fault is None:  # a stopped node takes no work
                tasks = req.tasks or 0
                self.counters["flood_tasks"] += tasks
                self.counters["flood_shed"] += node.engine.flood(tasks, now)
        else:  # heal
            self._heal(node, now, HEALABLE if req.kinds is None else req.kinds)

    def _resume(self, node: SimNode, now: int) -> None:
        if node.fault in ("crashed", "left"):
            node.boot(now)  # a new boot: what it had not delivered died with it
        node.fault = None  # a hung node carries on with the same core
        node.apply_hog(now)  # one set while it hung (a new boot has it already)
        node.resume_at_ms = None
        self._untime(node)

    def _heal(self, node: SimNode, now: int, kinds: Collection[str]) -> None:
        """Undo the node's link fault, cpu_hog and clock skew (those of ``kinds``)."""
        if "link" in kinds:
            node.heal_at_ms = None
            if node.link is not None:
                node.set_link(None)
        if "cpu_hog" in kinds:
            node.hog_heal_at_ms = None
            node.set_hog(0, now)
        if "clock_skew" in kinds:
            node.skew_heal_at_ms = None
            if node.skew_ms:
                node.set_skew(0)
        self._untime(node)

    def _untime(self, node: SimNode) -> None:
        ends = (node.resume_at_ms, node.heal_at_ms, node.hog_heal_at_ms, node.skew_heal_at_ms)
        if all(end is None for end in ends):
            self._timed.pop(node.node_id, None)
        else:
            self._timed[node.node_id] = node

    def _end_timed_faults(self, now: int) -> None:
        ended = False
        for node in list(self._timed.values()):
            if node.resume_at_ms is not None and now >= node.resume_at_ms:
                self._resume(node, now)
                ended = True
            healed = [
                kind
                for kind, end in (
                    ("link", node.heal_at_ms),
                    ("cpu_hog", node.hog_heal_at_ms),
                    ("clock_skew", node.skew_heal_at_ms),
                )
                if end is not None and now >= end
            ]
            if healed:
                self._heal(node, now, healed)
        if ended:
            self._running = [n for n in self.nodes.values() if n.fault is None]
