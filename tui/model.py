"""What the console shows, as plain immutable data: the screens never touch a socket.

A ``Source`` produces ``ClusterState`` snapshots (``feed.LiveFeed`` from a running
cluster; tests use fixed data) and carries out operator actions. The app polls the source
at most four times a second and updates only the cells that changed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

# Display states, in the order the header counts them. "joined" and "rebooted" are shown
# for JOINED_SHOW_S after the event, then the node is plain "alive"; "overloaded" is an
# alive node whose telemetry says so; "unknown" is a node the monitor has not judged yet.
STATES = ("joined", "alive", "rebooted", "overloaded", "suspect", "dead", "left", "unknown")
JOINED_SHOW_S = 5.0

# Operator actions on a node. Destructive ones ask for confirmation; none run --readonly.
ACTIONS = ("drain", "crash", "hang", "reboot", "flood", "remove")


@dataclass(frozen=True, slots=True)
class NodeRow:
    node_id: str
    state: str
    age_ms: int | None  # since the node was last heard (None: never)
    cpu_pct: float | None = None
    queue_depth: int | None = None
    queue_capacity: int | None = None
    load_factor: float | None = None
    tasks_running: int | None = None
    delegated_in: int | None = None
    delegated_out: int | None = None
    gaps: int = 0
    free_heap: int | None = None
    rssi: int | None = None
    fw: str | None = None
    boot_id: int = 0
    boots: int = 0
    reason: str = ""  # why it is in its state (the monitor's words)


@dataclass(frozen=True, slots=True)
class ServiceRow:
    name: str
    state: str  # running, backoff, paused, stopped... (the supervisor's), or "?" unknown
    pid: int | None
    restarts: int
    uptime_s: float
    beat_age_ms: int | None  # since its last heartbeat on its bus (None: no bus / never)


@dataclass(frozen=True, slots=True)
class Event:
    at: float  # wall-clock seconds (time.time()), for display
    kind: str  # membership, observer, reject, fault, action, service
    node_id: str | None
    text: str


@dataclass(frozen=True, slots=True)
class Sample:
    """One point of a node's history (the detail view's sparklines)."""

    at: float
    cpu_pct: float
    load_factor: float
    queue_depth: int


@dataclass(frozen=True)
class ClusterState:
    connected: bool
    detail: str = ""  # what is wrong when not connected, or what is partial
    nodes: dict[str, NodeRow] = field(default_factory=dict)
    services: tuple[ServiceRow, ...] = ()
    msgs_per_s: float = 0.0
    tasks_per_s: float | None = None  # None until delegation exists
    lost: int | None = None  # tasks lost (delegation), None until it exists
    dead_letters: int | None = None  # tasks the delegator gave up on, None without one
    duplicates: int = 0  # duplicate messages the relay refused
    gaps: int = 0  # sequence gaps over all nodes
    rejected: int = 0  # messages the relay refused, all reasons
    observer_healthy: bool | None = None  # None: liveness monitor not reachable
    observer_reasons: tuple[str, ...] = ()
    version: int = 0  # +1 for every new snapshot

    def counts(self) -> dict[str, int]:
        out = dict.fromkeys(STATES, 0)
        for row in self.nodes.values():
            out[row.state] = out.get(row.state, 0) + 1
        return out


class ActionError(Exception):
    """An action that could not be carried out; the message says why, for the operator."""


class Source(Protocol):
    def snapshot(self) -> ClusterState: ...

    def events(self, since: int = 0) -> tuple[int, list[Event]]:
        """Events after cursor ``since``; returns (new cursor, events in order)."""
        ...

    def history(self, node_id: str) -> list[Sample]: ...

    def available(self, action: str) -> str | None:
        """None if the action can run now, else why not (shown greyed out)."""
        ...

    def act(self, action: str, node_id: str) -> str:
        """Carry out an action on a node; a line for the operator, or ActionError."""
        ...

    def close(self) -> None: ...
