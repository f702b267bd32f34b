"""Steady-state probes and expectations, checked against the recorded history.

Nothing here talks to the cluster: the runner records (faults with their actual times,
membership events, metric samples per phase, the ledger's answers after the drain) and
these functions judge it, so a report can be re-judged from its own history.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .scenario import (
    FAILING_KINDS,
    Detected,
    DuplicateCommits,
    Expect,
    LostTasks,
    MetricExpect,
    NoFalseDead,
    OtaExpect,
    Probe,
    Recovered,
    Redelegated,
    expect_kind,
    on_services,
)


@dataclass
class Applied:
    """A planned fault as it happened: times in seconds since the run's t0."""

    id: str
    fault: str
    kind: str
    targets: list[str]
    planned_at: float
    planned_heal: float | None
    applied_at: float | None = None
    applied_wall: float | None = None
    healed_at: float | None = None
    held: dict[str, int] = field(default_factory=dict)  # tasks each target owned
    error: str | None = None


@dataclass
class Context:
    """What the expectations are judged on."""

    nodes: list[str]
    untouched: list[str]
    applied: list[Applied]
    members: list[dict[str, Any]]  # history entries of type "member", in arrival order
    final: dict[str, Any]  # metrics after the drain
    last_heal: float | None  # when the last fault was healed (rollback included)
    all_alive: list[tuple[float, float | None]]  # spans in which every node was alive
    revoked: dict[tuple[str, str], float | None]  # (fault id, node) -> seconds to revoke
    phase_start: float = 0.0
    run_end: float = 0.0
    membership_known: bool = True  # a liveness monitor answered during the run


def _num(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


# --- steady state ------------------------------------------------------------------------------


def check_probe(probe: Probe, phase: str, samples: list[dict[str, Any]]) -> dict[str, Any]:
    """A probe over one phase's samples: it holds when every known value is within its
    tolerance and at least one value was known."""
    checks = failures = unknown = 0
    worst: float | None = None
    worst_margin = float("inf")
    by = 0.0
    first_failure: float | None = None
    for sample in samples:
        value = _num(sample["values"].get(probe.metric))
        if value is None:
            unknown += 1
            continue
        checks += 1
        margin = probe.margin(value)
        if margin < worst_margin:  # the value closest to (or furthest past) the limit
            worst, worst_margin = value, margin
        if margin < 0:
            failures += 1
            by = max(by, -margin)
            if first_failure is None:
                first_failure = sample["t"]
    return {
        "name": probe.name or f"{probe.metric} {probe.describe()}",
        "metric": probe.metric,
        "tolerance": probe.describe(),
        "phase": phase,
        "checks": checks,
        "failures": failures,
        "unknown": unknown,
        "worst": worst,
        "by": round(by, 4),
        "first_failure_t": first_failure,
        "passed": checks > 0 and failures == 0,
        "decided": checks > 0,
    }


# --- expectations ------------------------------------------------------------------------------


def _result(
    expect: Expect, limit: str, observed: Any, passed: bool, **extra: Any
) -> dict[str, Any]:
    return {
        "name": expect.name,
        "kind": expect_kind(expect),
        "limit": limit,
        "observed": observed,
        "passed": passed,
        "decided": True,  # False: what it needs was never measured (a verdict of undecided)
        **extra,
    }


def _selected(ctx: Context, names: list[str], kinds: tuple[str, ...]) -> list[Applied]:
    """The applied occurrences of the faults named, or by default of ``kinds`` on nodes
    (a partition between services takes no node away)."""
    chosen = [
        a
        for a in ctx.applied
        if (a.fault in names if names else a.kind in kinds and not on_services(a.kind, a.targets))
    ]
    return [a for a in chosen if a.applied_at is not None]


def first_event(ctx: Context, node: str, event: str, after: float) -> float | None:
    for m in ctx.members:
        if m["node"] == node and m["event"] == event and m["t"] >= after:
            return float(m["t"])
    return None


def detection_latencies(ctx: Context, steps: list[Applied], event: str) -> list[dict[str, Any]]:
    rows = []
    for step in steps:
        assert step.applied_at is not None
        for node in step.targets:
            seen = first_event(ctx, node, event, step.applied_at)
            rows.append(
                {
                    "fault": step.id,
                    "node": node,
                    "latency_s": round(seen - step.applied_at, 3) if seen is not None else None,
                    # never seen: it took longer than the rest of the run, at least
                    "waited_s": round(ctx.run_end - step.applied_at, 3),
                }
            )
    return rows


def _by(rows: list[dict[str, Any]], within: float) -> tuple[Any, float | None, bool]:
    """(worst latency seen, how far over the limit, whether that is a lower bound)."""
    seen = [r["latency_s"] for r in rows if r["latency_s"] is not None]
    missed = [r["waited_s"] for r in rows if r["latency_s"] is None]
    worst = max(seen, default=None)
    if missed:
        return worst, round(max(0.0, max(missed) - within), 3), True
    if worst is None:
        return None, None, False
    return worst, round(max(0.0, worst - within), 3), False


def _latencies(
    expect: Detected | Redelegated,
    limit: str,
    rows: list[dict[str, Any]],
    *,
    empty_passes: bool,
    detail: str,
) -> dict[str, Any]:
    """A within-limit check over per-node latencies: every row seen, the worst in time."""
    missed = sum(r["latency_s"] is None for r in rows)
    worst, by, lower_bound = _by(rows, expect.within)
    seen_in_time = not missed and worst is not None and worst <= expect.within
    passed = seen_in_time if rows else empty_passes
    return _result(
        expect,
        limit,
        worst,
        passed,
        by=by,
        by_at_least=lower_bound,
        missed=missed,
        detail=detail,
        latencies=rows,
    )


def plural(n: int, noun: str) -> str:
    """ "1 faulted node", "3 faulted nodes": counts in plain words for the report."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def evaluate(expect: Expect, ctx: Context) -> dict[str, Any]:
    if isinstance(expect, Detected):
        steps = _selected(ctx, expect.faults, FAILING_KINDS)
        rows = detection_latencies(ctx, steps, expect.event)
        missed = sum(r["latency_s"] is None for r in rows)
        detail = f"{plural(len(rows), 'faulted node')}, {missed} never declared {expect.event}"
        return _latencies(
            expect,
            f"{expect.event} within {expect.within:g} s",
            rows,
            empty_passes=False,
            detail=detail if rows else "no fault of this kind was applied",
        )
    if isinstance(expect, Redelegated):
        rows = [
            {
                "fault": step.id,
                "node": node,
                "held": step.held[node],
                "latency_s": ctx.revoked.get((step.id, node)),
                "waited_s": round(ctx.run_end - (step.applied_at or 0.0), 3),
            }
            for step in _selected(ctx, expect.faults, FAILING_KINDS)
            for node in step.targets
            if step.held.get(node, 0) > 0  # held nothing: nothing to re-delegate
        ]
        missed = sum(r["latency_s"] is None for r in rows)
        detail = (
            f"{plural(len(rows), 'failed node')} held tasks, {missed} never had them taken away"
            if rows
            else "no failed node held a task: nothing to re-delegate"
        )
        return _latencies(
            expect,
            f"within {expect.within:g} s",
            rows,
            empty_passes=expect.allow_vacuous,
            detail=detail,
        )
    if isinstance(expect, Recovered):
        if ctx.last_heal is None:
            return _result(
                expect,
                f"within {expect.within:g} s",
                0.0,
                True,
                by=0.0,
                detail="no fault needed healing",
            )
        took = recovery_s(ctx)
        passed = took is not None and took <= expect.within
        by = None if took is None else round(max(0.0, took - expect.within), 3)
        detail = "every node alive again" if took is not None else "not every node alive again"
        if not ctx.membership_known:
            detail = "unknown: no liveness monitor answered"
        return _result(
            expect,
            f"within {expect.within:g} s",
            took,
            passed,
            by=by,
            detail=detail,
            decided=ctx.membership_known,
        )
    if isinstance(expect, (LostTasks, DuplicateCommits)):
        metric = "lost_tasks" if isinstance(expect, LostTasks) else "duplicate_commits"
        value = _num(ctx.final.get(metric))
        passed = value is not None and value <= expect.at_most
        by = None if value is None else max(0.0, value - expect.at_most)
        detail = "" if value is not None else "unknown: a service did not answer"
        return _result(
            expect,
            f"<= {expect.at_most}",
            value,
            passed,
            by=by,
            detail=detail,
            decided=value is not None,
        )
    if isinstance(expect, NoFalseDead):
        untouched = set(ctx.untouched)
        false = [
            m
            for m in ctx.members
            if m["node"] in untouched
            and m["event"] == expect.event
            and ctx.phase_start <= m["t"] <= ctx.run_end
        ]
        passed = len(false) <= expect.at_most
        return _result(
            expect,
            f"<= {expect.at_most} {expect.event} among {len(untouched)} untouched nodes",
            len(false),
            passed,
            by=max(0, len(false) - expect.at_most),
            nodes=sorted({m["node"] for m in false}),
            decided=ctx.membership_known,
            detail="" if ctx.membership_known else "unknown: no liveness monitor answered",
        )
    if isinstance(expect, OtaExpect):
        ota = ctx.final.get("ota")
        if not isinstance(ota, dict) or ota.get("state") in (None, "none"):
            return _result(
                expect,
                expect.result,
                None,
                False,
                decided=False,
                detail="unknown: no rollout, or the OTA service did not answer",
            )
        rows = ota.get("nodes", [])
        back = sum(r.get("state") == "rolled_back" for r in rows)
        states = {r["node_id"]: r["state"] for r in rows}
        passed = ota["state"] == expect.result and (
            expect.rolled_back is None or back == expect.rolled_back
        )
        wanted = expect.result + (
            f", {expect.rolled_back} rolled back" if expect.rolled_back is not None else ""
        )
        return _result(
            expect,
            wanted,
            ota["state"],
            passed,
            detail=f"{ota.get('version')}: {back} rolled back; {states}; {ota.get('detail', '')}",
        )
    if isinstance(expect, MetricExpect):
        value = _num(ctx.final.get(expect.metric))
        passed = value is not None and expect.holds(value)
        by = None if value is None else round(expect.miss(value), 4)
        return _result(
            expect,
            f"{expect.metric} {expect.describe()}",
            value,
            passed,
            by=by,
            decided=value is not None,
            detail="" if value is not None else "unknown: a service did not answer",
        )
    raise TypeError(f"no check for {type(expect).__name__}")


def recovery_s(ctx: Context) -> float | None:
    """From the last heal until every node was alive (0 if they all were at that moment);
    None if they never all were again."""
    if ctx.last_heal is None:
        return None
    for start, end in ctx.all_alive:
        if start <= ctx.last_heal and (end is None or end > ctx.last_heal):
            return 0.0
        if start >= ctx.last_heal:
            return round(start - ctx.last_heal, 3)
    return None


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]
