"""What a board's bundle is, shared by build, deploy, the OTA service and the board emulator:
where the firmware files come from, which stay source, the stand-ins an emulated board (or
the heap probe) puts beside them, and reading a built bundle back, checked against its
manifest.

A bundle is a directory laid out as on the board (firmware/esp32/README.md) with a
``manifest.json``: ``{"manifest": 1, "firmware": VERSION, "target": ..., "files": [{"path",
"size", "sha256"}, ...], ...}``.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from pathlib import Path
from typing import Any

import shoal.firmware

FIRMWARE_DIR = Path(shoal.firmware.__file__).resolve().parent
ESP32_DIR = FIRMWARE_DIR / "esp32"
NODECORE_DIR = FIRMWARE_DIR / "nodecore"
# Kept as source on the board: the boot guard (never replaced over the air), the entry
# point, and the settings a user edits.
SOURCE_ONLY = ("boot.py", "main.py", "config.py")
# Never sent over the air: the board's own settings, and the guard that rolls back a bad
# update (replacing it is a job for `shoal firmware deploy` over the serial line).
NOT_OVER_THE_AIR = ("boot.py", "otaboot.mpy", "config.py")
MANIFEST = "manifest.json"
MANIFEST_VERSION = 1
# What only a chip has, stood in on an emulated board and in the heap probe.
# (by path: importing shoal.services.boards would start its service's imports)
STANDINS_DIR = Path(__file__).resolve().parent.parent / "boards" / "standins"
STANDIN_FILES = ("network.py", "machine.py")


class BundleError(Exception):
    """A bundle that cannot be used: one line saying what is wrong with it."""


def tool(name: str) -> str | None:
    """A command installed next to this interpreter (a venv's bin), else on PATH."""
    here = Path(sys.executable).parent / name
    return str(here) if here.exists() else shutil.which(name)


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def read_bundle(bundle: Path) -> dict[str, Any]:
    """The bundle's manifest, every file checked against its size and sha256."""
    path = bundle / MANIFEST
    if not path.is_file():
        raise BundleError(
            f"no bundle in {bundle} (no {MANIFEST}): run `shoal firmware build` first"
        )
    try:
        manifest: dict[str, Any] = json.loads(path.read_text())
        files = manifest["files"]
        if not all(isinstance(f, dict) and {"path", "size", "sha256"} <= f.keys() for f in files):
            raise TypeError("a file entry without path, size, sha256")
    except (ValueError, KeyError, TypeError):
        raise BundleError(f"{path}: not a bundle manifest") from None
    for f in files:
        data = (bundle / f["path"]).read_bytes() if (bundle / f["path"]).is_file() else None
        if (
            data is None
            or len(data) != f["size"]
            or hashlib.sha256(data).hexdigest() != f["sha256"]
        ):
            raise BundleError(
                f"{bundle / f['path']}: missing or changed since the build; build again"
            )
    return manifest


def list_files(bundle: Path) -> list[dict[str, Any]]:
    """The manifest's file entries for what is in ``bundle`` now, by path."""
    return [
        {
            "path": p.relative_to(bundle).as_posix(),
            "size": p.stat().st_size,
            "sha256": sha256_file(p),
        }
        for p in sorted(bundle.rglob("*"))
        if p.is_file() and p.name != MANIFEST
    ]


def copy_standins(board: Path) -> None:
    for name in STANDIN_FILES:
        shutil.copyfile(STANDINS_DIR / name, board / name)
