"""The registry process: the relay's records of boards -> last seen and firmware, written
to the registry file in one transaction every ``flush_interval_ms`` (not one per message:
a board beats four times a second, a thousand boards 4,000 times).

A board is one whose hello came through the MQTT shim (``via`` "mqtt"): simulated nodes
are not devices. A board's firmware comes from its hello's ``fw`` (and a telemetry's, when
it carries one); last seen is the wall time of the batch its latest record fell in.
"""

from __future__ import annotations

import sqlite3
import time
from typing import Any

from shoal.protocol.messages import Hello, NodeMessage, Telemetry
from shoal.services.relay.view import RelayView
from shoal.services.runtime.config import ShoalConfig, relay_links
from shoal.services.runtime.service import Service

from .store import Registry


class RegistryService(Service):
    """Keeps the device registry current from the relay's bus.

    Usage: ``main_for(RegistryService, config)`` (what ``shoal run registry`` does)."""

    name = "registry"

    def __init__(self, config: ShoalConfig, **kwargs: Any) -> None:
        super().__init__(config, **kwargs)
        self.cfg = config.devices
        # node id -> (firmware or None: keep it, wall time last heard)
        self._pending: dict[str, tuple[str | None, float]] = {}
        self._seeded = False

    def setup(self) -> None:
        # In the service's own thread (SQLite connections stay in theirs). A file that
        # cannot be a registry raises a ConfigError: exit 78, not restarted.
        self.registry = Registry(self.cfg.registry)
        self.bus = self.bind("bus", 1, self.cfg.bus)  # zmq.PUB
        self.serve_ctl(self.cfg.ctl)
        self.ctl_ops["devices"] = self._op_devices
        self.relay = RelayView(self, relay_links(self.config))
        self.relay.on_change = self._on_records
        self.every(self.cfg.flush_interval_ms / 1000, self.flush)

    def on_stop(self) -> None:
        self.flush()
        self.registry.close()

    def _is_board(self, node_id: str) -> bool:
        view = self.relay.nodes.get(node_id)
        return view is not None and view.hello is not None and view.hello.via == "mqtt"

    def _on_records(self, records: list[NodeMessage]) -> None:
        now = time.time()
        for rec in records:
            fw: str | None = None
            if isinstance(rec, Hello):
                fw = rec.fw or None
            elif isinstance(rec, Telemetry):
                fw = rec.fw
            if not self._is_board(rec.node_id):
                continue
            before = self._pending.get(rec.node_id)
            self._pending[rec.node_id] = (fw if fw is not None else (before or (None, 0))[0], now)

    def flush(self) -> None:
        """Write what was heard since the last flush: one transaction."""
        if not self._seeded and self.relay.synced:
            self._seeded = True  # the snapshot's boards, heard before this process started
            now = time.time()
            for node_id, view in self.relay.nodes.items():
                if not self._is_board(node_id):
                    continue
                fw = (view.hello.fw if view.hello else "") or None
                heard = self._pending.get(node_id)
                if heard is None:
                    self._pending[node_id] = (fw, now - self.relay.age_ms(node_id) / 1000)
                elif heard[0] is None:  # heard since, but its hello was in the snapshot
                    self._pending[node_id] = (fw, heard[1])
        if not self._pending:
            return
        batch = [(node_id, fw, at) for node_id, (fw, at) in self._pending.items()]
        try:
            self.counters["rows_written"] += self.registry.seen(batch)
        except sqlite3.Error as err:  # busy (a reader holding a lock): kept for the next one
            self.counters["write_errors"] += 1
            self.errors.add(f"flush: {type(err).__name__}", str(err))
            return
        self._pending = {}
        self.counters["batches"] += 1

    def _op_devices(self, _args: dict[str, Any]) -> dict[str, Any]:
        return {"devices": [d.node_id for d in self.registry.devices()]}
