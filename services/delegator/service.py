"""The delegator: takes tasks from overloaded nodes, places them on healthy peers, commits
each result once, and hands it back to the origin.

Every state change goes to the ledger (ledger.py) first; the replies that make a
node act on it (taken, assign, result_ack, completed) are sent only after the ledger has
committed the pass that decided them. So a delegator killed at any moment loses nothing a
node was told, and a restarted one recovers every task in flight from the file.

Sockets: tasks (ROUTER, nodes and gateways; protocol/tasks.py), bus (PUB: its heartbeat
with counters), ctl (ROUTER: tasks, task, audit, drain, drained, owned, revoked, moved; every arg bounded,
every reply well under the clients' 1 MiB, ``tasks`` paged). It follows the relay's view
(telemetry: room on each node) and the liveness monitor's membership (alive, suspect,
dead, rebooted, left; observer health).

Pruning: a timer deletes final tasks past ``ledger_retention_s`` (or beyond
``ledger_max_tasks``) in batches of PRUNE_BATCH, a few milliseconds of the loop each.

Placement: power of two choices (placement.py) among peers that are alive (not
suspect), not overloaded, reachable, and below ``accept_fill`` of their queue, counting
assignments made since their last telemetry. A task's origin is never its own peer.

The ctl ops (queries of the ledger, drain) are in ctl_ops.py; placement.py and ledger.py
hold the other parts that stand alone.

Who may speak for a node (docs/protocol.md §8.1, §14): with Curve on, only a node key whose
patterns match its ``node_id`` (``forbidden`` otherwise), as the allowlist is now; and only
the connection that owns the node's route (owners.py; ``impersonation`` otherwise), so
nobody takes over a live node's route with a key that may speak for it too (a gateway's).
"""

from __future__ import annotations

import random
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import msgspec
import zmq
from zmq.utils.monitor import parse_monitor_message

from shoal.protocol import codec
from shoal.protocol.messages import NodeMessage, Telemetry
from shoal.protocol.tasks import (
    Assign,
    AssignReply,
    Completed,
    CompletedAck,
    NodeTaskMessage,
    Offer,
    Renew,
    Result,
    ResultAck,
    Taken,
    Task,
)
from shoal.services.liveness.view import MembershipView
from shoal.services.relay.view import RelayView
from shoal.services.runtime.config import DelegatorConfig, ShoalConfig, liveness_for, relay_links
from shoal.services.runtime.metrics import HANDOFF_BUCKETS
from shoal.services.runtime.security import NODE_SOCKETS
from shoal.services.runtime.service import (
    Service,
    received_frames,
    received_multipart,
)

from .ctl_ops import CtlOps
from .ledger import Ledger
from .owners import Connections
from .placement import Peer, choose

# A node's route (the connection it last spoke on) is trusted for this long; and another
# connection may take the node over once the route's own has been silent this long.
ROUTE_FRESH_S = 10.0
# Pending tasks looked at per placement pass.
PLACE_BATCH = 64
TIMEOUT_CHECK_S = 0.1
# Pruning: a batch of 256 tasks (their history, commit row and tombstone) is ~13 ms with
# its fsync at 100,000 tasks; one a second, or every 0.1 s while catching up (2,560 tasks/s,
# beyond what the ledger can take in).
PRUNE_BATCH = 256
PRUNE_INTERVAL_S = 1.0
PRUNE_CATCH_UP_S = 0.1

_decoder = msgspec.msgpack.Decoder(NodeTaskMessage)


@dataclass(slots=True)
class Assignment:
    """An assign sent and not answered yet."""

    epoch: int
    node: str
    task: Task
    sent_at: float  # monotonic
    tries: int
    taken_at: float = 0.0  # wall time the ledger took the task (0: unknown, recovered)


# Membership events after which a node no longer holds what it was assigned: dead; a new
# boot (its queue died with the old one); left (it said goodbye). Its tasks go back to
# pending at once rather than when their leases lapse. A task assigned to the new boot in
# the few milliseconds before the event arrives is revoked too: a redelivery, and its
# result from the old epoch is refused, so never a second commit.
OWNER_LOST = {
    "dead": "owner declared dead",
    "rebooted": "owner rebooted (its queue died with the old boot)",
    "left": "owner left",
}


class Delegator(CtlOps, Service):
    """Usage: ``Delegator(load_config()).run()``, or ``shoal run delegator``."""

    name = "delegator"

    def __init__(self, config: ShoalConfig, **kwargs: Any) -> None:
        super().__init__(config, **kwargs)
        self.cfg: DelegatorConfig = config.delegator
        self.routes: dict[str, tuple[bytes, float]] = {}
        self.conns = Connections(ROUTE_FRESH_S)  # who may speak for which node (owners.py)
        self.assigning: dict[str, Assignment] = {}
        self.assigned_since_sample: defaultdict[str, int] = defaultdict(int)
        self.replies: list[tuple[bytes, Any]] = []  # sent after the pass's commit
        self.rng = random.Random()
        self.ctl_ops["tasks"] = self._op_tasks
        self.ctl_ops["task"] = self._op_task
        self.ctl_ops["audit"] = self._op_audit
        self.ctl_ops["drain"] = self._op_drain
        self.ctl_ops["drained"] = self._op_drained
        self.ctl_ops["owned"] = self._op_owned
        self.ctl_ops["revoked"] = self._op_revoked
        self.ctl_ops["moved"] = self._op_moved
        self.drained: set[str] = set()  # nodes an operator took out of placement
        self.counters["ledger_pruned"] = 0
        # Refusals for who sent a message (§14): shown from the start, zero or not.
        self.counters["reject_forbidden"] = 0
        self.counters["reject_impersonation"] = 0

    def setup(self) -> None:
        cfg = self.cfg
        self.handoff = self.metrics.histogram(
            "handoff_latency_seconds",
            "from the ledger taking an offered task to the first peer accepting it",
            HANDOFF_BUCKETS,
        )
        # A file that cannot be a ledger raises a ConfigError: the process exits, unrestarted.
        self.ledger = Ledger(
            cfg.ledger,
            cfg.max_redeliveries,
            retention_s=cfg.ledger_retention_s,
            max_tasks=cfg.ledger_max_tasks,
            max_pruned=cfg.ledger_max_pruned,
        )
        self.router = self.bind("tasks", zmq.ROUTER, cfg.tasks, admit=NODE_SOCKETS)
        self.router_events = self.sockets.monitor(self.router, zmq.EVENT_DISCONNECTED)
        self.on_readable(self.router_events, self._drain_disconnects)
        self.bus = self.bind("bus", zmq.PUB, cfg.bus)
        self.serve_ctl(cfg.ctl)
        self.relay = RelayView(self, relay_links(self.config, "delegator"))
        self.relay.on_change = self._on_records
        self.members = MembershipView(self, liveness_for(self.config))
        self.members.on_event = self._on_member_event
        self.on_readable(self.router, self._drain)
        self.every(cfg.placement_interval_ms / 1000, self._place)
        self.every(TIMEOUT_CHECK_S, self._timeouts)
        self.every(cfg.completed_retry_ms / 1000, self._deliver)
        self.after(PRUNE_INTERVAL_S, self._prune)
        self._recover()

    def on_stop(self) -> None:
        self.ledger.commit()
        self.ledger.close()

    def status_counters(self) -> dict[str, int]:
        counters = dict(self.counters)
        counters.update({f"tasks_{k}": v for k, v in self.ledger.counts().items()})
        counters.update({f"ledger_{k}": v for k, v in self.ledger.size().items()})
        counters["assigning"] = len(self.assigning)
        counters["relay_nodes"] = len(self.relay.nodes)  # every shard's, once synced
        counters["relay_synced"] = int(self.relay.synced)
        return counters

    # --- a pass: decide, commit, then tell ---------------------------------------------

    def _commit_and_send(self) -> None:
        self.ledger.commit()
        replies, self.replies = self.replies, []
        for identity, message in replies:
            try:
                self.router.send_multipart([identity, codec.encode(message)], zmq.NOBLOCK)
            except zmq.Again:
                self.counters["replies_dropped"] += 1  # the node's retry covers it

    def _tell(self, node_id: str, message: Any) -> None:
        route = self.routes.get(node_id)
        if route is None or time.monotonic() - route[1] > ROUTE_FRESH_S:
            self.counters["no_route"] += 1
            return
        self.replies.append((route[0], message))

    def _drain(self) -> None:
        now = time.time()
        taken_before = self.counters["taken"]
        self._drain_disconnects()  # before these messages: a closed owner frees its nodes
        gate = self.gate
        for frames in received_frames(self.router):
            if len(frames) != 2:
                self._refuse("malformed", f"{len(frames)} frames")
                continue
            identity, body = frames[0].bytes, frames[1]
            user = gate.user(body)
            key = gate.lookup(user)
            if key is None:
                continue  # revoked since its handshake (counted)
            if key.role not in ("node", "trusted"):
                gate.refuse("role", f"{key.name} ({key.role}) on tasks")
                continue
            try:
                msg = _decoder.decode(body.buffer)
            except msgspec.ValidationError as err:
                self._refuse(codec.classify_validation_error(err), str(err))
                continue
            except codec.MALFORMED as err:
                self._refuse("malformed", str(err))
                continue
            if not key.may_speak(msg.node_id):
                gate.refuse("node", f"{key.name}: {msg.node_id}")
                self._refuse("forbidden", f"{msg.node_id}: not a node of key {key.name}")
                continue
            mono = time.monotonic()
            if not self.conns.owns(self.routes.get(msg.node_id), identity, body, user, mono):
                self._refuse("impersonation", f"{msg.node_id}: owned by another connection")
                continue
            self.routes[msg.node_id] = (identity, mono)
            try:
                self._handle(msg, now)
            except Exception as err:  # one message's failure never costs the pass
                self.handler_error(f"task {type(msg).__name__}", err)
        if self.counters["taken"] != taken_before:
            # Place what was just taken in this same pass: one commit, and no wait for the
            # placement timer (it was most of the hand-off latency).
            self._place_pending(now)
        self._commit_and_send()

    def _refuse(self, reason: str, detail: str) -> None:
        self.counters[f"reject_{reason}"] += 1
        self.rejects.add(reason, detail)

    # --- which connection speaks for a node ----------------------------------------------

    def _drain_disconnects(self) -> None:
        for frames in received_multipart(self.router_events):
            event = parse_monitor_message(frames)
            if event["event"] == zmq.EVENT_DISCONNECTED:
                self.conns.closed(event["value"])

    def on_keys_changed(self) -> None:
        """A node's route whose connection's key may no longer speak for it is dropped:
        nothing more is sent there, and the node's next message (with a key for it) takes
        a route again."""
        ring = self.gate.ring
        dropped = 0
        for node_id, (identity, _at) in list(self.routes.items()):
            user = self.conns.user_of(identity)
            if user is None:
                continue  # a peer in this process (inproc), or a connection long gone
            key = ring.get(user) if ring is not None else None
            if key is None or not key.may_speak(node_id):
                del self.routes[node_id]
                dropped += 1
        if dropped:
            self.counters["keys_dropped_routes"] += dropped
            self.log.info("routes_dropped", nodes=dropped, why="the allowlist changed")

    def _handle(self, msg: Any, now: float) -> None:
        kind = msg.__class__
        if kind is Offer:
            self._on_offer(msg, now)
        elif kind is AssignReply:
            self._on_assign_reply(msg, now)
        elif kind is Renew:
            if msg.leases:
                self.ledger.renew(msg.node_id, list(msg.leases), now, self.cfg.lease_ms)
        elif kind is Result:
            self._on_result(msg, now)
        elif kind is CompletedAck:
            delivered = self.ledger.delivered(msg.task_id, msg.node_id, now)
            self.counters["delivered"] += int(delivered)

    def _on_offer(self, msg: Offer, now: float) -> None:
        if not self.cfg.enabled:
            refused = [(t.task_id, "delegation off") for t in msg.tasks]
            self._tell(
                msg.node_id,
                Taken(node_id=msg.node_id, msg_id=msg.msg_id, taken=[], refused=refused),
            )
            return
        wrong = [t for t in msg.tasks if t.origin != msg.node_id]
        if wrong:
            self._refuse("schema", f"{msg.node_id} offered tasks of {wrong[0].origin}")
        tasks = [t for t in msg.tasks if t.origin == msg.node_id]
        if tasks and not any(p.spare > 0 for p in self._peers() if p.node_id != msg.node_id):
            # Nobody could run them: taking them would only park them in the ledger while
            # their origin could be working on them. It keeps them and offers again later.
            self.counters["refused_no_room"] += len(tasks)
            refused = [(t.task_id, "no peer has room") for t in tasks]
            refused += [(t.task_id, "origin is not the sender") for t in wrong]
            self._tell(
                msg.node_id,
                Taken(node_id=msg.node_id, msg_id=msg.msg_id, taken=[], refused=refused),
            )
            return
        taken, refused = self.ledger.offer(msg.node_id, tasks, now)
        refused += [(t.task_id, "origin is not the sender") for t in wrong]
        self.counters["offered"] += len(msg.tasks)
        self.counters["taken"] += len(taken)
        self._tell(
            msg.node_id, Taken(node_id=msg.node_id, msg_id=msg.msg_id, taken=taken, refused=refused)
        )

    def _on_assign_reply(self, msg: AssignReply, now: float) -> None:
        pending = self.assigning.get(msg.task_id)
        if pending is None or pending.epoch != msg.epoch or pending.node != msg.node_id:
            self.counters["assign_reply_stale"] += 1
            return
        del self.assigning[msg.task_id]
        if msg.accepted:
            self.ledger.accepted(msg.task_id, msg.epoch, msg.node_id, self.cfg.lease_ms, now)
            self.counters["assign_accepted"] += 1
            if pending.epoch == 1 and pending.taken_at:
                self.handoff.observe(max(0.0, now - pending.taken_at))
        else:
            self.ledger.declined(msg.task_id, msg.epoch, msg.node_id, msg.reason or "declined", now)
            self.counters["assign_declined"] += 1

    def _on_result(self, msg: Result, now: float) -> None:
        status = self.ledger.result(
            msg.task_id, msg.epoch, msg.node_id, msg.ok, msg.output, msg.error, now
        )
        self.counters[f"result_{status}"] += 1
        self.assigning.pop(msg.task_id, None)
        self._tell(
            msg.node_id,
            ResultAck(node_id=msg.node_id, task_id=msg.task_id, epoch=msg.epoch, status=status),
        )
        if status == "committed":
            row = self.ledger.task(msg.task_id)
            if row is not None:
                self._tell(
                    row.origin,
                    Completed(
                        node_id=row.origin,
                        task_id=row.task_id,
                        ok=msg.ok,
                        output=msg.output,
                        error=msg.error,
                        executor=msg.node_id,
                    ),
                )

    # --- placement ---------------------------------------------------------------------

    def _peers(self) -> list[Peer]:
        if not self.members.synced or not self.members.healthy:
            return []  # the monitor cannot vouch for anyone right now
        fresh = time.monotonic() - ROUTE_FRESH_S
        peers = []
        for node_id, view in self.relay.nodes.items():
            t = view.telemetry
            route = self.routes.get(node_id)
            if t is None or route is None or route[1] < fresh:
                continue
            if self.members.state(node_id) != "alive" or t.overloaded or not t.queue_capacity:
                continue
            if node_id in self.drained:
                continue
            spare = (
                self.cfg.accept_fill * t.queue_capacity
                - t.queue_depth
                - self.assigned_since_sample[node_id]
            )
            peers.append(Peer(node_id, spare))
        return peers

    def _place(self) -> None:
        if self._place_pending(time.time()):
            self._commit_and_send()

    def _place_pending(self, now: float) -> bool:
        """Assign what the ledger holds pending to peers with room; True if any."""
        rows = self.ledger.placeable(PLACE_BATCH)
        if not rows:
            return False
        peers = self._peers()
        sent = time.monotonic()
        for row in rows:
            peer = choose([p for p in peers if p.node_id != row.origin], self.rng)
            if peer is None:
                self.counters["no_peer"] += 1
                break
            epoch = self.ledger.assign(row.task_id, peer.node_id, now)
            peer.spare -= 1
            self.assigned_since_sample[peer.node_id] += 1
            task = row.as_task()
            self.assigning[row.task_id] = Assignment(
                epoch, peer.node_id, task, sent, 1, row.created_at
            )
            self._send_assign(peer.node_id, task, epoch)
            self.counters["assigned"] += 1
        return True

    def _send_assign(self, node_id: str, task: Task, epoch: int) -> None:
        self._tell(
            node_id, Assign(node_id=node_id, task=task, epoch=epoch, lease_ms=self.cfg.lease_ms)
        )

    def _timeouts(self) -> None:
        now = time.time()
        mono = time.monotonic()
        timeout = self.cfg.assign_timeout_ms / 1000
        for task_id, a in list(self.assigning.items()):
            if mono - a.sent_at < timeout:
                continue
            if a.tries >= self.cfg.assign_tries:
                del self.assigning[task_id]
                self.ledger.declined(task_id, a.epoch, a.node, "no answer", now)
                self.counters["assign_unanswered"] += 1
            else:
                a.tries += 1
                a.sent_at = mono
                self._send_assign(a.node, a.task, a.epoch)
        moved = self.ledger.expire(now, self.cfg.lease_ms)
        if moved:
            self.counters["lease_expired"] += len(moved)
            for task_id in moved:
                self.assigning.pop(task_id, None)
        self._commit_and_send()

    def _deliver(self) -> None:
        for row in self.ledger.undelivered(256):
            self._tell(
                row.origin,
                Completed(
                    node_id=row.origin,
                    task_id=row.task_id,
                    ok=bool(row.ok),
                    output=row.output or "",
                    error=row.error or "",
                    executor=row.owner or "",
                ),
            )
        self._commit_and_send()

    def _prune(self) -> None:
        """One batch, then the next: soon while more is due (after a burst, or a retention
        made shorter), else in a second."""
        more = False
        try:
            pruned, more = self.ledger.prune(time.time(), PRUNE_BATCH)
            self.counters["ledger_pruned"] += pruned
            self._commit_and_send()
        finally:
            self.after(PRUNE_CATCH_UP_S if more else PRUNE_INTERVAL_S, self._prune)

    # --- what the other services say ---------------------------------------------------

    def _on_records(self, records: list[NodeMessage]) -> None:
        for rec in records:
            if rec.__class__ is Telemetry:
                self.assigned_since_sample.pop(rec.node_id, None)

    def _on_member_event(self, event: Any) -> None:
        reason = OWNER_LOST.get(event.event)
        if reason is None:
            return
        moved = self.ledger.owner_lost(event.node_id, time.time(), reason)
        for task_id in moved:
            self.assigning.pop(task_id, None)
        if moved:
            self.counters[f"redelegated_{event.event}_owner"] += len(moved)
            self.log.info("owner_lost", node=event.node_id, why=event.event, tasks=len(moved))
        self._commit_and_send()

    def _recover(self) -> None:
        """Resume what the ledger holds: leases start afresh (the downtime costs no
        redelivery), unanswered assignments are sent again."""
        mono = time.monotonic()
        recovered = 0
        rows = self.ledger.recover(time.time(), self.cfg.lease_ms)
        self.ledger.commit()
        for row in rows:
            recovered += 1
            if row.state == "assigned" and row.owner:
                self.assigning[row.task_id] = Assignment(
                    row.epoch, row.owner, row.as_task(), mono - 1e6, 0
                )
        self.counters["recovered"] = recovered
        if recovered:
            self.log.info("recovered", in_flight=recovered, counts=self.ledger.counts())
