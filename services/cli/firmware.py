"""`shoal firmware build|flash|deploy`: from a new board to a cluster member.

Every failure is one line, ``error: ...``: exit 1 when the work failed (a bundle over the
heap budget, esptool could not flash, mpremote failed), 2 for a usage error (a bad node id,
an unknown chip), ``EXIT_NO_IMAGE`` when the image is missing or no ESP image,
``EXIT_NO_PORT`` when nothing answers on the port, ``EXIT_WRONG_CHIP`` when the board is
another chip than asked or than the image is for.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from shoal.services.firmware.targets import TARGETS

from .config import CliError, CliUsageError, config_from, config_option, use_keys

EXIT_NO_PORT = 3
EXIT_WRONG_CHIP = 4
EXIT_NO_IMAGE = 5
DEFAULT_OUT = "build/firmware"


class NoPortError(CliError):
    exit_code = EXIT_NO_PORT


class WrongChipError(CliError):
    exit_code = EXIT_WRONG_CHIP


class NoImageError(CliError):
    exit_code = EXIT_NO_IMAGE


@click.group()
def firmware() -> None:
    """Build the board's files, flash MicroPython, deploy shoal to a board."""


@firmware.command("build")
@click.option(
    "--out", "out_dir", default=DEFAULT_OUT, show_default=True, help="The bundle's folder."
)
@click.option("--target", default="esp32", type=click.Choice(sorted(TARGETS)), show_default=True)
@click.option(
    "--heap", default=None, help="The board's free heap, e.g. 110K (default: the target's)."
)
@click.option(
    "--version",
    "version",
    default=None,
    help="The bundle's firmware version (default: FIRMWARE_VERSION in main.py).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the manifest.")
def build_cmd(
    out_dir: str, target: str, heap: str | None, version: str | None, as_json: bool
) -> None:
    """firmware/esp32 and the node core as .mpy (main.py, config.py as source) with a
    manifest.json; refused when the heap at boot would not leave room to run."""
    import json

    from shoal.services.firmware.build import BuildError, build, target_named
    from shoal.services.firmware.targets import parse_size

    try:
        heap_bytes = parse_size(heap) if heap is not None else None
    except ValueError as err:
        raise CliUsageError(f"Invalid value for --heap: {err}") from None
    try:
        manifest = build(Path(out_dir), target_named(target), heap_bytes, version)
    except BuildError as err:
        raise CliError(f"firmware build: {err}") from None
    if as_json:
        click.echo(json.dumps(manifest, indent=2))
        return
    h = manifest["heap"]
    click.echo(
        f"built {manifest['firmware']} for {target} (MicroPython {manifest['micropython']}, "
        f"mpy {manifest['mpy_abi']}): {len(manifest['files'])} files, "
        f"{manifest['bundle_bytes']:,} B in {out_dir}"
    )
    click.echo(
        f"heap at boot ~{h['boot_used_bytes']:,} B of {h['budget_bytes']:,} B "
        f"({h['budget_bytes'] - h['boot_used_bytes']:,} B free; {h['method']})"
    )


@firmware.command("flash")
@click.option("--port", default=None, help="The board's serial port (or socket://HOST:PORT).")
@click.option(
    "--chip",
    default="auto",
    show_default=True,
    type=click.Choice(["auto", *sorted(TARGETS)]),
)
@click.option("--image", default=None, help="The MicroPython .bin for the chip.")
@click.option("--erase", is_flag=True, help="Erase the whole flash first (a new board).")
@click.option("--baud", type=click.IntRange(9600, 5_000_000), default=460_800, show_default=True)
@click.option(
    "--node-id",
    "node_id",
    default=None,
    help="Enter the board in the device registry under this id, with its chip and MAC.",
)
@config_option
def flash_cmd(
    port: str | None,
    chip: str,
    image: str | None,
    erase: bool,
    baud: int,
    node_id: str | None,
    config_path: str | None,
) -> None:
    """Write a MicroPython image to the board on PORT with esptool: detect the chip, run the
    stub, erase if asked, write at the chip's offset, verify, hard reset."""
    from shoal.services.firmware.flash import FlashError, flash

    from .devices import checked_id, open_registry

    if node_id is not None:
        checked_id(node_id, "--node-id")
        open_registry(config_path).close()  # a bad registry fails before the board is touched

    if port is None:
        raise NoPortError("no --port: name the board's serial port (e.g. /dev/ttyUSB0)")
    if image is None:
        raise NoImageError(
            "no --image: the MicroPython .bin for the chip (micropython.org/download)"
        )
    errors = {"image": NoImageError, "port": NoPortError, "chip": WrongChipError}
    bar: Any = None
    done = 0

    def progress(cur: int, total: int) -> None:
        nonlocal bar, done
        if bar is None:
            bar = click.progressbar(length=total, label="writing", file=sys.stderr)
            bar.__enter__()
        bar.update(cur - done)
        done = cur

    try:
        result = flash(
            port, Path(image), chip, erase=erase, baud=baud, progress=progress, step=click.echo
        )
    except FlashError as err:
        raise errors.get(err.kind, CliError)(str(err)) from None
    finally:
        if bar is not None:
            bar.__exit__(None, None, None)
    click.echo(
        f"flashed {result.size:,} B at {result.offset:#x} on the {result.chip} {result.mac}: "
        f"verified, reset ({result.seconds:.1f} s)"
    )
    if node_id is not None:
        with open_registry(config_path) as registry:
            registry.add(node_id, chip=result.chip, mac=result.mac, source="operator")
        click.echo(
            f"{node_id} in the registry with its chip and MAC (shoal devices show {node_id})"
        )


@firmware.command("deploy")
@config_option
@click.option("--port", required=True, help="The board's serial port (mpremote connect PORT).")
@click.option("--node-id", "node_id", required=True, help="The board's node id (e.g. esp32-01).")
@click.option(
    "--bundle", default=DEFAULT_OUT, show_default=True, help="What `firmware build` made."
)
@click.option("--wifi", "wifi_ssid", default=None, help="The WiFi network the board joins.")
@click.option("--wifi-password", default=None, help="Its password.")
@click.option(
    "--broker",
    default=None,
    metavar="HOST[:PORT]",
    help="Where the board finds the broker (default: [mqtt] broker).",
)
@click.option("--dry-run", is_flag=True, help="Print every mpremote command; run none.")
def deploy_cmd(
    config_path: str | None,
    port: str,
    node_id: str,
    bundle: str,
    wifi_ssid: str | None,
    wifi_password: str | None,
    broker: str | None,
    dry_run: bool,
) -> None:
    """Copy the bundle and a config for NODE_ID to the board with mpremote, reset it, and
    enter it in the device registry."""
    from shoal.services.broker.credentials import Credentials
    from shoal.services.firmware.deploy import (
        DeployError,
        board_config,
        deploy_commands,
        mpremote,
        read_bundle,
        run_commands,
        shown,
    )
    from shoal.services.firmware.deploy import (
        config_path as config_file,
    )
    from shoal.services.runtime.endpoints import split_host_port

    from .devices import checked_id, ensure_login, open_registry

    checked_id(node_id, "--node-id")
    if (wifi_password is not None) and wifi_ssid is None:
        raise CliUsageError("--wifi-password without --wifi")
    config = config_from(config_path)
    address = broker or config.mqtt.broker.removeprefix("mqtt://")
    try:
        host, mqtt_port = split_host_port(address, 1883)
    except ValueError:
        raise CliUsageError(f"Invalid value for --broker: {address!r} is not HOST[:PORT]") from None
    if not host or not 1 <= mqtt_port <= 65535:
        raise CliUsageError(
            f"Invalid value for --broker: {address!r} is not HOST[:PORT] (port 1..65535)"
        )
    wifi = (wifi_ssid, wifi_password or "") if wifi_ssid is not None else None
    try:
        manifest = read_bundle(Path(bundle))
        target = config_file(Path(bundle), node_id)
        commands = deploy_commands(mpremote(), port, Path(bundle), manifest, target)
        if dry_run:
            for command in commands:
                click.echo(shown(command))
            return
        registry = open_registry(config_path)  # a bad registry fails before the board is touched
        password = ensure_login(Credentials(config.mqtt.credentials), node_id)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(board_config(node_id, (host, mqtt_port), wifi, password))
        target.chmod(0o600)  # it holds the board's MQTT password
        run_commands(commands, lambda line: click.echo(line, err=True))
    except DeployError as err:
        raise (NoPortError if err.no_board else CliError)(f"firmware deploy: {err}") from None
    with registry:
        registry.add(
            node_id,
            chip=manifest.get("target"),
            firmware=manifest.get("firmware"),
            broker=f"{host}:{mqtt_port}",
            source="deploy",
        )
    click.echo(
        f"deployed {manifest['firmware']} to {node_id} on {port}; in the registry (shoal devices show {node_id})"
    )


EXIT_TIMED_OUT = 6
DONE_STATES = ("confirmed",)


@firmware.command("ota")
@config_option
@click.option("--version", "version", required=True, help="The version to roll out.")
@click.option(
    "--bundle",
    default=DEFAULT_OUT,
    show_default=True,
    help="The bundle of that version (`shoal firmware build --version V --out DIR`).",
)
@click.option("--nodes", default=None, help="Boards to update: node ids, comma-separated.")
@click.option("--all", "all_boards", is_flag=True, help="Every board in the device registry.")
@click.option(
    "--max-unavailable",
    type=click.IntRange(1, 1000),
    default=1,
    show_default=True,
    help="Boards updating at once.",
)
@click.option(
    "--timeout",
    "timeout_s",
    type=click.FloatRange(1, 86_400),
    default=900,
    show_default=True,
    help="Stop watching after this many seconds (the rollout goes on in the OTA service).",
)
@click.option("--no-wait", is_flag=True, help="Start the rollout and return.")
def ota_cmd(
    config_path: str | None,
    version: str,
    bundle: str,
    nodes: str | None,
    all_boards: bool,
    max_unavailable: int,
    timeout_s: float,
    no_wait: bool,
) -> None:
    """Roll VERSION out over MQTT, board by board (at most --max-unavailable at once), gated
    by the liveness monitor; halted at the first board that fails or rolls back. Prints each
    board's state, bytes and time. Exit 0: every board confirmed; 1: halted; 6: still
    running at --timeout."""
    import os
    import time

    from shoal.services.runtime.ctl_client import CtlClient, CtlFailed, CtlUnavailable

    from .devices import checked_id, open_registry

    if (nodes is None) == (not all_boards):
        raise CliUsageError("give --nodes IDS or --all")
    config = config_from(config_path)
    use_keys(config, "operator")  # a rollout is an operator's act (docs/protocol.md §14.3)
    if all_boards:
        with open_registry(config_path) as registry:
            ids = [d.node_id for d in registry.devices()]
        if not ids:
            raise CliError("no boards in the device registry")
    else:
        ids = [checked_id(n.strip(), "--nodes") for n in (nodes or "").split(",") if n.strip()]
    args = {
        "bundle": os.path.abspath(bundle),
        "nodes": ids,
        "max_unavailable": max_unavailable,
        "version": version,
    }
    try:
        with CtlClient(config.ota.ctl) as ota:
            started: dict[str, Any] = ota.call("rollout", args, timeout_s=10.0, retries=0)
            click.echo(
                f"rolling out {started['version']} ({started['files']} files, "
                f"{started['bytes']:,} B) to {len(ids)} board(s), "
                f"at most {max_unavailable} at once"
            )
            if no_wait:
                return
            progress = _watch(ota, timeout_s)
    except CtlUnavailable:
        raise CliError(
            f"no OTA service answers at {config.ota.ctl}: is the cluster up (shoal up)?"
        ) from None
    except CtlFailed as err:
        raise CliError(f"firmware ota: {err}") from None
    _table(progress, time.time())
    if progress["state"] == "succeeded":
        click.echo(f"every board runs {progress['version']}")
        return
    if progress["state"] == "halted":
        raise CliError(f"the rollout halted: {progress['detail']}")
    raise TimedOutError(
        "still running after --timeout; it goes on in the OTA service "
        "(boards that are offline get the update when they return)"
    )


class TimedOutError(CliError):
    exit_code = EXIT_TIMED_OUT


def _watch(ota: Any, timeout_s: float) -> dict[str, Any]:
    """Poll the rollout's progress; one line per board state change, and the bytes of the
    boards downloading every 2 s. Returns the last progress."""
    import time

    seen: dict[str, str] = {}
    deadline = time.monotonic() + timeout_s
    last_bytes = 0.0
    while True:
        progress = ota.call("progress", timeout_s=5.0, retries=2)
        now = time.monotonic()
        for row in progress["nodes"]:
            if seen.get(row["node_id"]) != row["state"]:
                seen[row["node_id"]] = row["state"]
                click.echo(_line(row))
        if now - last_bytes >= 2.0:
            last_bytes = now
            for row in progress["nodes"]:
                if row["state"] == "downloading" and row["total"]:
                    click.echo(_line(row))
        if progress["state"] != "running" or now > deadline:
            return dict(progress)
        time.sleep(0.25)


def _line(row: dict[str, Any]) -> str:
    parts = [f"{row['node_id']:<16} {row['state']:<12}"]
    if row["total"]:
        parts.append(f"{row['done']:>7,}/{row['total']:,} B")
    if row["seconds"] is not None:
        parts.append(f"{row['seconds']:.1f} s")
    if row["bad_chunks"]:
        parts.append(f"{row['bad_chunks']} bad chunk(s) refused")
    if row["detail"]:
        parts.append(row["detail"])
    return "  ".join(parts)


def _table(progress: dict[str, Any], _now: float) -> None:
    click.echo(f"{'NODE':<16} {'STATE':<12} {'BYTES':>15} {'TIME':>7}  DETAIL")
    for row in progress["nodes"]:
        size = f"{row['done']:,}/{row['total']:,}" if row["total"] else "-"
        took = f"{row['seconds']:.1f}s" if row["seconds"] is not None else "-"
        click.echo(f"{row['node_id']:<16} {row['state']:<12} {size:>15} {took:>7}  {row['detail']}")
