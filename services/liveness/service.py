"""The liveness monitor: who is alive, suspect, dead, rebooted or gone, and how sure it is.

Evidence is every node message the relay republishes (plus hello and goodbye for what they
say), timed on this process's monotonic clock when it arrives. Each node has its own
accrual detector (detector.py); a check every ``check_interval_ms`` turns silences into
verdicts:

    joined    first message of a node this monitor has not seen
    suspect   silent past the suspect threshold: reversible, no new work goes there
    dead      silent past the dead threshold: its work is re-delegated
    alive     heard again after suspect, dead or left (no node stays stuck as dead)
    rebooted  a new boot_id, with the downtime
    left      an explicit goodbye

Observer health: the monitor distrusts itself when the relay's stream has a gap, the relay
went silent or restarted, its own loop lagged, or most nodes fell silent at once. While
degraded it declares nobody suspect or dead and publishes ObserverHealth instead; on
recovery every node's silence counts from the recovery, so a relay restart never marks the
fleet dead.

Sockets: bus (PUB, topic "mem": Membership and ObserverHealth frames, numbered; plus the
service heartbeat), ctl (ROUTER: members, member, forget; Clone-pattern snapshot).
"""

from __future__ import annotations

import functools
import time
from typing import Any

import msgspec
import zmq
from prometheus_client.core import GaugeMetricFamily

from shoal.protocol import codec
from shoal.protocol.messages import (
    Goodbye,
    Hello,
    Member,
    MemberEvent,
    MemberEventKind,
    Membership,
    MembershipSnapshot,
    MemberState,
    NodeMessage,
    NodeRecords,
    ObserverHealth,
    ServiceBeat,
)
from shoal.services.runtime.config import (
    LivenessConfig,
    ShoalConfig,
    relay_links,
    shim_instances,
)
from shoal.services.runtime.metrics import DETECTION_BUCKETS
from shoal.services.runtime.service import CtlError, Service, parse_args
from shoal.services.runtime.shards import shard_of
from shoal.services.runtime.subscriber import BusSubscriber

from .detector import Detector, Thresholds
from .gateway import GatewayHealth

STATES: tuple[MemberState, ...] = ("alive", "suspect", "dead", "left")
# How often dead and left nodes older than forget_after_s are dropped.
FORGET_SWEEP_S = 60.0
# How often nodes that died after one message are looked for (liveness.phantom_after_s).
PHANTOM_SWEEP_S = 5.0


class MembersArgs(msgspec.Struct, forbid_unknown_fields=True):
    """Args of op "members": optionally only the nodes in one state."""

    state: MemberState | None = None


class NodeArgs(msgspec.Struct, forbid_unknown_fields=True):
    """Args of ops "member" and "forget"."""

    node_id: str


class Node:
    """What the monitor holds per node."""

    __slots__ = (
        "boot_id",
        "boots",
        "detector",
        "gateway",
        "left_seq",
        "node_id",
        "once",
        "prev_boot",
        "reason",
        "since",
        "state",
        "via",
    )

    def __init__(self, node_id: str, boot_id: int, detector: Detector, now: float) -> None:
        self.node_id = node_id
        self.boot_id = boot_id
        self.prev_boot = 0
        self.boots = 1
        self.detector = detector
        self.state: MemberState = "alive"
        self.since = now
        self.reason = "joined"
        self.left_seq = -1
        self.once = True  # heard once only: a phantom if it dies so (liveness.phantom_after_s)
        self.via = "zmq"  # from its hello: "mqtt" nodes are behind the broker and the shim
        self.gateway = -1  # "mqtt": the shim instance that carries it (by the hash), else -1

    def view(self, now: float) -> Member:
        return Member(
            node_id=self.node_id,
            boot_id=self.boot_id,
            state=self.state,
            since_ms=int((now - self.since) * 1000),
            reason=self.reason,
            boots=self.boots,
            evidence=self.detector.evidence(now),
        )


class Liveness(Service):
    """Usage: ``Liveness(load_config()).run()``, or ``shoal run liveness``."""

    name = "liveness"

    def __init__(self, config: ShoalConfig, **kwargs: Any) -> None:
        super().__init__(config, **kwargs)
        self.cfg: LivenessConfig = config.liveness
        self.clock = time.monotonic  # every time the monitor reads (tests drive a fake one)
        self.thresholds = Thresholds(self.cfg)
        self.nodes: dict[str, Node] = {}
        self.outbox: list[MemberEvent] = []
        self.healthy = True
        self.reasons: list[str] = []
        self.degraded_since = 0.0
        self.momentary: set[str] = set()  # reasons that last one check: gaps, restarts
        # Per relay shard: its instance, and its last frame of any kind (0: never). The
        # relay counts as heard as of its stalest shard: a silent shard is a blind spot.
        self.relay_pubs = [0] * config.relay.shards
        self.relay_heard_at = [0.0] * config.relay.shards
        self.relay_interval_s = config.runtime.heartbeat_interval_ms / 1000
        self.mass_since: float | None = None
        # One per shim instance: each carries its own boards (mqtt.shims).
        self.gateways = [
            GatewayHealth(
                self.cfg.relay_silent_beats * self.relay_interval_s,
                self.cfg.gateway_grace_ms / 1000,
            )
            for _ in shim_instances(config)
        ]
        self.boards_suspended = False
        self.boards_held = False  # the shim's beat is late: verdicts wait (gateway.py)
        self.ctl_ops["members"] = self._op_members
        self.ctl_ops["member"] = self._op_member
        self.ctl_ops["forget"] = self._op_forget

    def setup(self) -> None:
        cfg = self.cfg
        self.bus = self.bind("bus", zmq.PUB, cfg.bus, hwm=100_000)
        self.serve_ctl(cfg.ctl)
        self.relays = [
            BusSubscriber(
                self,
                bus,
                topics=(codec.TOPIC_NODE_RECORDS, codec.TOPIC_SERVICE_BEAT),
                on_frame=functools.partial(self._on_frame, shard=k),
                name="relay" if k == 0 else f"relay{k}",
            )
            for k, (bus, _ctl) in enumerate(relay_links(self.config, "liveness"))
        ]
        for sub in self.relays:
            sub.on_gap = lambda missed: self.momentary.add("bus_gap")
        self.relay = self.relays[0]
        # Each MQTT shim's heartbeat: whether its boards' path can be trusted (gateway.py).
        self.shims = [
            BusSubscriber(
                self,
                shim.bus,
                topics=(codec.TOPIC_SERVICE_BEAT,),
                on_frame=functools.partial(self._on_shim_frame, instance=k),
                name="shim" if k == 0 else f"shim{k}",
            )
            for k, shim in enumerate(shim_instances(self.config))
        ]
        self.detection = self.metrics.histogram(
            "detection_latency_seconds",
            "silence of a node when it was declared dead (by heartbeats)",
            DETECTION_BUCKETS,
        )
        self.every(cfg.check_interval_ms / 1000, self._check)
        self.every(FORGET_SWEEP_S, self._forget_old)
        self.every(min(PHANTOM_SWEEP_S, cfg.phantom_after_s / 2), self._forget_phantoms)

    def status_counters(self) -> dict[str, int]:
        counters = dict(self.counters)
        counters["nodes"] = len(self.nodes)
        for state in STATES:
            counters[state] = 0
        for node in self.nodes.values():
            counters[node.state] += 1
        counters["observer_healthy"] = int(self.healthy)
        counters["boards_suspended"] = int(self.boards_suspended)
        return counters

    # --- evidence ----------------------------------------------------------------------

    @property
    def relay_heard(self) -> float:
        """When the relay was last heard: its stalest shard's last frame (0: one never)."""
        return min(self.relay_heard_at)

    def _on_frame(self, _topic: bytes, frame: Any, shard: int = 0) -> None:
        now = self.clock()
        if frame.pub != self.relay_pubs[shard]:
            if self.relay_pubs[shard]:
                self.momentary.add("relay_restarted")
            self.relay_pubs[shard] = frame.pub
        self.relay_heard_at[shard] = now
        if isinstance(frame, NodeRecords):
            heard = self._heard
            for rec in frame.records:
                heard(rec, now)
            self.counters["records"] += len(frame.records)
            self._flush()
        elif isinstance(frame, ServiceBeat) and frame.service == "relay":
            self.relay_interval_s = frame.interval_ms / 1000

    def _on_shim_frame(self, _topic: bytes, frame: Any, instance: int = 0) -> None:
        if isinstance(frame, ServiceBeat) and frame.service == "shim":
            self.gateways[instance].beat(frame, self.clock())

    def _heard(self, rec: NodeMessage, now: float) -> None:
        node = self.nodes.get(rec.node_id)
        if node is None:
            self._join(rec, now)
            return
        node.once = False
        if rec.boot_id != node.boot_id:
            if rec.boot_id == node.prev_boot:
                self.counters["stale_boot"] += 1  # a late message of the boot before
                return
            self._reboot(node, rec, now)
        elif node.state == "left" and rec.seq <= node.left_seq:
            return  # a late resend from before the goodbye
        else:
            detector = node.detector
            silence = now - detector.last
            detector.heard(now)
            if node.state != "alive":
                gone = node.state in ("dead", "left")
                downtime_ms = int(silence * 1000) if gone else None
                reason = f"heard again after {node.state}"
                self._emit(node, "alive", "alive", now, reason, downtime_ms)
        kind = rec.__class__
        if kind is Hello:
            node.detector.announce(rec.hb_interval_ms)  # type: ignore[union-attr]
            self._learn_via(node, rec)  # type: ignore[arg-type]
        elif kind is Goodbye:
            node.left_seq = rec.seq
            reason = rec.reason or "goodbye"  # type: ignore[union-attr]
            self._emit(node, "left", "left", now, f"goodbye: {reason}")

    def _join(self, rec: NodeMessage, now: float) -> None:
        if len(self.nodes) >= self.cfg.max_nodes:
            self.counters["nodes_refused"] += 1
            self.rejects.add("too_many_nodes", rec.node_id)
            return
        announced = rec.hb_interval_ms if isinstance(rec, Hello) else None
        detector = Detector(self.thresholds, now, announced)
        node = self.nodes[rec.node_id] = Node(rec.node_id, rec.boot_id, detector, now)
        if isinstance(rec, Hello):
            self._learn_via(node, rec)
        self._emit(node, "joined", "alive", now, f"first message ({rec.__class__.__name__})")
        if isinstance(rec, Goodbye):
            node.left_seq = rec.seq
            self._emit(node, "left", "left", now, f"goodbye: {rec.reason or 'goodbye'}")

    def _learn_via(self, node: Node, hello: Hello) -> None:
        node.via = hello.via
        if hello.via == "mqtt":
            node.gateway = shard_of(node.node_id, len(self.gateways))
            self.gateways[node.gateway].boards_known = True

    def _reboot(self, node: Node, rec: NodeMessage, now: float) -> None:
        downtime_ms = int((now - node.detector.last) * 1000)
        old = node.boot_id
        node.prev_boot, node.boot_id = old, rec.boot_id
        node.boots += 1
        node.left_seq = -1
        # The interval across a reboot says nothing about the link: not a sample.
        node.detector.begin_at(now)
        self._emit(
            node, "rebooted", "alive", now, f"boot {old} -> {rec.boot_id}", downtime_ms=downtime_ms
        )

    # --- verdicts ----------------------------------------------------------------------

    def _check(self) -> None:
        now = self.clock()
        cfg = self.cfg
        reasons = self.momentary
        self.momentary = set()
        if self.loop_lag_ms > cfg.loop_lag_limit_ms:
            reasons.add("loop_lag")
        silent_for = now - self.relay_heard
        if not self.relay_heard or silent_for > cfg.relay_silent_beats * self.relay_interval_s:
            reasons.add("relay_silent")
        paused = self._boards_paused(now)
        live = overdue = 0
        candidates: list[Node] = []
        for node in self.nodes.values():
            state = node.state
            if node.gateway >= 0 and paused[node.gateway]:
                if state == "alive" or state == "suspect":
                    node.detector.restart_clock(now)  # silence counts from the recovery
                continue
            if state == "alive" or state == "suspect":
                detector = node.detector
                silence = now - detector.last
                if node.once:
                    # Heard once: no rhythm to miss, so no evidence against the observer
                    # (made-up ids by the hundred would otherwise suspend every verdict).
                    if silence >= detector.suspect_after_s:
                        candidates.append(node)
                    continue
                live += 1
                if silence > detector.overdue_after_s:
                    overdue += 1
                    if silence >= detector.suspect_after_s:
                        candidates.append(node)
        believed = False
        if overdue >= cfg.mass_silence_min_nodes and overdue >= cfg.mass_silence_fraction * live:
            if self.mass_since is None:
                self.mass_since = now
            if "relay_silent" in reasons or (now - self.mass_since) * 1000 < cfg.max_suspend_ms:
                reasons.add("mass_silence")
            else:
                believed = True  # the relay is fine and the fleet stays silent: believe it
        else:
            self.mass_since = None
        self._set_health(reasons, now, believed, live, overdue)
        if not reasons:
            for node in candidates:
                self._judge(node, now)
        self._flush()

    def _boards_paused(self, now: float) -> list[bool]:
        """Per shim instance, whether its boards are exempt from verdicts now (gateway.py):
        its path is down, or its beat is late."""
        paused = []
        for k, gateway in enumerate(self.gateways):
            suspended, why, recovered = gateway.check(now, gateway.boards_known)
            shim = "shim" if k == 0 else f"shim-{k}"
            if suspended and not gateway.suspended:
                self.counters["gateway_outages"] += 1
                self.log.warning("boards_suspended", reason=why, shim=shim)
            elif recovered:
                self.log.info("boards_path_back", grace_ms=self.cfg.gateway_grace_ms, shim=shim)
            elif not suspended and gateway.suspended:
                self.log.info("boards_judged_again", shim=shim)
            gateway.suspended = suspended
            held = not suspended and gateway.late(now)
            if held and not gateway.held:
                self.counters["boards_held"] += 1
            gateway.held = held
            paused.append(suspended or held)
        self.boards_suspended = any(g.suspended for g in self.gateways)
        self.boards_held = any(g.held for g in self.gateways)
        return paused

    def _judge(self, node: Node, now: float) -> None:
        detector = node.detector
        silence = now - detector.last
        if silence >= detector.dead_after_s:
            if node.state != "dead":
                reason = f"silent {silence:.2f}s >= dead threshold {detector.dead_after_s:.2f}s"
                self._emit(node, "dead", "dead", now, reason)
                self.detection.observe(silence)
        elif node.state == "alive" and silence >= detector.suspect_after_s:
            # (Re-checked: a recovery in this same pass restarted every clock.)
            reason = f"silent {silence:.2f}s >= suspect threshold {detector.suspect_after_s:.2f}s"
            self._emit(node, "suspect", "suspect", now, reason)

    def _set_health(
        self, reasons: set[str], now: float, believed: bool, live: int, overdue: int
    ) -> None:
        ordered = sorted(reasons)
        if ordered == self.reasons:
            return
        if ordered:
            if self.healthy:
                self.degraded_since = now
                self.counters["degraded"] += 1
            self.healthy = False
            self.reasons = ordered
            relay = f"{now - self.relay_heard:.2f}s" if self.relay_heard else "never heard"
            detail = f"{overdue} of {live} live nodes overdue; relay silent {relay}"
            self.log.warning("observer_degraded", reasons=ordered, detail=detail)
            self.publish(
                codec.TOPIC_MEMBERSHIP,
                ObserverHealth,
                healthy=False,
                reasons=ordered,
                detail=detail,
            )
            return
        degraded_ms = int((now - self.degraded_since) * 1000)
        self.healthy = True
        self.reasons = []
        if not believed:
            # Evidence may have been lost while degraded: every silence counts from now.
            for node in self.nodes.values():
                node.detector.restart_clock(now)
        detail = "fleet-wide silence believed" if believed else "silences count from now"
        self.log.info("observer_healthy", degraded_ms=degraded_ms, detail=detail)
        self.publish(
            codec.TOPIC_MEMBERSHIP,
            ObserverHealth,
            healthy=True,
            reasons=[],
            detail=detail,
            degraded_ms=degraded_ms,
        )

    # --- events ------------------------------------------------------------------------

    def _emit(
        self,
        node: Node,
        event: MemberEventKind,
        state: MemberState,
        now: float,
        reason: str,
        downtime_ms: int | None = None,
    ) -> None:
        prev: MemberState | None = None if event == "joined" else node.state
        node.state = state
        node.since = now
        node.reason = reason
        self.counters[f"events_{event}"] += 1
        self.outbox.append(
            MemberEvent(
                node_id=node.node_id,
                boot_id=node.boot_id,
                event=event,
                state=state,
                prev=prev,
                reason=reason,
                evidence=node.detector.evidence(now),
                downtime_ms=downtime_ms,
            )
        )

    def _flush(self) -> None:
        if self.outbox:
            events, self.outbox = self.outbox, []
            self.publish(codec.TOPIC_MEMBERSHIP, Membership, events=events)

    def _forget_old(self) -> None:
        if not self.cfg.forget_after_s:
            return  # listed until an operator removes them
        cutoff = self.clock() - self.cfg.forget_after_s
        for node in list(self.nodes.values()):
            if node.state in ("dead", "left") and node.since < cutoff:
                self._forget(node, "forgotten after forget_after_s")
        self._flush()

    def extra_metrics(self) -> list[Any]:
        """Per node a 1 under its current state (label ``state``), as kube-state-metrics do."""
        family = GaugeMetricFamily(
            "shoal_node_state",
            "1 for the node's current membership state",
            labels=["node", "state"],
        )
        for node_id, node in sorted(self.nodes.items()):
            family.add_metric([node_id, node.state], 1)
        return [family]

    def _forget_phantoms(self) -> None:
        """Ids heard once and then dead for phantom_after_s are forgotten: made-up ids by the
        thousand must not stay as dead members for good (the relay forgets them too)."""
        cutoff = self.clock() - self.cfg.phantom_after_s
        for node in [n for n in self.nodes.values() if n.once and n.state == "dead"]:
            if node.since < cutoff:
                self.counters["phantoms_forgotten"] += 1
                self._forget(node, "phantom: one message, then dead")
        self._flush()

    def _forget(self, node: Node, reason: str) -> None:
        now = self.clock()
        state = node.state
        self._emit(node, "forgotten", state, now, reason)
        del self.nodes[node.node_id]

    # --- queries -----------------------------------------------------------------------

    def _op_members(self, args: dict[str, Any]) -> MembershipSnapshot:
        req = parse_args(args, MembersArgs)
        now = self.clock()
        return MembershipSnapshot(
            pub=self.pub_id,
            pseq=self.last_pseq(codec.TOPIC_MEMBERSHIP),
            healthy=self.healthy,
            reasons=self.reasons,
            members=[
                node.view(now)
                for _, node in sorted(self.nodes.items())
                if req.state is None or node.state == req.state
            ],
            counters=self.status_counters(),
        )

    def _known(self, args: dict[str, Any]) -> Node:
        req = parse_args(args, NodeArgs)
        node = self.nodes.get(req.node_id)
        if node is None:
            raise CtlError(f"unknown node '{req.node_id[:64]}'")
        return node

    def _op_member(self, args: dict[str, Any]) -> Member:
        return self._known(args).view(self.clock())

    def _op_forget(self, args: dict[str, Any]) -> dict[str, Any]:
        node = self._known(args)
        if node.state not in ("dead", "left"):
            raise CtlError(f"node '{node.node_id}' is {node.state}: only dead or left nodes")
        self._forget(node, "forgotten by operator")
        self._flush()
        return {"forgotten": node.node_id}
