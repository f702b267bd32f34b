"""Who may log in to the MQTT broker and what a board may do there (docs/protocol.md §11.10):
the embedded broker (a real `shoal run broker`, with a real relay and shim) and mosquitto
(the Debian binary, with the files `shoal devices export-mosquitto` writes; and a TLS
listener the shim connects to). A board (username = its node id) publishes and subscribes
only under its own id; every refusal is counted and shows in `shoal status --json`."""

from __future__ import annotations

import datetime
import ipaddress
import json
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import msgspec
import pytest
from click.testing import CliRunner

sys.path.insert(0, str(Path(__file__).resolve().parent))
from brokers import mosquitto_broker, require_tool
from mqtt_support import HOST, Board, embedded_broker, heartbeat, hello, mqtt_config

from shoal.protocol.messages import RelaySnapshot
from shoal.services.broker.credentials import SHIM_USER, Credentials, read_passwd, verify_password
from shoal.services.cli.main import main
from shoal.services.mqtt_shim.service import Shim
from shoal.services.ota.service import OTA_USER, OtaService
from shoal.services.relay.service import Relay
from shoal.services.runtime.config import ShoalConfig, dump_toml
from shoal.services.runtime.ctl_client import CtlClient
from shoal.services.testing import running, wait_for

NOT_AUTHORIZED = 5
REFUSED = 0x80  # a SUBACK's code for a refused filter


def _connack(
    port: int, client_id: str, login: tuple[str, str] | None = None, will: str = ""
) -> int:
    """A raw CONNECT (clean session, keepalive 30, optional will and login); the CONNACK's
    return code."""

    def s(b: bytes) -> bytes:
        return len(b).to_bytes(2, "big") + b

    flags = 0x02
    body = s(client_id.encode())
    if will:
        flags |= 0x04 | 0x08
        body += s(will.encode()) + s(b'{"v":1}')
    if login is not None:
        flags |= 0xC0
        body += s(login[0].encode()) + s(login[1].encode())
    packet = b"\x00\x04MQTT\x04" + bytes((flags, 0, 30)) + body
    with socket.create_connection((HOST, port), timeout=10) as sock:
        sock.sendall(b"\x10" + bytes((len(packet),)) + packet)
        got = b""
        while len(got) < 4:
            chunk = sock.recv(4 - len(got))
            assert chunk, "closed before CONNACK"
            got += chunk
    assert got[:2] == b"\x20\x02"
    return got[3]


def _login(config: ShoalConfig, user: str) -> tuple[str, str]:
    return user, Credentials(config.mqtt.credentials).ensure(user)


def _nodes(config: ShoalConfig) -> set[str]:
    with CtlClient(config.relay.ctl) as ctl:
        snap: RelaySnapshot = ctl.call("snapshot", result_type=RelaySnapshot)
    return {n.node_id for n in snap.nodes}


def _status(config: ShoalConfig, tmp: Path) -> dict[str, Any]:
    path = tmp / "status.toml"
    path.write_text(dump_toml(config))
    args = ["status", "--json", "--timeout", "1", "--config", str(path)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    out: dict[str, Any] = json.loads(result.stdout)
    return out


@pytest.fixture(scope="module")
def embedded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ShoalConfig, Path]]:
    tmp = tmp_path_factory.mktemp("access")
    config = mqtt_config()
    with (
        embedded_broker(tmp, config),
        running(Relay(config)),
        running(Shim(config)) as shim,
    ):
        wait_for(lambda: shim.counters["broker_connected"], 15)
        yield config, tmp


def test_on_the_embedded_broker_a_board_cannot_publish_or_subscribe_as_another(
    embedded: tuple[ShoalConfig, Path],
) -> None:
    config, tmp = embedded
    port = config.mqtt.listen_address()[1]
    before = _status(config, tmp)["broker"]["counters"]
    theirs = ("shoal/v1/acc-b/ack", "shoal/v1/acc-b/task/down", "shoal/v1/+/ack", "shoal/v1/#")
    mine = ("shoal/v1/acc-a/ack", "shoal/v1/acc-a/#", "shoal/v1/shim/+/state")
    a = Board(port, "acc-a", login=_login(config, "acc-a"), subscribe=theirs + mine)
    b = Board(port, "acc-b", login=_login(config, "acc-b"))
    try:
        assert [code == REFUSED for code in a.granted] == [True] * 4 + [False] * 3
        a.publish(hello("acc-b", 5), topic="shoal/v1/acc-b/up")  # dropped by the broker
        a.publish(hello("acc-a", 5))
        a.wait_acked(5, 0)  # after the forged one, on the same connection
        assert "acc-b" not in _nodes(config)  # B's record never reached the relay
        b.publish(hello("acc-b", 6))
        b.wait_acked(6, 0)
        a.publish(heartbeat("acc-a", 5, 1))
        a.wait_acked(5, 1)  # B's ack went out before this one: A would have it by now
        assert not [t for t, _, _ in a.got if "/acc-b/" in t]
    finally:
        a.close()
        b.close()
    after = _status(config, tmp)["broker"]["counters"]
    assert after["denied_subscribe"] - before["denied_subscribe"] == 4
    assert after["denied_publish"] - before["denied_publish"] == 1


def test_on_the_embedded_broker_bad_logins_are_refused_and_counted(
    embedded: tuple[ShoalConfig, Path],
) -> None:
    config, tmp = embedded
    port = config.mqtt.listen_address()[1]
    user, password = _login(config, "acc-c")
    _login(config, "acc-d")
    before = _status(config, tmp)["broker"]["counters"]
    assert _connack(port, "acc-c", (user, password)) == 0
    assert _connack(port, "acc-c", (user, password + "x")) == NOT_AUTHORIZED
    assert _connack(port, "nobody", ("nobody", password)) == NOT_AUTHORIZED
    assert _connack(port, "anon") == NOT_AUTHORIZED  # amqtt's anonymous plugin is not in use
    assert _connack(port, "acc-d", (user, password)) == NOT_AUTHORIZED  # another's client id
    will = "shoal/v1/acc-d/will"  # a will that would say acc-d died
    assert _connack(port, "acc-c", (user, password), will=will) == NOT_AUTHORIZED
    status = _status(config, tmp)
    after = status["broker"]["counters"]
    refused = {k: after[k] - before[k] for k in after if k.startswith("refused_")}
    assert refused == {
        "refused_bad_password": 1,
        "refused_unknown_user": 1,
        "refused_anonymous": 1,
        "refused_client_id": 1,
        "refused_will": 1,
    }
    # A board added while the broker runs logs in at once (the password file is re-read).
    assert _connack(port, "acc-new", _login(config, "acc-new")) == 0
    path = tmp / "table.toml"
    path.write_text(dump_toml(config))
    table = CliRunner().invoke(main, ["status", "--timeout", "1", "--config", str(path)])
    assert "broker: refusals: " in table.stdout and "refused_will=" in table.stdout


def test_the_password_file_is_mosquittos_own_and_the_secrets_are_private(tmp_path: Path) -> None:
    """mosquitto_passwd's hashes verify here, ours in mosquitto (the test above); the
    passwords are kept 0600 in a 0700 directory, and never in the password file."""
    tool = require_tool("mosquitto_passwd")
    theirs = tmp_path / "theirs"
    subprocess.run([tool, "-c", "-b", str(theirs), "esp-07", "s3cret"], check=True, timeout=10)
    hashed = read_passwd(theirs)["esp-07"]
    assert verify_password("s3cret", hashed) and not verify_password("s3cre", hashed)
    creds = Credentials(tmp_path / "mqtt")
    password = creds.ensure("esp-08")
    assert creds.ensure("esp-08") == password  # kept, not made again
    assert password not in creds.passwd.read_text()
    assert (creds.secrets / "esp-08").stat().st_mode & 0o777 == 0o600
    assert creds.secrets.stat().st_mode & 0o777 == 0o700
    assert creds.make("esp-08") != password  # rotated: the old one no longer verifies
    assert not verify_password(password, creds.users()["esp-08"])
    with pytest.raises(ValueError, match="a node id"):
        creds.ensure("shim")


def _mosquitto_conf(creds: Credentials, target: Path, config: Path) -> list[str]:
    args = ["devices", "export-mosquitto", str(target), "--config", str(config)]
    code = CliRunner().invoke(main, args)
    assert code.exit_code == 0, code.output
    passwd, acl = target / "passwd", target / "acl"
    assert passwd.read_text() == creds.passwd.read_text()  # the same hashes, mosquitto's format
    return ["allow_anonymous false", f"password_file {passwd}", f"acl_file {acl}"]


def test_on_mosquitto_the_exported_logins_and_acl_keep_a_board_to_its_own_topics(
    tmp_path: Path,
) -> None:
    creds = Credentials(tmp_path / "mqtt")
    logins = {u: (u, creds.ensure(u)) for u in ("mq-a", "mq-b", SHIM_USER)}
    cfg = tmp_path / "shoal.toml"
    cfg.write_text(f'[mqtt]\ncredentials = "{creds.dir}"\n')
    with mosquitto_broker(conf=_mosquitto_conf(creds, tmp_path / "export", cfg)) as (_, port):
        assert _connack(port, "mq-a", (logins["mq-a"][0], "wrong")) == NOT_AUTHORIZED
        assert _connack(port, "anon") == NOT_AUTHORIZED
        service = Board(port, "svc", login=logins[SHIM_USER], subscribe=("shoal/v1/#",))
        theirs = ("shoal/v1/mq-b/ack", "shoal/v1/mq-b/task/down", "shoal/v1/+/ack")
        a = Board(port, "mq-a", login=logins["mq-a"], subscribe=(*theirs, "shoal/v1/mq-a/ack"))
        try:
            # mosquitto 2.0 grants any filter and checks the ACL on each delivery instead.
            a.publish(b"forged", topic="shoal/v1/mq-b/up")
            a.publish(b"own", topic="shoal/v1/mq-a/up")
            wait_for(lambda: service.received("shoal/v1/mq-a/up"), 10)
            assert service.received("shoal/v1/mq-b/up") == []  # in order: it would be here
            service.publish(b"for b", topic="shoal/v1/mq-b/ack")
            service.publish(b"for a", topic="shoal/v1/mq-a/ack")
            wait_for(lambda: a.received("shoal/v1/mq-a/ack"), 10)
            assert a.received("shoal/v1/mq-b/ack") == []
        finally:
            a.close()
            service.close()


def _certificates(directory: Path) -> tuple[Path, Path, Path]:
    """A CA and a server certificate for 127.0.0.1 signed by it: (ca, cert, key) PEM files."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)

    def cert(subject: str, key: Any, issuer: str, signer: Any, ca: bool) -> x509.Certificate:
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if not ca:
            san = x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(HOST))])
            builder = builder.add_extension(san, critical=False)
        return builder.sign(signer, hashes.SHA256())

    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    files = directory / "ca.pem", directory / "server.pem", directory / "server.key"
    pem = serialization.Encoding.PEM
    files[0].write_bytes(
        cert("shoal test CA", ca_key, "shoal test CA", ca_key, True).public_bytes(pem)
    )
    files[1].write_bytes(cert(HOST, key, "shoal test CA", ca_key, False).public_bytes(pem))
    files[2].write_bytes(
        key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return files


@contextmanager
def tls_broker(
    tmp_path: Path, logins: list[str], **sections: dict[str, Any]
) -> Iterator[tuple[ShoalConfig, int, dict[str, str], Path]]:
    """A mosquitto TLS listener that admits ``logins`` only, and a config (``sections``
    added) pointing at it with ``[mqtt] tls_ca`` set: (config, port, passwords, CA file)."""
    ca, cert, key = _certificates(tmp_path)
    mqtt = {"credentials": str(tmp_path / "mqtt"), "tls_ca": str(ca)}
    config = mqtt_config(mqtt=mqtt, **sections)
    creds = Credentials(config.mqtt.credentials)
    passwords = {user: creds.ensure(user) for user in logins}
    tls = [f"cafile {ca}", f"certfile {cert}", f"keyfile {key}"]
    conf = [*tls, "allow_anonymous false", f"password_file {creds.passwd}", f"acl_file {creds.acl}"]
    with mosquitto_broker(conf=conf) as (_, port):
        config = msgspec.structs.replace(
            config,
            mqtt=msgspec.structs.replace(
                config.mqtt, broker=f"mqtt://{HOST}:{port}", embedded=False
            ),
        )
        yield config, port, passwords, ca


def test_the_shim_and_a_board_reach_mosquitto_over_tls(tmp_path: Path) -> None:
    with tls_broker(tmp_path, ["tls-01", SHIM_USER]) as (config, port, passwords, ca):
        board = ("tls-01", passwords["tls-01"])
        with pytest.raises((AssertionError, OSError)):
            _connack(port, "tls-01", board)  # plain MQTT on the TLS listener: no answer
        with running(Relay(config)), running(Shim(config)) as shim:
            wait_for(lambda: shim.counters["broker_connected"], 15)
            b = Board(port, "tls-01", login=board, tls_ca=str(ca))
            try:
                b.publish(hello("tls-01", 9))
                b.wait_acked(9, 0)
                assert "tls-01" in _nodes(config)
            finally:
                b.close()


def test_the_ota_service_reaches_mosquitto_over_tls_with_the_shims_options(
    tmp_path: Path,
) -> None:
    """The OTA service's client is the shim's (services/runtime/mqtt_client.py): with
    ``[mqtt] tls_ca`` it logs in over TLS to a listener that plain MQTT gets no answer from."""
    ota = {"store": str(tmp_path / "ota")}
    devices = {"registry": str(tmp_path / "devices.db")}
    broker = tls_broker(tmp_path, [OTA_USER], ota=ota, devices=devices)
    with broker as (config, *_), running(OtaService(config)) as service:
        wait_for(lambda: service.counters["broker_connects"] >= 1, 15)
        assert service.counters["connect_refused"] == 0
