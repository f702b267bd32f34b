"""Scenario files: TOML in, a validated ``Scenario`` out, or a ``ScenarioError`` that names
the file, the entry and the field (the injector exits 4 on it, before anything runs).

The schema is msgspec Structs with unknown fields forbidden, so a typo is an error rather
than a silently ignored key; fault and expectation kinds are tagged unions on ``kind``.
Durations are seconds (``30``, ``1.5``) or strings with a unit (``"500ms"``, ``"2s"``,
``"1m"``). docs/scenarios.md is the reference; this module is its executable form.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from msgspec import Meta, Struct, field

# --- durations -----------------------------------------------------------------------------


class Seconds(float):
    """A duration in seconds (a float that came from ``30``, ``1.5`` or ``"500ms"``)."""


_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)\s*$")


def parse_seconds(value: Any) -> Seconds:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if value < 0:
            raise ValueError("a duration cannot be negative")
        return Seconds(value)
    if isinstance(value, str):
        match = _DURATION.match(value)
        if match:
            return Seconds(float(match[1]) * _UNITS[match[2]])
    raise ValueError(f'expected seconds or a duration such as "500ms", "2s", "1m"; got {value!r}')


def _dec_hook(type_: Any, value: Any) -> Any:
    if type_ is Seconds:
        return parse_seconds(value)
    raise NotImplementedError


def _s(value: float) -> Seconds:
    return Seconds(value)


# --- metrics and tolerances ----------------------------------------------------------------

# Everything a steady-state probe, an abort condition or a metric expectation can read
# (docs/scenarios.md, "Metrics", says where each comes from).
Metric = Literal[
    "alive",
    "suspect",
    "dead",
    "left",
    "members",
    "telemetry_rate",
    "task_throughput",
    "lost_tasks",
    "duplicate_commits",
    "dead_lettered",
    "redelegated",
    "in_flight",
    "pending",
    "tasks_total",
    "overloaded",
    "services_down",
    "observer_healthy",
    "link_dropped",
    "boards_delegated_in",
    "boards_delegated_out",
]
METRICS: tuple[str, ...] = Metric.__args__  # type: ignore[attr-defined]


class _Bounds:
    """What a tolerance means; mixed into the Structs that carry its four fields."""

    __slots__ = ()
    equal: float | None
    at_most: float | None
    at_least: float | None
    range: tuple[float, float] | None

    def tolerance_error(self) -> str | None:
        given = [
            k for k in ("equal", "at_most", "at_least", "range") if getattr(self, k) is not None
        ]
        if len(given) != 1:
            return "give exactly one of equal, at_most, at_least, range" + (
                f" (got {', '.join(given)})" if given else ""
            )
        if self.range is not None and self.range[0] > self.range[1]:
            return f"range [{self.range[0]}, {self.range[1]}] is empty"
        return None

    def holds(self, value: float) -> bool:
        if self.equal is not None:
            return value == self.equal
        if self.at_most is not None:
            return value <= self.at_most
        if self.at_least is not None:
            return value >= self.at_least
        assert self.range is not None
        return self.range[0] <= value <= self.range[1]

    def describe(self) -> str:
        if self.equal is not None:
            return f"= {self.equal:g}"
        if self.at_most is not None:
            return f"<= {self.at_most:g}"
        if self.at_least is not None:
            return f">= {self.at_least:g}"
        assert self.range is not None
        return f"in [{self.range[0]:g}, {self.range[1]:g}]"

    def margin(self, value: float) -> float:
        """How far inside the tolerance value is (negative: outside); the probes' "worst"
        is the value with the smallest margin."""
        if not self.holds(value):
            return -self.miss(value)
        if self.equal is not None:
            return 0.0
        if self.at_most is not None:
            return self.at_most - value
        if self.at_least is not None:
            return value - self.at_least
        assert self.range is not None
        return min(value - self.range[0], self.range[1] - value)

    def miss(self, value: float) -> float:
        """How far value is outside the tolerance (0 inside): "failed by how much"."""
        if self.holds(value):
            return 0.0
        if self.equal is not None:
            return abs(value - self.equal)
        if self.at_most is not None:
            return value - self.at_most
        if self.at_least is not None:
            return self.at_least - value
        assert self.range is not None
        lo, hi = self.range
        return lo - value if value < lo else value - hi


class Tolerance(Struct, _Bounds, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """Exactly one of: ``equal``, ``at_most``, ``at_least``, ``range = [lo, hi]``."""

    equal: float | None = None
    at_most: float | None = None
    at_least: float | None = None
    range: tuple[float, float] | None = None


Phase = Literal["before", "during", "after"]


class Probe(Tolerance, kw_only=True, frozen=True):
    """A steady-state check on one metric, in the phases it lists."""

    metric: Metric
    name: str = ""
    phases: list[Phase] = field(default_factory=lambda: ["before", "during", "after"])


class SteadyState(Struct, forbid_unknown_fields=True, frozen=True):
    interval: Seconds = _s(1.0)  # how often "during" probes (and safety) are checked
    probe: list[Probe] = []


# --- targets -------------------------------------------------------------------------------

Selection = Literal["one", "minority", "majority", "all"]
SELECTIONS: tuple[str, ...] = Selection.__args__  # type: ignore[attr-defined]
Role = Literal["any", "hot", "cold", "untouched"]
SERVICES = ("relay", "liveness", "delegator", "broker", "shim")
# The MQTT broker and the shim run only in a cluster with boards ([workload] boards > 0).
DEVICE_SERVICES = ("broker", "shim")
# The service-to-service links a partition can cut, by the consumer's side: the liveness
# monitor listens to the relay; the delegator to the relay and the monitor; the shim to
# the MQTT broker (a TCP proxy on that link alone: boards still reach the broker).
SERVICE_LINKS: dict[str, tuple[str, ...]] = {
    "liveness": ("relay",),
    "delegator": ("relay", "liveness"),
    "shim": ("broker",),
}


class TargetSpec(Struct, forbid_unknown_fields=True, frozen=True):
    """A seeded choice: ``select`` (one, minority, majority, all, or a count) among the nodes
    of ``role`` (any; hot or cold: hot spots or not; untouched: not targeted earlier), less
    the targets of the earlier faults named in ``avoid``."""

    select: Selection | Annotated[int, Meta(ge=1)] = "one"
    role: Role = "any"
    avoid: list[str] = []


# A selection word, a role word ("hot", "cold"), a node id or service name; a list of them;
# or a TargetSpec table.
Target = str | list[str] | TargetSpec


# --- faults --------------------------------------------------------------------------------

Probability = Annotated[float, Meta(ge=0, le=1)]


class Fault(Struct, forbid_unknown_fields=True, frozen=True, kw_only=True, tag_field="kind"):
    """When and to whom: ``at`` (from the start of the fault phase) plus a seeded
    U[0, ``jitter``]; healed after ``duration`` (none: at rollback); repeated ``every``
    (``count`` times, or while it fits the workload)."""

    name: str = ""
    at: Seconds
    jitter: Seconds = _s(0)
    duration: Seconds | None = None
    every: Seconds | None = None
    count: Annotated[int, Meta(ge=1)] | None = None
    target: Target = "one"


class Crash(Fault, tag="crash", frozen=True):
    """The node stops silently; healed: it boots again (a new boot_id)."""


class Hang(Fault, tag="hang", frozen=True):
    """Connection open, nothing sent; healed: it carries on with the same boot."""


class Reboot(Fault, tag="reboot", frozen=True):
    """A new boot at once (instant)."""


class CpuHog(Fault, tag="cpu_hog", frozen=True):
    percent: Annotated[int, Meta(ge=1, le=100)]


class QueueFlood(Fault, tag="queue_flood", frozen=True):
    tasks: Annotated[int, Meta(ge=1, le=100_000)]


class ClockSkew(Fault, tag="clock_skew", frozen=True):
    skew_ms: Annotated[int, Meta(ge=-86_400_000, le=86_400_000)]


class Flap(Fault, tag="flap", frozen=True):
    """Down (crashed) for ``down``, up for ``up``, ``cycles`` times."""

    down: Seconds
    up: Seconds
    cycles: Annotated[int, Meta(ge=1, le=1000)] = 3


class Drop(Fault, tag="drop", frozen=True):
    """Each message on the node's links is lost with ``probability``; ``correlation``: the
    chance a decision repeats the previous one (bursty loss, as netem)."""

    probability: Probability
    correlation: Probability = 0.0


class Delay(Fault, tag="delay", frozen=True):
    delay: Seconds
    delay_jitter: Seconds = _s(0)


class Duplicate(Fault, tag="duplicate", frozen=True):
    probability: Probability


class Reorder(Fault, tag="reorder", frozen=True):
    probability: Probability
    delay: Seconds = _s(0.05)


class Partition(Fault, tag="partition", frozen=True):
    """The target nodes cannot reach ``services`` (nor hear from them); or, when the
    target is a service (liveness, delegator), that service and ``services`` are cut off
    from each other (through a fault proxy on their link). Default ``services``: relay
    and delegator for nodes, every service the target service listens to."""

    services: list[Literal["relay", "liveness", "delegator", "broker"]] | None = None


class PowerCut(Fault, tag="power_cut", frozen=True):
    """A board loses power: its MicroPython process is SIGKILLed (no goodbye, no will until
    the broker notices); healed: power on again (a new boot)."""


class RadioOff(Fault, tag="radio_off", frozen=True):
    """A board's radio goes off: its WLAN reports disconnected and its TCP path to the
    broker is cut; healed: on again (the same boot reconnects and resends)."""


class OtaRollout(Fault, tag="ota_rollout", frozen=True):
    """A rollout of a new firmware version (this install's firmware, built under a version
    of its own) to the target boards through the OTA service (instant: it is started; it
    runs on while the other faults hit it). ``bad``: a version that raises at import."""

    bad: bool = False
    max_unavailable: Annotated[int, Meta(ge=1, le=256)] = 1


class Kill(Fault, tag="kill", frozen=True):
    """SIGKILL a service; its supervisor restarts it (instant)."""


class Restart(Fault, tag="restart", frozen=True):
    """A clean restart of a service through its supervisor (instant)."""


class Pause(Fault, tag="pause", frozen=True):
    """SIGSTOP a service; healed: SIGCONT."""


AnyFault = (
    Crash
    | Hang
    | Reboot
    | CpuHog
    | QueueFlood
    | ClockSkew
    | Flap
    | Drop
    | Delay
    | Duplicate
    | Reorder
    | Partition
    | PowerCut
    | RadioOff
    | OtaRollout
    | Kill
    | Restart
    | Pause
)
NODE_KINDS = ("crash", "hang", "reboot", "cpu_hog", "queue_flood", "clock_skew", "flap")
LINK_KINDS = ("drop", "delay", "duplicate", "reorder", "partition")
# Faults of the emulated boards (services/boards); their targets are boards only, and the
# other node kinds' are simulated nodes only.
BOARD_KINDS = ("power_cut", "radio_off", "ota_rollout")
# Board kinds that are no fault of the board: its targets still count as untouched.
UPDATE_KINDS = ("ota_rollout",)
SERVICE_KINDS = ("kill", "restart", "pause")
INSTANT_KINDS = ("reboot", "queue_flood", "kill", "restart", "flap", "ota_rollout")  # no `duration`
# Faults after which a node is expected to be declared failed (expect "detected").
FAILING_KINDS = ("crash", "hang", "flap", "partition", "power_cut", "radio_off")


def kind_of(fault: Fault) -> str:
    return str(type(fault).__struct_config__.tag)


def on_services(kind: str, target: Target) -> bool:
    """Whether a fault of ``kind`` on ``target`` is a partition between services (its
    target names a service) rather than one of nodes."""
    if kind != "partition" or isinstance(target, TargetSpec):
        return False
    words = [target] if isinstance(target, str) else target
    return any(w in SERVICES for w in words)


def service_links(s: Scenario) -> list[tuple[str, str]]:
    """The (consumer, service) links the scenario's service partitions cut."""
    links = {
        (_words(f.target)[0], service)
        for f in s.fault
        if isinstance(f, Partition) and on_services("partition", f.target)
        for service in f.services or ()
    }
    return sorted(links)


def _words(target: Target) -> list[str]:
    """A target's words (none for a table)."""
    if isinstance(target, TargetSpec):
        return []
    return [target] if isinstance(target, str) else list(target)


def _cannot_run(s: Scenario, services_why: str, boards_error: str) -> list[str]:
    """The scenario's partitions between services (each said with ``services_why``) and,
    if it has boards, ``boards_error``: what a cluster unlike the injector's own refuses."""
    errors = [
        f'fault[{i}] ("{f.name}"): field `target`: {services_why}'
        for i, f in enumerate(s.fault)
        if on_services(kind_of(f), f.target)
    ]
    if s.workload.boards:
        errors.append(boards_error)
    return errors


def attach_errors(s: Scenario) -> list[str]:
    """What cannot run on a cluster the injector did not start (``--attach``): a partition
    between services needs fault proxies wired into the cluster's config, and boards are
    named by the cluster that starts them."""
    return _cannot_run(
        s,
        "a partition between services needs the injector's own cluster (its fault proxy is "
        "in the cluster's config); not with --attach",
        "[workload]: field `boards`: boards need the injector's own cluster",
    )


def hosts_errors(s: Scenario) -> list[str]:
    """What a cluster of hosts cannot run: partitions between services (the services share
    the bus host) and emulated boards."""
    return _cannot_run(
        s,
        "a partition between services is not made between hosts yet (the services share "
        "the bus host); not with --hosts",
        "workload: field `boards`: no emulated boards on hosts; not with --hosts",
    )


# --- expectations --------------------------------------------------------------------------

MemberEvent = Literal["suspect", "dead", "rebooted", "left", "alive"]


class Expect(Struct, forbid_unknown_fields=True, frozen=True, kw_only=True, tag_field="kind"):
    name: str = ""


class Detected(Expect, tag="detected", frozen=True):
    """Each target of ``faults`` (default: every crash, hang, flap, partition) is declared
    ``event`` within ``within`` of the fault's actual apply time."""

    within: Seconds
    event: MemberEvent = "dead"
    faults: list[str] = []


class Redelegated(Expect, tag="redelegated", frozen=True):
    """Tasks held by a target of ``faults`` when it failed are taken from it (re-delegated)
    within ``within`` of the fault. A node that held none is skipped; if no failed node
    held any, the expectation proves nothing and fails unless ``allow_vacuous``."""

    within: Seconds
    faults: list[str] = []
    # With no failed node holding a task the expectation proves nothing: it fails, unless
    # the scenario says that is fine.
    allow_vacuous: bool = False


class Recovered(Expect, tag="recovered", frozen=True):
    """Every node alive again within ``within`` of the last heal."""

    within: Seconds


class LostTasks(Expect, tag="lost_tasks", frozen=True):
    at_most: Annotated[int, Meta(ge=0)] = 0


class DuplicateCommits(Expect, tag="duplicate_commits", frozen=True):
    at_most: Annotated[int, Meta(ge=0)] = 0


class NoFalseDead(Expect, tag="no_false_dead", frozen=True):
    """Nodes no fault touched are declared ``event`` at most ``at_most`` times."""

    event: Literal["suspect", "dead"] = "dead"
    at_most: Annotated[int, Meta(ge=0)] = 0


class MetricExpect(Expect, _Bounds, tag="metric", kw_only=True, frozen=True):
    """A metric's value at the end of the run (after the drain)."""

    metric: Metric
    equal: float | None = None
    at_most: float | None = None
    at_least: float | None = None
    range: tuple[float, float] | None = None


class OtaExpect(Expect, tag="ota", frozen=True):
    """The rollout's outcome at the end of the run: ``result`` (succeeded: every board
    confirmed the new version; halted), and, if given, how many boards rolled back."""

    result: Literal["succeeded", "halted"] = "succeeded"
    rolled_back: Annotated[int, Meta(ge=0)] | None = None


AnyExpect = (
    Detected
    | Redelegated
    | Recovered
    | LostTasks
    | DuplicateCommits
    | NoFalseDead
    | MetricExpect
    | OtaExpect
)


def expect_kind(expect: Expect) -> str:
    return str(type(expect).__struct_config__.tag)


# --- workload, safety, rollback ------------------------------------------------------------


class Workload(Struct, forbid_unknown_fields=True, frozen=True):
    """The simulated fleet's load while the faults run; ``duration`` is the fault phase."""

    duration: Seconds
    nodes: Annotated[int, Meta(ge=1, le=1000)] = 8
    rate: Annotated[float, Meta(ge=0, le=1000)] = 2.0  # tasks/s per node
    task_cost_ms: Annotated[float, Meta(gt=0, le=60_000)] = 100.0
    hot_spots: Annotated[int, Meta(ge=0)] | list[str] = 0
    hot_factor: Annotated[float, Meta(ge=0, le=100)] = 3.0
    # Emulated boards (the real firmware in MicroPython, over the embedded MQTT broker and
    # the shim) beside the simulated nodes; they are members like any node.
    boards: Annotated[int, Meta(ge=0, le=32)] = 0
    settle: Seconds = _s(1.0)  # after every node is alive, before the "before" checks


class AbortWhen(Tolerance, kw_only=True, frozen=True):
    """Abort the run when ``metric`` leaves the tolerance for ``for`` seconds."""

    metric: Metric
    for_: Seconds = field(default=_s(0), name="for")


class Safety(Struct, forbid_unknown_fields=True, frozen=True):
    max_concurrent_faults: Annotated[int, Meta(ge=1, le=1000)] = 3
    abort: list[AbortWhen] = []
    kill_switch: str | None = None  # a file: when it exists, the run aborts (and heals)


class Rollback(Struct, forbid_unknown_fields=True, frozen=True):
    """At the end (always, after an abort or Ctrl-C too) every fault is healed; then the
    run waits up to ``recover`` for every node to be alive, and up to ``drain`` (arrivals
    stopped) for the tasks in flight to finish before tasks are counted."""

    recover: Seconds = _s(15.0)
    drain: Seconds = _s(20.0)


class Scenario(Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    name: Annotated[str, Meta(min_length=1, max_length=100)]
    description: str = ""
    seed: int = 1
    deadline: Seconds  # the whole run, cluster start to verdict
    # The time scale `just test` runs this scenario at (compress(); the library's files
    # are full length, for `just bench`).
    test_scale: Annotated[float, Meta(gt=0, le=1)] = 0.25
    # The seeds `just test` runs it at (`just bench` runs every file at seeds 1-3).
    test_seeds: Annotated[list[Annotated[int, Meta(ge=0)]], Meta(min_length=1, max_length=5)] = (
        field(default_factory=lambda: [1])
    )
    workload: Workload
    steady_state: SteadyState = SteadyState()
    fault: list[AnyFault] = []
    expect: list[AnyExpect] = []
    safety: Safety = Safety()
    rollback: Rollback = Rollback()
