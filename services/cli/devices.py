"""`shoal devices list|show|add|remove|credentials|export-mosquitto`: the device registry
([devices] registry) and the boards' MQTT logins ([mqtt] credentials).

The registry is read and written directly (SQLite, WAL: safe beside the registry process
that keeps it current). A file that is no registry is a configuration error (exit 78), a
node id that is no node id a usage error (exit 2), an id not in the registry exit 1.
``add`` makes the board's login (kept, hashed in the password file the brokers read),
``remove`` revokes it; the embedded broker reads the change at the next connect.
"""

from __future__ import annotations

import datetime
import json
from typing import TYPE_CHECKING, Any

import click
import msgspec

from .config import CliError, CliUsageError, config_error, config_from, config_option

if TYPE_CHECKING:
    from shoal.services.broker.credentials import Credentials
    from shoal.services.registry.store import Registry


def open_registry(config_path: str | None) -> Registry:
    from shoal.services.registry.store import Registry, RegistryFileError

    config = config_from(config_path)
    try:
        return Registry(config.devices.registry)
    except RegistryFileError as err:
        raise config_error(err) from None


def _when(at: float | None) -> str:
    if at is None:
        return "-"
    return datetime.datetime.fromtimestamp(at, datetime.UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _ago(at: float | None, now: float) -> str:
    if at is None:
        return "never"
    s = max(0.0, now - at)
    return (
        f"{s:.0f}s ago" if s < 120 else f"{s / 60:.0f}m ago" if s < 7200 else f"{s / 3600:.0f}h ago"
    )


@click.group()
def devices() -> None:
    """The device registry: boards, their chip, MAC, firmware, last seen and OTA state."""


@devices.command("list")
@config_option
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def list_cmd(config_path: str | None, as_json: bool) -> None:
    """Every board in the registry, one a line."""
    import time

    with open_registry(config_path) as reg:
        rows = reg.devices()
    if as_json:
        click.echo(json.dumps(msgspec.to_builtins(rows), indent=2))
        return
    now = time.time()
    header = (
        f"{'NODE':<20} {'CHIP':<8} {'MAC':<17} {'FIRMWARE':<18} {'LAST SEEN':<10} {'OTA':<8} SOURCE"
    )
    click.echo(header)
    for d in rows:
        click.echo(
            f"{d.node_id:<20} {d.chip or '-':<8} {d.mac or '-':<17} {d.firmware or '-':<18} "
            f"{_ago(d.last_seen, now):<10} {d.ota_state:<8} {d.source}"
        )


def checked_id(node_id: str, option: str | None = None) -> str:
    """``node_id`` if the registry takes it, else a usage error (naming ``option``, the
    command-line option it came from, if given)."""
    from shoal.services.registry.store import RegistryError, check_node_id

    try:
        return check_node_id(node_id)
    except RegistryError as err:
        raise CliUsageError(f"Invalid value for {option}: {err}" if option else str(err)) from None


@devices.command("show")
@config_option
@click.argument("node_id")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def show_cmd(config_path: str | None, node_id: str, as_json: bool) -> None:
    """One board: every field and its OTA history."""
    checked_id(node_id)
    with open_registry(config_path) as reg:
        device = reg.get(node_id)
        history = reg.ota_history(node_id)
    if device is None:
        raise CliError(f"no device {node_id!r} in the registry")
    out: dict[str, Any] = msgspec.to_builtins(device)
    out["ota_history"] = msgspec.to_builtins(history)
    if as_json:
        click.echo(json.dumps(out, indent=2))
        return
    for key, value in out.items():
        if key == "ota_history":
            continue
        shown = (
            _when(value) if key in ("first_seen", "last_seen", "added_at", "ota_updated") else value
        )
        click.echo(f"{key:<12} {'-' if shown is None else shown}")
    click.echo(f"{'ota_history':<12} {len(history)} change(s)")
    for ev in history:
        click.echo(
            f"  {_when(ev.at)} {ev.from_state} -> {ev.to_state} {ev.to_version or ''} {ev.detail}"
        )


@devices.command("add")
@config_option
@click.argument("node_id")
@click.option("--chip", default=None, help="esp32, esp32s3, ...")
@click.option("--mac", default=None, help="aa:bb:cc:dd:ee:ff")
@click.option("--firmware", default=None, help="e.g. shoal-esp32/0.2")
def add_cmd(
    config_path: str | None, node_id: str, chip: str | None, mac: str | None, firmware: str | None
) -> None:
    """Enter a board by hand (deploy and the registry process enter boards too)."""
    checked_id(node_id)
    from shoal.services.broker.credentials import RESERVED_BOARD_IDS

    if node_id in RESERVED_BOARD_IDS:
        raise CliUsageError(f"node id {node_id!r} is reserved (shoal/v1/{node_id}/ is the shims')")
    if mac is not None and not _is_mac(mac):
        raise CliUsageError(f"Invalid value for --mac: {mac!r} is not aa:bb:cc:dd:ee:ff")
    with open_registry(config_path) as reg:
        reg.add(node_id, chip=chip, mac=mac and mac.lower(), firmware=firmware, source="operator")
    creds = _credentials(config_path)
    ensure_login(creds, node_id)
    click.echo(
        f"added {node_id}; its MQTT login is {node_id} (password in {creds.secrets / node_id}: "
        f"`shoal firmware deploy` writes it into the board's config.py)"
    )


@devices.command("remove")
@config_option
@click.argument("node_id")
def remove_cmd(config_path: str | None, node_id: str) -> None:
    """Forget a board (it is entered again if it is heard again)."""
    checked_id(node_id)
    with open_registry(config_path) as reg:
        if not reg.remove(node_id):
            raise CliError(f"no device {node_id!r} in the registry")
    revoked = _credentials(config_path).remove(node_id)
    click.echo(f"removed {node_id}" + ("; its MQTT login is revoked" if revoked else ""))


@devices.command("credentials")
@config_option
@click.argument("node_id")
@click.option("--rotate", is_flag=True, help="A new password (the old one stops working).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def credentials_cmd(config_path: str | None, node_id: str, rotate: bool, as_json: bool) -> None:
    """The board's MQTT username and password (made if it has none), for a board set up by
    hand: its config.py's mqtt_user and mqtt_password."""
    checked_id(node_id)
    creds = _credentials(config_path)
    password = creds.make(node_id) if rotate else ensure_login(creds, node_id)
    if as_json:
        click.echo(json.dumps({"mqtt_user": node_id, "mqtt_password": password}))
        return
    click.echo(f"mqtt_user      {node_id}\nmqtt_password  {password}")


@devices.command("export-mosquitto")
@config_option
@click.argument("directory", type=click.Path(file_okay=False))
def export_mosquitto_cmd(config_path: str | None, directory: str) -> None:
    """Write mosquitto's password file and ACL for every login into DIRECTORY (hashes
    only), and print the mosquitto.conf lines that use them."""
    from pathlib import Path

    from shoal.services.broker.credentials import CredentialsError

    creds = _credentials(config_path)
    try:
        passwd, acl = creds.export_mosquitto(Path(directory))
    except CredentialsError as err:
        raise config_error(err) from None
    except OSError as err:
        raise CliError(f"export-mosquitto: {directory}: {err.strerror}") from None
    users = creds.users()
    click.echo(f"# {len(users)} login(s); in mosquitto.conf:", err=True)
    click.echo(f"allow_anonymous false\npassword_file {passwd.resolve()}\nacl_file {acl.resolve()}")


def _credentials(config_path: str | None) -> Credentials:
    from shoal.services.broker.credentials import Credentials

    return Credentials(config_from(config_path).mqtt.credentials)


def ensure_login(creds: Credentials, node_id: str) -> str:
    from shoal.services.broker.credentials import CredentialsError

    try:
        return creds.ensure(node_id)
    except CredentialsError as err:
        raise config_error(err) from None
    except ValueError as err:  # "shim": reserved
        raise CliUsageError(str(err)) from None


def _is_mac(text: str) -> bool:
    parts = text.split(":")
    return len(parts) == 6 and all(
        len(p) == 2 and all(c in "0123456789abcdefABCDEF" for c in p) for p in parts
    )
