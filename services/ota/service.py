"""The OTA service process: serves chunks to boards that ask, and runs the rollout.

Chunks are answered on paho's own network thread, at once and statelessly from the
bundles in memory (a board's request names the version, the file and the offset). The
rollout (rollout.py) runs on the service loop: board statuses are handed to it there,
and every ``STEP_S`` it decides whom to offer to, with the liveness monitor's membership
(MembershipView) as its gate. Each change of a board's state goes to the device registry
(state and history) and the rollout is saved to ``[ota] store``/rollout.json.
"""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path
from typing import Any

import msgspec

from shoal.protocol import codec
from shoal.services.broker.credentials import service_login
from shoal.services.firmware.bundle import BundleError
from shoal.services.liveness.view import MembershipView
from shoal.services.registry.store import Registry, RegistryError
from shoal.services.runtime.config import ShoalConfig
from shoal.services.runtime.mqtt_client import mqtt_client
from shoal.services.runtime.service import CtlError, Service, parse_args

from . import wire
from .bundles import Store
from .rollout import Rollout

STEP_S = 0.25
OTA_USER = "svc.ota"  # its MQTT login (docs/protocol.md §11.10)
ROLLOUT_FILE = "rollout.json"
REGISTRY_STATE = {
    "waiting": "pending",
    "offline": "pending",
    "downloading": "downloading",
    "switching": "applied",
    "trial": "applied",
    "confirmed_board": "applied",
    "confirmed": "confirmed",
    "failed": "failed",
    "rolled_back": "rolled_back",
}


class RolloutArgs(msgspec.Struct, forbid_unknown_fields=True):
    bundle: str
    nodes: list[str]
    max_unavailable: int = 1
    version: str | None = None  # if given, the bundle must be this version


def mqtt_bytes(topic: str, payload: bytes) -> int:
    """A QoS 0 PUBLISH on the wire: fixed header (1 + remaining length), topic, payload."""
    body = 2 + len(topic.encode()) + len(payload)
    return 1 + (1 if body < 128 else 2 if body < 16384 else 3) + body


class OtaService(Service):
    """Usage: ``main_for(OtaService, config)`` (what ``shoal run ota`` does)."""

    name = "ota"

    def __init__(self, config: ShoalConfig, **kwargs: Any) -> None:
        super().__init__(config, **kwargs)
        self.cfg = config.ota
        self.root = Path(self.cfg.store)
        self.rollout: Rollout | None = None
        self.heard: dict[str, float] = {}  # node -> when it last spoke OTA (paho's thread)
        self.ctl_ops["rollout"] = self._op_rollout
        self.ctl_ops["progress"] = self._op_progress
        self.ctl_ops["abort"] = self._op_abort

    def setup(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.store = Store(self.root)
        self.registry = Registry(self.config.devices.registry)
        self.bus = self.bind("bus", 1, self.cfg.bus)  # zmq.PUB
        self.serve_ctl(self.cfg.ctl)
        self.members = MembershipView(self, self.config.liveness)
        saved = self.root / ROLLOUT_FILE
        if saved.is_file():
            try:
                self.rollout = Rollout.from_dict(json.loads(saved.read_text()))
                self.store.get(self.rollout.version)
            except (ValueError, TypeError, KeyError) as err:
                self.errors.add("rollout_file", repr(err))
        self.every(STEP_S, self._step)
        self._connect()

    def on_stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
        self._save()
        self.registry.close()

    # --- MQTT (paho's thread) ------------------------------------------------------------

    def _connect(self) -> None:
        mq = self.config.mqtt
        # TLS as the shim has it, when [mqtt] tls_ca is set.
        c = self.client = mqtt_client(mq, self.cfg.client_id, service_login(mq, OTA_USER))
        c.reconnect_delay_set(1, max(1, mq.reconnect_max_ms // 1000))
        c.on_connect = self._on_connect
        c.on_message = self._on_message
        host, port = mq.broker_address()
        c.connect_async(host, port, keepalive=mq.keepalive_s)
        c.loop_start()

    def _on_connect(self, client: Any, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        if reason.is_failure:
            self.counters["connect_refused"] += 1
            return
        self.counters["broker_connects"] += 1
        client.subscribe(wire.UP_FILTER, 0)

    def _on_message(self, _client: Any, _u: Any, message: Any) -> None:
        node = wire.node_of(message.topic)
        payload = message.payload
        self.counters["up_msgs"] += 1
        self.counters["up_bytes"] += mqtt_bytes(message.topic, payload)
        if node is None:
            self.counters["bad_topic"] += 1
            return
        try:
            msg = wire.decode(payload)
        except codec.Rejected as rej:
            self.counters["rejected"] += 1
            self.rejects.add(rej.reason, f"{node}: {rej.detail}")
            return
        if msg.node_id != node:
            self.counters["impersonation"] += 1
            self.rejects.add("impersonation", f"{msg.node_id!r} on {node}'s topic")
            return
        self.heard[node] = time.time()
        if isinstance(msg, wire.Get):
            self._serve_chunk(msg)
        else:
            self._in_loop(lambda: self._on_status(msg))

    def _serve_chunk(self, get: wire.Get) -> None:
        bundle = self.store.get(get.version)
        data = None if bundle is None else bundle.read(get.f, get.path, get.o, get.n)
        if data is None:
            self.counters["bad_gets"] += 1
            return
        self._send(get.node_id, wire.chunk(get.version, get.f, get.o, data))
        self.counters["chunks_sent"] += 1
        self.counters["chunk_data_bytes"] += len(data)

    def _send(self, node: str, payload: bytes) -> None:
        topic = wire.down_topic(node)
        self.client.publish(topic, payload, qos=0)
        self.counters["down_msgs"] += 1
        self.counters["down_bytes"] += mqtt_bytes(topic, payload)

    def _in_loop(self, fn: Any) -> None:
        """Run fn on the service loop, without waiting for it."""
        self._calls.append(fn)
        with contextlib.suppress(OSError):
            self._wake_w.send(b"c")

    # --- the rollout (the service loop) ----------------------------------------------------

    def _on_status(self, st: wire.Status) -> None:
        self.counters["statuses"] += 1
        if self.rollout is None:
            return
        changes = self.rollout.on_status(st, time.time())
        self._changed(changes)

    def _step(self) -> None:
        r = self.rollout
        if r is None or r.state != "running":
            return
        alive = {n: self.members.state(n) == "alive" for n in r.nodes}
        offers, aborts, changes = r.step(time.time(), alive, self.members.healthy, dict(self.heard))
        bundle = self.store.get(r.version)
        for node in offers:
            if bundle is not None:
                self._send(node, wire.offer(r.version, self.cfg.chunk_bytes, bundle.files))
        for node in aborts:
            self._send(node, wire.abort(r.version))
        self._changed(changes)
        if r.state != "running":
            self._save()
            self.log.info("rollout_finished", version=r.version, state=r.state, detail=r.detail)

    def _changed(self, changes: list[tuple[str, str]]) -> None:
        r = self.rollout
        if not changes or r is None:
            return
        now = time.time()
        for node, state in changes:
            row = r.rows[node]
            self.log.info("ota_board", node=node, state=state, version=r.version, detail=row.detail)
            detail = f"{row.done}/{row.total} B"
            if row.seconds(now) is not None:
                detail += f" in {row.seconds(now)} s"
            if row.detail:
                detail += f"; {row.detail}"
            try:
                if self.registry.get(node) is None:
                    self.registry.add(node, source="telemetry")
                self.registry.set_ota(node, REGISTRY_STATE[state], target=r.version, detail=detail)  # type: ignore[arg-type]
            except RegistryError as err:
                self.errors.add("registry", str(err))
        self._save()

    def _save(self) -> None:
        if self.rollout is None:
            return
        tmp = self.root / (ROLLOUT_FILE + ".tmp")
        tmp.write_text(json.dumps(self.rollout.to_dict()))
        tmp.replace(self.root / ROLLOUT_FILE)

    # --- ctl ---------------------------------------------------------------------------------

    def _op_rollout(self, args: dict[str, Any]) -> dict[str, Any]:
        a = parse_args(args, RolloutArgs)
        if self.rollout is not None and self.rollout.state == "running":
            raise CtlError(f"a rollout of {self.rollout.version} is running: abort it first")
        if not a.nodes:
            raise CtlError("no boards to update")
        bad = [n for n in a.nodes if not codec.valid_node_id(n)]
        if bad:
            raise CtlError(f"not a node id: {bad[0][:40]!r}")
        if a.max_unavailable < 1:
            raise CtlError("max_unavailable must be at least 1")
        try:
            bundle = self.store.add(Path(a.bundle))
        except (BundleError, OSError) as err:
            raise CtlError(f"bundle {a.bundle}: {err}") from None
        if a.version is not None and bundle.version != a.version:
            raise CtlError(f"the bundle in {a.bundle} is {bundle.version}, not {a.version}")
        self.rollout = Rollout(
            version=bundle.version,
            nodes=sorted(set(a.nodes)),
            max_unavailable=a.max_unavailable,
            trial_timeout_s=self.cfg.trial_timeout_s,
            offer_every_s=self.cfg.offer_every_s,
            created=time.time(),
        )
        self._changed([(n, "waiting") for n in self.rollout.nodes])
        self.log.info(
            "rollout_started", version=bundle.version, nodes=len(a.nodes), bytes=bundle.size
        )
        return {
            **self.rollout.progress(time.time()),
            "bytes": bundle.size,
            "files": len(bundle.files),
        }

    def _op_progress(self, _args: dict[str, Any]) -> dict[str, Any]:
        if self.rollout is None:
            return {"state": "none", "nodes": []}
        out = self.rollout.progress(time.time())
        bundle = self.store.get(self.rollout.version)
        out["bytes"] = bundle.size if bundle else None
        out["counters"] = dict(self.counters)
        return out

    def _op_abort(self, _args: dict[str, Any]) -> dict[str, Any]:
        r = self.rollout
        if r is None or r.state != "running":
            raise CtlError("no rollout is running")
        r.state, r.detail = "halted", "aborted by the operator"
        for row in r.rows.values():
            if row.state == "downloading":
                self._send(row.node_id, wire.abort(r.version))
        self._save()
        return r.progress(time.time())
