"""No input loses data, part 4: a wrong input fails at once, in one line that names it.

A config key or env var that cannot work is a ConfigError naming the key (or variable)
and the value; a command says ``error: ...`` and exits with its documented code, never a
traceback; a service that cannot start for a configuration reason exits 78, which the
supervisor does not restart (tests/test_supervisor.py); a scenario file that is no UTF-8
TOML is invalid (exit 4).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import click
import msgspec
import pytest

from shoal.services.cli.config import EXIT_CONFIG as CLI_EXIT_CONFIG
from shoal.services.runtime.config import (
    ENV_ENDPOINTS,
    ORDERED,
    ConfigError,
    ShoalConfig,
    dump_toml,
    load_config,
    validated,
    with_overrides,
)
from shoal.services.runtime.service import EXIT_BIND_FAILED, EXIT_CONFIG
from shoal.services.testing import config_on_free_ports, session_keys

ROOT = Path(__file__).resolve().parent.parent
SHOAL = [sys.executable, "-m", "shoal.services.cli"]


def config_error(tmp_path: Path, text: str) -> str:
    path = tmp_path / "shoal.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"{path}: ")
    return message.removeprefix(f"{path}: ")


def shoal(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> Any:
    """Run a shoal command in its own process group; whatever it started goes with it."""
    full_env = {**os.environ, "SHOAL_LOG_FORMAT": "json", **(env or {})}
    proc = subprocess.Popen(
        [*SHOAL, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=full_env,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def one_error_line(proc: Any) -> str:
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    return str(lines[0])


# --- endpoints ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        "tcp://127.0.0.1:7700",
        "tcp://*:7700",
        "tcp://localhost:7700",
        "tcp://node-3.example.com:7700",
        "tcp://[::1]:7700",
        "tcp://eth0:7700",  # libzmq binds an interface by name
        "tcp://127.0.0.1:*",  # any free port
        "ipc:///tmp/shoal-relay.sock",
        "inproc://relay",
    ],
)
def test_an_endpoint_in_any_zmq_form_is_accepted(tmp_path: Path, value: str) -> None:
    path = tmp_path / "shoal.toml"
    path.write_text(f'[relay]\ningest = "{value}"\n')
    assert load_config(path, env={}).relay.ingest == value


@pytest.mark.parametrize(
    "value,why",
    [
        ("localhost:7700", "is not a ZMQ endpoint (tcp://HOST:PORT, ipc://PATH, inproc://NAME)"),
        ("nonsense", "is not a ZMQ endpoint"),
        ("udp://127.0.0.1:7700", "is not a ZMQ endpoint"),
        ("tcp://127.0.0.1:99999", "has port 99999 (must be 1..65535)"),
        ("tcp://127.0.0.1:0", "has port 0 (must be 1..65535)"),
        ("tcp://127.0.0.1:http", "has port http"),
        ("tcp://127.0.0.1", "is not tcp://HOST:PORT"),
        ("tcp://:7700", "is not tcp://HOST:PORT"),
        ("tcp://::1:7700", "is not tcp://HOST:PORT"),  # IPv6 wants brackets
        ("tcp://[::g]:7700", "has a bad IPv6 address [::g]"),
        ("tcp://10.0.0.300:7700", "has a bad IPv4 address 10.0.0.300"),
        ("tcp://my host:7700", "has a bad host 'my host'"),
        ("ipc://", "has no path"),
        ("ipc:///" + "x" * 120, "has a path of 121 bytes, over 107"),
    ],
)
def test_an_endpoint_that_is_no_zmq_url_names_the_key_and_value(
    tmp_path: Path, value: str, why: str
) -> None:
    message = config_error(tmp_path, f'[relay]\ningest = "{value}"\n')
    assert message.startswith(f"key 'relay.ingest': {value!r} {why}")


def test_every_endpoint_key_is_checked(tmp_path: Path) -> None:
    keys = [(section, key) for section, key in ENV_ENDPOINTS.values() if key != "broker"]
    keys += [("liveness", "relay_bus"), ("delegator", "liveness_ctl"), ("boards", "bus")]
    for section, key in keys:
        message = config_error(tmp_path, f'[{section}]\n{key} = "localhost:1"\n')
        assert message.startswith(f"key '{section}.{key}': 'localhost:1' is not a ZMQ"), message


def test_an_override_left_empty_means_not_set(tmp_path: Path) -> None:
    config = load_config(env={})
    assert config.liveness.relay_bus == "" and config.mqtt.shim_broker == ""


@pytest.mark.parametrize(
    "text,message",
    [
        (
            'broker = "mqtt://127.0.0.1:99999"',
            "key 'mqtt.broker': 'mqtt://127.0.0.1:99999' has port",
        ),
        ('broker = "127.0.0.1:1883"', "key 'mqtt.broker': '127.0.0.1:1883' is not mqtt://HOST"),
        ('shim_broker = "tcp://127.0.0.1:1883"', "key 'mqtt.shim_broker'"),
        ('listen = "127.0.0.1:70000"', "key 'mqtt.listen': '127.0.0.1:70000' has port 70000"),
        ('listen = "1883"', "key 'mqtt.listen': '1883' is not HOST:PORT"),
    ],
)
def test_the_mqtt_broker_and_listen_address_need_a_valid_port(
    tmp_path: Path, text: str, message: str
) -> None:
    assert config_error(tmp_path, f"[mqtt]\n{text}\n").startswith(message)


def test_mqtt_addresses_in_their_forms_are_accepted(tmp_path: Path) -> None:
    path = tmp_path / "shoal.toml"
    path.write_text('[mqtt]\nbroker = "mqtt://[::1]"\nlisten = ":1884"\n')
    mqtt = load_config(path, env={}).mqtt
    assert mqtt.broker_address() == ("::1", 1883) and mqtt.listen_address() == ("", 1884)


def test_two_keys_on_one_endpoint_are_an_error(tmp_path: Path) -> None:
    message = config_error(tmp_path, '[relay]\nbus = "tcp://127.0.0.1:7700"\n')
    assert message == "key 'relay.bus': 'tcp://127.0.0.1:7700' is already relay.ingest's"


# --- thresholds in order -------------------------------------------------------------------


@pytest.mark.parametrize("section,low,high,strict", ORDERED)
def test_paired_thresholds_must_be_in_order(
    tmp_path: Path, section: str, low: str, high: str, strict: bool
) -> None:
    default = getattr(getattr(ShoalConfig(), section), high)
    over = default + 1
    message = config_error(tmp_path, f"[{section}]\n{low} = {over!r}\n")
    assert message.startswith(f"key '{section}.{low}': {over!r} must be")
    assert f"{section}.{high} ({default!r})" in message
    path = tmp_path / "equal.toml"
    path.write_text(f"[{section}]\n{low} = {default!r}\n")
    if strict:
        with pytest.raises(ConfigError, match="must be below"):
            load_config(path, env={})
    else:
        assert getattr(getattr(load_config(path, env={}), section), low) == default


def test_the_orders_the_issue_names_are_checked() -> None:
    pairs = {(s, lo, hi) for s, lo, hi, _ in ORDERED}
    assert ("liveness", "phi_suspect", "phi_dead") in pairs
    assert ("supervisor", "restart_backoff_min_s", "restart_backoff_max_s") in pairs
    assert ("mqtt", "reconnect_min_ms", "reconnect_max_ms") in pairs
    assert ("sim", "backoff_min_ms", "backoff_max_ms") in pairs


def test_liveness_phi_suspect_above_phi_dead_is_refused(tmp_path: Path) -> None:
    message = config_error(tmp_path, "[liveness]\nphi_suspect = 9.0\nphi_dead = 8.0\n")
    assert message == "key 'liveness.phi_suspect': 9.0 must be below liveness.phi_dead (8.0)"


# --- env vars, other inputs ------------------------------------------------------------------


def test_a_bad_env_endpoint_names_the_variable() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(env={"SHOAL_RELAY_CTL": "nonsense"})
    assert str(info.value) == (
        "SHOAL_RELAY_CTL (relay.ctl): 'nonsense' is not a ZMQ endpoint "
        "(tcp://HOST:PORT, ipc://PATH, inproc://NAME)"
    )
    with pytest.raises(ConfigError, match=r"^SHOAL_MQTT_BROKER \(mqtt.broker\): .* has port"):
        load_config(env={"SHOAL_MQTT_BROKER": "mqtt://127.0.0.1:99999"})
    with pytest.raises(ConfigError, match=r"^SHOAL_SUPERVISOR_CTL .*has port 65536"):
        load_config(env={"SHOAL_SUPERVISOR_CTL": "tcp://127.0.0.1:65536"})


def test_every_env_endpoint_is_checked() -> None:
    for var in ENV_ENDPOINTS:
        with pytest.raises(ConfigError, match=f"^{var} "):
            load_config(env={var: "tcp://127.0.0.1:99999"})


def test_a_config_file_that_is_not_utf8_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "shoal.toml"
    path.write_bytes(b"[relay]\ningest = '\xff'\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(path, env={})


def test_an_unknown_log_level_is_refused(tmp_path: Path) -> None:
    assert "key 'runtime.log_level'" in config_error(tmp_path, '[runtime]\nlog_level = "loud"\n')


def test_a_config_built_in_code_is_checked_like_a_file() -> None:
    config = load_config(env={})
    assert validated(config) == config
    with pytest.raises(ConfigError, match=r"key 'relay.ctl': 'tcp://h:99999' has port"):
        validated(with_overrides(config, "relay", ctl="tcp://h:99999"))
    with pytest.raises(ConfigError, match=r"key 'sim.nodes'"):
        validated(with_overrides(config, "sim", nodes=-1))
    with pytest.raises(ConfigError, match=r"key 'mqtt.reconnect_min_ms': 9000 must be at most"):
        validated(with_overrides(config, "mqtt", reconnect_min_ms=9000))


def test_broker_flag_with_a_port_out_of_range_is_a_usage_error() -> None:
    from shoal.services.cli.up import external_broker

    with pytest.raises(click.BadParameter, match=r"'mqtt://h:99999' has port 99999"):
        external_broker(load_config(env={}), "mqtt://h:99999")
    assert external_broker(load_config(env={}), "mqtt://h:1884").mqtt.broker == "mqtt://h:1884"


# --- commands: one line, the documented exit code ----------------------------------------------


def test_status_with_a_bad_env_endpoint_is_one_error_line() -> None:
    proc = shoal("status", env={"SHOAL_RELAY_CTL": "nonsense"})
    line = one_error_line(proc)
    assert proc.returncode == EXIT_CONFIG
    assert "SHOAL_RELAY_CTL" in line and "'nonsense' is not a ZMQ endpoint" in line


def test_up_with_a_port_out_of_range_in_the_file_is_one_error_line(tmp_path: Path) -> None:
    config = config_on_free_ports()
    path = tmp_path / "shoal.toml"
    path.write_text(dump_toml(config).replace(config.relay.ctl, "tcp://127.0.0.1:99999"))
    proc = shoal("up", "--headless", "--config", str(path))
    line = one_error_line(proc)
    assert proc.returncode == EXIT_CONFIG
    assert f"{path}: key 'relay.ctl': 'tcp://127.0.0.1:99999' has port 99999" in line


def test_up_with_a_broker_port_out_of_range_is_a_usage_error(tmp_path: Path) -> None:
    path = tmp_path / "shoal.toml"
    path.write_text(dump_toml(config_on_free_ports()))  # if it did start: beside anything
    proc = shoal("up", "--headless", "--config", str(path), "--broker", "mqtt://h:99999")
    line = one_error_line(proc)
    assert proc.returncode == 2
    assert "--broker" in line and "has port 99999" in line and "shoal up -h" in line


def test_run_with_an_endpoint_that_is_no_url_exits_78_without_binding(tmp_path: Path) -> None:
    proc = shoal("run", "relay", env={"SHOAL_RELAY_INGEST": "localhost:7700"}, timeout=30)
    line = one_error_line(proc)
    assert proc.returncode == EXIT_CONFIG and "another shoal" not in line


def test_a_bad_config_file_is_one_line_and_exit_78(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("[relay]\nbogus = 1\n")
    proc = shoal("config", "--config", str(path))
    assert proc.returncode == EXIT_CONFIG
    assert "bogus" in one_error_line(proc)


def test_the_cli_and_the_runtime_agree_on_exit_codes() -> None:
    assert CLI_EXIT_CONFIG == EXIT_CONFIG == 78 and EXIT_BIND_FAILED == 2


# --- a service that cannot start --------------------------------------------------------------

SERVICE = """
import os
import sys
import zmq
from shoal.services.runtime.config import ConfigError, load_config, with_overrides
from shoal.services.runtime.service import Service, main_for

class Bad(Service):
    name = "bad"

    def __init__(self, config):
        if sys.argv[1] == "init":
            raise ConfigError("delegator.ledger '/x/y.db': cannot open: no such directory")
        super().__init__(config)

    def setup(self):
        if sys.argv[1] == "setup":
            raise ConfigError("delegator.ledger '/x/y.db': not a SQLite ledger")
        self.bind("ingest", zmq.ROUTER, sys.argv[2])

main_for(Bad, with_overrides(load_config(env={}), "security", keys=os.environ["KEYS"]))
"""


def run_service(*args: str) -> Any:
    return subprocess.run(
        [sys.executable, "-c", SERVICE, *args],
        capture_output=True, text=True, timeout=30,
        env={**os.environ, "SHOAL_LOG_FORMAT": "json", "KEYS": str(session_keys())},
    )  # fmt: skip


@pytest.mark.parametrize(
    "where,error",
    [
        ("init", "delegator.ledger '/x/y.db': cannot open: no such directory"),
        ("setup", "delegator.ledger '/x/y.db': not a SQLite ledger"),
    ],
)
def test_a_config_error_from_a_service_is_one_log_line_and_exit_78(where: str, error: str) -> None:
    proc = run_service(where)
    assert proc.returncode == EXIT_CONFIG and "Traceback" not in proc.stderr
    records = [msgspec.json.decode(line) for line in proc.stderr.splitlines()]
    errors = [r for r in records if r["level"] == "error"]
    assert [(r["event"], r["svc"], r["error"]) for r in errors] == [("config_error", "bad", error)]


def test_an_address_not_of_this_machine_is_a_config_error_not_a_port_taken() -> None:
    proc = run_service("run", "tcp://203.0.113.7:7700")  # TEST-NET-3: never local
    assert proc.returncode == EXIT_CONFIG, proc.stderr
    (record,) = [
        r for r in map(msgspec.json.decode, proc.stderr.splitlines()) if r["level"] == "error"
    ]
    assert record["event"] == "config_error" and "203.0.113.7" in record["error"]
    assert "another shoal" not in proc.stderr


def test_the_line_a_service_that_cannot_start_writes_is_its_reason() -> None:
    from shoal.services.runtime.service import start_error_of

    assert start_error_of(b"error: configuration: x.toml: key 'a.b': 1") == (
        "configuration: x.toml: key 'a.b': 1"
    )
    record = b'{"level":"error","event":"config_error","error":"cannot bind X","hint":"h"}'
    assert start_error_of(record) == "cannot bind X (h)"
    assert start_error_of(b'{"event":"bind_failed","error":"cannot bind Y"}') == "cannot bind Y"
    assert start_error_of(b'{"event":"started","note":"config_error"}') is None
    assert start_error_of(b"Traceback (most recent call last):") is None


# --- scenario files -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "data,why",
    [
        (b'name = "x"\n\xff\xfe description = 1\n', "is not UTF-8"),
        (b"\x00\x01\x02 binary", "TOML syntax"),
        (b"[fault\n", "TOML syntax"),
    ],
)
@pytest.mark.parametrize("command", [["validate"], ["run", "--dry-run"], ["run"]])
def test_a_scenario_that_is_no_utf8_toml_exits_4_in_one_line(
    tmp_path: Path, data: bytes, why: str, command: list[str]
) -> None:
    path = tmp_path / "scenario.toml"
    path.write_bytes(data)
    proc = shoal("chaos", *command, str(path), timeout=30)
    assert proc.returncode == 4, proc.stderr
    assert "Traceback" not in proc.stderr
    (line,) = proc.stderr.splitlines()
    assert line.startswith(f"{path}: ") and why in line


# --- the docs say what the code does ----------------------------------------------------------


def _doc_value(text: str) -> Any:
    text = text.strip().strip("`")
    if re.fullmatch(r"[0-9][0-9 ,]*(\.[0-9]+)?", text):
        return float(text.replace(" ", "").replace(",", ""))
    literals: dict[str, Any] = {"true": True, "false": False, '""': "", "{}": {}, "[]": []}
    return literals.get(text, text)


def _every_key() -> set[str]:
    config = ShoalConfig()
    return {
        f"{section}.{key}"
        for section in config.__struct_fields__
        for key in getattr(config, section).__struct_fields__
    }


def test_protocol_md_lists_every_config_key_with_the_code_default() -> None:
    """docs/protocol.md's table of configuration defaults, row by row, against config.py."""
    text = (ROOT / "docs" / "protocol.md").read_text()
    table = text.split("Configuration defaults (`services/runtime/config.py`")[1].split("\n\n")[1]
    config = ShoalConfig()
    seen = set()
    for row in table.splitlines()[2:]:
        cells = [c.strip() for c in row.strip("|").split("|")]
        keys, defaults = cells[0].split(" / "), cells[1].split(" / ")
        section = keys[0].strip("`").split(".")[0]
        defaults *= len(keys) if len(defaults) == 1 else 1
        for key, default in zip(keys, defaults, strict=True):
            name = key.strip("`").split(".")[-1]
            value, doc = getattr(getattr(config, section), name), _doc_value(default)
            if isinstance(doc, str) and doc.startswith(":"):
                assert isinstance(value, str) and value.endswith(doc), (key, value, default)
            else:
                assert doc == value, (key, value, default)
            seen.add(f"{section}.{name}")
    assert seen == _every_key(), _every_key() ^ seen


def test_readme_names_every_config_key_in_its_section_row() -> None:
    rows = {
        line.split("`[")[1].split("]`")[0]: line
        for line in (ROOT / "README.md").read_text().splitlines()
        if line.startswith("| `[")
    }
    missing = [
        k for k in sorted(_every_key()) if f"`{k.split('.')[1]}`" not in rows[k.split(".")[0]]
    ]
    assert not missing


def test_readme_and_protocol_md_name_every_endpoint_variable() -> None:
    readme = (ROOT / "README.md").read_text()
    protocol = (ROOT / "docs" / "protocol.md").read_text()
    for var, (section, key) in ENV_ENDPOINTS.items():
        assert f"`{var}`" in readme, var
        assert f"| `{section}.{key}` |" in protocol and f"| `{var}` |" in protocol, var
