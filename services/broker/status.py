"""The broker's status: a shoal Service in a thread of the broker process, binding
``[mqtt] broker_ctl`` (ROUTER: ping, status) and ``[metrics] broker``. Its counters are the
broker's (keepalive drops, refusals by reason), read from the asyncio loop's dicts, whose
keys never change, so a copy from this thread is safe.

amqtt runs on asyncio, the runtime on its own poll loop: two loops, two threads, one
process; the status thread only reads.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from shoal.services.runtime.config import ShoalConfig
from shoal.services.runtime.service import (
    BAD_ADDRESS_HINTS,
    EXIT_BIND_FAILED,
    EXIT_CONFIG,
    Service,
)
from shoal.services.runtime.sockets import BindError

READY_S = 10.0


class BrokerStatus(Service):
    name = "broker"

    def __init__(
        self, config: ShoalConfig, counters: Callable[[], dict[str, int]], **kwargs: Any
    ) -> None:
        super().__init__(config, **kwargs)
        self._counters = counters
        self._thread: threading.Thread | None = None
        self._failed: BaseException | None = None

    def setup(self) -> None:
        self.serve_ctl(self.config.mqtt.broker_ctl)

    def status_counters(self) -> dict[str, int]:
        return {**self.counters, **self._counters()}

    def start_in_thread(self) -> int:
        """Start serving; 0, or the exit code of a broker that cannot (its ctl endpoint
        taken: 2; no address of this machine: 78), after one log line saying why."""

        def target() -> None:
            try:
                self.run(install_signals=False)
            except BaseException as err:
                self._failed = err
                self._ready.set()

        self._thread = threading.Thread(target=target, name="broker-status", daemon=True)
        self._thread.start()
        self.wait_ready(READY_S)
        err = self._failed
        if err is None:
            return 0
        if isinstance(err, BindError):
            hint = BAD_ADDRESS_HINTS.get(err.errno)
            if hint is not None:
                self.log.error("config_error", error=str(err), hint=hint)
                return EXIT_CONFIG
            self.log.error("bind_failed", error=str(err), hint="another shoal running?")
            return EXIT_BIND_FAILED
        self.log.error("start_failed", error=repr(err))
        return 1

    def stop_thread(self) -> None:
        self.stop()
        if self._thread is not None:
            self._thread.join(READY_S)
