"""Faults inside the fleet: the "fault" op's arguments and the faulty links and clocks
that stand between a node and its services (the ops are described in fleet.py)."""

from __future__ import annotations

from collections.abc import Collection
from typing import TYPE_CHECKING, Annotated, Any, Literal

import msgspec

from shoal.protocol import limits

if TYPE_CHECKING:
    from .fleet import Fleet
    from .links import GatewayLink


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
# Beyond these a fault is nonsense (a link holding every message for 2^63 ms is a
# partition that hoards memory), and its numbers would no longer be exact in JSON.
DELAY_MAX_MS = 3_600_000  # an hour
DURATION_MAX_MS = 7 * 86_400_000  # a week: longer than any chaos run

Probability = Annotated[float, msgspec.Meta(ge=0, le=1)]
DelayMs = Annotated[int, msgspec.Meta(ge=0, le=DELAY_MAX_MS)]


class FaultArgs(msgspec.Struct, forbid_unknown_fields=True):
    """Args of the sim's "fault" op (see the module docstring). None: not given."""

    action: FaultAction
    nodes: list[str] = []
    duration_ms: Annotated[int, msgspec.Meta(ge=0, le=DURATION_MAX_MS)] = 0
    # link
    drop: Probability = 0.0
    delay_ms: DelayMs = 0
    jitter_ms: DelayMs = 0
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
