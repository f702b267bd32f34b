"""`shoal keys init|list|add|revoke`: the CurveZMQ keys directory (runtime/keys.py).

Every command works on ``[security] keys`` of the configuration (``--config``), or on
``--dir``. A change takes effect in the running services within ``[security]
check_interval_ms`` (0.5 s), without a restart: a key added is let in, a key revoked is
refused, at its next handshake and at its next message on a live connection.
"""

from __future__ import annotations

import json

import click

from .config import CliError, config_from, config_option


def _keys_dir(config_path: str | None, directory: str | None) -> object:
    from shoal.services.runtime.keys import KeysDir

    if directory is not None:
        return KeysDir(directory)
    return KeysDir(config_from(config_path).security.keys)


dir_option = click.option(
    "--dir",
    "directory",
    type=click.Path(file_okay=False),
    default=None,
    help="The keys directory (default: [security] keys of the configuration).",
)


@click.group()
def keys() -> None:
    """CurveZMQ keys: the server key, and each client's key with its role."""


@keys.command("init")
@config_option
@dir_option
def init(config_path: str | None, directory: str | None) -> None:
    """Make what is missing: the server key and the standard keys (a service key for the
    liveness monitor, the delegator and the registry; node keys for the fleet (its
    id_prefix) and the MQTT shim (every id); operator keys console and scenarios; the
    reader key). The first `shoal up` does it too."""
    from shoal.services.runtime.keys import KeysDir, KeysError

    config = config_from(config_path)
    kd = KeysDir(directory) if directory else KeysDir(config.security.keys)
    try:
        made = kd.init(config.sim.id_prefix)
    except (KeysError, OSError) as err:
        raise CliError(str(err)) from None
    click.echo(f"{kd.path}: made {', '.join(made)}" if made else f"{kd.path}: nothing missing")


@keys.command("list")
@config_option
@dir_option
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def list_keys(config_path: str | None, directory: str | None, as_json: bool) -> None:
    """Every key: name, role, the node ids a node key speaks for, its public key, whether
    it is allowed or revoked, and whether its secret is in this directory."""
    from shoal.services.runtime.keys import KeysDir

    kd = _keys_dir(config_path, directory)
    assert isinstance(kd, KeysDir)
    if not kd.exists():
        raise CliError(f"no keys in {kd.path} (shoal keys init makes them)")
    rows = kd.listing()
    if as_json:
        click.echo(json.dumps({"dir": str(kd.path), "keys": rows}, indent=1))
        return
    table = [("name", "role", "nodes", "state", "secret", "public key")]
    for r in rows:
        nodes = ",".join(r["nodes"]) or "-"  # type: ignore[arg-type]
        secret = "here" if r["secret_here"] else "-"
        table.append(
            (str(r["name"]), str(r["role"]), nodes, str(r["state"]), secret, str(r["public"]))
        )
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    for row in table:
        click.echo("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


@keys.command("add")
@click.argument("name")
@click.option(
    "--role",
    type=click.Choice(["node", "service", "reader", "operator"]),
    required=True,
    help="What it may do (docs/protocol.md §14).",
)
@click.option(
    "--nodes",
    default="",
    metavar="PATTERNS",
    help="For a node key: the node ids it speaks for, comma-separated, * and ? as wildcards "
    "(esp-07, gw-3-*).",
)
@click.option(
    "--public-key",
    "public",
    default=None,
    metavar="Z85",
    help="The public key of a pair made elsewhere (the secret never leaves that host); "
    "default: a new pair, its secret in private/NAME.key_secret.",
)
@config_option
@dir_option
def add(
    name: str,
    role: str,
    nodes: str,
    public: str | None,
    config_path: str | None,
    directory: str | None,
) -> None:
    """A key into the allowlist (effective within half a second, no restart)."""
    from shoal.services.runtime.keys import KeysDir, KeysError

    kd = _keys_dir(config_path, directory)
    assert isinstance(kd, KeysDir)
    if not kd.exists():
        raise CliError(f"no keys in {kd.path} (shoal keys init makes them)")
    try:
        info = kd.add(name, role, [nodes] if nodes else [], public)
    except (KeysError, OSError) as err:
        raise CliError(str(err)) from None
    where = (
        f"secret in {kd.private_dir / (name + '.key_secret')}"
        if public is None
        else "its secret stays where it was made"
    )
    scope = f" for {','.join(info.nodes)}" if info.nodes else ""
    click.echo(f"added {name} ({role}{scope}), public key {info.public}; {where}")


@keys.command("revoke")
@click.argument("name")
@config_option
@dir_option
def revoke(name: str, config_path: str | None, directory: str | None) -> None:
    """Out of the allowlist: refused at its next handshake and its next message, within
    half a second, no restart (its certificate is kept in revoked/, its secret deleted)."""
    from shoal.services.runtime.keys import KeysDir, KeysError

    kd = _keys_dir(config_path, directory)
    assert isinstance(kd, KeysDir)
    try:
        info = kd.revoke(name)
    except (KeysError, OSError) as err:
        raise CliError(str(err)) from None
    click.echo(f"revoked {name} ({info.role}), public key {info.public}")
