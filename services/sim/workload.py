"""The fleet's workload: which node gets how many tasks a second, and when.

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

from typing import Annotated

import msgspec

from shoal.services.runtime.config import Burst, SimConfig, spread


class SetRateArgs(msgspec.Struct, forbid_unknown_fields=True):
    """Args of the sim's "set_rate" op: tasks per second for some nodes (default: all)."""

    rate_hz: Annotated[float, msgspec.Meta(ge=0, le=10_000)]
    nodes: list[str] = []


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
    named = [("rates", list(cfg.rates)), ("only", cfg.only)]
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
    if cfg.only:  # this process runs part of the fleet; each node keeps its place in it
        return {node_id: rates[node_id] for node_id in ids if node_id in set(cfg.only)}
    return rates


def burst_active(burst: Burst, t_s: float) -> bool:
    """Whether the burst is on t_s seconds after the fleet started."""
    t = t_s - burst.start_s
    return t >= 0 and t % burst.every_s < burst.duration_s


# Fleet counters always listed in status (0 until something happens).
