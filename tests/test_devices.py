"""The device registry: a real SQLite file, `shoal devices`, and the registry process kept
current by a real relay's bus (firmware from the hello, last seen, in batches)."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from click.testing import CliRunner

from shoal.protocol.messages import Heartbeat, Hello
from shoal.services.cli.main import main
from shoal.services.registry.service import RegistryService
from shoal.services.registry.store import Registry, RegistryError, RegistryFileError
from shoal.services.relay.service import Relay
from shoal.services.testing import IngestClient, config_on_free_ports, running, wait_for


def _config_file(tmp_path: Path, registry: Path) -> str:
    path = tmp_path / "shoal.toml"
    path.write_text(
        f'[devices]\nregistry = "{registry}"\n[mqtt]\ncredentials = "{tmp_path / "mqtt"}"\n'
    )
    return str(path)


def _run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.stdout, result.stderr


def test_add_seen_and_ota_history_persist_in_the_file(tmp_path: Path) -> None:
    db = tmp_path / "devices.db"
    with Registry(db) as reg:
        reg.add("esp32-01", chip="esp32", mac="24:0a:c4:00:00:01", source="deploy", now=100.0)
        assert reg.seen([("esp32-01", "shoal-esp32/0.2", 200.0), ("esp32-02", None, 201.0)]) == 2
        reg.seen([("esp32-01", None, 300.0)])  # a heartbeat: firmware kept
        reg.set_ota("esp32-01", "pending", target="shoal-esp32/0.3", now=301.0)
    with Registry(db) as reg:
        one = reg.get("esp32-01")
        assert one is not None
        assert (one.chip, one.mac, one.firmware, one.source) == (
            "esp32",
            "24:0a:c4:00:00:01",
            "shoal-esp32/0.2",
            "deploy",
        )
        assert (one.first_seen, one.last_seen, one.ota_state) == (200.0, 300.0, "pending")
        (event,) = reg.ota_history("esp32-01")
        assert (event.from_state, event.to_state, event.from_version, event.to_version) == (
            "none", "pending", "shoal-esp32/0.2", "shoal-esp32/0.3"
        )  # fmt: skip
        two = reg.get("esp32-02")
        assert two is not None and two.source == "telemetry" and two.firmware is None
        assert [d.node_id for d in reg.devices()] == ["esp32-01", "esp32-02"]
        assert reg.remove("esp32-02") and not reg.remove("esp32-02")
        with pytest.raises(RegistryError, match="node id"):
            reg.add("Not An Id")
    with sqlite3.connect(db) as raw:
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


@pytest.mark.parametrize(
    ("content", "why"),
    [
        (b"this is not a database, just garbage" * 100, "not a SQLite database"),
        (None, "not a shoal device registry (other tables"),
    ],
)
def test_a_file_that_is_no_registry_is_a_config_error_naming_the_key(
    tmp_path: Path, content: bytes | None, why: str
) -> None:
    db = tmp_path / "devices.db"
    if content is None:
        with sqlite3.connect(db) as raw:
            raw.execute("CREATE TABLE other (x)")
    else:
        db.write_bytes(content)
    with pytest.raises(RegistryFileError, match=r"devices\.registry") as err:
        Registry(db)
    assert why in str(err.value)
    code, _, stderr = _run("devices", "list", "--config", _config_file(tmp_path, db))
    assert code == 78
    assert stderr.startswith("error: configuration: devices.registry ") and stderr.count("\n") == 1
    with pytest.raises(RegistryFileError, match="does not exist"):
        Registry(tmp_path / "no" / "such" / "dir.db")


def test_devices_commands_add_list_show_remove(tmp_path: Path) -> None:
    cfg = _config_file(tmp_path, tmp_path / "devices.db")
    code, out, err = _run(
        "devices",
        "add",
        "esp32-07",
        "--chip",
        "esp32",
        "--mac",
        "24:0A:C4:00:00:07",
        "--config",
        cfg,
    )
    assert code == 0, err
    code, out, _ = _run("devices", "list", "--config", cfg)
    assert code == 0
    header, row = out.splitlines()
    assert header.split() == ["NODE", "CHIP", "MAC", "FIRMWARE", "LAST", "SEEN", "OTA", "SOURCE"]
    assert row.split() == [
        "esp32-07",
        "esp32",
        "24:0a:c4:00:00:07",
        "-",
        "never",
        "none",
        "operator",
    ]
    code, out, _ = _run("devices", "list", "--json", "--config", cfg)
    (entry,) = json.loads(out)
    assert entry["node_id"] == "esp32-07" and entry["ota_state"] == "none"
    code, out, _ = _run("devices", "show", "esp32-07", "--json", "--config", cfg)
    assert json.loads(out)["ota_history"] == []
    code, out, _ = _run("devices", "show", "esp32-07", "--config", cfg)
    assert code == 0 and "mac          24:0a:c4:00:00:07" in out
    code, out, _ = _run("devices", "credentials", "esp32-07", "--json", "--config", cfg)
    login = json.loads(out)  # made by add; hashed in the password file, never in clear
    assert code == 0 and login["mqtt_user"] == "esp32-07" and len(login["mqtt_password"]) >= 22
    passwd = (tmp_path / "mqtt" / "passwd").read_text()
    assert passwd.startswith("esp32-07:$7$101$") and login["mqtt_password"] not in passwd
    assert _run("devices", "remove", "esp32-07", "--config", cfg)[0] == 0
    assert "esp32-07" not in (tmp_path / "mqtt" / "passwd").read_text()  # revoked
    code, _, err = _run("devices", "remove", "esp32-07", "--config", cfg)
    assert code == 1 and err == "error: no device 'esp32-07' in the registry\n"
    code, _, err = _run("devices", "show", "ESP32_07", "--config", cfg)
    assert code == 2 and err.startswith("error: node id 'ESP32_07'") and err.count("\n") == 1
    code, _, err = _run("devices", "add", "esp32-08", "--mac", "nope", "--config", cfg)
    assert code == 2 and "--mac" in err


def test_the_registry_process_keeps_boards_current_from_the_relay_in_batches(
    tmp_path: Path,
) -> None:
    db = tmp_path / "devices.db"
    config = config_on_free_ports(devices={"registry": str(db), "flush_interval_ms": 100})
    with running(Relay(config)):
        client = IngestClient(config.relay.ingest)
        try:
            with running(RegistryService(config)) as registry:
                client.send(
                    Hello(node_id="board-01", boot_id=7, seq=0, fw="shoal-esp32/0.2", via="mqtt")
                )
                client.send(
                    Hello(node_id="sim-001", boot_id=7, seq=0, fw="shoal-sim/1")
                )  # no board
                for seq in range(1, 41):
                    client.send(Heartbeat(node_id="board-01", boot_id=7, seq=seq))

                def entered() -> object:
                    with Registry(db) as reg:
                        d = reg.get("board-01")
                        return d if d is not None and d.last_seen else None

                first = wait_for(entered, 10)
                assert first.firmware == "shoal-esp32/0.2" and first.source == "telemetry"
                client.send(Heartbeat(node_id="board-01", boot_id=7, seq=41))
                wait_for(lambda: (d := _get(db, "board-01")) and d.last_seen > first.last_seen, 10)
                batches = registry.counters["batches"]
            assert _get(db, "sim-001") is None
            assert batches < 20  # 42 records from the board, written in a few transactions
        finally:
            client.close()


def _get(db: Path, node_id: str) -> object:
    with Registry(db) as reg:
        return reg.get(node_id)


def test_the_registry_process_exits_78_on_a_garbage_file(tmp_path: Path) -> None:
    import subprocess
    import sys

    db = tmp_path / "devices.db"
    db.write_bytes(b"garbage" * 1000)
    cfg = _config_file(tmp_path, db)
    done = subprocess.run(
        [sys.executable, "-m", "shoal.services.cli", "run", "registry", "--config", cfg],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 78
    assert (
        "config_error" in done.stdout + done.stderr
        and "devices.registry" in done.stdout + done.stderr
    )


def test_an_emulated_board_under_shoal_up_appears_in_the_registry(tmp_path: Path) -> None:
    """The whole device path: the real firmware (MicroPython unix port) -> broker -> shim ->
    relay -> the registry process under the supervisor -> the file `shoal devices` reads."""
    from shoal.services.boards.layout import NoMicroPython, micropython
    from shoal.services.testing import Cluster

    try:
        micropython()
    except NoMicroPython as err:
        pytest.skip(str(err))
    with Cluster(tmp_path, nodes=1, boards=1, devices={"flush_interval_ms": 200}) as c:
        db = Path(c.config.devices.registry)
        board = wait_for(
            lambda: db.exists() and _get(db, "board-01"), 30, ignore=(RegistryFileError,)
        )
        assert board.firmware == "shoal-esp32/0.2" and board.source == "telemetry"
        with Registry(db) as reg:  # the simulated node is no device
            assert [d.node_id for d in reg.devices()] == ["board-01"]
        seen = board.last_seen
        wait_for(lambda: _get(db, "board-01").last_seen > seen, 10)
        cfg = _config_file(tmp_path, db)
        code, out, _ = _run("devices", "list", "--config", cfg)
        assert code == 0 and "board-01" in out and "shoal-esp32/0.2" in out
