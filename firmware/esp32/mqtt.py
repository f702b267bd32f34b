"""A small MQTT 3.1.1 client for the board (MicroPython), modelled on umqtt.simple.

Runs unchanged under CPython for tests. QoS 0 and 1 (no QoS 2), one topic per SUBSCRIBE,
last will, user/password, keepalive pings, no TLS, no MQTT 5.

- The socket is non-blocking; every wait polls with a bound (timeout_ms), so no call
  hangs: connect, CONNACK, SUBACK, PUBACK and a send that cannot progress all time out.
- Reads are buffered across calls (a packet split over many TCP segments is fine), and
  the buffer never holds more than max_packet + 5 bytes: a packet that announces a longer
  body is refused as soon as its header arrives.
- Any error (MQTTException for the protocol, OSError for the socket, or an exception from
  the callback) closes the client. connect() again to reconnect.
- The callback is f(topic, msg, retained): topic and msg are bytes, retained a bool.
- check_msg() also does the keepalive: a PINGREQ after keepalive/2 s without sending, and
  the connection is declared dead if no PINGRESP comes within timeout_ms.
"""

import errno
import select
import socket
import time

try:
    from time import ticks_diff, ticks_ms
except ImportError:  # CPython

    def ticks_ms():
        return int(time.monotonic() * 1000)

    def ticks_diff(a, b):
        return a - b


EAGAIN = errno.EAGAIN
POLLIN = select.POLLIN
POLLOUT = select.POLLOUT
# Fixed body sizes of the packets a broker sends us (CONNACK, PUBACK, SUBACK for one
# topic, PINGRESP); PUBLISH (0x30-0x3B) is the only other one we accept.
SIZES = {0x20: 2, 0x40: 2, 0x90: 3, 0xD0: 0}
REFUSALS = (
    None,
    "bad protocol version",
    "client id rejected",
    "server unavailable",
    "bad user name or password",
    "not authorized",
)


class MQTTException(Exception):
    pass


def _b(x):
    return x.encode() if isinstance(x, str) else x


def _str(x):
    x = _b(x)
    return bytes((len(x) >> 8, len(x) & 0xFF)) + x


def _varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | 0x80 if n else b)
        if not n:
            return out


class MQTTClient:
    def __init__(
        self,
        client_id,
        server,
        port=1883,
        user=None,
        password=None,
        keepalive=0,
        max_packet=4096,
        timeout_ms=5000,
        retries=1,
    ):
        self.client_id = _b(client_id)
        self.server = server
        self.port = port
        self.user = user
        self.password = password
        self.keepalive = keepalive
        self.max_packet = max_packet
        self.timeout_ms = timeout_ms
        self.retries = retries  # QoS 1 resends (with DUP) after timeout_ms without PUBACK
        self.cb = None
        self.will = None
        self.sock = None
        self.connected = False
        self._poll = None
        self._buf = bytearray()
        self._pid = 0
        self._want = None  # (packet type, packet id) a blocking call waits for
        self._got = None
        self._body = None
        self._last_tx = 0
        self._ping_at = None  # when the unanswered PINGREQ went out
        self._rx_at = 0  # when the partial packet in _buf started

    def set_callback(self, f):
        self.cb = f

    def set_last_will(self, topic, msg, retain=False, qos=0):
        if not topic or qos not in (0, 1, 2):
            raise ValueError("bad will")
        self.will = (_b(topic), _b(msg), retain, qos)

    # --- public calls: any exception closes the client -----------------------------------

    def connect(self, clean_session=True):
        """Open the TCP connection and the MQTT session; returns session_present."""
        self.close()
        try:
            return self._connect(clean_session)
        except Exception:
            self.close()
            raise

    def publish(self, topic, msg, retain=False, qos=0):
        self._check()
        try:
            self._publish(_b(topic), _b(msg), retain, qos)
        except Exception:
            self.close()
            raise

    def subscribe(self, topic, qos=0):
        self._check()
        try:
            if qos not in (0, 1):
                raise MQTTException("qos %r not supported" % qos)
            pid = self._new_pid()
            t = _str(topic)
            pkt = b"\x82" + _varint(len(t) + 3) + bytes((pid >> 8, pid & 0xFF)) + t
            self._send(pkt + bytes((qos,)))
            got = self._await(0x90, pid)
            if got is None:
                raise MQTTException("no SUBACK")
            if got[2] & 0x80:
                raise MQTTException("subscribe refused")
            return got[2]
        except Exception:
            self.close()
            raise

    def wait_msg(self, timeout_ms=None):
        """Wait up to timeout_ms (default: the client's) for packets and handle all that
        are complete; returns the type of the last one handled (0x30: a PUBLISH), or None."""
        self._check()
        if timeout_ms is None:
            timeout_ms = self.timeout_ms
        try:
            start = ticks_ms()
            left = timeout_ms
            while True:
                got = self._pump(left)
                left = timeout_ms - ticks_diff(ticks_ms(), start)
                if got is not None or left <= 0:
                    break
            self._housekeeping()
            return got
        except Exception:
            self.close()
            raise

    def check_msg(self):
        """Handle every complete packet already received, without blocking."""
        return self.wait_msg(0)

    def ping(self):
        self._check()
        try:
            self._send(b"\xc0\x00")
            if self._ping_at is None:
                self._ping_at = ticks_ms()
        except Exception:
            self.close()
            raise

    def disconnect(self):
        """Orderly DISCONNECT (the broker then discards the will) and close; never raises."""
        if self.connected:
            try:
                self._send(b"\xe0\x00")
            except Exception:
                pass
        self.close()

    def close(self):
        s = self.sock
        self.sock = None
        self.connected = False
        self._poll = None
        self._buf = bytearray()
        self._ping_at = None
        self._want = None
        if s is not None:
            try:
                s.close()
            except OSError:
                pass

    # --- internals -----------------------------------------------------------------------

    def _check(self):
        if not self.connected:
            raise MQTTException("not connected")

    def _connect(self, clean_session):
        ai = socket.getaddrinfo(self.server, self.port, 0, socket.SOCK_STREAM)[0]
        s = socket.socket(ai[0], ai[1], ai[2])
        self.sock = s
        s.setblocking(False)
        try:
            s.connect(ai[-1])
        except OSError as e:
            if e.args[0] != errno.EINPROGRESS:
                raise
        p = select.poll()
        p.register(s, POLLOUT)
        ev = p.poll(self.timeout_ms)
        if not ev:
            raise MQTTException("connect timeout")
        if ev[0][1] & (select.POLLERR | select.POLLHUP):
            raise OSError(errno.ECONNREFUSED)
        p.modify(s, POLLIN)
        self._poll = p

        flags = 2 if clean_session else 0
        body = _str(self.client_id)
        if self.will:
            t, m, retain, qos = self.will
            flags |= 4 | qos << 3 | (0x20 if retain else 0)
            body += _str(t) + _str(m)
        if self.user is not None:
            flags |= 0x80
            body += _str(self.user)
            if self.password is not None:
                flags |= 0x40
                body += _str(self.password)
        ka = self.keepalive
        head = b"\x00\x04MQTT\x04" + bytes((flags, ka >> 8, ka & 0xFF))
        self._send(b"\x10" + _varint(len(head) + len(body)) + head + body)
        got = self._await(0x20, None)
        if got is None:
            raise MQTTException("no CONNACK")
        if got[1]:
            r = got[1]
            raise MQTTException(
                "connect refused: %d %s" % (r, REFUSALS[r] if r < 6 else "unknown code")
            )
        if got[0] & 0xFE:
            raise MQTTException("bad CONNACK flags")
        return bool(got[0] & 1)

    def _publish(self, topic, msg, retain, qos):
        if qos not in (0, 1):
            raise MQTTException("qos %r not supported" % qos)
        h = bytearray(b"\x30")
        h[0] |= qos << 1 | (1 if retain else 0)
        h += _varint(2 + len(topic) + len(msg) + 2 * qos)
        h += _str(topic)
        if not qos:
            self._send(h)
            self._send(msg)
            return
        pid = self._new_pid()
        h += bytes((pid >> 8, pid & 0xFF))
        for _ in range(self.retries + 1):
            self._send(h)
            self._send(msg)
            if self._await(0x40, pid) is not None:
                return
            h[0] |= 8  # DUP on the resend
        raise MQTTException("no PUBACK")

    def _new_pid(self):
        self._pid = self._pid % 0xFFFF + 1
        return self._pid

    def _await(self, op, pid):
        """Pump packets until the broker answers (op, pid); its body, or None after
        timeout_ms."""
        self._want = (op, pid)
        self._got = None
        start = ticks_ms()
        try:
            while self._got is None:
                left = self.timeout_ms - ticks_diff(ticks_ms(), start)
                if left <= 0:
                    break
                self._pump(left)
            return self._got
        finally:
            self._want = self._got = None

    def _send(self, data):
        mv = memoryview(data)
        start = ticks_ms()
        while len(mv):
            try:
                n = self.sock.send(mv)
            except OSError as e:
                if e.args[0] != EAGAIN:
                    raise
                n = 0
            if n:
                mv = mv[n:]
                continue
            left = self.timeout_ms - ticks_diff(ticks_ms(), start)
            if left <= 0:
                raise MQTTException("send timeout")
            self._poll.modify(self.sock, POLLOUT)
            self._poll.poll(left)
            self._poll.modify(self.sock, POLLIN)
        self._last_tx = ticks_ms()

    def _pump(self, wait_ms):
        """Read what the socket has (waiting up to wait_ms for the first bytes, and at most
        about max_packet bytes in all) and handle every complete packet; returns the type
        of the last one handled, or None."""
        got = None
        budget = self.max_packet + 5
        # Stop reading once an awaited answer is in: a refused CONNACK comes with a close.
        while budget > 0 and self._got is None:
            if not self._poll.poll(wait_ms if wait_ms > 0 else 0):
                break
            wait_ms = 0
            room = self.max_packet + 5 - len(self._buf)
            try:
                d = self.sock.recv(room if room < 512 else 512)
            except OSError as e:
                if e.args[0] == EAGAIN:
                    break
                raise
            if not d:
                raise MQTTException("connection closed by broker")
            if not self._buf:
                self._rx_at = ticks_ms()
            self._buf += d
            budget -= len(d)
            while True:
                p = self._next()
                if p is None:
                    break
                got = p
                self._handle(p, self._body)
        return got

    def _next(self):
        """Take one complete packet off the buffer: its type byte (the body goes to
        self._body), or None if it is not complete yet. Raises on a bad header."""
        b = self._buf
        n = len(b)
        if not n:
            return None
        op = b[0]
        t = op & 0xF0
        if not (t in SIZES and op == t or t == 0x30 and op & 6 < 4):
            raise MQTTException("bad packet type 0x%02x" % op)
        size = 0
        i = 1
        while True:
            if i >= n:
                return None
            c = b[i]
            size |= (c & 0x7F) << (7 * (i - 1))
            i += 1
            if not c & 0x80:
                break
            if i == 5:
                raise MQTTException("bad remaining length")
        if size > self.max_packet:
            raise MQTTException("packet too large: %d" % size)
        if SIZES.get(op, size) != size:
            raise MQTTException("bad length %d for type 0x%02x" % (size, op))
        if n < i + size:
            return None
        self._body = bytes(memoryview(b)[i : i + size])
        b[: i + size] = b""
        if b:
            self._rx_at = ticks_ms()
        return op

    def _handle(self, op, body):
        if (op == 0x20) == self.connected:
            raise MQTTException("unexpected CONNACK" if self.connected else "expected CONNACK")
        w = self._want
        if op == 0xD0:
            self._ping_at = None
        elif op & 0xF0 == 0x30:
            qos = op >> 1 & 3
            if len(body) < 2:
                raise MQTTException("bad PUBLISH")
            i = 2 + (body[0] << 8 | body[1])
            if len(body) < i + 2 * qos:
                raise MQTTException("bad PUBLISH")
            topic = body[2:i]
            pid = body[i : i + 2 * qos]
            if self.cb:
                self.cb(topic, body[i + 2 * qos :], bool(op & 1))
            if qos:
                self._send(b"\x40\x02" + pid)
        elif op == 0x20:
            # Whatever follows the CONNACK in the same read belongs to the session.
            self.connected = True
            self._got = body
        elif w and w[0] == op and w[1] == body[0] << 8 | body[1]:
            self._got = body  # the PUBACK or SUBACK we wait for; others are late, ignored

    def _housekeeping(self):
        now = ticks_ms()
        if self._ping_at is not None:
            if ticks_diff(now, self._ping_at) > self.timeout_ms:
                raise MQTTException("no PINGRESP")
        elif self.keepalive and ticks_diff(now, self._last_tx) >= self.keepalive * 500:
            self.ping()
        if self._buf and ticks_diff(now, self._rx_at) > self.timeout_ms:
            raise MQTTException("truncated packet")
