"""``shoal firmware deploy``: a built bundle and a config for one board, copied with
mpremote's command line (it has no stable Python API), then the board entered in the
device registry.

The config is firmware/esp32/config.py as shipped, with ``CONFIG.update({...})`` appended
for this board (its node id, the broker's host and port, its MQTT login from ``[mqtt]
credentials``, made if it has none, WiFi when given), as the board
emulator writes it (services/boards/layout.py). It is written beside the bundle
(``BUNDLE/../configs/NODE_ID/config.py``) so that ``--dry-run`` can name it exactly.

The commands, each one mpremote process (``deploy_commands``):

1. ``exec``: make ``lib`` if it is missing (``mkdir`` fails when it exists);
2. ``cp -r BUNDLE/lib/nodecore :lib/``: the node core as .mpy;
3. ``cp BUNDLE/main.py :main.py + cp ...``: the entry point and the board's modules, each
   named (a bare ``:`` is a directory mpremote must stat, which not every port can);
4. ``cp CONFIG :config.py``;
5. ``exec``: remove .py copies of modules the bundle has as .mpy (a .py is imported first);
6. ``reset``: the board boots the new files.
"""

from __future__ import annotations

import json
import shlex
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import bundle as bundles
from .bundle import ESP32_DIR, BundleError, tool

MKDIR_LIB = 'import os\nif "lib" not in os.listdir(): os.mkdir("lib")'


class DeployError(Exception):
    """The bundle, the board or mpremote failed: one line saying which. ``no_board``: mpremote
    found nothing on the port."""

    def __init__(self, message: str, no_board: bool = False) -> None:
        super().__init__(message)
        self.no_board = no_board


def mpremote() -> str:
    found = tool("mpremote")
    if found is None:
        raise DeployError("mpremote not found (pip install mpremote)")
    return found


def read_bundle(bundle: Path) -> dict[str, Any]:
    """The bundle's manifest, every file checked against its size and sha256."""
    try:
        return bundles.read_bundle(bundle)
    except BundleError as err:
        raise DeployError(str(err)) from None


def board_config(
    node_id: str,
    broker: tuple[str, int],
    wifi: tuple[str, str] | None,
    mqtt_password: str | None = None,
) -> str:
    """The board's config.py; with its MQTT login (username: its node id) when given."""
    settings: dict[str, Any] = {"node_id": node_id, "mqtt_host": broker[0], "mqtt_port": broker[1]}
    if mqtt_password is not None:
        settings["mqtt_user"], settings["mqtt_password"] = node_id, mqtt_password
    if wifi is not None:
        settings["wifi_ssid"], settings["wifi_password"] = wifi
    shipped = (ESP32_DIR / "config.py").read_text()
    return shipped + (
        f"\n# Added by shoal firmware deploy for this board:\nCONFIG.update({settings!r})\n"
    )


def config_path(bundle: Path, node_id: str) -> Path:
    return bundle.parent / "configs" / node_id / "config.py"


def deploy_commands(
    tool: str, port: str, bundle: Path, manifest: dict[str, Any], config: Path
) -> list[list[str]]:
    """Every mpremote command of a deploy, in order (what --dry-run prints)."""
    top = sorted(
        f["path"] for f in manifest["files"] if "/" not in f["path"] and f["path"] != "config.py"
    )
    mpy = [p.removesuffix(".mpy") for p in top if p.endswith(".mpy")]
    nodecore = sorted(
        f["path"].rsplit("/", 1)[1].removesuffix(".mpy")
        for f in manifest["files"]
        if f["path"].startswith("lib/nodecore/") and f["path"].endswith(".mpy")
    )
    cleanup = (
        "import os\n"
        f"for f in {json.dumps([m + '.py' for m in mpy])}:\n"
        "    if f in os.listdir(): os.remove(f)\n"
        f"for f in {json.dumps([m + '.py' for m in nodecore])}:\n"
        '    if f in os.listdir("lib/nodecore"): os.remove("lib/nodecore/" + f)'
    )
    base = [tool, "connect", port]
    return [
        [*base, "exec", MKDIR_LIB],
        [*base, "cp", "-r", str(bundle / "lib" / "nodecore"), ":lib/"],
        [*base, *_chained([["cp", str(bundle / p), f":{p}"] for p in top])],
        [*base, "cp", str(config), ":config.py"],
        [*base, "exec", cleanup],
        [*base, "reset"],
    ]


def _chained(commands: list[list[str]]) -> list[str]:
    """Several mpremote commands in one process (``a + b``): one connection."""
    out: list[str] = []
    for command in commands:
        out += [*(["+"] if out else []), *command]
    return out


def shown(command: list[str]) -> str:
    return shlex.join(command)


NO_BOARD = ("failed to access", "no device found", "could not enter raw repl")


def run_commands(
    commands: list[list[str]], say: Callable[[str], None], timeout_s: float = 120.0
) -> None:
    for command in commands:
        say(f"$ {shown(command)}")
        try:
            done = subprocess.run(
                command, capture_output=True, text=True, timeout=timeout_s, stdin=subprocess.DEVNULL
            )
        except subprocess.TimeoutExpired:
            raise DeployError(
                f"mpremote {command[3]} did not finish within {timeout_s:.0f} s"
            ) from None
        if done.returncode != 0:
            lines = (done.stderr or done.stdout).strip().splitlines()
            why = lines[-1] if lines else f"exit code {done.returncode}"
            no_board = any(text in why.lower() for text in NO_BOARD)
            raise DeployError(f"mpremote {command[3]} failed: {why}", no_board)
