"""The rollout's decisions (services/ota/rollout.py): board by board within max_unavailable,
the liveness gate, offline boards deferred, the halt at the first rollback, the bundle
store and the wire checks. Pure: statuses and the monitor's states are fed in."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from shoal.protocol import codec
from shoal.services.ota import wire
from shoal.services.ota.bundles import Store
from shoal.services.ota.rollout import Rollout

V, OLD = "shoal-esp32/0.3", "shoal-esp32/0.2"
NODES = ["b-1", "b-2", "b-3"]


def status(node: str, state: str, fw: str = OLD, **kw: object) -> wire.Status:
    payload = {"kind": "ota_status", "node_id": node, "fw": fw, "state": state, **kw}
    msg = wire.decode(json.dumps(payload).encode())
    assert isinstance(msg, wire.Status)
    return msg


def all_alive(nodes: list[str] = NODES) -> dict[str, bool]:
    return dict.fromkeys(nodes, True)


def confirm(r: Rollout, node: str, t: float) -> None:
    r.on_status(status(node, "switching", version=V), t)
    r.on_status(status(node, "trial", fw=V, version=V), t)
    r.on_status(status(node, "idle", fw=V), t)


def test_boards_start_within_max_unavailable_and_the_next_after_a_confirmation() -> None:
    r = Rollout(V, NODES, max_unavailable=2)
    offers, _, _ = r.step(0.0, all_alive(), True)
    assert offers == ["b-1", "b-2"]
    assert r.step(0.1, all_alive(), True)[0] == []  # two under way: nobody else
    confirm(r, "b-1", 1.0)
    offers, _, _ = r.step(1.1, all_alive(), True)
    assert offers == ["b-3"] and r.rows["b-1"].state == "confirmed"
    confirm(r, "b-2", 2.0)
    confirm(r, "b-3", 2.0)
    r.step(2.1, all_alive(), True)
    assert r.state == "succeeded"


def test_the_gate_holds_while_the_monitor_distrusts_itself_or_a_confirmed_board_is_dead() -> None:
    r = Rollout(V, NODES, max_unavailable=1)
    assert r.step(0.0, all_alive(), False)[0] == []  # observer unhealthy: nobody starts
    assert r.step(0.1, all_alive(), True)[0] == ["b-1"]
    confirm(r, "b-1", 1.0)
    assert r.step(1.1, all_alive(), True)[0] == ["b-2"]
    confirm(r, "b-2", 2.0)
    offers, _, _ = r.step(2.1, {"b-1": False, "b-2": True, "b-3": True}, True)
    assert offers == []  # b-1 updated and now dead: the gate is shut


def test_a_board_offline_at_its_turn_does_not_hold_up_the_rest_and_is_updated_on_return() -> None:
    r = Rollout(V, NODES, max_unavailable=1)
    offers, _, changes = r.step(0.0, {"b-1": False, "b-2": True, "b-3": True}, True)
    assert offers == ["b-2"] and ("b-1", "offline") in changes
    confirm(r, "b-2", 1.0)
    assert r.step(1.1, {"b-1": False, "b-2": True, "b-3": True}, True)[0] == ["b-3"]
    confirm(r, "b-3", 2.0)
    assert r.step(2.1, all_alive(), True)[0] == ["b-1"]  # back: its turn now


def test_the_first_rollback_halts_the_rollout_and_aborts_the_downloads() -> None:
    r = Rollout(V, NODES, max_unavailable=2)
    r.step(0.0, all_alive(), True)
    r.on_status(status("b-2", "downloading", version=V, done=100, total=1000), 0.5)
    result = {"version": V, "from": OLD, "result": "rolled_back", "detail": "import failed"}
    r.on_status(status("b-1", "switching", version=V), 1.0)
    changes = r.on_status(status("b-1", "idle", result=result), 2.0)
    assert changes == [("b-1", "rolled_back")]
    assert r.state == "halted" and "import failed" in r.detail
    offers, aborts, _ = r.step(2.1, all_alive(), True)
    assert offers == [] and aborts == ["b-2"]
    assert r.rows["b-3"].state == "waiting"


def test_an_old_rollback_of_the_same_version_does_not_count_before_the_board_is_offered() -> None:
    r = Rollout(V, NODES)
    result = {"version": V, "result": "rolled_back", "detail": "earlier"}
    assert r.on_status(status("b-3", "idle", result=result), 0.0) == []
    assert r.state == "running"


def test_a_board_that_never_comes_back_confirmed_fails_after_the_trial_timeout() -> None:
    r = Rollout(V, ["b-1"], trial_timeout_s=10)
    r.step(0.0, {"b-1": True}, True)
    r.on_status(status("b-1", "switching", version=V), 1.0)
    r.step(5.0, {"b-1": False}, True)
    assert r.rows["b-1"].state == "switching"
    r.step(11.5, {"b-1": False}, True)
    assert r.rows["b-1"].state == "failed" and r.state == "halted"


def test_a_board_already_on_the_version_is_confirmed_without_a_transfer() -> None:
    r = Rollout(V, ["b-1"])
    r.on_status(status("b-1", "idle", fw=V), 0.0)
    r.step(0.1, {"b-1": True}, True)
    assert r.state == "succeeded" and r.rows["b-1"].detail == "already on it"


def test_a_rollout_survives_a_restart_of_the_service_as_json() -> None:
    r = Rollout(V, NODES, max_unavailable=2)
    r.step(0.0, all_alive(), True)
    r.on_status(status("b-1", "downloading", version=V, done=10, total=100), 0.5)
    again = Rollout.from_dict(json.loads(json.dumps(r.to_dict())))
    assert again.progress(1.0) == r.progress(1.0)


def test_a_board_under_way_is_offered_again_only_when_it_has_gone_quiet() -> None:
    r = Rollout(V, ["b-1"], offer_every_s=3)
    r.step(0.0, {"b-1": True}, True)
    assert r.step(5.0, {"b-1": True}, True, heard={"b-1": 4.5})[0] == []
    assert r.step(8.0, {"b-1": True}, True, heard={"b-1": 4.5})[0] == ["b-1"]


def test_board_messages_are_checked_against_their_limits_and_topics() -> None:
    assert wire.node_of("shoal/v1/board-01/ota/up") == "board-01"
    assert wire.node_of("shoal/v1/Board/ota/up") is None
    assert wire.node_of("shoal/v1/board-01/up") is None
    with pytest.raises(codec.Rejected):
        wire.decode(
            b'{"kind":"ota_get","node_id":"b","version":"v","f":0,"path":"x","o":0,"n":99999}'
        )
    with pytest.raises(codec.Rejected):
        wire.decode(b"not json")
    with pytest.raises(codec.Rejected):
        wire.decode(b"x" * 5000)


def test_the_store_keeps_a_checked_bundle_without_boot_files_and_finds_it_after_a_restart(
    tmp_path: Path,
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    files = {"boot.py": b"guard", "otaboot.mpy": b"g", "config.py": b"c", "main.py": b"m" * 10}
    entries = []
    import hashlib

    for name, data in files.items():
        (src / name).write_bytes(data)
        entries.append(
            {"path": name, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        )
    (src / "manifest.json").write_text(json.dumps({"firmware": V, "files": entries}))
    bundle = Store(tmp_path / "store").add(src)
    assert [f[0] for f in bundle.files] == ["main.py"]  # never the guard nor the config
    assert bundle.read(0, "main.py", 4, 3) == b"mmm"
    assert bundle.read(0, "other.py", 0, 3) is None and bundle.read(1, "main.py", 0, 3) is None
    again = Store(tmp_path / "store").get(V)  # a new service: from its store on disk
    assert again is not None and again.files == bundle.files
    (src / "main.py").write_bytes(b"changed!!!")
    from shoal.services.firmware.bundle import BundleError

    with pytest.raises(BundleError):
        Store(tmp_path / "other").add(src)


def test_the_console_shows_each_board_s_update_in_one_line() -> None:
    from shoal.services.runtime.config import load_config
    from shoal.tui.detail import ota
    from shoal.tui.feed import LiveFeed
    from shoal.tui.model import NodeRow

    feed = LiveFeed(load_config(env={}))
    r = Rollout(V, ["b-1"])
    r.step(0.0, {"b-1": True}, True)
    r.on_status(status("b-1", "downloading", version=V, done=2048, total=41578), 1.0)
    feed._on_ota(r.progress(3.0))
    line = ota(NodeRow(node_id="b-1", state="alive", age_ms=0, ota=feed._ota["b-1"]))
    assert line == f"ota: {V} downloading 2,048/41,578 B 3.0 s"
