"""The `shoal` command.

shoal up [--headless] [--nodes N] [--config FILE]   start the cluster (and the console on a TTY)
shoal tui [--readonly] [--config FILE]              the operator console on a running cluster
shoal run SERVICE [--config FILE]                   run one service in this process
shoal sim [--nodes N] [--config FILE]               run a simulated fleet
shoal status [--json] [--config FILE]               one row per node with its state
shoal bench relay|liveness|tui [--json] [--quick]   benchmarks
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
def up(config_path: str | None, nodes: int | None, headless: bool, log_path: str) -> None:
    """Start the relay, the liveness monitor and a simulated fleet under the supervisor.

    On a terminal, the operator console opens on the cluster (logs go to --log); quitting
    the console stops the cluster. --headless: no console, logs on stdout.
    """
    from .supervisor import ProcessSpec, run_supervisor

    config = _load(config_path)  # fail here, once, rather than in every child
    _check_ports_free(config)
    if not headless and sys.stdin.isatty() and sys.stdout.isatty():
        sys.exit(_up_with_console(config, config_path, nodes, log_path))
    common = ["--config", os.path.abspath(config_path)] if config_path else []
    python = [sys.executable, "-m", "shoal.services.cli"]
    specs = [
        ProcessSpec(name, [*python, "run", name, *common])
        for name in ("relay", "liveness", "delegator")
    ]
    sim_args = ["--nodes", str(nodes)] if nodes is not None else []
    specs.append(ProcessSpec("sim", [*python, "run", "sim", *common, *sim_args]))
    sys.exit(run_supervisor(specs, config.supervisor))


def _up_with_console(
    config: ShoalConfig, config_path: str | None, nodes: int | None, log_path: str
) -> int:
    """The cluster as a headless child process (logs to a file), the console in front."""
    import signal
    import subprocess

    argv = [sys.executable, "-m", "shoal.services.cli", "up", "--headless"]
    argv += ["--config", os.path.abspath(config_path)] if config_path else []
    argv += ["--nodes", str(nodes)] if nodes is not None else []
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
def run(service: str, config_path: str | None, nodes: int | None) -> None:
    """Run one service in this process (what the supervisor starts)."""
    from .runtime import main_for

    config = _load(config_path)
    if nodes is not None:
        config = with_overrides(config, "sim", nodes=nodes)
    main_for(_service_class(service), config)


@main.command()
@config_option
@click.option(
    "--nodes", type=click.IntRange(0, 100_000), default=None, help="How many nodes (default 8)."
)
@click.option("--seed", type=int, default=None, help="Seed of the load model.")
def sim(config_path: str | None, nodes: int | None, seed: int | None) -> None:
    """Run a fleet of simulated nodes against the relay."""
    from .runtime import main_for
    from .sim import Fleet

    config = _load(config_path)
    overrides: dict[str, Any] = {}
    if nodes is not None:
        overrides["nodes"] = nodes
    if seed is not None:
        overrides["seed"] = seed
    main_for(Fleet, with_overrides(config, "sim", **overrides))


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


@bench.command("relay")
@click.option("--json", "as_json", is_flag=True, help="Print only the JSON result.")
@click.option("--quick", is_flag=True, help="Smaller counts; finishes within 60 s.")
def bench_relay(as_json: bool, quick: bool) -> None:
    """Relay throughput against raw pyzmq, loss, and relay RSS at 1,000 nodes."""
    from shoal.bench import relay_throughput

    relay_throughput.main(quick=quick, as_json=as_json)


@bench.command("liveness")
@click.option("--json", "as_json", is_flag=True, help="Print only the JSON result.")
@click.option("--quick", is_flag=True, help="Smaller counts; finishes within 60 s.")
def bench_liveness(as_json: bool, quick: bool) -> None:
    """Detection latency, false verdicts under loss, relay restarts, monitor cost."""
    from shoal.bench import liveness

    liveness.main(quick=quick, as_json=as_json)


@bench.command("tui")
@click.option("--json", "as_json", is_flag=True, help="Print only the JSON result.")
@click.option("--quick", is_flag=True, help="Shorter windows; finishes within 60 s.")
def bench_tui(as_json: bool, quick: bool) -> None:
    """The console's CPU with 1,000 live nodes, against its feed alone."""
    from shoal.bench import tui

    tui.main(quick=quick, as_json=as_json)


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


if __name__ == "__main__":
    main()
