"""The versions the OTA service can send: bundles read back and checked against their
manifests (firmware/bundle.py), kept in memory (a bundle is ~40 KB) and copied into the
service's store so that a restarted service still has them.

Only what may go over the air is offered: not boot.py (the guard that undoes a bad
update) and not config.py (each board's own settings).
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from shoal.services.firmware.bundle import MANIFEST, NOT_OVER_THE_AIR, BundleError, read_bundle


@dataclass(frozen=True)
class Bundle:
    version: str
    files: list[tuple[str, int, str]]  # (path, size, sha256), in the order a board fetches
    data: list[bytes]

    @property
    def size(self) -> int:
        return sum(f[1] for f in self.files)

    def read(self, f: int, path: str, offset: int, n: int) -> bytes | None:
        """Bytes of file ``f`` (which must be ``path``), or None for a request that names
        no part of this bundle."""
        if f >= len(self.files) or self.files[f][0] != path or offset >= max(1, self.files[f][1]):
            return None
        return self.data[f][offset : offset + n]


def load(directory: Path) -> Bundle:
    manifest = read_bundle(directory)
    files, data = [], []
    for entry in manifest["files"]:
        if entry["path"] in NOT_OVER_THE_AIR:
            continue
        files.append((entry["path"], entry["size"], entry["sha256"]))
        data.append((directory / entry["path"]).read_bytes())
    return Bundle(str(manifest["firmware"]), files, data)


def store_name(version: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", version)


class Store:
    """Bundles by version, on disk under ``root`` and in memory."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.bundles: dict[str, Bundle] = {}

    def add(self, directory: Path) -> Bundle:
        """Check the bundle in ``directory``, copy it into the store, keep it."""
        bundle = load(directory)
        dest = self.root / store_name(bundle.version)
        if directory.resolve() != dest.resolve():
            if dest.exists():
                shutil.rmtree(dest)
            shutil.copytree(directory, dest)
        self.bundles[bundle.version] = bundle
        return bundle

    def get(self, version: str) -> Bundle | None:
        bundle = self.bundles.get(version)
        if bundle is None:
            where = self.root / store_name(version)
            if (where / MANIFEST).is_file():
                try:
                    bundle = self.bundles[version] = load(where)
                except BundleError:
                    return None
        return bundle


def variant(out: Path, version: str, raise_at_import: bool = False) -> Bundle:
    """This install's firmware built into ``out`` as ``version``; with ``raise_at_import``, a
    version whose main.py imports a module no board has (for fault scenarios and tests: a
    bad release)."""
    import json

    from shoal.services.firmware.build import build
    from shoal.services.firmware.bundle import list_files
    from shoal.services.firmware.targets import TARGETS

    build(out, TARGETS["esp32"], version=version)
    if raise_at_import:
        main_py = out / "main.py"
        text = main_py.read_text().replace("import gc\n", "import gc\nimport no_such_module\n", 1)
        main_py.write_text(text)
        manifest = json.loads((out / MANIFEST).read_text())
        manifest["files"] = list_files(out)
        (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return load(out)
