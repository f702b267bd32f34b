"""The telemetry relay: ingest, validate, de-duplicate, sequence, republish, cache.

Sockets (docs/protocol.md has the wire details):
- ingest (ROUTER, bind): nodes and gateways send node messages or batches; the relay
  answers each connection with Acks saying what it has handled, so a node can drop those
  from its retry buffer.
- bus (PUB, bind): accepted records as NodeRecords frames, numbered per publisher, plus
  the relay's own heartbeat.
- ctl (ROUTER, bind): ping, status, snapshot (the last-value cache, Clone pattern).

Everything read from the network is untrusted: a bad frame or record is counted by
reason and dropped, and nothing else is lost. A node id belongs to the connection it was last
accepted from: another connection speaking for it is refused as ``impersonation`` until that
connection has closed or the node has been silent for ``rebind_after_ms``.

With Curve on (runtime/security.py) ingest admits node keys only, and each of those speaks
only for the node ids its patterns match: a record for another id is refused as
``forbidden`` (counted ``auth_refused_node``), checked when a connection takes a node id
(its first record, or a rebind), and again for every node a connection holds when the
allowlist changes. Each frame's key is looked up in the allowlist as it is now, so a key
revoked is refused at its next frame (``auth_refused_revoked``). Reading a frame's User-Id
costs ~3 us in pyzmq, as much as the relay's whole work on a record: it is read once per
connection and kept by routing id (see ``_keys_of``).

With ``relay.shards`` > 1 this process is one shard (``shoal run relay --shard K``, at the
endpoints ``relay_shard`` gives it): it takes only the node ids whose
``crc32(node_id) % shards`` is K and refuses the others as ``wrong_shard``, unacked.
"""

from __future__ import annotations

import time
from typing import Any

import zmq
from zmq.utils.monitor import parse_monitor_message

from shoal.protocol import codec
from shoal.protocol.limits import MAX_BATCH_RECORDS, PROTOCOL_VERSION
from shoal.protocol.messages import (
    Goodbye,
    Hello,
    NodeMessage,
    NodeRecords,
    NodeView,
    RelaySnapshot,
    Telemetry,
)
from shoal.services.runtime.config import RelayConfig, ShoalConfig
from shoal.services.runtime.keys import KeyInfo
from shoal.services.runtime.metrics import node_gauge
from shoal.services.runtime.security import NODE_SOCKETS
from shoal.services.runtime.service import DRAIN_BUDGET, Service, received_multipart
from shoal.services.runtime.shards import shard_of

from .dedup import DUPLICATE, NEW, SeqWindow

# Silent nodes are forgotten after this long, so ids seen once cannot fill the node table.
FORGET_AFTER_S = 600.0
# How often silent nodes and phantoms (relay.phantom_after_s) are looked for.
SWEEP_S = 5.0
# Bytes read per drain pass before handling, publishing and acking them: bounds the
# latency a burst of large batches adds to everything else the relay does (~4,000 records).
READ_BUDGET_BYTES = 256 * 1024
# Connections whose key is kept (by routing id) before the table is emptied and refilled.
KEYS_KEPT = 65_536
# How many earlier boot ids of a node are remembered to refuse their late messages.
PREVIOUS_BOOTS_KEPT = 4


class NodeState:
    """What the relay holds per node: a fixed-size record, whatever the node's rate."""

    __slots__ = (
        "boot_id",
        "boots",
        "conn",
        "dups",
        "gaps_done",
        "hello",
        "last_seen",
        "left",
        "msgs",
        "node_id",
        "origin",
        "prev_boots",
        "rejects",
        "stamp",
        "telemetry",
        "tokens",
        "window",
        "window_width",
    )

    def __init__(self, node_id: str, boot_id: int, width: int, burst: float, now: float) -> None:
        self.node_id = node_id
        self.boot_id = boot_id
        # The routing id of the connection that owns this node id (None once it closed);
        # stamp, the time of the last message past that check, says how long it is silent.
        self.conn: bytes | None = None
        # The connection that brought this id in, until the node confirms it with a second
        # accepted message: each connection may hold only so many unconfirmed ids.
        self.origin: bytes | None = None
        self.window_width = width
        self.window = SeqWindow(width)
        self.prev_boots: tuple[int, ...] = ()
        self.boots = 1
        self.msgs = 0
        self.dups = 0
        self.rejects = 0
        self.gaps_done = 0  # gaps of boots already replaced
        self.tokens = burst
        self.stamp = now
        self.last_seen = now
        self.telemetry: Telemetry | None = None
        self.hello: Hello | None = None
        self.left = False

    def new_boot(self, boot_id: int) -> None:
        self.gaps_done += self.window.missing
        self.prev_boots = ((self.boot_id, *self.prev_boots))[:PREVIOUS_BOOTS_KEPT]
        self.boot_id = boot_id
        self.window = SeqWindow(self.window_width)
        self.boots += 1

    @property
    def gaps(self) -> int:
        return self.gaps_done + max(0, self.window.missing)

    def view(self, now: float) -> NodeView:
        return NodeView(
            node_id=self.node_id,
            boot_id=self.boot_id,
            first_seq=self.window.low,
            last_seq=self.window.high,
            age_ms=int((now - self.last_seen) * 1000),
            msgs=self.msgs,
            gaps=self.gaps,
            duplicates=self.dups,
            rejects=self.rejects,
            boots=self.boots,
            telemetry=self.telemetry,
            hello=self.hello,
            left=self.left,
        )


def _ack(conn_acks: dict[str, list[list[int]]], node_id: str, boot_id: int, seq: int) -> None:
    """Add seq to this pass's acks of the node, as ranges [boot_id, first, last]."""
    runs = conn_acks.get(node_id)
    if runs is None:
        conn_acks[node_id] = [[boot_id, seq, seq]]
        return
    run = runs[-1]
    if run[0] == boot_id and seq == run[2] + 1:
        run[2] = seq
    elif not (run[0] == boot_id and run[1] <= seq <= run[2]):
        runs.append([boot_id, seq, seq])


class Relay(Service):
    """Usage: ``Relay(load_config()).run()``, or ``shoal run relay``."""

    name = "relay"

    def __init__(self, config: ShoalConfig, shard: int = 0, **kwargs: Any) -> None:
        """shard: which of relay.shards this process is; config is as relay_shard() gives
        it (this shard's endpoints in [relay])."""
        super().__init__(config, **kwargs)
        self.cfg: RelayConfig = config.relay
        self.shard = shard
        self.shards = config.relay.shards
        self.nodes: dict[str, NodeState] = {}
        self.rate_hz = self.cfg.rate_per_node_hz  # read per message: plain attributes
        self.rate_burst = float(self.cfg.rate_burst)
        self.reject_counts: dict[str, int] = dict.fromkeys(codec.REJECT_REASONS, 0)
        self.rebind_s = self.cfg.rebind_after_ms / 1000
        # Who owns which node ids, to release them when a connection closes: the node ids
        # bound to each connection, and each connection's file descriptor (what a
        # disconnect event names). Bounded by the node table and the open connections.
        self.conn_nodes: dict[bytes, set[str]] = {}
        self.fd_conns: dict[int, bytes] = {}
        # Per connection, the ids it brought in that have sent one message only.
        self.unconfirmed: dict[bytes, int] = {}
        # Per connection (routing id): the User-Id (public key) its frames come with, and
        # the descriptor a disconnect names; see _keys_of.
        self.conn_users: dict[bytes, str | None] = {}
        self.conn_fds: dict[bytes, int] = {}
        self.ctl_ops["snapshot"] = self._op_snapshot

    def setup(self) -> None:
        cfg = self.cfg
        self.ingest = self.bind(
            "ingest", zmq.ROUTER, cfg.ingest, admit=NODE_SOCKETS, hwm=cfg.ingest_hwm
        )
        # Disconnects release the node ids a connection owned. (ZMQ_ROUTER_NOTIFY would
        # say it in band, but it is a draft option, absent from the libzmq that pyzmq ships.)
        self.ingest_events = self.sockets.monitor(self.ingest, zmq.EVENT_DISCONNECTED)
        self.on_readable(self.ingest_events, self._on_disconnects)
        self.bus = self.bind("bus", zmq.PUB, cfg.bus, hwm=cfg.bus_hwm)
        self.serve_ctl(cfg.ctl)
        self.on_readable(self.ingest, self._drain_ingest)
        self.every(min(SWEEP_S, cfg.phantom_after_s / 2), self._forget_silent)

    def on_stop(self) -> None:
        # Stop taking frames first; what was accepted is already published.
        self.sockets.close(self.ingest)

    def status_counters(self) -> dict[str, int]:
        counters = dict(self.counters)
        counters["nodes"] = len(self.nodes)
        counters["shard"] = self.shard
        counters["shards"] = self.shards
        counters["gaps"] = sum(st.gaps for st in self.nodes.values())
        counters.update({f"reject_{k}": v for k, v in self.reject_counts.items()})
        return counters

    # --- the hot path -------------------------------------------------------------------

    def _drain_ingest(self) -> None:
        accepted: list[NodeMessage] = []
        acks: dict[bytes, dict[str, list[list[int]]]] = {}
        now = time.monotonic()
        recv = self.ingest.recv
        decode = codec.decode_ingest
        admit = self._admit
        frames: list[tuple[bytes, zmq.Frame]] = []
        size = 0
        for _ in range(DRAIN_BUDGET):
            # recv() twice rather than recv_multipart(): pyzmq's RCVMORE check per frame
            # costs a third of the relay's time per message. A ROUTER delivers a
            # message's frames together, so the body is there once the identity is.
            try:
                identity = recv(zmq.NOBLOCK)
            except zmq.Again:
                break
            body = recv(zmq.NOBLOCK, copy=False)
            if body.more:
                self._reject("malformed", f"{1 + self._discard_rest()} body frames")
                continue
            frames.append((identity, body))
            size += len(body)
            if size > READ_BUDGET_BYTES:
                break  # handle, publish and ack what we have; the loop comes back at once
        keys = self._keys_of(frames)
        for (identity, body), key in zip(frames, keys, strict=True):
            if key is None:
                continue  # refused: a key revoked, or not a node key (counted)
            conn_acks = acks.get(identity)
            if conn_acks is None:
                conn_acks = acks[identity] = {}
            try:
                records, bad = decode(body.buffer)
                for bad_record in bad:
                    self._refuse(bad_record, conn_acks)
                for rec in records:
                    if admit(rec, now, conn_acks, identity, key):
                        accepted.append(rec)
            except codec.Rejected as rej:
                self._refuse(rej, conn_acks)
                continue
            except Exception as err:
                # A bug met by one frame costs that frame only: what the pass admitted so far
                # (this frame's earlier records too) is still published and acked below.
                self.counters["frame_errors"] += 1
                self._reject("malformed", f"internal: {err!r}")
                continue
        self.counters["accepted"] += len(accepted)
        step = MAX_BATCH_RECORDS
        for start in range(0, len(accepted), step):
            self.publish(
                codec.TOPIC_NODE_RECORDS, NodeRecords, records=accepted[start : start + step]
            )
        for identity, per_node in acks.items():
            if per_node:
                # The wire form of an Ack, built as plain lists: constructing an AckEntry
                # per node cost as much as encoding them.
                entries = [[n, *run] for n, runs in per_node.items() for run in runs]
                frame = codec.encode({"kind": "ack", "acks": entries, "v": PROTOCOL_VERSION})
                try:
                    self.ingest.send_multipart([identity, frame], zmq.NOBLOCK)
                except zmq.Again:
                    self.counters["acks_dropped"] += 1

    def _keys_of(self, frames: list[tuple[bytes, zmq.Frame]]) -> list[KeyInfo | None]:
        """Each frame's key as the allowlist has it now (None: refused, counted).

        The User-Id is read once per connection and kept by routing id. A peer may choose
        its routing id, so a new connection can take the id of one that has closed; what
        was kept for that id must then be forgotten before its frames are believed. libzmq
        queues a connection's disconnect event before it lets the id go, so the events
        read here, after the frames and before they are handled, name every connection
        that closed before any of these frames could come from a successor: a frame whose
        routing id had such an event is looked up again, itself."""
        gate = self.gate
        gone = self._drain_disconnects()
        users = self.conn_users
        out: list[KeyInfo | None] = []
        for identity, body in frames:
            if identity in gone or identity not in users:
                user = gate.user(body)
                if identity not in gone:  # a successor's id stays unkept until next pass
                    if len(users) >= KEYS_KEPT:
                        self._forget_conn_keys()
                    users[identity] = user
                    self._note_fd(identity, body)
            else:
                user = users[identity]
            key = gate.lookup(user)
            if key is not None and key.role not in ("node", "trusted"):
                gate.refuse("role", f"{key.name} ({key.role}) on ingest")
                key = None
            out.append(key)
        return out

    def _note_fd(self, identity: bytes, body: zmq.Frame) -> None:
        """The connection's descriptor: what its disconnect event will name."""
        try:
            fd = body.get(zmq.SRCFD)
        except zmq.ZMQError:  # a transport without descriptors: only silence rebinds
            return
        if fd >= 0:
            self.conn_fds[identity] = fd
            self.fd_conns[fd] = identity

    def _forget_conn_keys(self) -> None:
        """The kept keys, forgotten but those of node owners (a few per gateway): each other
        connection's next frame reads its own again."""
        owners = set(self.conn_nodes)
        self.conn_users = {i: u for i, u in self.conn_users.items() if i in owners}
        self.conn_fds = {i: fd for i, fd in self.conn_fds.items() if i in owners}
        self.fd_conns = {fd: i for fd, i in self.fd_conns.items() if i in owners}

    def _discard_rest(self) -> int:
        """Read and drop the remaining frames of a multi-frame message; how many."""
        n = 0
        while True:
            n += 1
            if not self.ingest.recv(zmq.NOBLOCK, copy=False).more:
                return n

    def _admit(
        self,
        rec: NodeMessage,
        now: float,
        conn_acks: dict[str, list[list[int]]],
        identity: bytes,
        key: KeyInfo,
    ) -> bool:
        """Decide one record. Acked whenever the node should not send it again."""
        node_id = rec.node_id
        st = self.nodes.get(node_id)
        if (st is None or st.conn != identity) and not key.may_speak(node_id):
            # Before anything else: the node's table entry, tokens and owner stay as they
            # were. Not acked: a node key does not get to learn what happened.
            if st is not None:
                st.rejects += 1
            self.gate.refuse("node", f"{key.name}: {node_id}")
            self._reject("forbidden", f"{node_id}: not a node of key {key.name}")
            return False
        if st is None:
            cfg = self.cfg
            if self.shards > 1 and shard_of(node_id, self.shards) != self.shard:
                # Not acked: a gateway routing by another shard count must not believe the
                # record landed; once it counts right, the node's ring resends it.
                self._reject("wrong_shard", f"{node_id}: shard {shard_of(node_id, self.shards)}")
                return False
            if len(self.nodes) >= cfg.max_nodes:
                self._reject("too_many_nodes", node_id)
                return False
            pending = self.unconfirmed.get(identity, 0)
            if pending >= cfg.new_ids_per_conn:
                # Not acked: a real node resends, and gets in once the connection's earlier
                # new ids have confirmed themselves or been forgotten as phantoms.
                self._reject("too_many_new_ids", node_id)
                return False
            st = self.nodes[node_id] = NodeState(
                node_id, rec.boot_id, cfg.dedup_window, cfg.rate_burst, now
            )
            st.origin = identity
            self.unconfirmed[identity] = pending + 1
            self._bind(st, identity)
        elif st.conn != identity and not self._rebind(st, identity, now):
            # Before the token bucket and the boot: another connection must not spend the
            # node's tokens or replace its boot. Not acked: if this is the node itself on a
            # new connection, it resends, and gets in once the rebind rule lets it.
            st.rejects += 1
            self._reject("impersonation", f"{node_id}: owned by another connection")
            return False
        # Token bucket: refill by elapsed time, spend one per message (duplicates included).
        # (This is the relay's hot path: plain ifs instead of min() and isinstance().)
        tokens = st.tokens + (now - st.stamp) * self.rate_hz
        if tokens > self.rate_burst:
            tokens = self.rate_burst
        st.stamp = now
        if tokens < 1.0:
            st.tokens = tokens
            st.rejects += 1
            self._reject("rate_limited", node_id)
            _ack(conn_acks, node_id, rec.boot_id, rec.seq)
            return False
        st.tokens = tokens - 1.0
        if rec.boot_id != st.boot_id:
            if rec.boot_id in st.prev_boots:
                st.rejects += 1
                self._reject("stale", f"{node_id}: message of an earlier boot")
                return False
            st.new_boot(rec.boot_id)
        seq = rec.seq
        window = st.window
        if seq == window.high + 1 and seq:
            # The common case, in order: what SeqWindow.check does for it, without the call.
            window.mask = ((window.mask << 1) | 1) & window.full
            window.high = seq
            verdict = NEW
        else:
            verdict = window.check(seq)
        if verdict != NEW:
            if verdict == DUPLICATE:
                st.dups += 1
                self.reject_counts["duplicate"] += 1
                self.counters["duplicates"] += 1
            else:
                st.rejects += 1
                self._reject("stale", f"{node_id}: seq {rec.seq} below window")
            _ack(conn_acks, node_id, rec.boot_id, rec.seq)
            return False
        st.msgs += 1
        st.last_seen = now
        if st.origin is not None and st.msgs > 1:
            self._confirm(st)
        kind = rec.__class__
        if kind is Telemetry:
            st.telemetry = rec  # type: ignore[assignment]
        elif kind is Hello:
            st.hello = rec  # type: ignore[assignment]
        st.left = kind is Goodbye
        runs = conn_acks.get(node_id)
        if runs is not None and runs[-1][2] == seq - 1 and runs[-1][0] == rec.boot_id:
            runs[-1][2] = seq
        else:
            _ack(conn_acks, node_id, rec.boot_id, seq)
        return True

    # --- which connection owns a node id ----------------------------------------------------

    def _rebind(self, st: NodeState, identity: bytes, now: float) -> bool:
        """Move the node to this connection if its owner closed or it has been silent."""
        if st.conn is not None and now - st.stamp < self.rebind_s:
            # The owner's disconnect, if it came before this frame, was read in _keys_of.
            return False
        self._bind(st, identity)
        self.counters["rebinds"] += 1
        return True

    def _bind(self, st: NodeState, identity: bytes) -> None:
        owned = self.conn_nodes.get(identity)
        if owned is None:
            # A new owner: its descriptor (what a disconnect event names) was noted when
            # its first frame's key was read (_keys_of).
            fd = self.conn_fds.get(identity, -1)
            if fd >= 0:
                self.fd_conns[fd] = identity
            owned = self.conn_nodes[identity] = set()
        self._unbind(st)
        st.conn = identity
        owned.add(st.node_id)

    def _unbind(self, st: NodeState) -> None:
        if st.conn is not None:
            owned = self.conn_nodes.get(st.conn)
            if owned is not None:
                owned.discard(st.node_id)
                if not owned:
                    del self.conn_nodes[st.conn]
            st.conn = None

    def _on_disconnects(self) -> None:
        self._drain_disconnects()

    def _drain_disconnects(self) -> set[bytes]:
        """Release the node ids of connections that closed: the next speaker gets them.
        The routing ids of those connections (their kept keys forgotten)."""
        gone: set[bytes] = set()
        for frames in received_multipart(self.ingest_events):
            event = parse_monitor_message(frames)
            if event["event"] != zmq.EVENT_DISCONNECTED:
                continue
            identity = self.fd_conns.pop(event["value"], None)
            if identity is None:
                continue  # a connection never seen (its frames are in no pass yet)
            gone.add(identity)
            self.conn_users.pop(identity, None)
            self.conn_fds.pop(identity, None)
            for node_id in self.conn_nodes.pop(identity, ()):
                st = self.nodes.get(node_id)
                if st is not None and st.conn == identity:
                    st.conn = None
        return gone

    def on_keys_changed(self) -> None:
        """A changed allowlist: every node held by a connection whose key may no longer
        speak for it is released (its next record is refused, and another connection
        with a key for it may take it)."""
        released = 0
        for identity, owned in list(self.conn_nodes.items()):
            key = (
                self.gate.ring.get(self.conn_users.get(identity) or "") if self.gate.ring else None
            )
            for node_id in list(owned):
                if key is None or not key.may_speak(node_id):
                    st = self.nodes.get(node_id)
                    if st is not None:
                        self._unbind(st)
                        released += 1
        if released:
            self.counters["keys_released_nodes"] += released
            self.log.info("nodes_released", nodes=released, why="the allowlist changed")

    def _refuse(self, rej: codec.Rejected, conn_acks: dict[str, list[list[int]]]) -> None:
        """Count a rejected frame or record; ack it if it says who sent it (no resends)."""
        self._reject(rej.reason, rej.detail)
        if rej.ident is not None:
            _ack(conn_acks, *rej.ident)

    def _reject(self, reason: str, detail: str) -> None:
        self.reject_counts[reason] = self.reject_counts.get(reason, 0) + 1
        self.counters["rejected"] += 1
        self.rejects.add(reason, detail)

    # --- upkeep and queries ---------------------------------------------------------------

    def _confirm(self, st: NodeState) -> None:
        """The node's second accepted message: its id no longer counts against its origin."""
        origin, st.origin = st.origin, None
        assert origin is not None
        left = self.unconfirmed.get(origin, 0) - 1
        if left > 0:
            self.unconfirmed[origin] = left
        else:
            self.unconfirmed.pop(origin, None)

    def _forget_silent(self) -> None:
        """Forget nodes silent for FORGET_AFTER_S, and phantoms (one message, then nothing
        for relay.phantom_after_s) much sooner: ids made up by the thousand must not hold
        the table a real new node needs."""
        now = time.monotonic()
        cutoff = now - FORGET_AFTER_S
        phantom_after = self.cfg.phantom_after_s
        for node_id, st in list(self.nodes.items()):
            if st.last_seen < cutoff:
                self.counters["forgotten"] += 1
            elif st.msgs <= 1 and now - st.last_seen > self._phantom_after(st, phantom_after):
                self.counters["phantoms_forgotten"] += 1
            else:
                continue
            del self.nodes[node_id]
            if st.origin is not None:
                self._confirm(st)
            self._unbind(st)

    def extra_metrics(self) -> list[Any]:
        """Per node: its last telemetry and how long since anything was accepted from it."""
        now = time.monotonic()
        nodes = sorted(self.nodes.items())
        tel = [(n, st.telemetry) for n, st in nodes if st.telemetry is not None]
        return [
            node_gauge("cpu_pct", "last reported CPU %", [(n, t.cpu_pct) for n, t in tel]),
            node_gauge("queue_depth", "last reported queue", [(n, t.queue_depth) for n, t in tel]),
            node_gauge("load_factor", "last reported load", [(n, t.load_factor) for n, t in tel]),
            node_gauge(
                "last_seen_seconds",
                "seconds since the relay accepted a message of the node",
                [(n, now - st.last_seen) for n, st in nodes],
            ),
        ]

    @staticmethod
    def _phantom_after(st: NodeState, phantom_after_s: float) -> float:
        """A node that announced a slow heartbeat gets two of its intervals to speak again."""
        if st.hello is not None and st.hello.hb_interval_ms:
            return max(phantom_after_s, 2 * st.hello.hb_interval_ms / 1000)
        return phantom_after_s

    def _op_snapshot(self, _args: dict[str, Any]) -> RelaySnapshot:
        now = time.monotonic()
        return RelaySnapshot(
            pub=self.pub_id,
            pseq=self.last_pseq(codec.TOPIC_NODE_RECORDS),
            nodes=[st.view(now) for st in sorted(self.nodes.values(), key=lambda s: s.node_id)],
            counters=self.status_counters(),
            rejects=dict(self.reject_counts),
        )
