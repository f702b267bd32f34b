"""The broker process: amqtt on ``[mqtt] listen`` until SIGTERM or Ctrl-C.

Usage: ``shoal run broker`` (``shoal up`` starts it with ``[mqtt] embedded``). Exits 0 after
an orderly stop, 2 with a ``bind_failed`` log line when the port is taken, 78 with a
``config_error`` line when ``[mqtt] listen`` is no address of this machine (as every shoal
service does), 1 if amqtt fails otherwise.

amqtt's limits and what is done about them:

- MQTT 3.1.1 only (no MQTT 5): boards and the shim speak 3.1.1.
- Keepalives are not enforced (amqtt issue #308): ``keepalive.watch`` does it.
- Offline queues are unbounded for persistent sessions: every client, once its login is
  checked (services/broker/access.py), is marked anonymous to amqtt, which then keeps
  neither queue nor session for it once it disconnects. Nothing in shoal needs a persistent session (QoS 0
  node messages, acked by the relay; the task protocol acks itself).
- No message size limit, and a packet is read whole before any plugin sees it: the
  listener is loopback by default; the shim refuses payloads over ``max_payload``. A
  deployment on a LAN uses mosquitto with ``max_packet_size``.
- Memory grows under steady load (issue #123): the supervisor restarts the process if it
  dies; large fleets belong on mosquitto.
- ``max_connections``: a connection over ``max_clients`` waits (unserved) for a free slot
  rather than being refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import gc
import logging
import os
import signal
import socket
import sys
import time
from typing import Any

from shoal.services.runtime.config import ConfigError, ShoalConfig
from shoal.services.runtime.log import JsonLog, Summary
from shoal.services.runtime.service import (
    BAD_ADDRESS_HINTS,
    EXIT_BIND_FAILED,
    EXIT_CONFIG,
    exit_with_parent,
)

from . import keepalive
from .access import AuthFirst, new_counters
from .credentials import Credentials
from .fanout import IndexedBroker
from .status import BrokerStatus

EXIT_FAILED = 1
STOP_TIMEOUT_S = 3.0  # amqtt's own shutdown can wait 5 s on broadcasts; the supervisor 5 s
PLUGIN = "shoal.services.broker.keepalive.ActivityPlugin"
PASSWORDS = "shoal.services.broker.access.PasswordPlugin"
ACL = "shoal.services.broker.access.AclPlugin"


def amqtt_config(config: ShoalConfig) -> dict[str, Any]:
    """amqtt's configuration (its BrokerConfig, as a dict) for ``[mqtt]``."""
    mqtt = config.mqtt
    anonymous = mqtt.allow_anonymous
    return {
        "listeners": {
            "default": {
                "type": "tcp",
                "bind": mqtt.listen,
                "max_connections": mqtt.max_clients,
            }
        },
        "timeout_disconnect_delay": 0,
        # No $SYS plugin, no packet logging: only what shoal needs. No AnonymousAuthPlugin:
        # it admits any client that sends a username.
        "plugins": {
            PASSWORDS: {
                "password_file": str(Credentials(mqtt.credentials).passwd),
                "allow_anonymous": anonymous,
            },
            ACL: {"allow_anonymous": anonymous},
            PLUGIN: {},
        },
    }


class ShoalBroker(AuthFirst, IndexedBroker):
    """amqtt with the indexed fan-out, a login checked before any session is touched."""


class _ToSummary(logging.Handler):
    """amqtt's warnings and errors, summed per logger and logged once per interval: a
    client that connects and sends nothing (a readiness probe) must not flood the log."""

    def __init__(self, summary: Summary) -> None:
        super().__init__(logging.WARNING)
        self.summary = summary

    def emit(self, record: logging.LogRecord) -> None:
        with contextlib.suppress(Exception):
            self.summary.add(f"{record.levelname.lower()} {record.name}", record.getMessage())


class BrokerProcess:
    """One amqtt broker with shoal's config, logs and stop."""

    def __init__(self, config: ShoalConfig) -> None:
        self.config = config
        self.log = JsonLog("broker", config.runtime.log_level)
        self.amqtt_log = Summary(self.log, "amqtt")
        # Fixed keys (the status thread copies the dict while the loop counts).
        self.counters: dict[str, int] = {"keepalive_drops": 0}
        self.refusals: list[dict[str, int]] = []  # the access plugins' counters
        self.started = time.monotonic()

    def status_counters(self) -> dict[str, int]:
        """What ``shoal status`` shows of the broker: its counters and every refusal."""
        out = {**self.counters, **new_counters()}
        for counters in list(self.refusals):
            for key, value in list(counters.items()):
                out[key] += value
        return out

    def _dropped(self, client_id: str, silent_s: float) -> None:
        self.counters["keepalive_drops"] += 1
        self.log.info("keepalive_expired", client=client_id, silent_s=round(silent_s, 2))

    async def serve(self, stop: asyncio.Event) -> int:
        handler = _ToSummary(self.amqtt_log)
        amqtt_logger = logging.getLogger("amqtt")
        amqtt_logger.addHandler(handler)
        amqtt_logger.setLevel(logging.WARNING)
        amqtt_logger.propagate = False
        try:
            Credentials(self.config.mqtt.credentials).ensure_file()  # amqtt needs the file
        except ConfigError as err:
            self.log.error("config_error", error=str(err))
            return EXIT_CONFIG
        status = BrokerStatus(self.config, self.status_counters)
        code = status.start_in_thread()
        if code:
            return code
        try:
            return await self._serve(stop)
        finally:
            status.stop_thread()

    async def _serve(self, stop: asyncio.Event) -> int:
        from amqtt.errors import BrokerError

        from .access import AclPlugin, PasswordPlugin

        broker = ShoalBroker(amqtt_config(self.config))
        try:
            await broker.start()
            gc.freeze()  # what start-up made lives as long as the process: no full scans of it
        except BrokerError as err:
            self.amqtt_log.pending.clear()  # its traceback says no more than this line
            return self._start_failed(err)
        activity = broker.plugins_manager.get_plugin("ActivityPlugin")
        assert isinstance(activity, keepalive.ActivityPlugin)
        for name in ("PasswordPlugin", "AclPlugin"):
            plugin = broker.plugins_manager.get_plugin(name)
            assert isinstance(plugin, PasswordPlugin | AclPlugin)
            self.refusals.append(plugin.counters)
        tasks = [
            asyncio.create_task(keepalive.watch(broker, activity, self._dropped)),
            asyncio.create_task(self._flush_logs()),
        ]
        self.log.info(
            "started",
            pid=os.getpid(),
            listen=self.config.mqtt.listen,
            fanout=IndexedBroker.__name__ if isinstance(broker, IndexedBroker) else "amqtt",
            anonymous=self.config.mqtt.allow_anonymous,
            users=len(Credentials(self.config.mqtt.credentials).users()),
        )
        try:
            await stop.wait()
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            try:
                await asyncio.wait_for(broker.shutdown(), STOP_TIMEOUT_S)
            except Exception as err:  # a timeout, or amqtt failing: the process ends anyway
                self.log.warning("stop_incomplete", error=repr(err))
            self.amqtt_log.flush()
            uptime = round(time.monotonic() - self.started, 3)
            self.log.info("stopped", uptime_s=uptime, **self.status_counters())
        return 0

    def _start_failed(self, err: Exception) -> int:
        """Log why amqtt could not start, as a shoal service says it; its exit code."""
        cause = err.__cause__
        where = f"cannot bind mqtt.listen {self.config.mqtt.listen!r}"
        if isinstance(cause, socket.gaierror):  # a host name that does not resolve
            self.log.error("config_error", error=f"{where}: {cause.strerror}")
            return EXIT_CONFIG
        if isinstance(cause, OSError) and cause.errno == errno.EADDRINUSE:
            self.log.error(
                "bind_failed",
                error=f"{where}: {cause.strerror}",
                hint="another shoal running? see `shoal config`",
            )
            return EXIT_BIND_FAILED
        if isinstance(cause, OSError) and cause.errno in BAD_ADDRESS_HINTS:
            hint = BAD_ADDRESS_HINTS[cause.errno]
            self.log.error("config_error", error=f"{where}: {cause.strerror}", hint=hint)
            return EXIT_CONFIG
        self.log.error("start_failed", error=str(err))
        return EXIT_FAILED

    async def _flush_logs(self) -> None:
        while True:
            await asyncio.sleep(self.config.runtime.log_summary_interval_s)
            self.amqtt_log.flush()


async def _main(config: ShoalConfig) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    process = BrokerProcess(config)

    def on_signal(signum: int) -> None:
        if stop.is_set() and signum == signal.SIGINT:
            os._exit(130)  # a second Ctrl-C kills at once
        process.log.info("stopping", signal=signal.Signals(signum).name)
        stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
    return await process.serve(stop)


# amqtt allocates several short-lived objects per packet (tasks, timer handles, packets):
# at CPython's default gen-0 threshold of 700 a 1,000-board fleet at 1 msg/s ran a young
# collection every few ms and a full one (200+ ms, every session's objects) often enough to
# set the p99. Measured by bench/mqtt_path.py on 2 cores: e2e p99 179 ms -> 9 ms, broker CPU
# 51 % -> 36 %, RSS unchanged (88 MB): reference counting frees nearly all of it anyway.
GC_THRESHOLDS = (50_000, 20, 10)


def main(config: ShoalConfig) -> None:
    """Run the broker as this process until it is stopped; exit with its code."""
    exit_with_parent()
    gc.set_threshold(*GC_THRESHOLDS)
    sys.exit(asyncio.run(_main(config)))
