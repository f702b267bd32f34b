"""Emulated boards: the real firmware (firmware/esp32, unchanged) in the MicroPython unix
port with a 110K heap, over the embedded broker and the shim, in a real cluster; powered
off, radio cut and restored through the emulator's ctl."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from shoal.services.boards.layout import NoMicroPython, micropython
from shoal.services.runtime.ctl_client import CtlClient
from shoal.services.testing import Cluster, wait_for

try:
    micropython()
except NoMicroPython as err:  # pragma: no cover - CI has it (the dev extra)
    pytest.skip(f"no MicroPython unix port: {err}", allow_module_level=True)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with Cluster(tmp_path_factory.mktemp("boards"), nodes=2, boards=2) as c:
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
    from shoal.services.boards.layout import ESP32_DIR

    d = Path(boards(cluster)["board-01"]["dir"])
    assert (d / "main.py").read_bytes() == (ESP32_DIR / "main.py").read_bytes()
    for src in ESP32_DIR.glob("*.py"):
        if src.name not in ("config.py", "main.py"):  # compiled, as a board deploys them
            assert (d / src.name).exists() or (d / src.with_suffix(".mpy").name).exists()
    config = (d / "config.py").read_text()
    assert config.startswith((ESP32_DIR / "config.py").read_text())
