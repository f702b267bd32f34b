"""shoal firmware build: real mpy-cross, the heap at boot measured with the real
MicroPython unix port, a manifest that matches the files."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from shoal.services.cli.main import main
from shoal.services.firmware.build import MANIFEST, firmware_version, micropython

needs_unix_port = pytest.mark.skipif(micropython() is None, reason="no MicroPython unix port")


def _run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.stdout, result.stderr


@needs_unix_port
def test_build_writes_mpy_files_and_a_manifest_that_matches_them(tmp_path: Path) -> None:
    out = tmp_path / "bundle"
    code, stdout, stderr = _run("firmware", "build", "--out", str(out), "--target", "esp32")
    assert code == 0, stderr
    assert "heap at boot" in stdout
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["firmware"] == firmware_version() == "shoal-esp32/0.2"
    assert manifest["target"] == "esp32" and manifest["march"] == "xtensawin"
    assert manifest["mpy_abi"].startswith("6.")
    paths = {f["path"] for f in manifest["files"]}
    assert {"main.py", "config.py", "mqtt.mpy", "transport.mpy", "lib/nodecore/node.mpy"} <= paths
    assert not any(p.endswith(".py") for p in paths - {"boot.py", "main.py", "config.py"})
    for f in manifest["files"]:
        data = (out / f["path"]).read_bytes()
        assert len(data) == f["size"] and hashlib.sha256(data).hexdigest() == f["sha256"]
        if f["path"].endswith(".mpy"):
            assert data[:1] == b"M" and data[1] == 6  # an .mpy header, ABI 6
    on_disk = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    assert on_disk == paths | {MANIFEST}
    heap = manifest["heap"]
    assert heap["method"].startswith("measured: MicroPython unix port")
    assert 20_000 < heap["boot_used_bytes"] < heap["budget_bytes"] - heap["reserve_bytes"]


@needs_unix_port
def test_build_refuses_a_heap_too_small_and_says_by_how_much(tmp_path: Path) -> None:
    out = tmp_path / "bundle"
    code, _, stderr = _run("firmware", "build", "--out", str(out), "--heap", "80K")
    assert code == 1
    line = stderr.strip()
    assert line.startswith("error: firmware build: the bundle needs ~") and "\n" not in line
    assert line.endswith(" B over")
    assert not (out / MANIFEST).exists()


def test_build_for_a_riscv_target_compiles_for_its_arch(tmp_path: Path) -> None:
    out = tmp_path / "c3"
    code, _, stderr = _run("firmware", "build", "--out", str(out), "--target", "esp32c3", "--json")
    assert code == 0, stderr
    assert json.loads((out / MANIFEST).read_text())["march"] == "rv32imc"


def test_build_refuses_to_clear_a_folder_that_is_no_bundle(tmp_path: Path) -> None:
    (tmp_path / "precious.txt").write_text("keep me")
    code, _, stderr = _run("firmware", "build", "--out", str(tmp_path))
    assert code == 1 and "is not empty and holds no bundle" in stderr
    assert (tmp_path / "precious.txt").exists()


def test_bad_heap_and_target_are_usage_errors_in_one_line() -> None:
    code, _, stderr = _run("firmware", "build", "--heap", "lots")
    assert code == 2 and stderr.count("\n") == 1 and stderr.startswith("error: ")
    code, _, stderr = _run("firmware", "build", "--target", "esp8266")
    assert code == 2 and stderr.startswith("error: ")


def test_without_the_unix_port_the_heap_is_estimated_and_the_manifest_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from shoal.services.firmware import build as build_module

    monkeypatch.setattr(build_module, "micropython", lambda: None)  # a host without it
    manifest = build_module.build(tmp_path / "b", build_module.target_named("esp32"))
    heap = manifest["heap"]
    assert heap["method"] == f"estimate: {build_module.SIZE_FACTOR} x bundle bytes"
    assert heap["boot_used_bytes"] == int(manifest["bundle_bytes"] * build_module.SIZE_FACTOR)
