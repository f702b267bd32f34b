"""Real MQTT brokers for tests: amqtt (PyPI) and mosquitto (Debian), each on a free loopback
port in a temporary directory, stopped and cleaned up however the test ends.

    with amqtt_broker() as (host, port): ...
    with mosquitto_broker() as (host, port): ...
    with mosquitto_broker(users={"board": "secret"}) as (host, port): ...  # no anonymous

Readiness is a TCP connect that succeeds (polled, bounded), never a fixed sleep. Without
/usr/sbin/mosquitto the mosquitto helpers skip the test, unless CI=true: then they fail.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

HOST = "127.0.0.1"
MOSQUITTO = "/usr/sbin/mosquitto"
AMQTT = str(Path(sys.executable).with_name("amqtt"))
READY_TIMEOUT_S = 20.0  # amqtt imports a lot; under a loaded CI machine it can take seconds


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def wait_for_port(
    host: str, port: int, proc: subprocess.Popen[bytes], log: Path, timeout_s: float
) -> None:
    """Poll a TCP connect until it succeeds; fail early if the broker process exits."""
    deadline = time.monotonic() + timeout_s
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"broker exited with {proc.returncode}:\n{_tail(log)}")
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"broker not listening on {port} after {timeout_s} s:\n{_tail(log)}")
        time.sleep(0.02)


def _tail(log: Path) -> str:
    try:
        return log.read_text(errors="replace")[-3000:]
    except OSError:
        return "(no log)"


@contextmanager
def _run(cmd: list[str], workdir: Path, port: int, log: Path) -> Iterator[tuple[str, int]]:
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, cwd=workdir, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_for_port(HOST, port, proc, log, READY_TIMEOUT_S)
        yield HOST, port
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)


@contextmanager
def amqtt_broker() -> Iterator[tuple[str, int]]:
    """amqtt 0.12 (MQTT 3.1.1), anonymous clients allowed, no $SYS or packet logging."""
    if not Path(AMQTT).exists():
        pytest.skip(f"amqtt not installed ({AMQTT})")
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="amqtt-") as d:
        workdir = Path(d)
        config = workdir / "amqtt.yaml"
        config.write_text(
            "listeners:\n"
            "  default:\n"
            "    type: tcp\n"
            f"    bind: {HOST}:{port}\n"
            "plugins:\n"
            "  amqtt.plugins.authentication.AnonymousAuthPlugin:\n"
            "    allow_anonymous: true\n"
        )
        with _run([AMQTT, "-c", str(config)], workdir, port, workdir / "amqtt.log") as addr:
            yield addr


def require_mosquitto() -> None:
    """Skip (or, with CI=true, fail) when the Debian mosquitto broker is missing."""
    if Path(MOSQUITTO).exists():
        return
    reason = f"{MOSQUITTO} not installed (apt-get install mosquitto mosquitto-clients)"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(reason)
    pytest.skip(reason)


def require_tool(name: str) -> str:
    """A mosquitto-clients tool (mosquitto_sub, mosquitto_pub, mosquitto_passwd)."""
    path = shutil.which(name)
    if path:
        return path
    reason = f"{name} not installed (apt-get install mosquitto mosquitto-clients)"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(reason)
    pytest.skip(reason)


@contextmanager
def mosquitto_broker(
    users: dict[str, str] | None = None, conf: list[str] | None = None
) -> Iterator[tuple[str, int]]:
    """mosquitto 2.0 on a loopback port, persistence off. With users, a password file
    (mosquitto_passwd) and no anonymous clients; with conf, those lines instead (a password
    file and ACL of the caller's, a TLS listener's files); else anonymous clients allowed."""
    require_mosquitto()
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="mosquitto-") as d:
        workdir = Path(d)
        lines = [f"listener {port} {HOST}", "persistence false", "log_dest stdout"]
        if os.geteuid() == 0:
            lines.append("user root")  # as root it would switch to 'mosquitto' and lose d
        if conf is not None:
            lines += conf
        elif users:
            passwd = require_tool("mosquitto_passwd")
            pwfile = workdir / "passwords"
            pwfile.touch(mode=0o600)
            for name, password in users.items():
                subprocess.run([passwd, "-b", str(pwfile), name, password], check=True, timeout=10)
            lines += ["allow_anonymous false", f"password_file {pwfile}"]
        else:
            lines.append("allow_anonymous true")
        config = workdir / "mosquitto.conf"
        config.write_text("\n".join(lines) + "\n")
        with _run([MOSQUITTO, "-c", str(config)], workdir, port, workdir / "mosquitto.log") as addr:
            yield addr
