"""`shoal up` (the cluster under the supervisor, the console in front) and `shoal tui`."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import click

from shoal.services.runtime.config import (
    ShoalConfig,
    relay_shards,
    shim_instances,
    with_overrides,
)

from .config import (
    CliError,
    CliUsageError,
    checked,
    config_error,
    config_from,
    config_option,
    use_keys,
)
from .workload import apply_workload, workload_argv, workload_options

# What ``--only`` chooses from; --without takes the ones a cluster may lack.
SERVICES = ("relay", "liveness", "delegator", "registry", "broker", "shim", "sim")


@click.command()
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
    type=click.Choice(["liveness", "delegator", "registry", "broker", "shim", "ota"]),
    help="Leave a service out (a deliberately broken cluster, for fault scenarios; "
    "broker: use the one [mqtt] broker names).",
)
@click.option(
    "--only",
    "only",
    multiple=True,
    type=click.Choice(list(SERVICES)),
    help="Start only this service (repeatable): one host's share of a cluster spread over "
    "several hosts (docs/deploy.md); the others are reached where the config says.",
)
@click.option(
    "--broker",
    "broker_url",
    metavar="mqtt://HOST:PORT",
    default=None,
    help="Use this MQTT broker (e.g. a mosquitto) instead of starting the embedded one.",
)
@click.option(
    "--boards",
    "board_count",
    type=click.IntRange(0, 256),
    default=None,
    help="Emulated boards: the real firmware in MicroPython, over MQTT (default 2; 0: none).",
)
@workload_options
def up(
    config_path: str | None,
    nodes: int | None,
    headless: bool,
    log_path: str,
    without: tuple[str, ...],
    only: tuple[str, ...],
    broker_url: str | None,
    board_count: int | None,
    **workload: Any,
) -> None:
    """Start the relay, the liveness monitor, the delegator, the MQTT broker and shim (for
    boards) and a simulated fleet under the supervisor.

    On a terminal, the operator console opens on the cluster (logs go to --log); quitting
    the console stops the cluster. --headless: no console, logs on stdout. The workload
    flags go to the fleet.
    """
    from shoal.services.supervisor.supervisor import ProcessSpec, run_supervisor

    config = config_from(config_path)  # fail here, once, rather than in every child
    if only and without:
        raise click.UsageError("--only and --without do not go together")
    if only:
        without = tuple(name for name in SERVICES if name not in only)
    if nodes is not None:
        config = with_overrides(config, "sim", nodes=nodes)
    if broker_url is not None:
        config = external_broker(config, broker_url)
    # Checked here, once, so that a bad value never reaches a service to fail it there.
    config = checked(apply_workload(config, workload))
    boards_n = config.boards.count if board_count is None else board_count
    if "shim" in without or "sim" in without:
        boards_n = 0  # nothing would carry their messages (or: a host without the fleet)
    if boards_n and not _have_micropython():
        boards_n = 0
    check_ports_free(config, without, boards_n > 0)
    ensure_keys(config)
    sim_args = ["--nodes", str(nodes)] if nodes is not None else []
    sim_args += workload_argv(workload)
    if not headless and sys.stdin.isatty() and sys.stdout.isatty():
        sim_args += [f"--only={name}" for name in only]  # passed on to the child
        sim_args += [f"--without={name}" for name in without if not only]
        sim_args += ["--broker", broker_url] if broker_url else []
        sim_args += ["--boards", str(boards_n)]
        sys.exit(_up_with_console(config, config_path, sim_args, log_path))
    if os.environ.get(CONSOLE_PID_ENV):
        from shoal.services.runtime.service import stop_with_parent

        stop_with_parent(os.environ[CONSOLE_PID_ENV])  # the cluster of a console
    common = ["--config", os.path.abspath(config_path)] if config_path else []
    python = [sys.executable, "-m", "shoal.services.cli"]
    # The children read the file; what the flags changed reaches them by environment.
    env = {"SHOAL_MQTT_BROKER": config.mqtt.broker} if broker_url else {}
    names = ["relay", "liveness", "delegator", "registry"]
    if config.mqtt.embedded:
        names.append("broker")  # before the shim, so it is stopped after it
    names.append("shim")
    names.append("ota")  # over-the-air updates of the boards (shoal firmware ota)
    specs = [
        ProcessSpec(name, [*python, "run", name, *common], env=env)
        for name in names
        if name not in without
    ]
    if "relay" not in without:  # the relay's other shards, right after shard 0
        specs[1:1] = [
            ProcessSpec(f"relay-{k}", [*python, "run", "relay", "--shard", str(k), *common])
            for k in range(1, config.relay.shards)
        ]
    if "shim" not in without:  # the shim's other instances, right after instance 0
        at = next(i for i, spec in enumerate(specs) if spec.name == "shim") + 1
        specs[at:at] = [
            ProcessSpec(
                f"shim-{k}", [*python, "run", "shim", "--instance", str(k), *common], env=env
            )
            for k in range(1, config.mqtt.shims)
        ]
    if "sim" not in without:
        specs.append(ProcessSpec("sim", [*python, "run", "sim", *common, *sim_args]))
    if boards_n:
        argv = [*python, "boards", "--count", str(boards_n), *common]
        specs.append(ProcessSpec("boards", argv, env=env))
    from shoal.services.runtime.security import Security

    security = Security.from_config(config, "supervisor")
    sys.exit(run_supervisor(specs, config.supervisor, security=security))


def ensure_keys(config: ShoalConfig) -> None:
    """With Curve on, the keys directory and its standard keys: what is missing is made
    (the first ``shoal up`` makes them all), so ``shoal up`` needs no setup."""
    from shoal.services.runtime.config import ConfigError
    from shoal.services.runtime.keys import KeysDir, KeysError

    if not config.security.curve:
        return
    keys = KeysDir(config.security.keys)
    try:
        made = keys.init(config.sim.id_prefix)
    except (KeysError, OSError) as err:
        raise config_error(ConfigError(f"[security] keys: {err}")) from None
    if made:
        what = "first run: " if "server" in made else ""
        click.echo(f"shoal up: {what}made keys {', '.join(made)} in {keys.path}/", err=True)


def _have_micropython() -> bool:
    from shoal.services.boards.layout import NoMicroPython, micropython

    try:
        micropython()
    except NoMicroPython as err:
        click.echo(f"shoal up: no emulated boards: {err}", err=True)
        return False
    return True


def external_broker(config: ShoalConfig, url: str) -> ShoalConfig:
    """``--broker URL``: the shim uses that broker, and none is started."""
    from shoal.services.runtime.endpoints import mqtt_url_error

    why = mqtt_url_error(url)
    if why is not None:
        raise click.BadParameter(f"{url!r} {why}", param_hint="--broker")
    return with_overrides(config, "mqtt", broker=url, embedded=False)


CONSOLE_PID_ENV = "SHOAL_CONSOLE_PID"


def _up_with_console(
    config: ShoalConfig, config_path: str | None, sim_args: list[str], log_path: str
) -> int:
    """The cluster as a headless child process (logs to a file), the console in front."""
    import signal
    import subprocess

    argv = [sys.executable, "-m", "shoal.services.cli", "up", "--headless"]
    argv += ["--config", os.path.abspath(config_path)] if config_path else []
    argv += sim_args
    # The cluster is a session of its own (Ctrl-C in the console is not its stop), so it
    # would outlive a closed terminal: it stops when the console dies (stop_with_parent),
    # and on a hang-up or SIGTERM the console stops it and exits at once, since Textual's
    # own shutdown blocks writing to a terminal that is gone.
    env = {**os.environ, CONSOLE_PID_ENV: str(os.getpid())}
    with open(log_path, "ab") as log:
        cluster = subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env
        )

    def stop_cluster() -> int:
        cluster.send_signal(signal.SIGINT)
        try:
            return cluster.wait(config.supervisor.stop_timeout_s + 5)
        except subprocess.TimeoutExpired:
            os.killpg(cluster.pid, signal.SIGKILL)
            return cluster.wait()

    def on_hang_up(signum: int, _frame: object) -> None:
        stop_cluster()
        os._exit(128 + signum)

    signal.signal(signal.SIGHUP, on_hang_up)
    signal.signal(signal.SIGTERM, on_hang_up)
    try:
        run_console(config, readonly=False, owns_cluster=True)
    finally:
        code = stop_cluster()
    click.echo(f"cluster stopped (exit {code}); its log: {log_path}")
    return 0


def scenarios_dir() -> Path:
    """./scenarios when the console starts in a folder that has one (a checkout, or the
    user's own), else the library shipped with shoal."""
    from shoal.services.chaos.library import LIBRARY_DIR

    here = Path("scenarios")
    return here if here.is_dir() else LIBRARY_DIR


def run_console(config: ShoalConfig, readonly: bool, owns_cluster: bool = False) -> None:
    from shoal.tui.app import ShoalConsole
    from shoal.tui.feed import LiveFeed

    feed = LiveFeed(config, readonly=readonly).start()
    try:
        ShoalConsole(
            feed, readonly=readonly, scenarios_dir=scenarios_dir(), owns_cluster=owns_cluster
        ).run()
    finally:
        feed.close()


@click.command()
@config_option
@click.option("--readonly", is_flag=True, help="Watch only: every action is refused.")
@click.option(
    "--web", is_flag=True, help="Serve the console over HTTP (a browser tab per console)."
)
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="With --web: the address to serve on (loopback only, unless --allow-remote).",
)
@click.option(
    "--port",
    type=click.IntRange(1, 65535),
    default=7780,
    show_default=True,
    help="With --web: the HTTP port.",
)
@click.option(
    "--allow-remote",
    is_flag=True,
    help="With --web: serve on a non-loopback --host (the console has no login).",
)
def tui(
    config_path: str | None,
    readonly: bool,
    web: bool,
    host: str,
    port: int,
    allow_remote: bool,
) -> None:
    """The operator console, attached to a running cluster (keeps retrying until one is up).
    It acts with the ``console`` key (an operator's); --readonly holds the reader key only.
    With --web each browser tab runs a console of its own (with these keys)."""
    from shoal.tui.feed import console_key

    config = config_from(config_path)
    if not web:
        ctx = click.get_current_context()
        given = [
            f"--{name.replace('_', '-')}"
            for name in ("host", "port", "allow_remote")
            if ctx.get_parameter_source(name) is click.core.ParameterSource.COMMANDLINE
        ]
        if given:
            raise CliUsageError(f"{', '.join(given)}: only with --web (the console in a browser)")
        use_keys(config, console_key(config, readonly))
        run_console(config, readonly)
        return
    from shoal.tui.web import WebConsoleError, check_host, serve_console

    try:
        check_host(host, allow_remote)
    except WebConsoleError as err:
        raise CliUsageError(str(err)) from None
    tui_args = ["--readonly"] if readonly else []
    if config_path:
        tui_args += ["--config", str(Path(config_path).resolve())]
    try:
        serve_console(tui_args, host, port, allow_remote=allow_remote)
    except WebConsoleError as err:
        raise CliError(str(err)) from None


def check_ports_free(
    config: ShoalConfig, without: tuple[str, ...] = (), boards: bool = False
) -> None:
    """Refuse to start on ports that are taken (most often: a cluster already running)."""
    import errno
    import socket

    from shoal.services.runtime.endpoints import split_host_port

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
    for k, shard in enumerate(relay_shards(config)[1:], start=1):
        name = f"relay.shard_endpoints[{k - 1}]"
        endpoints.update({f"{name}.{key}": getattr(shard, key) for key in ("ingest", "bus", "ctl")})
    for key in list(endpoints):  # a host of a spread cluster binds only its own
        if key.split(".")[0] in without:
            del endpoints[key]
    if "registry" not in without:
        endpoints["devices.ctl"] = config.devices.ctl
        endpoints["devices.bus"] = config.devices.bus
    if "ota" not in without:
        endpoints["ota.ctl"] = config.ota.ctl
        endpoints["ota.bus"] = config.ota.bus
    if "shim" not in without:
        endpoints["mqtt.shim_ctl"] = config.mqtt.shim_ctl
        endpoints["mqtt.shim_bus"] = config.mqtt.shim_bus
        for k, shim in enumerate(shim_instances(config)[1:]):
            endpoints[f"mqtt.shim_endpoints[{k}].ctl"] = shim.ctl
            endpoints[f"mqtt.shim_endpoints[{k}].bus"] = shim.bus
    if boards:
        endpoints["boards.ctl"] = config.boards.ctl
        endpoints["boards.bus"] = config.boards.bus
    if config.mqtt.embedded and "broker" not in without:
        endpoints["mqtt.listen"] = "tcp://" + config.mqtt.listen
        endpoints["mqtt.broker_ctl"] = config.mqtt.broker_ctl
    for key, endpoint in endpoints.items():
        if not endpoint.startswith("tcp://") or endpoint.endswith(":*"):
            continue
        host, port = split_host_port(endpoint.removeprefix("tcp://"), 0)
        with socket.socket() as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(("0.0.0.0" if host in ("", "*") else host, port))
            except OSError as err:
                if err.errno != errno.EADDRINUSE:
                    continue  # an interface name, [IPv6], a privileged port: the service says
                raise click.ClickException(
                    f"{key} {endpoint} is in use ({err.strerror}): is a cluster already "
                    "running? Stop it, or move the endpoints with --config or SHOAL_* variables."
                ) from None
