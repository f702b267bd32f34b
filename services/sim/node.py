"""One simulated node: the firmware's node core with the simulator's hardware, task engine
and faults."""

from __future__ import annotations

import os
from collections import defaultdict
from typing import Any

from shoal.firmware.nodecore.delegation import Delegation
from shoal.firmware.nodecore.engine import LOCAL, Engine
from shoal.firmware.nodecore.node import NodeCore
from shoal.firmware.nodecore.prng import XorShift32
from shoal.services.runtime.config import SimConfig

from .faults import LinkFault, SkewedClock, TaskLinkFault
from .links import GatewayLink, TaskLink

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

# The origin's memory of completed task ids, for completions_twice (bounded: FIFO).
COMPLETIONS_MEMORY = 200_000


class SimEngine(Engine):
    """The node core's task engine, counting work (task-ms) in the fleet's counters, which
    outlive the node's boots: offered (every arrival, shed or not), done here (own tasks,
    delegated-in ones)."""

    def __init__(self, work: Any, *args: Any) -> None:
        super().__init__(*args)
        self.work = work

    def _admit(self, cost: int) -> bool:
        self.work["work_offered_ms"] += cost
        return bool(super()._admit(cost))

    def _shed(self, n: int, cost: int) -> None:
        self.work["work_offered_ms"] += cost
        super()._shed(n, cost)

    def _complete(self, entry: list[Any], clock: float) -> None:
        key = "work_done_local_ms" if entry[1] == LOCAL else "work_done_delegated_ms"
        self.work[key] += entry[0]["cost_ms"]
        self.work["tasks_completed"] += 1  # fleet-wide, across reboots: a throughput
        super()._complete(entry, clock)


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


class SimNode:
    """One simulated node: its core, its hardware, its tasks, and its faults.

    ``fault`` is None (running), "crashed", "hung" or "left"; ``link`` is its LinkFault or
    None; ``hog`` the percent of its CPU a cpu_hog takes (0: none); ``skew_ms`` its clock's
    step (0: none). ``transport`` is what its core sends through: the shared gateway link,
    or the LinkFault in front of it (if it applies to the relay), behind a SkewedClock when
    skewed; ``task_transport`` what its delegation sends through: the fleet's task link, or
    the LinkFault's ``tasks`` (if it applies to the delegator). ``rate_hz`` (its base
    arrival rate), ``burst_factor`` (the bursts on now) and its faults survive reboots;
    the engine runs at the product of the rates, throttled by the hog."""

    core: NodeCore
    delegation: Delegation

    def __init__(
        self,
        node_id: str,
        index: int,
        cfg: SimConfig,
        link: GatewayLink,
        now_ms: int,
        task_link: TaskLink | None = None,
        accept_fill: float = 0.5,
        rate_hz: float | None = None,
        work: Any = None,
    ) -> None:
        self.node_id = node_id
        self.cfg = cfg
        rng = XorShift32((cfg.seed * 1_000_003 + index * 7919) & 0xFFFFFFFF)
        self.rng = rng
        self.hal = SimHal(rng)
        self.rate_hz = cfg.arrival_rate_hz if rate_hz is None else rate_hz
        self.burst_factor = 1.0
        self.old_transitions = 0  # overload transitions of the earlier boots
        self.work = work if work is not None else defaultdict(int)
        self.task_link = task_link if task_link is not None else TaskLink(defaultdict(int))
        self.accept_fill = accept_fill
        self.gateway = link
        self.fault: str | None = None
        self.link: LinkFault | None = None
        self.hog = 0  # percent of the CPU a cpu_hog takes
        self.skew_ms = 0  # the clock's step (clock_skew)
        self.transport: GatewayLink | LinkFault | SkewedClock = link
        self.task_transport: TaskLink | TaskLinkFault = self.task_link
        self.resume_at_ms: int | None = None  # a timed crash, hang or leave ends then
        self.heal_at_ms: int | None = None  # a timed link fault ends then
        self.hog_heal_at_ms: int | None = None  # a timed cpu_hog ends then
        self.skew_heal_at_ms: int | None = None  # a timed clock_skew ends then
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
        if old is not None:
            self.old_transitions += self.delegation.detector.transitions
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
            "rate_hz": self.rate_hz * self.burst_factor,
            "task_cost_ms": cfg.task_cost_ms,
            "speed": cfg.service_rate_hz * cfg.task_cost_ms / 1000 if cfg.service_rate_hz else 1.0,
            "accept_fill": self.accept_fill,
        }
        engine = SimEngine(self.work, self.node_id, boot_id, self.rng.random, settings, now_ms)
        if self.hog:
            engine.throttle(self.hog / 100, now_ms)
        self.hal.engine = engine
        self.delegation = Delegation(engine, self.task_transport, settings, now_ms)
        self.core = NodeCore(
            self.node_id,
            boot_id,
            self.hal,
            self.transport,
            settings,
            now_ms,
            delegation=self.delegation,
        )

    def transitions(self) -> int:
        """Overload transitions (in or out) over every boot."""
        return self.old_transitions + int(self.delegation.detector.transitions)

    def set_rate(self, rate_hz: float, now_ms: int) -> None:
        """A new base rate (set_rate)."""
        self.rate_hz = rate_hz
        self.engine.set_rate(rate_hz * self.burst_factor, now_ms)

    def set_burst(self, factor: float, now_ms: int) -> None:
        """The product of the bursts on now (1.0: none)."""
        if factor != self.burst_factor:
            self.burst_factor = factor
            self.engine.set_rate(self.rate_hz * factor, now_ms)

    def set_link(self, link: LinkFault | None) -> None:
        """Send through the faulty link, or (None) straight to the gateway and the delegator."""
        self.link = link
        self._rewire()

    def set_skew(self, skew_ms: int) -> None:
        """Step the node's clock to now + skew_ms (0: back to the true time)."""
        self.skew_ms = skew_ms
        self._rewire()

    def _rewire(self) -> None:
        relay: GatewayLink | LinkFault = self.gateway
        task_transport: TaskLink | TaskLinkFault = self.task_link
        link = self.link
        if link is not None:
            if link.relay:
                relay = link
            if link.delegator:
                task_transport = link.tasks
        transport = SkewedClock(relay, self.skew_ms) if self.skew_ms else relay
        self.transport = transport
        self.task_transport = task_transport
        self.core.transport = transport
        self.delegation.link = task_transport

    def set_hog(self, percent: int, now_ms: int) -> None:
        """A cpu_hog takes percent of the CPU from now (0: none). A stopped node's engine
        does not run (advancing a hung one would run its tasks, and send their results,
        while it hangs): it takes the hog when it runs again (resume, boot)."""
        self.hog = percent
        if self.fault is None:
            self.apply_hog(now_ms)

    def apply_hog(self, now_ms: int) -> None:
        share = self.hog / 100
        if self.engine.hog != share:
            self.engine.throttle(share, now_ms)
