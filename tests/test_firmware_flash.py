"""shoal firmware flash: the real esptool (its Python API) against the real mock ROM
bootloader (esp32-mock-bootloader, a process on a free loopback port), then the flash read
back and compared with the image.

The read-back uses a second connection in ROM mode (READ_FLASH_SLOW): the mock's stub
READ_FLASH stream gives up when an ack takes longer than its 50 ms receive timeout, which
esptool's per-packet acks often do (the mock 0.3.0; a ROM read is exact, only slower).
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from click.testing import CliRunner

from shoal.services.cli.firmware import EXIT_NO_IMAGE, EXIT_NO_PORT, EXIT_WRONG_CHIP
from shoal.services.cli.main import main
from shoal.services.runtime.ports import next_port

MOCK = shutil.which("esp32-mock-bootloader") or str(
    Path(sys.executable).parent / "esp32-mock-bootloader"
)
pytestmark = pytest.mark.skipif(not Path(MOCK).exists(), reason="esp32-mock-bootloader missing")
IMAGE_SIZE = 64 * 1024


def _image(path: Path, chip_id: int, size: int = IMAGE_SIZE) -> Path:
    """An ESP image header (magic, 3 segments, DIO, 40 MHz, an entry point, the extended
    header's chip id at byte 12) and random bytes after it."""
    header = bytes([0xE9, 3, 2, 0x20]) + struct.pack("<I", 0x40080000)
    header += bytes([0xEE, 0, 0, 0]) + struct.pack("<H", chip_id) + bytes(10)
    path.write_bytes(header + os.urandom(size - len(header)))
    return path


@contextmanager
def mock_bootloader(chip: str) -> Iterator[str]:
    """The mock on a free port until the block ends (killed even if the test fails)."""
    port = next_port()
    proc = subprocess.Popen(
        [MOCK, "run", "--chip", chip, "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # "Mock bootloader (chip=esp32) listening on ..."
        assert "listening" in line, line
        yield f"socket://127.0.0.1:{port}"
    finally:
        proc.kill()
        proc.wait(timeout=10)


def _read_back(url: str, offset: int, size: int) -> bytes:
    import esptool.cmds as cmds

    from shoal.services.firmware.flash import _esptool_log

    with _esptool_log(None):
        esp = cmds.detect_chip(url, 115_200, connect_attempts=3)
        try:
            data: bytes = esp.read_flash(offset, size)  # ROM: READ_FLASH_SLOW
        finally:
            esp._port.close()
    return data


def _run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.stdout, result.stderr


@pytest.mark.parametrize(("chip", "chip_id", "offset"), [("esp32", 0, 0x1000), ("esp32c3", 5, 0x0)])
def test_flash_writes_verifies_and_the_flash_reads_back_as_the_image(
    tmp_path: Path, chip: str, chip_id: int, offset: int
) -> None:
    image = _image(tmp_path / "micropython.bin", chip_id)
    with mock_bootloader(chip) as url:
        started = time.monotonic()
        code, stdout, stderr = _run(
            "firmware", "flash", "--port", url, "--image", str(image), "--erase", "--chip", chip
        )
        took = time.monotonic() - started
        assert code == 0, stderr
        assert f"connected: {chip} " in stdout and "verified, reset" in stdout
        assert f"at {offset:#x}" in stdout
        assert _read_back(url, offset, IMAGE_SIZE) == image.read_bytes()
    print(f"flash of {IMAGE_SIZE:,} B against the mock: {took:.2f} s")


def test_flash_with_a_node_id_enters_the_chip_and_mac_in_the_registry(tmp_path: Path) -> None:
    from shoal.services.registry.store import Registry

    image = _image(tmp_path / "micropython.bin", 0)
    cfg = tmp_path / "shoal.toml"
    cfg.write_text(f'[devices]\nregistry = "{tmp_path / "devices.db"}"\n')
    with mock_bootloader("esp32") as url:
        args = ["firmware", "flash", "--port", url, "--image", str(image), "--node-id", "esp32-09"]
        code, stdout, stderr = _run(*args, "--config", str(cfg))
    assert code == 0, stderr
    mac = stdout.split("connected: esp32 ")[1].split()[0]
    with Registry(tmp_path / "devices.db") as reg:
        device = reg.get("esp32-09")
    assert device is not None and (device.chip, device.mac) == ("esp32", mac)
    code, _, stderr = _run(*args[:-1], "Bad Id", "--config", str(cfg))
    assert code == 2 and stderr.startswith("error: Invalid value for --node-id")


def test_a_board_of_another_chip_is_refused_before_writing(tmp_path: Path) -> None:
    image = _image(tmp_path / "micropython.bin", 0)
    with mock_bootloader("esp32s3") as url:
        code, _, stderr = _run(
            "firmware", "flash", "--port", url, "--image", str(image), "--chip", "esp32"
        )
        assert code == EXIT_WRONG_CHIP
        assert stderr == f"error: the board on {url} is an esp32s3, not an esp32\n"
        code, _, stderr = _run("firmware", "flash", "--port", url, "--image", str(image))
        assert code == EXIT_WRONG_CHIP
        assert "is for esp32, the board is an esp32s3" in stderr
        assert _read_back(url, 0x0, 4096) == b"\xff" * 4096  # nothing was written


def test_no_port_missing_image_and_garbage_image_are_one_line_errors(tmp_path: Path) -> None:
    image = _image(tmp_path / "micropython.bin", 0)
    closed = f"socket://127.0.0.1:{next_port()}"  # nothing listens there
    code, _, stderr = _run("firmware", "flash", "--port", closed, "--image", str(image))
    assert code == EXIT_NO_PORT and stderr.startswith(f"error: no board answers on {closed}")
    code, _, stderr = _run("firmware", "flash", "--image", str(image))
    assert code == EXIT_NO_PORT and stderr.startswith("error: no --port")
    code, _, stderr = _run(
        "firmware", "flash", "--port", closed, "--image", str(tmp_path / "x.bin")
    )
    assert code == EXIT_NO_IMAGE and stderr == f"error: image {tmp_path / 'x.bin'}: no such file\n"
    garbage = tmp_path / "garbage.bin"
    garbage.write_bytes(b"not a firmware image" * 10)
    code, _, stderr = _run("firmware", "flash", "--port", closed, "--image", str(garbage))
    assert code == EXIT_NO_IMAGE and "not an ESP firmware image" in stderr
    for err in (stderr,):
        assert err.count("\n") == 1 and "Traceback" not in err
