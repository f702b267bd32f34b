"""The `shoal` command.

shoal up [--headless] [--nodes N] [--config FILE]   start the cluster (and the console on a TTY)
shoal tui [--readonly] [--config FILE]              the operator console on a running cluster
shoal run SERVICE [--config FILE]                   run one service in this process
shoal sim [--nodes N] [--config FILE]               run a simulated fleet
shoal status [--json] [--config FILE]               one row per node with its state
shoal bench relay|liveness|tui|delegation [--json] [--quick]   benchmarks

up, run and sim take the fleet's workload flags too: --rate, --hot-spots, --hot-factor,
--node-rate, --burst (see `shoal sim --help`).
shoal config [--config FILE]                        print the effective configuration
"""

from __future__ import annotations

import os
import sys
from typing import Any

import click

from .config import ConfigError, ShoalConfig, dump_toml, load_config, with_overrides

SERVICES = ("relay", "liveness", "delegator", "sim")


def _load(path: str | None) -> ShoalConfig:
    try:
        return load_config(path)
    except ConfigError as err:
        raise click.ClickException(f"configuration error: {err}") from None


config_option = click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    envvar="SHOAL_CONFIG",
    help="TOML file overriding the built-in defaults (see `shoal config`).",
)


def _workload_options(fn: Any) -> Any:
    """The simulated fleet's workload flags (services/sim.py, "Workload")."""
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


def _workload(config: ShoalConfig, flags: dict[str, Any]) -> ShoalConfig:
    """config with the workload flags applied; a flag or a workload that does not fit the
    fleet is a usage error."""
    from .config import Burst
    from .sim import WorkloadError, base_rates

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


def _workload_argv(flags: dict[str, Any]) -> list[str]:
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


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """shoal: run and prove a fault-tolerant cluster of ESP32-class edge nodes."""


@main.command()
@config_option
@click.option(
    "--nodes", type=click.IntRange(0, 100_000), default=None, help="Simulated nodes (default 8)."
)
@click.option("--headless", is_flag=True, help="No console; logs only.")
@click.option(
    "--log",
    "log_path",
    type=click.Path(dir_okay=False),
    default="shoal-up.log",
    show_default=True,
    help="With the console: where the cluster's logs go.",
)
@click.option(
    "--without",
    "without",
    multiple=True,
    type=click.Choice(["liveness", "delegator"]),
    help="Leave a service out (a deliberately broken cluster, for fault scenarios).",
)
@_workload_options
def up(
    config_path: str | None,
    nodes: int | None,
    headless: bool,
    log_path: str,
    without: tuple[str, ...],
    **workload: Any,
) -> None:
    """Start the relay, the liveness monitor, the delegator and a simulated fleet under the
    supervisor.

    On a terminal, the operator console opens on the cluster (logs go to --log); quitting
    the console stops the cluster. --headless: no console, logs on stdout. The workload
    flags go to the fleet.
    """
    from .supervisor import ProcessSpec, run_supervisor

    config = _load(config_path)  # fail here, once, rather than in every child
    if nodes is not None:
        config = with_overrides(config, "sim", nodes=nodes)
    config = _workload(config, workload)
    _check_ports_free(config)
    sim_args = ["--nodes", str(nodes)] if nodes is not None else []
    sim_args += _workload_argv(workload)
    if not headless and sys.stdin.isatty() and sys.stdout.isatty():
        sim_args += [f"--without={name}" for name in without]  # passed on to the child
        sys.exit(_up_with_console(config, config_path, sim_args, log_path))
    common = ["--config", os.path.abspath(config_path)] if config_path else []
    python = [sys.executable, "-m", "shoal.services.cli"]
    specs = [
        ProcessSpec(name, [*python, "run", name, *common])
        for name in ("relay", "liveness", "delegator")
        if name not in without
    ]
    specs.append(ProcessSpec("sim", [*python, "run", "sim", *common, *sim_args]))
    sys.exit(run_supervisor(specs, config.supervisor))


def _up_with_console(
    config: ShoalConfig, config_path: str | None, sim_args: list[str], log_path: str
) -> int:
    """The cluster as a headless child process (logs to a file), the console in front."""
    import signal
    import subprocess

    argv = [sys.executable, "-m", "shoal.services.cli", "up", "--headless"]
    argv += ["--config", os.path.abspath(config_path)] if config_path else []
    argv += sim_args
    with open(log_path, "ab") as log:
        cluster = subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        _run_console(config, readonly=False)
    finally:
        cluster.send_signal(signal.SIGINT)
        try:
            code = cluster.wait(config.supervisor.stop_timeout_s + 5)
        except subprocess.TimeoutExpired:
            os.killpg(cluster.pid, signal.SIGKILL)
            code = cluster.wait()
    click.echo(f"cluster stopped (exit {code}); its log: {log_path}")
    return 0


def _run_console(config: ShoalConfig, readonly: bool) -> None:
    from pathlib import Path

    from shoal.tui.app import ShoalConsole
    from shoal.tui.feed import LiveFeed

    feed = LiveFeed(config).start()
    try:
        ShoalConsole(feed, readonly=readonly, scenarios_dir=Path("scenarios")).run()
    finally:
        feed.close()


@main.command()
@config_option
@click.option("--readonly", is_flag=True, help="Watch only: every action is refused.")
def tui(config_path: str | None, readonly: bool) -> None:
    """The operator console, attached to a running cluster (keeps retrying until one is up)."""
    _run_console(_load(config_path), readonly)


@main.command()
@click.argument("service", type=click.Choice(SERVICES))
@config_option
@click.option(
    "--nodes", type=click.IntRange(0, 100_000), default=None, help="For sim: how many nodes."
)
@_workload_options
def run(service: str, config_path: str | None, nodes: int | None, **workload: Any) -> None:
    """Run one service in this process (what the supervisor starts). The workload flags are
    for sim."""
    from .runtime import main_for

    config = _load(config_path)
    if nodes is not None:
        config = with_overrides(config, "sim", nodes=nodes)
    if service == "sim":
        config = _workload(config, workload)
    main_for(_service_class(service), config)


@main.command()
@config_option
@click.option(
    "--nodes", type=click.IntRange(0, 100_000), default=None, help="How many nodes (default 8)."
)
@click.option("--seed", type=int, default=None, help="Seed of the load model.")
@_workload_options
def sim(config_path: str | None, nodes: int | None, seed: int | None, **workload: Any) -> None:
    """Run a fleet of simulated nodes against the relay (and the delegator).

    Workload: every node gets --rate tasks a second, a hot spot --hot-factor times its
    capacity, a node named by --node-rate its own rate; each --burst multiplies the rates
    of every node by FACTOR for DURATION seconds every EVERY seconds (from START).
    Example: --hot-spots 3 --hot-factor 3 --burst 30:5:2.
    """
    from .runtime import main_for
    from .sim import Fleet

    config = _load(config_path)
    overrides: dict[str, Any] = {}
    if nodes is not None:
        overrides["nodes"] = nodes
    if seed is not None:
        overrides["seed"] = seed
    config = _workload(with_overrides(config, "sim", **overrides), workload)
    main_for(Fleet, config)


@main.command()
@config_option
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option(
    "--timeout", type=float, default=2.0, show_default=True, help="Seconds to wait for the relay."
)
@click.option(
    "--watch",
    type=click.FloatRange(0.2),
    default=None,
    metavar="SECONDS",
    help="Refresh every SECONDS until Ctrl-C.",
)
def status(config_path: str | None, as_json: bool, timeout: float, watch: float | None) -> None:
    """One row per node (relay snapshot and liveness state), plus counters."""
    import contextlib
    import time

    from shoal.protocol.messages import MembershipSnapshot, RelaySnapshot

    from .ctl_client import CtlClient, CtlFailed, CtlUnavailable
    from .status import render_table, to_json

    config = _load(config_path)
    with CtlClient(config.relay.ctl) as relay, CtlClient(config.liveness.ctl) as liveness:
        while True:
            try:
                snap: RelaySnapshot = relay.call(
                    "snapshot", result_type=RelaySnapshot, timeout_s=timeout, retries=1
                )
                members: MembershipSnapshot | None = None
                with contextlib.suppress(CtlUnavailable, CtlFailed):  # states shown as "?"
                    members = liveness.call(
                        "members", result_type=MembershipSnapshot, timeout_s=timeout, retries=0
                    )
                text = to_json(snap, members) if as_json else render_table(snap, members)
            except (CtlUnavailable, CtlFailed) as err:
                if watch is None:
                    raise click.ClickException(f"relay at {config.relay.ctl}: {err}") from None
                text = f"relay at {config.relay.ctl}: {err} (retrying)"
            if watch is None:
                click.echo(text)
                return
            click.clear()
            click.echo(text)
            try:
                time.sleep(watch)  # the refresh period the user asked for
            except KeyboardInterrupt:
                return


@main.command()
@config_option
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--latest", type=click.IntRange(0, 1000), default=20, show_default=True)
def tasks(config_path: str | None, as_json: bool, latest: int) -> None:
    """The delegator's ledger: tasks by state, and the latest ones."""
    import json

    from .ctl_client import CtlClient, CtlFailed, CtlUnavailable

    config = _load(config_path)
    try:
        with CtlClient(config.delegator.ctl) as delegator:
            result: dict[str, Any] = delegator.call(
                "tasks", {"latest": latest}, timeout_s=2.0, retries=1
            )
    except (CtlUnavailable, CtlFailed) as err:
        raise click.ClickException(f"delegator at {config.delegator.ctl}: {err}") from None
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    counts = result["counts"]
    click.echo("  ".join(f"{state}={n}" for state, n in counts.items()))
    for row in result["latest"]:
        click.echo(
            f"{row['task_id']:<28} {row['state']:<12} {row.get('owner') or '-':<10}"
            f" epoch={row.get('epoch', 0)} redeliveries={row.get('redeliveries', 0)}"
            f" {row.get('reason') or ''}"
        )


@main.group()
def bench() -> None:
    """Benchmarks (each prints JSON with a baseline measured in the same run)."""


# shoal bench NAME: each runs bench/MODULE.py's main (the same as `python bench/MODULE.py`).
BENCHMARKS = {
    "relay": (
        "relay_throughput",
        "Relay throughput against raw pyzmq, loss, and relay RSS at 1,000 nodes.",
    ),
    "liveness": (
        "liveness",
        "Detection latency, false verdicts under loss, relay restarts, monitor cost.",
    ),
    "tui": ("tui", "The console's CPU with 1,000 live nodes, against its feed alone."),
    "delegation": (
        "delegation",
        "Hot-spot efficiency against delegation off, hand-off latency, chaos, flapping.",
    ),
}


def _bench_command(name: str, module: str, doc: str) -> None:
    @bench.command(name, help=doc)
    @click.option("--json", "as_json", is_flag=True, help="Print only the JSON result.")
    @click.option("--quick", is_flag=True, help="Smaller counts; finishes within 60 s.")
    def command(as_json: bool, quick: bool) -> None:
        import importlib

        importlib.import_module(f"shoal.bench.{module}").main(quick=quick, as_json=as_json)


for _name, (_module, _doc) in BENCHMARKS.items():
    _bench_command(_name, _module, _doc)


@main.command("config")
@config_option
def show_config(config_path: str | None) -> None:
    """Print the effective configuration as TOML (defaults merged with FILE)."""
    click.echo(dump_toml(_load(config_path)), nl=False)


def _check_ports_free(config: ShoalConfig) -> None:
    """Refuse to start on ports that are taken (most often: a cluster already running)."""
    import socket

    endpoints = {
        "relay.ingest": config.relay.ingest,
        "relay.bus": config.relay.bus,
        "relay.ctl": config.relay.ctl,
        "liveness.bus": config.liveness.bus,
        "liveness.ctl": config.liveness.ctl,
        "delegator.tasks": config.delegator.tasks,
        "delegator.bus": config.delegator.bus,
        "delegator.ctl": config.delegator.ctl,
        "sim.ctl": config.sim.ctl,
        "supervisor.ctl": config.supervisor.ctl,
    }
    for key, endpoint in endpoints.items():
        if not endpoint.startswith("tcp://") or endpoint.endswith(":*"):
            continue
        host, _, port = endpoint[len("tcp://") :].rpartition(":")
        with socket.socket() as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((host.strip("[]") or "0.0.0.0", int(port)))
            except OSError as err:
                raise click.ClickException(
                    f"{key} {endpoint} is in use ({err.strerror}): is a cluster already "
                    "running? Stop it, or move the endpoints with --config or SHOAL_* variables."
                ) from None
            except ValueError:
                continue  # not host:port; the service will report it


def _service_class(name: str) -> Any:
    if name == "relay":
        from .relay import Relay

        return Relay
    if name == "liveness":
        from .liveness import Liveness

        return Liveness
    if name == "delegator":
        from .delegator import Delegator

        return Delegator
    from .sim import Fleet

    return Fleet


def _register_chaos() -> None:
    from .chaos.cli import chaos

    main.add_command(chaos)


_register_chaos()

if __name__ == "__main__":
    main()
