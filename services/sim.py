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

Workload (``[sim]`` keys, or ``shoal sim`` / ``shoal up`` flags). Each node has a base
arrival rate: its entry in ``rates`` if it has one; else ``hot_spot_factor`` x its capacity
(``service_rate_hz``, or 1000 / ``task_cost_ms``) if it is one of ``hot_spots`` (ids, or a
count N: N nodes spread evenly over the fleet); else ``arrival_rate_hz``. ``set_rate``
replaces base rates at run time. ``bursts`` multiply the base rate of their nodes by their
factor while they last (the engine's arrival process restarts at each change; a reboot
keeps the node's rate). Work is counted for benchmarks in task-ms, fleet-wide and across
reboots: ``work_offered_ms`` (every local arrival's cost, shed ones included),
``work_done_local_ms`` and ``work_done_delegated_ms`` (tasks run to completion here),
``tasks_completed`` (tasks run to completion, own and delegated-in ones), with
``clock_ms`` (this fleet's clock) to measure windows. The origin's view of results:
``completions_twice`` counts a task whose result one boot of its origin took as new twice
(its memory of completed ids forgot it), ``completions_after_reboot`` one a later boot took
again (at least once across a power cut).
"""

from __future__ import annotations

import heapq
import os
import time
from collections import defaultdict
from collections.abc import Collection
from typing import Annotated, Any, Literal

import msgspec
import zmq

from shoal.firmware.nodecore.delegation import Delegation
from shoal.firmware.nodecore.engine import LOCAL, Engine
from shoal.firmware.nodecore.node import NodeCore
from shoal.firmware.nodecore.prng import XorShift32
from shoal.protocol import codec, limits
from shoal.protocol.tasks import Completed, DelegatorMessage

from .config import Burst, ShoalConfig, SimConfig, spread
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

# The origin's memory of completed task ids, for completions_twice (bounded: FIFO).
COMPLETIONS_MEMORY = 200_000


class WorkloadError(ValueError):
    """A workload that does not fit the fleet (an unknown node id, too many hot spots)."""


def node_ids(cfg: SimConfig) -> list[str]:
    return [f"{cfg.id_prefix}-{i:03d}" for i in range(cfg.nodes)]


def capacity_hz(cfg: SimConfig) -> float:
    """Tasks a node serves per second (its capacity), at the mean task cost."""
    return cfg.service_rate_hz or 1000.0 / cfg.task_cost_ms


def hot_spot_ids(cfg: SimConfig) -> list[str]:
    """The hot spots' ids: as listed, or N spread evenly over the fleet (sim-000 first)."""
    ids = node_ids(cfg)
    if isinstance(cfg.hot_spots, int):
        if cfg.hot_spots > len(ids):
            raise WorkloadError(f"sim.hot_spots: {cfg.hot_spots} hot spots in {len(ids)} nodes")
        return spread(ids, cfg.hot_spots)
    known = set(ids)
    unknown = [n for n in cfg.hot_spots if n not in known]
    if unknown:
        raise WorkloadError(f"sim.hot_spots: unknown nodes {', '.join(unknown[:5])}")
    return list(cfg.hot_spots)


def base_rates(cfg: SimConfig) -> dict[str, float]:
    """Each node's base arrival rate (tasks/s) under the workload of ``cfg``; raises
    WorkloadError for a node id that is not in the fleet."""
    ids = node_ids(cfg)
    known = set(ids)
    named = [("rates", list(cfg.rates))]
    named += [(f"bursts[{i}].nodes", b.nodes) for i, b in enumerate(cfg.bursts)]
    for key, what in named:
        unknown = [n for n in what if n not in known]
        if unknown:
            raise WorkloadError(f"sim.{key}: unknown nodes {', '.join(unknown[:5])}")
    rates = dict.fromkeys(ids, cfg.arrival_rate_hz)
    hot = cfg.hot_spot_factor * capacity_hz(cfg)
    for node_id in hot_spot_ids(cfg):
        rates[node_id] = hot
    rates.update(cfg.rates)
    return rates


def burst_active(burst: Burst, t_s: float) -> bool:
    """Whether the burst is on t_s seconds after the fleet started."""
    t = t_s - burst.start_s
    return t >= 0 and t % burst.every_s < burst.duration_s


# Fleet counters always listed in status (0 until something happens).
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

FaultAction = Literal[
    "crash",
    "hang",
    "reboot",
    "leave",
    "resume",
    "link",
    "heal",
    "cpu_hog",
    "flood",
    "clock_skew",
]
LinkService = Literal["relay", "delegator"]
Healable = Literal["link", "cpu_hog", "clock_skew"]
STOPPING = {"crash": "crashed", "hang": "hung", "leave": "left"}
LINK_SERVICES: tuple[LinkService, ...] = ("relay", "delegator")
HEALABLE: tuple[Healable, ...] = ("link", "cpu_hog", "clock_skew")
TIMED_ACTIONS = ("crash", "hang", "leave", "link", "cpu_hog", "clock_skew")
REORDER_HOLD_MS = 50  # how long a reordered message is held when delay_ms is 0
FLOOD_MAX = 100_000
SKEW_MAX_MS = 86_400_000  # a day

Probability = Annotated[float, msgspec.Meta(ge=0, le=1)]
NonNegative = Annotated[int, msgspec.Meta(ge=0)]


class FaultArgs(msgspec.Struct, forbid_unknown_fields=True):
    """Args of the sim's "fault" op (see the module docstring). None: not given."""

    action: FaultAction
    nodes: list[str] = []
    duration_ms: NonNegative = 0
    # link
    drop: Probability = 0.0
    delay_ms: NonNegative = 0
    jitter_ms: NonNegative = 0
    correlation: Probability = 0.0
    duplicate: Probability = 0.0
    reorder: Probability = 0.0
    services: list[LinkService] | None = None
    # cpu_hog, flood, clock_skew
    percent: Annotated[int, msgspec.Meta(ge=1, le=100)] | None = None
    tasks: Annotated[int, msgspec.Meta(ge=1, le=FLOOD_MAX)] | None = None
    skew_ms: Annotated[int, msgspec.Meta(ge=-SKEW_MAX_MS, le=SKEW_MAX_MS)] | None = None
    # heal
    kinds: list[Healable] | None = None

    def lossy(self) -> bool:
        """Whether a link action changes anything (all zero: it heals the link)."""
        return bool(self.drop or self.delay_ms or self.jitter_ms or self.duplicate or self.reorder)


def fault_args_error(req: FaultArgs) -> str | None:
    """Why a fault request makes no sense, or None: an arg of another action, a missing
    one, an undo on an instant fault."""
    action = req.action
    link_args = (req.drop, req.delay_ms, req.jitter_ms, req.correlation, req.duplicate)
    if action != "link" and (any(link_args) or req.reorder or req.services is not None):
        return (
            "drop, delay_ms, jitter_ms, correlation, duplicate, reorder and services "
            "apply to action 'link' only"
        )
    own = (("percent", "cpu_hog"), ("tasks", "flood"), ("skew_ms", "clock_skew"))
    for arg, owner in own:
        given = getattr(req, arg) is not None
        if given and action != owner:
            return f"{arg} applies to action '{owner}' only"
        if action == owner and not given:
            return {
                "percent": "cpu_hog needs percent: 1..100",
                "tasks": f"flood needs tasks: 1..{FLOOD_MAX}",
                "skew_ms": f"clock_skew needs skew_ms: -{SKEW_MAX_MS}..{SKEW_MAX_MS}",
            }[arg]
    if req.kinds is not None and action != "heal":
        return "kinds applies to action 'heal' only"
    if req.kinds == []:
        return "kinds names nothing to heal: link, cpu_hog, clock_skew or some of them"
    if req.duration_ms and action not in TIMED_ACTIONS:
        return "duration_ms applies to crash, hang, leave, link, cpu_hog and clock_skew only"
    if req.services == []:
        return "services names no link: relay, delegator or both"
    if req.correlation and not req.drop:
        return "correlation needs drop > 0 (it repeats drop decisions)"
    return None


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
    """A node's faulty link: a transport in front of the gateway (to the relay) that drops,
    duplicates, delays and reorders what the node sends; ``tasks`` is the same in front of
    the fleet's task link (to the delegator). It applies to the links named by ``relay``
    and ``delegator``: the node's other link stays direct.

    Drop decisions: one chain per link (``lost`` here for the relay link, messages and
    acks; ``tasks.lost`` for the task link, both ways). A decision is, with probability
    ``correlation``, the previous one on that link again; otherwise a fresh draw, lost
    with probability ``drop``. The long-run loss rate is ``drop`` whatever the correlation,
    and a run of losses lasts 1 / ((1 - correlation) x (1 - drop)) messages on average."""

    __slots__ = (
        "correlation",
        "delay_ms",
        "delegator",
        "drop",
        "duplicate",
        "fleet",
        "jitter_ms",
        "lost",
        "relay",
        "reorder",
        "tasks",
    )

    def __init__(
        self,
        fleet: Fleet,
        drop: float = 0.0,
        delay_ms: int = 0,
        jitter_ms: int = 0,
        correlation: float = 0.0,
        duplicate: float = 0.0,
        reorder: float = 0.0,
        services: Collection[str] = LINK_SERVICES,
    ) -> None:
        self.fleet = fleet
        self.drop = drop
        self.delay_ms = delay_ms
        self.jitter_ms = jitter_ms
        self.correlation = correlation
        self.duplicate = duplicate
        self.reorder = reorder
        self.relay = "relay" in services
        self.delegator = "delegator" in services
        self.lost = False  # the last drop decision on the relay link
        self.tasks = TaskLinkFault(self)

    def decide(self, last: bool) -> bool:
        """One drop decision on a link whose previous decision was ``last``."""
        rng = self.fleet.fault_rng
        if self.correlation and rng.random() < self.correlation:
            return last
        return rng.random() < self.drop

    def send(self, msg: dict[str, Any]) -> bool:
        """A message node -> relay."""
        if self.drop:
            self.lost = self.decide(self.lost)
            if self.lost:
                self.fleet.counters["link_dropped"] += 1
                return True  # lost on the way: the node believes it was sent
        return self.forward(msg, False)

    def ack_lost(self) -> bool:
        """Whether an ack entry relay -> node is lost now (a decision on the relay link)."""
        if not self.drop:
            return False
        self.lost = self.decide(self.lost)
        return self.lost

    def forward(self, msg: dict[str, Any], to_tasks: bool) -> bool:
        """A message from the node that survived: once, or twice (``duplicate``), each
        copy held or sent on by itself. The first copy's answer is the node's."""
        ok = self._pass(msg, to_tasks)
        if self.duplicate and self.fleet.fault_rng.random() < self.duplicate:
            self.fleet.counters["link_duplicated"] += 1
            self._pass(msg, to_tasks)
        return ok

    def _pass(self, msg: dict[str, Any], to_tasks: bool) -> bool:
        fleet = self.fleet
        hold = self.hold_ms()
        if hold is None:
            return (fleet.task_link if to_tasks else fleet.link).send(msg)
        fleet.hold(msg, fleet.now_ms() + hold, to_tasks)
        return True

    def hold_ms(self) -> int | None:
        """How long a message is held, or None: straight on. With ``reorder``, a message
        is held with that probability (delay_ms, or REORDER_HOLD_MS if 0, + U[0,
        jitter_ms]) and the others go straight on; without, every one is held delay_ms +
        U[0, jitter_ms] when either is set."""
        fleet = self.fleet
        if self.reorder:
            if fleet.fault_rng.random() >= self.reorder:
                return None
            fleet.counters["link_reordered"] += 1
            base = self.delay_ms or REORDER_HOLD_MS
            return base + int(fleet.fault_rng.random() * self.jitter_ms)
        if self.delay_ms or self.jitter_ms:
            return self.delay_ms + int(fleet.fault_rng.random() * self.jitter_ms)
        return None

    def describe(self) -> dict[str, Any]:
        return {
            "drop": self.drop,
            "delay_ms": self.delay_ms,
            "jitter_ms": self.jitter_ms,
            "correlation": self.correlation,
            "duplicate": self.duplicate,
            "reorder": self.reorder,
            "services": [name for name in LINK_SERVICES if getattr(self, name)],
        }


class TaskLinkFault:
    """A node's faulty link, as its task messages to and from the delegator see it."""

    __slots__ = ("fault", "lost")

    def __init__(self, fault: LinkFault) -> None:
        self.fault = fault
        self.lost = False  # the last drop decision on the task link

    def send(self, msg: dict[str, Any]) -> bool:
        """A task message node -> delegator."""
        fault = self.fault
        if fault.drop:
            self.lost = fault.decide(self.lost)
            if self.lost:
                fault.fleet.counters["link_tasks_dropped"] += 1
                return True  # lost on the way: the node believes it was sent
        return fault.forward(msg, True)

    def arrives_lost(self) -> bool:
        """Whether a message delegator -> node is lost now (a decision on the task link)."""
        fault = self.fault
        if not fault.drop:
            return False
        self.lost = fault.decide(self.lost)
        return self.lost


class SkewedClock:
    """A node whose clock was stepped by ``skew_ms``: what it sends to the relay carries
    ts_ms + skew_ms (kept in the protocol's range 0..TS_MS_MAX), on a copy, so what its
    ring keeps is untouched. Its timers (the tick clock) are not skewed."""

    __slots__ = ("inner", "skew_ms")

    def __init__(self, inner: GatewayLink | LinkFault, skew_ms: int) -> None:
        self.inner = inner
        self.skew_ms = skew_ms

    def send(self, msg: dict[str, Any]) -> bool:
        out = dict(msg)
        ts = msg["ts_ms"] + self.skew_ms
        out["ts_ms"] = 0 if ts < 0 else min(ts, limits.TS_MS_MAX)
        return self.inner.send(out)


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
        for i, node_id in enumerate(rates):
            self.nodes[node_id] = SimNode(
                node_id,
                i,
                self.cfg,
                self.link,
                now,
                self.task_link,
                accept_fill,
                rates[node_id],
                self.counters,
            )
        # Bursts: each one's nodes, and whether it is on (checked at every tick).
        self._bursts = [(b, b.nodes or list(self.nodes)) for b in self.cfg.bursts]
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
