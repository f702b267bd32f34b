"""Loading a scenario file: parse the TOML, convert it to the schema (scenario.py), and
validate what a type cannot say (targets, partitions, concurrency), each error naming the
file, the entry and the field; and compressing a timeline for tests."""

from __future__ import annotations

import hashlib
import re
import threading
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec

from shoal.services.runtime.config import spread

from .library import resolve
from .scenario import (
    BOARD_KINDS,
    DEVICE_SERVICES,
    INSTANT_KINDS,
    LINK_KINDS,
    NODE_KINDS,
    SELECTIONS,
    SERVICE_KINDS,
    SERVICE_LINKS,
    SERVICES,
    Detected,
    Fault,
    Flap,
    MetricExpect,
    Partition,
    Redelegated,
    Scenario,
    Seconds,
    Target,
    TargetSpec,
    Workload,
    _dec_hook,
    _words,
    expect_kind,
    kind_of,
    on_services,
)

# msgspec 0.22 builds a type's decoding info on its first use, and two threads doing that
# at once can crash the interpreter (a segfault: the library's test loads scenarios from a
# thread pool); parsing is rare, so one at a time.
_CONVERT_LOCK = threading.Lock()

# The time the injector allows itself beyond the scenario's own phases: starting a
# cluster and seeing every node alive.
STARTUP_ALLOWANCE_S = 15.0


@dataclass(frozen=True)
class Loaded:
    """A validated scenario with where it came from."""

    scenario: Scenario
    path: str
    text: str
    sha256: str


class ScenarioError(Exception):
    """An invalid scenario: the message names the file, the entry and the field."""

    def __init__(self, path: str, errors: list[str]) -> None:
        self.path = path
        self.errors = errors
        super().__init__("\n".join(f"{path}: {e}" for e in errors))


# --- loading -------------------------------------------------------------------------------


def load(path: str | Path, *, time_scale: float = 1.0) -> Loaded:
    """The scenario at ``path``, or the library scenario of that name (library.py)."""
    path = str(resolve(path))
    try:
        data = Path(path).read_bytes()
    except OSError as err:
        raise ScenarioError(path, [f"cannot read: {err.strerror}"]) from None
    try:
        text = data.decode("utf-8")  # TOML is UTF-8, whatever the locale says
    except UnicodeDecodeError as err:
        raise ScenarioError(
            path,
            [f"not a TOML file: byte {data[err.start]:#04x} at offset {err.start} is not UTF-8"],
        ) from None
    return parse(text, path, time_scale=time_scale)


def parse(text: str, path: str = "<scenario>", *, time_scale: float = 1.0) -> Loaded:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ScenarioError(path, [f"TOML syntax: {err}"]) from None
    try:
        with _CONVERT_LOCK:
            scenario = msgspec.convert(data, Scenario, dec_hook=_dec_hook)
    except msgspec.ValidationError as err:
        raise ScenarioError(path, [_explain(str(err), data)]) from None
    scenario = _named(scenario)
    errors = semantic_errors(scenario)
    if errors:
        raise ScenarioError(path, errors)
    if time_scale != 1.0:
        scenario = compress(scenario, time_scale)
    sha = hashlib.sha256(text.encode()).hexdigest()
    return Loaded(scenario, path, text, sha)


_AT = re.compile(r"^(.*) - at `\$(.*)`$", re.S)
_UNKNOWN = re.compile(r"unknown field `([^`]*)`")
_MISSING = re.compile(r"missing required field `([^`]*)`")
_CHOICES = {
    "fault": "one of " + ", ".join(NODE_KINDS + LINK_KINDS + BOARD_KINDS + SERVICE_KINDS),
    "expect": "one of detected, redelegated, recovered, lost_tasks, duplicate_commits, "
    "no_false_dead, metric",
}


def _explain(message: str, data: Any) -> str:
    """msgspec's "msg - at `$.fault[0].kind`" as "fault[0] ("name"): field `kind`: msg"."""
    match = _AT.match(message)
    msg, where = (match[1], match[2]) if match else (message, "")
    unknown = _UNKNOWN.search(msg)
    missing = _MISSING.search(msg)
    parts = [p for p in re.split(r"\.(?![^\[]*\])", where.lstrip(".")) if p]
    if unknown or missing:
        parts.append((unknown or missing)[1])  # type: ignore[index]
    entry, fields = _entry(parts, data)
    place = entry or "top level"
    field_name = ".".join(fields)
    if unknown:
        return f"{place}: unknown field `{field_name}`"
    if missing:
        return f"{place}: field `{field_name}` is required"
    if fields == ["kind"] and msg.startswith("Invalid value"):
        msg += f" ({_CHOICES.get(entry.split('[')[0], '')})"
    return f"{place}: field `{field_name}`: {msg}" if field_name else f"{place}: {msg}"


def _entry(parts: list[str], data: Any) -> tuple[str, list[str]]:
    """Split a path into the entry (``fault[2] ("crash-one")``) and the field under it."""
    for i, part in enumerate(parts):
        m = re.match(r"^(\w+)\[(\d+)\]$", part)
        if m:
            label = part
            try:
                item = data
                for p in parts[:i]:
                    item = item[p]
                named = item[m[1]][int(m[2])].get("name")
                if isinstance(named, str) and named:
                    label += f' ("{named}")'
            except (KeyError, IndexError, TypeError, AttributeError):
                pass
            return label, parts[i + 1 :]
    if len(parts) > 1:
        return f"[{parts[0]}]", parts[1:]
    return "", parts


def expect_name(kind: str, n: int) -> str:
    """An unnamed expectation's name, as a report reads it: "lost tasks", then "lost tasks
    2" for a second one of that kind (never "lost_tasks-1")."""
    words = kind.replace("_", " ")
    return words if n == 1 else f"{words} {n}"


def _named(scenario: Scenario) -> Scenario:
    """Give every fault and expectation a name: its own, or (a fault) kind-N, 1-based per
    kind, that other entries can refer to; (an expectation) its kind in words; and a
    partition its default ``services``."""
    seen: dict[str, int] = {}
    faults = []
    for f in scenario.fault:
        kind = kind_of(f)
        seen[kind] = seen.get(kind, 0) + 1
        if not f.name:
            f = msgspec.structs.replace(f, name=f"{kind}-{seen[kind]}")
        if isinstance(f, Partition) and f.services is None:
            # Nodes: both services they talk to; a service: every one it listens to.
            word = f.target if isinstance(f.target, str) else None
            links = SERVICE_LINKS.get(word or "", ("relay", "delegator"))
            f = msgspec.structs.replace(f, services=list(links))
        faults.append(f)
    seen.clear()
    expects = []
    for e in scenario.expect:
        kind = expect_kind(e)
        seen[kind] = seen.get(kind, 0) + 1
        expects.append(
            e if e.name else msgspec.structs.replace(e, name=expect_name(kind, seen[kind]))
        )
    return msgspec.structs.replace(scenario, fault=faults, expect=expects)


# --- semantic checks -----------------------------------------------------------------------


def node_ids(workload: Workload, prefix: str = "sim") -> list[str]:
    """The simulated nodes the workload starts."""
    return [f"{prefix}-{i:03d}" for i in range(workload.nodes)]


def board_ids(workload: Workload) -> list[str]:
    """The emulated boards the workload starts, named as ``shoal boards`` names them."""
    if not workload.boards:
        return []
    from shoal.services.boards.naming import board_id

    return [board_id(i) for i in range(workload.boards)]


def member_ids(workload: Workload) -> list[str]:
    """Every node the cluster should hold alive: simulated nodes, then boards."""
    return node_ids(workload) + board_ids(workload)


def hot_ids(workload: Workload, nodes: list[str] | None = None) -> list[str]:
    """The hot spots among ``nodes`` (default: the fleet the workload starts), as the sim
    picks them: the listed ids, or a count spread evenly over the fleet."""
    ids = node_ids(workload) if nodes is None else nodes
    if isinstance(workload.hot_spots, int):
        return spread(ids, workload.hot_spots)
    return [n for n in workload.hot_spots if n in ids]


def occurrences(fault: Fault, phase_s: float) -> int:
    """How many times a fault happens within a fault phase of ``phase_s``."""
    if fault.every is None:
        return 1
    span = fault.at + fault.jitter + active_span(fault)
    fits = int((phase_s - span) // fault.every) + 1 if phase_s >= span else 1
    return min(fault.count, fits) if fault.count is not None else max(fits, 1)


def active_span(fault: Fault) -> float:
    """How long one occurrence lasts (0 for instant faults; a flap: all its cycles)."""
    if isinstance(fault, Flap):
        return fault.cycles * (fault.down + fault.up)
    return fault.duration or 0.0


def semantic_errors(s: Scenario) -> list[str]:
    errors: list[str] = []
    ids = set(node_ids(s.workload))
    boards = set(board_ids(s.workload))
    hot = hot_ids(s.workload)
    phase = s.workload.duration
    if isinstance(s.workload.hot_spots, int) and s.workload.hot_spots > s.workload.nodes:
        errors.append(
            f"[workload]: field `hot_spots`: {s.workload.hot_spots} hot spots in "
            f"{s.workload.nodes} nodes"
        )
    elif isinstance(s.workload.hot_spots, list):
        errors += [
            f"[workload]: field `hot_spots`: unknown node {n!r}"
            for n in s.workload.hot_spots
            if n not in ids
        ]

    for i, probe in enumerate(s.steady_state.probe):
        if err := probe.tolerance_error():
            errors.append(f"steady_state.probe[{i}]: {err}")
    for i, abort in enumerate(s.safety.abort):
        if err := abort.tolerance_error():
            errors.append(f"safety.abort[{i}]: {err}")

    names = [f.name for f in s.fault]
    for i, fault in enumerate(s.fault):
        where = f'fault[{i}] ("{fault.name}")'
        kind = kind_of(fault)
        if names.count(fault.name) > 1:
            errors.append(f"{where}: field `name`: another fault has the same name")
        if fault.duration is not None and fault.duration <= 0:
            errors.append(f"{where}: field `duration`: must be > 0 (leave it out: until rollback)")
        if kind in INSTANT_KINDS and fault.duration is not None:
            what = "its cycles set how long it lasts" if kind == "flap" else "it is instant"
            errors.append(f"{where}: field `duration`: not for {kind} ({what})")
        if fault.count is not None and fault.every is None:
            errors.append(f"{where}: field `count`: needs `every`")
        if fault.every is not None:
            if fault.every <= 0:
                errors.append(f"{where}: field `every`: must be > 0")
            elif fault.duration is None and kind not in INSTANT_KINDS:
                errors.append(f"{where}: field `every`: a repeated {kind} needs a `duration`")
            elif fault.every < active_span(fault) + fault.jitter:
                errors.append(
                    f"{where}: field `every`: {fault.every:g} s is shorter than one occurrence "
                    f"({active_span(fault) + fault.jitter:g} s with its jitter)"
                )
        if isinstance(fault, Partition):
            errors += _partition_errors(where, fault, ids, hot)
            if on_services(kind, fault.target) and not boards and "shim" in _words(fault.target):
                errors.append(f"{where}: field `target`: the shim runs only with [workload] boards")
        elif kind in BOARD_KINDS:
            if not boards:
                errors.append(f"{where}: field `kind`: {kind} needs boards ([workload] boards)")
            else:
                errors += _target_errors(where, kind, fault.target, boards, [])
        else:
            errors += _target_errors(where, kind, fault.target, ids, hot)
            device = [w for w in _words(fault.target) if w in DEVICE_SERVICES]
            if kind in SERVICE_KINDS and device and not boards:
                errors.append(
                    f"{where}: field `target`: {', '.join(device)} runs only with boards "
                    "([workload] boards)"
                )
        if isinstance(fault.target, TargetSpec):
            earlier = names[:i]
            errors += [
                f"{where}: field `target.avoid`: no earlier fault named {n!r}"
                for n in fault.target.avoid
                if n not in earlier
            ]
        last_end = (
            fault.at
            + fault.jitter
            + (occurrences(fault, phase) - 1) * (fault.every or 0)
            + active_span(fault)
        )
        if last_end > phase:
            field_name = "duration" if fault.duration else "at"
            errors.append(
                f"{where}: field `{field_name}`: ends at {last_end:g} s, after the workload's "
                f"{phase:g} s fault phase"
            )

    if not errors:  # overlapping repeats of a fault already said what is wrong
        errors += _concurrency_errors(s)

    needed = STARTUP_ALLOWANCE_S + s.workload.settle + phase + s.rollback.recover + s.rollback.drain
    if s.deadline < needed:
        errors.append(
            f"top level: field `deadline`: {s.deadline:g} s does not fit the run: startup "
            f"{STARTUP_ALLOWANCE_S:g} + settle {s.workload.settle:g} + workload {phase:g} + "
            f"recover {s.rollback.recover:g} + drain {s.rollback.drain:g} = {needed:g} s"
        )

    known = set(names)
    for i, expect in enumerate(s.expect):
        where = f'expect[{i}] ("{expect.name}")'
        if isinstance(expect, MetricExpect) and (err := expect.tolerance_error()):
            errors.append(f"{where}: {err}")
        if isinstance(expect, (Detected, Redelegated)):
            for name in expect.faults:
                if name not in known:
                    errors.append(f"{where}: field `faults`: no fault named {name!r}")
                elif isinstance(expect, Detected):
                    fault = s.fault[names.index(name)]
                    kind = kind_of(fault)
                    node_kinds = NODE_KINDS + LINK_KINDS + BOARD_KINDS
                    if kind not in node_kinds or on_services(kind, fault.target):
                        errors.append(f"{where}: field `faults`: {name!r} is a {kind} of a service")
    return errors


def _target_errors(
    where: str, kind: str, target: Target, ids: set[str], hot: list[str]
) -> list[str]:
    field_name = f"{where}: field `target`"
    if kind in SERVICE_KINDS:
        words = [target] if isinstance(target, str) else target if isinstance(target, list) else []
        if isinstance(target, TargetSpec):
            if target.role != "any":
                return [f"{field_name}: role {target.role!r} is for nodes; services have none"]
            if isinstance(target.select, int) and target.select > len(SERVICES):
                return [f"{field_name}: {target.select} of {len(SERVICES)} services"]
            return []
        bad = [w for w in words if w not in SERVICES and w not in SELECTIONS]
        return [f"{field_name}: {w!r} is not a service ({', '.join(SERVICES)})" for w in bad]
    if isinstance(target, TargetSpec):
        pool = (
            len(hot)
            if target.role == "hot"
            else len(ids) - len(hot)
            if target.role == "cold"
            else len(ids)
        )
        if target.role in ("hot", "cold") and pool == 0:
            return [f"{field_name}: no {target.role} nodes in this workload"]
        if isinstance(target.select, int) and target.select > pool:
            return [f"{field_name}: {target.select} nodes of {pool}"]
        return []
    words = [target] if isinstance(target, str) else target
    errors = []
    for w in words:
        if w in SERVICES:
            errors.append(f"{field_name}: {w!r} is a service; {kind} applies to nodes")
        elif w in ("hot", "cold"):
            if not hot if w == "hot" else len(hot) == len(ids):
                errors.append(f"{field_name}: no {w} nodes in this workload")
        elif w not in SELECTIONS and w not in ids:
            errors.append(
                f"{field_name}: {w!r} is not a node of this fleet, nor one of {', '.join(SELECTIONS)}, hot, cold"
            )
    if isinstance(target, list) and not target:
        errors.append(f"{field_name}: an empty list")
    return errors


def _partition_errors(where: str, fault: Partition, ids: set[str], hot: list[str]) -> list[str]:
    """A partition of nodes from relay/delegator, or of one service from those it listens
    to (SERVICE_LINKS): anything else is not a link that can be cut."""
    services = fault.services or []
    if not on_services("partition", fault.target):
        errors = _target_errors(where, "partition", fault.target, ids, hot)
        if "liveness" in services:
            errors.append(
                f"{where}: field `services`: nodes do not talk to the liveness monitor (it "
                "hears them through the relay); a node partition takes relay, delegator"
            )
        return errors
    words = _words(fault.target)
    field_name = f"{where}: field `target`"
    links = "; ".join(f"{c} <-> {', '.join(up)}" for c, up in SERVICE_LINKS.items())
    if len(words) != 1 or words[0] not in SERVICES:
        return [f"{field_name}: a partition between services takes one service, got {words}"]
    target = words[0]
    if target not in SERVICE_LINKS:
        return [
            f"{field_name}: {target!r} listens to no other service; name the one on the "
            f"other side as the target and {target!r} in `services` (links: {links})"
        ]
    if not services:
        return [f"{where}: field `services`: an empty list"]
    return [
        f"{where}: field `services`: {target} <-> {other} is not a link between services "
        f"(links: {links})"
        for other in services
        if other not in SERVICE_LINKS[target]
    ]


def _concurrency_errors(s: Scenario) -> list[str]:
    """Faults active at once, in the worst case of every jitter, against the safety limit."""
    spans: list[tuple[float, int, str]] = []
    for fault in s.fault:
        for k in range(occurrences(fault, s.workload.duration)):
            start = fault.at + k * (fault.every or 0)
            end = (
                start
                + fault.jitter
                + (active_span(fault) if fault.duration or isinstance(fault, Flap) else 0)
            )
            if fault.duration is None and kind_of(fault) not in INSTANT_KINDS:
                end = float("inf")  # until rollback
            spans += [(start, 1, fault.name), (end, -1, fault.name)]
    spans.sort(key=lambda x: (x[0], -x[1]))  # touching spans overlap: the worst case
    active: list[str] = []
    worst: list[str] = []
    for _t, step, name in spans:
        if step > 0:
            active.append(name)
            # A fault counts once however its own occurrences touch.
            if len(set(active)) > len(set(worst)):
                worst = list(active)
        else:
            active.remove(name)
    limit = s.safety.max_concurrent_faults
    if len(set(worst)) > limit:
        return [
            f"[safety]: field `max_concurrent_faults`: {len(set(worst))} faults can be active "
            "at once "
            f"({', '.join(dict.fromkeys(worst))}), more than the {limit} allowed"
        ]
    return []


# --- compressed timelines ------------------------------------------------------------------


def compress(s: Scenario, factor: float) -> Scenario:
    """The scenario with its fault phase scaled by ``factor`` (tests run the library at
    0.2-0.3): fault times, durations and repeats, flap cycles and the workload's duration
    scale; detection limits, settle, recover and drain do not (the cluster's own reaction
    times do not shrink), and the deadline shrinks by what the workload lost."""

    def sc(v: float) -> Seconds:
        return Seconds(round(v * factor, 3))

    faults = []
    for f in s.fault:
        changes: dict[str, Any] = {"at": sc(f.at), "jitter": sc(f.jitter)}
        if f.duration is not None:
            changes["duration"] = sc(f.duration)
        if f.every is not None:
            changes["every"] = sc(f.every)
        if isinstance(f, Flap):
            changes["down"], changes["up"] = sc(f.down), sc(f.up)
        faults.append(msgspec.structs.replace(f, **changes))
    workload = msgspec.structs.replace(s.workload, duration=sc(s.workload.duration))
    deadline = Seconds(s.deadline - (s.workload.duration - workload.duration))
    return msgspec.structs.replace(s, fault=faults, workload=workload, deadline=deadline)
