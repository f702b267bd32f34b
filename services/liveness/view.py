"""The liveness monitor's membership, kept current inside any service (Clone pattern).

Usage (inside a service's setup)::

    self.members = MembershipView(self, self.config.liveness)
    ...
    self.members.state("sim-001")     # "alive", "suspect", "dead", "left" or None
    self.members.healthy              # False while the monitor distrusts its own view
    self.members.on_event = handle    # called with each MemberEvent as it is applied
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from shoal.protocol import codec
from shoal.protocol.messages import (
    Member,
    MemberEvent,
    Membership,
    MembershipSnapshot,
    MemberState,
    ObserverHealth,
)
from shoal.services.runtime.clone import ClonedState
from shoal.services.runtime.config import LivenessConfig
from shoal.services.runtime.service import Service


class MembershipView(ClonedState):
    topic = codec.TOPIC_MEMBERSHIP
    snapshot_op = "members"
    snapshot_type = MembershipSnapshot

    def __init__(self, service: Service, liveness: LivenessConfig) -> None:
        self.members: dict[str, Member] = {}
        self.healthy = False
        self.reasons: list[str] = []
        self.on_event: Callable[[MemberEvent], None] | None = None
        super().__init__(service, liveness.bus, liveness.ctl, name="liveness")

    def state(self, node_id: str) -> MemberState | None:
        member = self.members.get(node_id)
        return member.state if member else None

    def apply_snapshot(self, snap: MembershipSnapshot) -> None:
        self.members = {m.node_id: m for m in snap.members}
        self.healthy = snap.healthy
        self.reasons = list(snap.reasons)

    def apply(self, frame: Any) -> None:
        if isinstance(frame, ObserverHealth):
            self.healthy = frame.healthy
            self.reasons = list(frame.reasons)
            return
        if not isinstance(frame, Membership):
            return
        for event in frame.events:
            if event.event == "forgotten":
                self.members.pop(event.node_id, None)
            else:
                old = self.members.get(event.node_id)
                self.members[event.node_id] = Member(
                    node_id=event.node_id,
                    boot_id=event.boot_id,
                    state=event.state,
                    since_ms=0,
                    reason=event.reason,
                    boots=(old.boots + (event.event == "rebooted")) if old else 1,
                    evidence=event.evidence,
                )
            if self.on_event is not None:
                self.on_event(event)
