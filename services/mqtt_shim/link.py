"""The shim's MQTT connection (paho-mqtt 2.2), driven by the service's own poll loop.

paho supports an external loop: ``on_socket_open`` / ``on_socket_close`` say which socket
to poll, ``on_socket_register_write`` / ``unregister_write`` when there is something to
write, and ``loop_read`` / ``loop_write`` / ``loop_misc`` do the work. The Service polls
that socket beside its ZeroMQ sockets (``Service.watch_fd``), so the whole shim is one
thread: no lock, no hand-off between paho's thread and ZeroMQ's sockets (which must not be
shared across threads).

Reconnects: paho only reconnects by itself in ``loop_forever``; here a timer does, with
exponential backoff and jitter between ``reconnect_min_ms`` and ``reconnect_max_ms``. A TCP
connect is blocking (up to ``CONNECT_TIMEOUT_S``: instant on loopback, refused or not), the
rest is not. A connection that gets no CONNACK within the keepalive is closed by paho's
keepalive check (``loop_misc``) and tried again.

Birth and death of the shim itself: its will is ``state`` = offline, retained, QoS 1, on
``shoal/v1/shim/<shim_id>/state``; on every CONNACK it publishes ``online`` there (retained,
QoS 1, with its boot number), and ``stop`` publishes ``offline`` before an orderly
DISCONNECT.
"""

from __future__ import annotations

import random
import select
import time
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt

from shoal.services.broker.credentials import shim_login
from shoal.services.runtime.config import MqttConfig
from shoal.services.runtime.log import JsonLog
from shoal.services.runtime.mqtt_client import mqtt_client

from . import topics

CONNECT_TIMEOUT_S = 1.0
MISC_INTERVAL_S = 0.5  # keepalive pings and checks
READ_BUDGET = 512  # MQTT packets read per poll wake-up, at most
STOP_TIMEOUT_S = 1.0  # an orderly stop waits this long for the broker to take "offline"


class MqttLink:
    """One MQTT client session for the shim: subscriptions, state topic, reconnects."""

    def __init__(
        self,
        service: Any,  # the Shim: watch_fd, unwatch, after, every
        cfg: MqttConfig,
        boot: int,
        on_message: Callable[[str, bytes], None],
        counters: Any,
        log: JsonLog,
    ) -> None:
        self.service = service
        self.cfg = cfg
        self.boot = boot
        self.on_message = on_message
        self.counters = counters
        self.log = log
        self.host, self.port = cfg.shim_broker_address()
        self.state_topic = topics.state_topic(cfg.shim_id)
        self.connected = False
        self.stopping = False
        self.packets = 0  # PUBLISH packets received: tells a read pass when to stop
        self.backlogged = False  # the broker does not read: QoS 0 sends are dropped
        self._fd: int | None = None
        self._attempts = 0
        self._retry: Any = None
        self._was_up = False
        c = self.client = mqtt_client(cfg, f"shoal-{cfg.shim_id}", shim_login(cfg))
        c.connect_timeout = CONNECT_TIMEOUT_S
        c.will_set(self.state_topic, self._state("offline"), qos=1, retain=True)
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_message = self._on_message
        c.on_socket_open = self._on_socket_open
        c.on_socket_close = self._on_socket_close
        c.on_socket_register_write = self._on_register_write
        c.on_socket_unregister_write = self._on_unregister_write
        c.connect_async(self.host, self.port, keepalive=cfg.keepalive_s)

    def _state(self, state: Any) -> bytes:
        return topics.state_payload(state, self.cfg.shim_id, self.boot)

    # --- lifecycle ----------------------------------------------------------------------

    def start(self) -> None:
        self.service.every(MISC_INTERVAL_S, self._misc)
        self._attempt()

    def stop(self) -> None:
        """Publish offline (retained), wait a moment for the broker to take it, disconnect."""
        self.stopping = True
        if self._retry is not None:
            self._retry.cancel()
        c = self.client
        if self.connected:
            info = c.publish(self.state_topic, self._state("offline"), qos=1, retain=True)
            deadline = time.monotonic() + STOP_TIMEOUT_S
            while not info.is_published() and (sock := c.socket()) is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                writing = [sock] if c.want_write() else []
                select.select([sock], writing, [], min(left, 0.05))
                c.loop_write()
                c.loop_read()
            c.disconnect()  # an orderly DISCONNECT: the broker discards our will
            if c.socket() is not None and c.want_write():
                c.loop_write()
        if c.socket() is not None:
            c.loop_misc()  # closes what disconnect() left open
        self.counters["broker_connected"] = 0

    def _attempt(self) -> None:
        self._retry = None
        if self.stopping:
            return
        try:
            self.client.reconnect()  # TCP connect (blocking, bounded), CONNECT queued
        except (OSError, ValueError) as err:
            self.counters["connect_failures"] += 1
            if self._attempts == 0 or self._was_up:
                self.log.warning("broker_unreachable", broker=self.cfg.broker, error=str(err))
                self._was_up = False
            self._retry_later()

    def _retry_later(self) -> None:
        if self.stopping or self._retry is not None:
            return
        cfg = self.cfg
        cap = min(cfg.reconnect_max_ms, cfg.reconnect_min_ms * 2 ** min(self._attempts, 16))
        self._attempts += 1
        delay_ms = random.uniform(cfg.reconnect_min_ms, max(cfg.reconnect_min_ms, cap))
        self._retry = self.service.after(delay_ms / 1000, self._attempt)

    def _misc(self) -> None:
        c = self.client
        if c.socket() is None:
            return
        # Keepalive: a PINGREQ when idle; the connection closed (on_disconnect: retry) when
        # no PINGRESP comes, or no CONNACK, within the keepalive.
        c.loop_misc()

    # --- sending --------------------------------------------------------------------------

    def publish(self, topic: str, payload: bytes, qos: int = 0) -> bool:
        """Queue one publish; False (counted by the caller) when not connected or, for QoS
        0, when the broker is not reading what we sent before (no unbounded queue)."""
        if not self.connected or (qos == 0 and self.backlogged):
            return False
        info = self.client.publish(topic, payload, qos=qos)
        return info.rc == mqtt.MQTT_ERR_SUCCESS

    def flush(self) -> None:
        """Write what the publishes of this pass queued, as far as the socket takes it."""
        c = self.client
        if c.socket() is not None and c.want_write():
            c.loop_write()
            self.backlogged = c.want_write()

    # --- paho's callbacks -------------------------------------------------------------------

    def _io(self) -> None:
        c = self.client
        for _ in range(READ_BUDGET):
            before = self.packets
            if c.loop_read() != mqtt.MQTT_ERR_SUCCESS or c.socket() is None:
                break
            if self.packets == before:
                break  # no whole PUBLISH came: the socket is drained (or a packet is partial)
        self.service.after_read()
        self.flush()

    def _on_socket_open(self, client: Any, userdata: Any, sock: Any) -> None:
        self._fd = sock.fileno()
        self.service.watch_fd(self._fd, self._io, writable=client.want_write())

    def _on_socket_close(self, client: Any, userdata: Any, sock: Any) -> None:
        if self._fd is not None:
            self.service.unwatch(self._fd)
            self._fd = None
        self.backlogged = False

    def _on_register_write(self, client: Any, userdata: Any, sock: Any) -> None:
        if self._fd is not None:
            self.service.watch_fd(self._fd, self._io, writable=True)

    def _on_unregister_write(self, client: Any, userdata: Any, sock: Any) -> None:
        if self._fd is not None:
            self.service.watch_fd(self._fd, self._io, writable=False)

    def _on_connect(
        self, client: Any, userdata: Any, flags: Any, reason_code: Any, properties: Any
    ) -> None:
        if reason_code.is_failure:
            self.counters["connect_refused"] += 1
            self.log.warning("broker_refused", broker=self.cfg.broker, reason=str(reason_code))
            return  # the broker closes the connection: _on_disconnect retries
        self.connected = True
        self._was_up = True
        self._attempts = 0
        self.counters["broker_connected"] = 1
        self.counters["broker_connects"] += 1
        self.counters["reconnects"] = self.counters["broker_connects"] - 1
        client.subscribe(topics.SUBSCRIPTIONS)
        client.publish(self.state_topic, self._state("online"), qos=1, retain=True)
        self.log.info("broker_connected", broker=self.cfg.broker, boot=self.boot)
        self.service.beat_now()  # the liveness monitor judges boards again

    def _on_disconnect(
        self, client: Any, userdata: Any, flags: Any, reason_code: Any, properties: Any
    ) -> None:
        was = self.connected
        self.connected = False
        self.counters["broker_connected"] = 0
        if self.stopping:
            return
        if was:
            self.counters["broker_disconnects"] += 1
            self.log.warning("broker_lost", broker=self.cfg.broker, reason=str(reason_code))
            self.service.beat_now()  # the liveness monitor suspends verdicts on boards
        self._retry_later()

    def _on_message(self, client: Any, userdata: Any, message: Any) -> None:
        self.packets += 1
        try:
            topic = message.topic
        except UnicodeDecodeError:  # brokers check topics are UTF-8; in case one does not
            topic = ""
        try:
            self.on_message(topic, message.payload)
        except Exception as err:  # one bad payload must not cost the rest of the read pass
            self.counters["handler_errors"] += 1
            self.log.error("message_error", topic=topic[:200], error=repr(err))
