"""The simulated fleet's workload flags, shared by `shoal up`, `shoal run sim` and `shoal sim`."""

from __future__ import annotations

from typing import Any

import click

from shoal.services.runtime.config import ShoalConfig, with_overrides


def workload_options(fn: Any) -> Any:
    """The simulated fleet's workload flags (services/sim/workload.py)."""
    options = [
        click.option(
            "--rate",
            type=click.FloatRange(0, 10_000),
            default=None,
            metavar="HZ",
            help="Tasks per second arriving at every node (sim.arrival_rate_hz).",
        ),
        click.option(
            "--hot-spots",
            default=None,
            metavar="N|IDS",
            help="Hot spots: a count (spread over the fleet) or comma-separated node ids.",
        ),
        click.option(
            "--hot-factor",
            type=click.FloatRange(0, 1000),
            default=None,
            metavar="K",
            help="A hot spot gets K times its capacity (sim.hot_spot_factor, default 3).",
        ),
        click.option(
            "--node-rate",
            "node_rates",
            multiple=True,
            metavar="ID=HZ",
            help="One node's arrival rate (repeatable; added to [sim.rates]).",
        ),
        click.option(
            "--burst",
            "bursts",
            multiple=True,
            metavar="EVERY:DURATION:FACTOR[:START]",
            help="A periodic burst, in seconds, on every node (repeatable; replaces sim.bursts).",
        ),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def apply_workload(config: ShoalConfig, flags: dict[str, Any]) -> ShoalConfig:
    """config with the workload flags applied; a flag or a workload that does not fit the
    fleet is a usage error."""
    from shoal.services.runtime.config import Burst
    from shoal.services.sim.workload import WorkloadError, base_rates

    sim = config.sim
    values: dict[str, Any] = {}
    if flags.get("rate") is not None:
        values["arrival_rate_hz"] = flags["rate"]
    hot = flags.get("hot_spots")
    if hot is not None:
        hot = hot.strip()
        if hot.isdigit():
            values["hot_spots"] = int(hot)
        else:
            values["hot_spots"] = [n.strip() for n in hot.split(",") if n.strip()]
    if flags.get("hot_factor") is not None:
        values["hot_spot_factor"] = flags["hot_factor"]
    if flags.get("node_rates"):
        rates = dict(sim.rates)
        for item in flags["node_rates"]:
            node_id, sep, hz = item.partition("=")
            try:
                rate = float(hz)
            except ValueError:
                rate = -1.0
            if not sep or not node_id.strip() or not 0 <= rate <= 10_000:
                raise click.BadParameter(f"{item!r}: expected ID=HZ", param_hint="--node-rate")
            rates[node_id.strip()] = rate
        values["rates"] = rates
    if flags.get("bursts"):
        bursts = []
        for item in flags["bursts"]:
            parts = item.split(":")
            try:
                nums = [float(p) for p in parts]
            except ValueError:
                nums = []
            if len(nums) not in (3, 4) or nums[0] <= 0 or nums[1] <= 0 or min(nums) < 0:
                raise click.BadParameter(
                    f"{item!r}: expected EVERY:DURATION:FACTOR[:START] (seconds, > 0)",
                    param_hint="--burst",
                )
            start = nums[3] if len(nums) == 4 else 0.0
            bursts.append(Burst(every_s=nums[0], duration_s=nums[1], factor=nums[2], start_s=start))
        values["bursts"] = bursts
    if values:
        config = with_overrides(config, "sim", **values)
    try:
        base_rates(config.sim)
    except WorkloadError as err:
        raise click.ClickException(f"workload: {err}") from None
    return config


def workload_argv(flags: dict[str, Any]) -> list[str]:
    """The workload flags again, for the sim the supervisor starts."""
    argv: list[str] = []
    for name in ("rate", "hot_spots", "hot_factor"):
        if flags.get(name) is not None:
            argv += ["--" + name.replace("_", "-"), str(flags[name])]
    for item in flags.get("node_rates") or ():
        argv += ["--node-rate", item]
    for item in flags.get("bursts") or ():
        argv += ["--burst", item]
    return argv
