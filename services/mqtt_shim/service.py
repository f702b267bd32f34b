"""The MQTT shim: boards over MQTT in, node messages to the relay, tasks both ways.

``shoal run shim``. One thread: paho's socket is polled by the Service loop beside the
ZeroMQ sockets (link.py). Per payload (topics.py names the topics):

- ``<node_id>/up``: decoded as JSON with the protocol's Structs
  (``codec.decode_ingest(json=True)``: a single node message, or a batch of this board's
  own records); a record whose ``node_id`` is not the topic's is refused as
  ``impersonation``. Good records go to the relay in batches (ingest.py); a refused record
  that still says who sent it is acked here, as the relay would ack it, so the board does
  not resend it for ever.
- ``<node_id>/will``: the board's last will, turned into a goodbye (reason "last-will",
  the seq the board reserved for it) if it is for the boot the shim saw last (boards.py).
- ``<node_id>/task/up``: a task message for the delegator (tasks.py).

Every refusal is counted by reason (``reject_<reason>``) and summed in the log; a bad
payload costs nothing but itself.

With ``mqtt.shims`` > 1 this process is one instance (``shoal run shim --instance K``, at
the endpoints and id ``shim_instance`` gives it): every instance subscribes to every
board's topics and keeps only the boards whose ``crc32(node_id) % shims`` is K; the others'
payloads are dropped unread and counted as ``not_mine``. A board's every message (up, will,
task) thus reaches one instance, which holds its state and alone answers it.
"""

from __future__ import annotations

import functools
import time
from typing import Any

import msgspec
import zmq

from shoal.protocol import codec
from shoal.protocol.messages import Goodbye, Hello
from shoal.services.runtime.config import ShoalConfig
from shoal.services.runtime.service import Service
from shoal.services.runtime.shards import IngestShards, shard_of

from . import tasks, topics
from .boards import Boards
from .ingest import IngestBridge
from .link import MqttLink
from .tasks import TaskBridge

REJECT_REASONS = (
    "malformed",
    "schema",
    "version",
    "range",
    "oversize",
    "impersonation",  # a payload speaking for another board than its topic names
    "bad_topic",  # a topic naming no valid board
    "too_many_boards",  # a new board while the table holds max_boards
)
ALWAYS = (
    "received",
    "forwarded",
    "acks_sent",
    "wills",
    "will_goodbyes",
    "broker_connected",
    "reconnects",
    "task_up",
    "task_down",
)
SWEEP_S = 10.0
# The shim beats this often (at most): it is the boards' observer, and a monitor must see
# its beat late well before a board's suspect threshold (~0.85 s at 250 ms heartbeats),
# or a shim killed just after a beat gets its boards suspected (liveness/gateway.py).
BEAT_MS = 100


class Shim(Service):
    """Usage: ``Shim(load_config()).run()``, or ``shoal run shim``."""

    name = "shim"

    def __init__(self, config: ShoalConfig, instance: int = 0, **kwargs: Any) -> None:
        """instance: which of mqtt.shims this process is; config is as shim_instance()
        gives it (this instance's endpoints and id in [mqtt])."""
        super().__init__(config, **kwargs)
        self.cfg = config.mqtt
        self.instance = instance
        self.instances = config.mqtt.shims
        self.heartbeat_ms = min(self.heartbeat_ms, BEAT_MS)
        self.boards = Boards(self.cfg.max_boards, self.cfg.forget_after_s)
        self.reject_counts = dict.fromkeys(REJECT_REASONS, 0)
        self.window = config.relay.dedup_window
        self._batch_timer: Any = None
        self.ctl_ops["boards"] = self._op_boards

    def setup(self) -> None:
        cfg = self.cfg
        # immediate: with no relay (or delegator) connected a send fails at once and is
        # counted; the boards resend from their rings.
        shards = IngestShards(self, self.config, immediate=1, hwm=10_000)
        self.task_dealer = self.sockets.connect(
            zmq.DEALER, self.config.delegator.tasks, immediate=1, hwm=10_000
        )
        for k, endpoint in enumerate(shards.endpoints):
            self.endpoints["ingest" if k == 0 else f"ingest.{k}"] = endpoint
        self.endpoints["tasks"] = self.config.delegator.tasks
        self.endpoints["broker"] = cfg.broker
        self.bus = self.bind("bus", zmq.PUB, cfg.shim_bus)
        self.serve_ctl(cfg.shim_ctl)
        self.link = MqttLink(self, cfg, self.pub_id, self._on_message, self.counters, self.log)
        self.ingest = IngestBridge(shards, self.counters, self.rejects, self._send_ack, self._known)
        self.task_bridge = TaskBridge(
            self.task_dealer, self.counters, self.rejects, self.link.publish, self._known
        )
        for dealer in shards.dealers:
            self.on_readable(dealer, functools.partial(self._drain_acks, dealer))
        self.on_readable(self.task_dealer, self._drain_tasks)
        self.every(SWEEP_S, self._forget_silent)
        self.link.start()

    def on_stop(self) -> None:
        self.ingest.flush()
        self.link.stop()

    def status_counters(self) -> dict[str, int]:
        counters = {key: 0 for key in ALWAYS}
        counters.update(self.counters)
        counters["boards"] = len(self.boards)
        counters["instance"] = self.instance
        counters["instances"] = self.instances
        counters.update({f"reject_{k}": v for k, v in self.reject_counts.items()})
        return counters

    # --- from the broker ------------------------------------------------------------------

    def _on_message(self, topic: str, payload: bytes) -> None:
        parsed = topics.parse(topic)
        if parsed is None:
            self._reject("bad_topic", topic[:120])
            return
        node_id, channel = parsed
        if self.instances > 1 and shard_of(node_id, self.instances) != self.instance:
            self.counters["not_mine"] += 1  # another instance's board
            return
        if channel == topics.UP:
            self._up(node_id, payload)
        elif channel == topics.WILL:
            self._will(node_id, payload)
        else:
            self._task(node_id, payload)

    def _up(self, node_id: str, payload: bytes) -> None:
        self.counters["received"] += 1
        if len(payload) > self.cfg.max_payload:
            self._reject("oversize", f"{node_id}: {len(payload)} bytes")
            return
        try:
            records, bad = codec.decode_ingest(payload, json=True)
        except codec.Rejected as rej:
            self._refuse(node_id, rej)
            return
        for bad_record in bad:
            self._refuse(node_id, bad_record)
        now = time.monotonic()
        for rec in records:
            if rec.node_id != node_id:
                self._reject("impersonation", f"{rec.node_id!r} on {node_id}'s topic")
                continue
            if not self.boards.seen(node_id, rec.boot_id, rec.seq, now, type(rec) is Goodbye):
                self._reject("too_many_boards", node_id)
                continue
            if type(rec) is Hello and rec.via != "mqtt":
                rec = msgspec.structs.replace(rec, via="mqtt")  # the gateway says how it came
            self._queue(rec)

    def _refuse(self, node_id: str, rej: codec.Rejected) -> None:
        """Count a refused payload or record; ack it if it names this board's own
        (node_id, boot_id, seq), as the relay does (docs/protocol.md section 4.2)."""
        self._reject(rej.reason, f"{node_id}: {rej.detail}")
        if rej.ident is not None and rej.ident[0] == node_id:
            _, boot_id, seq = rej.ident
            self._send_ack(node_id, topics.ack_payload([[node_id, boot_id, seq, seq]]))
            self.counters["acked_refused"] += 1

    def _will(self, node_id: str, payload: bytes) -> None:
        self.counters["wills"] += 1
        try:
            will = topics.decode_will(payload, self.cfg.max_payload)
        except codec.Rejected as rej:
            self.counters["will_bad"] += 1
            self._reject(rej.reason, f"{node_id} will: {rej.detail}")
            return
        if will.node_id != node_id:
            self._reject("impersonation", f"will of {will.node_id!r} on {node_id}'s topic")
            return
        verdict = self.boards.will_verdict(node_id, will.boot_id, will.seq, self.window)
        if verdict != "ok":
            self.counters[f"will_{verdict}"] += 1
            self.log.info("will_ignored", node=node_id, boot_id=will.boot_id, why=verdict)
            return
        goodbye = Goodbye(node_id=node_id, boot_id=will.boot_id, seq=will.seq, reason="last-will")
        self.boards.mark_left(node_id)
        self.ingest.add(goodbye)
        self._flush_batch()  # a death notice does not wait for a batch to fill
        self.counters["will_goodbyes"] += 1
        self.log.info("last_will", node=node_id, boot_id=will.boot_id, seq=will.seq)

    def _task(self, node_id: str, payload: bytes) -> None:
        self.counters["task_up"] += 1
        try:
            msg = tasks.decode_task_up(payload, self.cfg.max_payload)
        except codec.Rejected as rej:
            self.counters["task_rejected"] += 1
            self._reject(rej.reason, f"{node_id} task: {rej.detail}")
            return
        if msg.node_id != node_id:
            self.counters["task_rejected"] += 1
            self._reject("impersonation", f"task of {msg.node_id!r} on {node_id}'s topic")
            return
        if not self.boards.seen(node_id, msg.boot_id, None, time.monotonic()):
            self._reject("too_many_boards", node_id)
            return
        self.task_bridge.forward(msg)

    def _reject(self, reason: str, detail: str) -> None:
        self.reject_counts[reason] = self.reject_counts.get(reason, 0) + 1
        self.counters["rejected"] += 1
        self.rejects.add(reason, detail)

    # --- to the relay, and back -----------------------------------------------------------

    def _queue(self, rec: Any) -> None:
        if self.ingest.add(rec) >= self.cfg.batch_max:
            self._flush_batch()
        elif self._batch_timer is None and self.cfg.batch_interval_ms > 0:
            self._batch_timer = self.after(self.cfg.batch_interval_ms / 1000, self._flush_batch)

    def _flush_batch(self) -> None:
        if self._batch_timer is not None:
            self._batch_timer.cancel()
            self._batch_timer = None
        self.ingest.flush()

    def after_read(self) -> None:
        """The end of a read pass over the broker's socket (link.py calls it)."""
        if self.cfg.batch_interval_ms == 0:
            self._flush_batch()

    def _drain_acks(self, dealer: zmq.Socket[Any]) -> None:
        self.ingest.drain_acks(dealer)
        self.link.flush()

    def _drain_tasks(self) -> None:
        self.task_bridge.drain()
        self.link.flush()

    def _send_ack(self, node_id: str, payload: bytes) -> None:
        if self.link.publish(topics.ack_topic(node_id), payload):
            self.counters["acks_sent"] += 1
        else:
            self.counters["acks_dropped"] += 1

    def _known(self, node_id: str) -> bool:
        return node_id in self.boards

    # --- upkeep and queries ---------------------------------------------------------------

    def _forget_silent(self) -> None:
        forgotten = self.boards.forget_silent(time.monotonic())
        if forgotten:
            self.counters["boards_forgotten"] += forgotten

    def _op_boards(self, _args: dict[str, Any]) -> list[dict[str, Any]]:
        return self.boards.rows(time.monotonic())
