"""Configuration: defaults, file overrides, env endpoints, and errors that name the key."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from shoal.services.runtime.config import ConfigError, load_config


def test_defaults_load_without_a_file() -> None:
    config = load_config(env={})
    assert config.relay.ingest.startswith("tcp://")
    assert config.sim.nodes == 8


def test_file_overrides_only_the_keys_it_names(tmp_path: Path) -> None:
    path = tmp_path / "shoal.toml"
    path.write_text("[sim]\nnodes = 3\n[relay]\ndedup_window = 64\n")
    config = load_config(path, env={})
    assert config.sim.nodes == 3 and config.relay.dedup_window == 64
    assert config.sim.heartbeat_interval_ms == 250


def test_env_moves_endpoints(tmp_path: Path) -> None:
    config = load_config(env={"SHOAL_RELAY_INGEST": "tcp://10.1.2.3:9000"})
    assert config.relay.ingest == "tcp://10.1.2.3:9000"


@pytest.mark.parametrize(
    "text,names",
    [
        ("[relay]\ningest_port = 5\n", "ingest_port"),
        ("[relya]\n", "relya"),
        ("[sim]\nnodes = 'many'\n", "sim.nodes"),
        ("[relay]\ndedup_window = 2\n", "relay.dedup_window"),
        ("[sim\n", "not valid TOML"),
    ],
)
def test_a_wrong_key_or_type_is_an_error_naming_it(tmp_path: Path, text: str, names: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    assert names in str(info.value) and str(path) in str(info.value)


def test_the_command_stops_at_start_on_a_bad_config(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("[relay]\nbogus = 1\n")
    proc = subprocess.run(
        [sys.executable, "-m", "shoal.services.cli", "run", "relay", "--config", str(path)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode != 0
    assert "bogus" in proc.stderr and "Traceback" not in proc.stderr


def test_shoal_config_prints_every_section() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "shoal.services.cli", "config"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0
    for section in ("[relay]", "[sim]", "[runtime]", "[supervisor]"):
        assert section in proc.stdout
