"""The fault timeline, resolved from the seed: which targets, and when each fault is applied
and healed. The same scenario, seed and fleet give the same plan, byte for byte: one
``random.Random(seed)`` is drawn in file order (each occurrence: its jitter, then its
targets), so adding a fault at the end leaves the earlier ones as they were.

Usage::

    plan = make_plan(loaded.scenario, seed, nodes=fleet_ids, hot=hot_ids)
    for step in plan.faults: ...  # sorted by planned apply time
"""

from __future__ import annotations

import random
from typing import Any

import msgspec

from .load import occurrences
from .scenario import (
    BOARD_KINDS,
    INSTANT_KINDS,
    LINK_KINDS,
    NODE_KINDS,
    SELECTIONS,
    SERVICES,
    UPDATE_KINDS,
    Fault,
    Flap,
    Scenario,
    Seconds,
    Target,
    TargetSpec,
    kind_of,
    on_services,
)

# Fields of a fault that say when and to whom, not what: the rest are its parameters.
SCHEDULE_FIELDS = ("name", "at", "jitter", "duration", "every", "count", "target")


class PlannedFault(msgspec.Struct, frozen=True, kw_only=True):
    """One application of a fault: ``at_s`` and ``heal_at_s`` are seconds from the start of
    the fault phase (``heal_at_s`` None: healed at rollback; equal to ``at_s``: instant)."""

    id: str  # name#occurrence (.cycle for a flap)
    fault: str
    kind: str
    targets: list[str]
    at_s: float
    heal_at_s: float | None
    params: dict[str, Any]


class Plan(msgspec.Struct, frozen=True, kw_only=True):
    seed: int
    nodes: list[str]
    hot: list[str]
    faults: list[PlannedFault]
    touched: list[str]  # nodes some node or link fault targets
    untouched: list[str]


class PlanError(ValueError):
    """A target the fleet cannot satisfy (a node id not in a running fleet)."""


def params_of(fault: Fault) -> dict[str, Any]:
    raw = msgspec.structs.asdict(fault)
    return {
        k: float(v) if isinstance(v, Seconds) else v
        for k, v in raw.items()
        if k not in SCHEDULE_FIELDS
    }


def make_plan(
    scenario: Scenario,
    seed: int,
    nodes: list[str],
    hot: list[str],
    boards: list[str] | tuple[str, ...] = (),
) -> Plan:
    """``nodes``: every member (simulated nodes and ``boards``); board faults draw their
    targets from the boards, the other node faults from the simulated nodes."""
    rng = random.Random(seed)
    sim_nodes = [n for n in nodes if n not in boards]
    steps: list[PlannedFault] = []
    touched: list[str] = []
    by_fault: dict[str, set[str]] = {}  # the targets each fault has had so far
    phase = scenario.workload.duration
    for fault in scenario.fault:
        kind = kind_of(fault)
        for k in range(occurrences(fault, phase)):
            at = fault.at + k * (fault.every or 0.0)
            at += round(rng.uniform(0.0, fault.jitter), 3) if fault.jitter else 0.0
            avoid = fault.target.avoid if isinstance(fault.target, TargetSpec) else []
            excluded = {n for name in avoid for n in by_fault.get(name, ())}
            pool = list(boards) if kind in BOARD_KINDS else sim_nodes
            targets = resolve(fault.target, kind, rng, pool, hot, touched, excluded)
            by_fault.setdefault(fault.name, set()).update(targets)
            node_kinds = NODE_KINDS + LINK_KINDS + BOARD_KINDS
            if (
                kind in node_kinds
                and kind not in UPDATE_KINDS
                and not on_services(kind, fault.target)
            ):
                touched += [t for t in targets if t not in touched]
            steps += _steps(fault, kind, k + 1, round(at, 3), targets)
    steps.sort(key=lambda s: (s.at_s, s.id))
    return Plan(
        seed=seed,
        nodes=list(nodes),
        hot=list(hot),
        faults=steps,
        touched=sorted(touched),
        untouched=[n for n in nodes if n not in touched],
    )


def _steps(fault: Fault, kind: str, k: int, at: float, targets: list[str]) -> list[PlannedFault]:
    params = params_of(fault)
    if isinstance(fault, Flap):
        cycle = fault.down + fault.up
        return [
            PlannedFault(
                id=f"{fault.name}#{k}.{c + 1}",
                fault=fault.name,
                kind=kind,
                targets=targets,
                at_s=round(at + c * cycle, 3),
                heal_at_s=round(at + c * cycle + fault.down, 3),
                params=params,
            )
            for c in range(fault.cycles)
        ]
    if kind in INSTANT_KINDS:
        heal: float | None = at
    else:
        heal = round(at + fault.duration, 3) if fault.duration is not None else None
    return [
        PlannedFault(
            id=f"{fault.name}#{k}",
            fault=fault.name,
            kind=kind,
            targets=targets,
            at_s=at,
            heal_at_s=heal,
            params=params,
        )
    ]


def resolve(
    target: Target,
    kind: str,
    rng: random.Random,
    nodes: list[str],
    hot: list[str],
    touched: list[str],
    excluded: set[str] | None = None,
) -> list[str]:
    """The ids a target names, drawing from ``rng`` for selections (sorted, so a plan reads
    the same however the draw ordered them). A partition between services names its
    service."""
    if kind not in NODE_KINDS + LINK_KINDS + BOARD_KINDS or on_services(kind, target):
        pool = list(SERVICES)
        if isinstance(target, TargetSpec):
            return sorted(_select(target.select, pool, rng))
        words = [target] if isinstance(target, str) else list(target)
        out: list[str] = []
        for w in words:
            out += _select(w, pool, rng) if w in SELECTIONS else [w]
        return sorted(dict.fromkeys(out))
    if isinstance(target, TargetSpec):
        pool = [n for n in _pool(target.role, nodes, hot, touched) if n not in (excluded or ())]
        if not pool:
            raise PlanError(f"no {target.role} node is left once {target.avoid} are avoided")
        return sorted(_select(target.select, pool, rng))
    words = [target] if isinstance(target, str) else list(target)
    out = []
    for w in words:
        if w in SELECTIONS:
            out += _select(w, nodes, rng)
        elif w in ("hot", "cold"):
            out += _pool(w, nodes, hot, touched)
        elif w in nodes:
            out.append(w)
        else:
            raise PlanError(f"target {w!r} is not a node of the fleet ({len(nodes)} nodes)")
    return sorted(dict.fromkeys(out))


def _pool(role: str, nodes: list[str], hot: list[str], touched: list[str]) -> list[str]:
    if role == "hot":
        return [n for n in nodes if n in hot]
    if role == "cold":
        return [n for n in nodes if n not in hot]
    if role == "untouched":
        return [n for n in nodes if n not in touched] or list(nodes)
    return list(nodes)


def _select(select: str | int, pool: list[str], rng: random.Random) -> list[str]:
    n = len(pool)
    count = (
        {
            "one": 1,
            "minority": max(1, (n - 1) // 2),
            "majority": n // 2 + 1,
            "all": n,
        }.get(select, select)
        if isinstance(select, str)
        else select
    )
    return rng.sample(pool, min(int(count), n))
