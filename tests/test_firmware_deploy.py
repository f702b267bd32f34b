"""shoal firmware deploy: the exact mpremote commands (--dry-run), and a real run of them,
real mpremote over a real serial line (a PTY) to the real MicroPython unix port, whose
files are then compared with the bundle; the board is entered in the registry.

The unix port speaks the raw REPL mpremote uses, but ends at a soft reset (Ctrl-D) where a
board reboots: ``pty_board`` starts it again on the same line and prints the board's
"soft reboot" line, as a board's boot would. The board's folder holds the emulator's
stand-ins for ``network`` and ``machine`` (services/boards/standins), its hardware.
"""

from __future__ import annotations

import os
import pty
import select
import shutil
import subprocess
import threading
import tty
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from click.testing import CliRunner

from shoal.services.broker.credentials import Credentials
from shoal.services.cli.main import main
from shoal.services.firmware.build import MANIFEST, micropython
from shoal.services.firmware.bundle import STANDIN_FILES, STANDINS_DIR
from shoal.services.firmware.deploy import mpremote
from shoal.services.registry.store import Registry

needs_unix_port = pytest.mark.skipif(micropython() is None, reason="no MicroPython unix port")


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("build") / "firmware"
    result = CliRunner().invoke(main, ["firmware", "build", "--out", str(out)])
    assert result.exit_code == 0, result.stderr
    return out


def _config(tmp_path: Path) -> Path:
    path = tmp_path / "shoal.toml"
    path.write_text(
        f'[devices]\nregistry = "{tmp_path / "devices.db"}"\n'
        f'[mqtt]\ncredentials = "{tmp_path / "mqtt"}"\n'
    )
    return path


def test_dry_run_prints_exactly_the_mpremote_commands(bundle: Path, tmp_path: Path) -> None:
    args = ["firmware", "deploy", "--port", "/dev/ttyUSB0", "--node-id", "esp32-01"]
    args += ["--bundle", str(bundle), "--broker", "192.168.1.10:1884", "--dry-run"]
    result = CliRunner().invoke(main, [*args, "--config", str(_config(tmp_path))])
    assert result.exit_code == 0, result.stderr
    tool, b, conf = (
        mpremote(),
        str(bundle),
        str(bundle.parent / "configs" / "esp32-01" / "config.py"),
    )
    c = f"{tool} connect /dev/ttyUSB0"
    assert result.stdout.splitlines() == [
        f"{c} exec 'import os",
        """if "lib" not in os.listdir(): os.mkdir("lib")'""",
        f"{c} cp -r {b}/lib/nodecore :lib/",
        f"{c} cp {b}/boot.py :boot.py + cp {b}/clock.mpy :clock.mpy + cp {b}/hal.mpy :hal.mpy"
        f" + cp {b}/main.py :main.py + cp {b}/mqtt.mpy :mqtt.mpy + cp {b}/ota.mpy :ota.mpy"
        f" + cp {b}/otaboot.mpy :otaboot.mpy + cp {b}/transport.mpy :transport.mpy",
        f"{c} cp {conf} :config.py",
        f"{c} exec 'import os",
        'for f in ["clock.py", "hal.py", "mqtt.py", "ota.py", "otaboot.py", "transport.py"]:',
        "    if f in os.listdir(): os.remove(f)",
        'for f in ["__init__.py", "backoff.py", "delegation.py", "engine.py", "handlers.py",'
        ' "loadmodel.py", "node.py", "overload.py", "prng.py", "ring.py"]:',
        """    if f in os.listdir("lib/nodecore"): os.remove("lib/nodecore/" + f)'""",
        f"{c} reset",
    ]
    assert not Path(conf).exists()  # a dry run writes nothing
    assert not (tmp_path / "devices.db").exists()


def test_bad_node_id_missing_bundle_and_no_board_are_one_line_errors(
    bundle: Path, tmp_path: Path
) -> None:
    cfg = ["--config", str(_config(tmp_path))]
    base = ["firmware", "deploy", "--port", "/dev/ttyNOPE", *cfg]
    result = CliRunner().invoke(main, [*base, "--node-id", "Board_1", "--bundle", str(bundle)])
    assert result.exit_code == 2 and result.stderr.startswith("error: Invalid value for --node-id")
    result = CliRunner().invoke(main, [*base, "--node-id", "b-1", "--bundle", str(tmp_path / "x")])
    assert result.exit_code == 1 and "run `shoal firmware build` first" in result.stderr
    result = CliRunner().invoke(main, [*base, "--node-id", "b-1", "--bundle", str(bundle)])
    assert result.exit_code == 3
    assert result.stderr.splitlines()[-1].startswith("error: firmware deploy: mpremote exec failed")
    with Registry(tmp_path / "devices.db") as reg:
        assert reg.get("b-1") is None  # nothing entered for a board never reached


@contextmanager
def pty_board(board: Path) -> Iterator[str]:
    """The unix port on one side of a serial line (two PTYs joined); yields the device path
    mpremote connects to. Restarted whenever it exits (a soft reset, a machine.reset())."""
    mp = micropython()
    assert mp is not None
    m1, s1 = pty.openpty()  # the board's side
    m2, s2 = pty.openpty()  # the host's side: mpremote opens s2
    for fd in (s1, s2):
        tty.setraw(fd)
    stop = threading.Event()
    procs: list[subprocess.Popen[bytes]] = []

    def start() -> None:
        procs.append(
            subprocess.Popen([mp, "-X", "heapsize=110K"], stdin=s1, stdout=s1, stderr=s1, cwd=board)
        )

    def pump() -> None:
        while not stop.is_set():
            if procs[-1].poll() is not None:  # ended at a soft reset: boot again
                os.write(m2, b"MPY: soft reboot\r\n")
                start()
                os.write(m1, b"\r\x01")  # back into the raw REPL mpremote left it in
            readable, _, _ = select.select([m1, m2], [], [], 0.05)
            for fd in readable:
                try:
                    data = os.read(fd, 4096)
                except OSError:
                    continue
                os.write(m2 if fd == m1 else m1, data)

    start()
    thread = threading.Thread(target=pump, daemon=True)
    thread.start()
    try:
        yield os.ttyname(s2)
    finally:
        stop.set()
        thread.join(5)
        for proc in procs:
            proc.kill()
            proc.wait(5)
        for fd in (m1, s1, m2, s2):
            os.close(fd)


@needs_unix_port
def test_deploy_copies_the_bundle_to_a_real_micropython_and_enters_the_board(
    bundle: Path, tmp_path: Path
) -> None:
    board = tmp_path / "board"
    board.mkdir()
    for name in STANDIN_FILES:
        shutil.copyfile(STANDINS_DIR / name, board / name)
    (board / "hal.py").write_text("stale = True\n")  # an old source copy: must go
    cfg = _config(tmp_path)
    with pty_board(board) as device:
        result = CliRunner().invoke(
            main,
            ["firmware", "deploy", "--port", device, "--node-id", "board-07", "--bundle", str(bundle),
             "--broker", "10.0.0.5", "--wifi", "lab", "--wifi-password", "pw", "--config", str(cfg)],
        )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    import json

    manifest = json.loads((bundle / MANIFEST).read_text())
    for f in manifest["files"]:
        if f["path"] != "config.py":
            assert (board / f["path"]).read_bytes() == (bundle / f["path"]).read_bytes(), f["path"]
    assert not (board / "hal.py").exists()
    config = (board / "config.py").read_text()
    assert "'node_id': 'board-07'" in config and "'mqtt_host': '10.0.0.5'" in config
    assert "'mqtt_port': 1883" in config and "'wifi_ssid': 'lab'" in config
    password = Credentials(tmp_path / "mqtt").secret("board-07")  # its login, made by deploy
    assert password and f"'mqtt_user': 'board-07', 'mqtt_password': '{password}'" in config
    with Registry(tmp_path / "devices.db") as reg:
        device_row = reg.get("board-07")
    assert device_row is not None
    assert (device_row.source, device_row.chip, device_row.firmware, device_row.broker) == (
        "deploy", "esp32", manifest["firmware"], "10.0.0.5:1883"
    )  # fmt: skip
