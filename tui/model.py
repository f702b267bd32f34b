"""What the console shows, as plain immutable data: the screens never touch a socket.

A ``Source`` produces ``ClusterState`` snapshots (``feed.LiveFeed`` from a running
cluster; tests use fixed data) and carries out operator actions, and runs fault-injection
scenarios (one at a time; ``ClusterState.scenario`` shows the running or the last one). The
app polls the source at most four times a second and updates only the cells that changed.
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
# A source this long silent is stale: its figures are shown as such, not as current.
STALE_AFTER_S = 3.0
# Which source each header figure comes from.
FIGURE_SOURCE = {
    "msgs in/s": "relay",  # node messages the relay accepted, per second
    "duplicates": "relay",
    "gaps": "relay",
    "rejected": "relay",
    "results/s": "delegator",  # task results the delegator committed, per second
    "dead-lettered": "delegator",
    "lost": "sim",
    "observer": "liveness",
}
# Node states whose live figures (cpu, load, queue, tasks, heap, rssi) mean nothing now.
GONE_STATES = frozenset({"dead", "left"})
# Tasks a flood drops on the node at once: about three times a sim node's default queue
# (sim.queue_capacity 64), so it is overloaded at once and sheds what does not fit.
FLOOD_TASKS = 200
# The name ``Source.available`` knows running a scenario by (not a node action).
RUN_SCENARIO = "scenario"
# The fault injector's exit codes (services/chaos/cli.py) and what they mean.
VERDICTS = {0: "passed", 1: "failed", 2: "aborted", 3: "undecided", 4: "invalid"}


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
    via: str = ""  # "zmq" or "mqtt" (from the hello; "" before one is seen)
    boot_id: int = 0
    boots: int = 0
    reason: str = ""  # why it is in its state (the monitor's words)
    drained: bool = False  # the delegator sends it no new work (drained by a console)
    ota: str = ""  # its over-the-air update, as the OTA service's rollout has it ("": none)


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
    kind: str  # membership, observer, reject, fault, action, service, scenario
    node_id: str | None
    text: str


@dataclass(frozen=True, slots=True)
class Sample:
    """One point of a node's history (the detail view's sparklines)."""

    at: float
    cpu_pct: float
    load_factor: float
    queue_depth: int


@dataclass(frozen=True, slots=True)
class ScenarioRun:
    """A scenario the fault injector runs, or ran, against the cluster the console shows."""

    name: str  # the file's stem
    path: str  # the scenario file
    started_at: float  # wall-clock seconds
    report: str  # its JSON report (a .md summary beside it); "" when none was written
    pid: int | None = None
    progress: str = ""  # the injector's latest progress line
    ended_at: float | None = None  # wall-clock seconds; None while it runs
    exit_code: int | None = None  # the injector's (VERDICTS); negative: killed by a signal
    verdict: str = ""  # passed, failed, aborted, undecided, invalid, killed; "" while it runs
    reason: str = ""  # why, in the injector's words

    @property
    def running(self) -> bool:
        return self.ended_at is None


@dataclass(frozen=True)
class ClusterState:
    connected: bool
    detail: str = ""  # what is wrong when not connected, or what is partial
    nodes: dict[str, NodeRow] = field(default_factory=dict)
    services: tuple[ServiceRow, ...] = ()
    msgs_per_s: float = 0.0
    tasks_per_s: float | None = None  # None until a delegator is heard
    lost: int | None = None  # tasks the fleet's nodes cannot account for; None: no sim heard
    dead_letters: int | None = None  # tasks the delegator gave up on, None without one
    duplicates: int = 0  # duplicate messages the relay refused
    gaps: int = 0  # sequence gaps over all nodes
    rejected: int = 0  # messages the relay refused, all reasons
    observer_healthy: bool | None = None  # None: liveness monitor not reachable
    observer_reasons: tuple[str, ...] = ()
    scenario: ScenarioRun | None = None  # the scenario running now, or the last one run
    # Sources heard before and silent now (relay, liveness, delegator, sim, supervisor):
    # seconds since each was last heard. Their figures are stale (the header says so).
    silent_s: dict[str, float] = field(default_factory=dict)
    version: int = 0  # +1 for every new snapshot

    def counts(self) -> dict[str, int]:
        out = dict.fromkeys(STATES, 0)
        for row in self.nodes.values():
            out[row.state] = out.get(row.state, 0) + 1
        return out


@dataclass(frozen=True, slots=True)
class TaskRow:
    """A task as the delegator's ledger holds it (protocol §7.4 TaskRow, the fields shown)."""

    task_id: str
    state: str  # pending, assigned, running, done, delivered, dead_letter
    kind: str = ""
    owner: str | None = None
    origin: str | None = None
    epoch: int = 0
    redeliveries: int = 0
    reason: str = ""
    updated_at: float = 0.0


@dataclass(frozen=True, slots=True)
class TaskStep:
    """One state change of a task (protocol §7.4 TaskEvent)."""

    at: float
    from_state: str | None
    to_state: str
    epoch: int
    node: str | None
    detail: str


@dataclass(frozen=True, slots=True)
class Ledger:
    """The ledger's counts by state and its latest changed tasks, newest first."""

    counts: dict[str, int]
    tasks: tuple[TaskRow, ...]


TASK_STATES = ("pending", "assigned", "running", "done", "delivered", "dead_letter")
LEDGER_ROWS = 1000  # the latest changed tasks the tasks view asks for (one page)


class ActionError(Exception):
    """An action that could not be carried out; the message says why, for the operator."""


class Source(Protocol):
    def snapshot(self) -> ClusterState: ...

    def events(self, since: int = 0) -> tuple[int, list[Event]]:
        """Events after cursor ``since``; returns (new cursor, events in order)."""
        ...

    def history(self, node_id: str) -> list[Sample]: ...

    def available(self, action: str) -> str | None:
        """None if the action (or RUN_SCENARIO) can run now, else why not."""
        ...

    def act(self, action: str, node_id: str) -> str:
        """Carry out an action on a node; a line for the operator, or ActionError."""
        ...

    def run_scenario(self, path: str) -> str:
        """Start the fault injector on a scenario file against this cluster; it runs on
        while the console does (``ClusterState.scenario``). A line for the operator, or
        ActionError (one is running already, it cannot start)."""
        ...

    def stop_scenario(self) -> str:
        """Stop the running scenario as the injector stops on Ctrl-C: it heals its faults
        and writes its report (this waits for that). A line for the operator, or
        ActionError (none is running)."""
        ...

    def ledger(self, latest: int = LEDGER_ROWS) -> Ledger:
        """The delegator's ledger (may wait on it: called from a worker thread); raises
        ActionError when there is no delegator to ask."""
        ...

    def task_history(self, task_id: str) -> tuple[TaskRow, list[TaskStep]]:
        """One task and its state changes, oldest first; ActionError if unknown."""
        ...

    def close(self) -> None:
        """Let go of the cluster; a scenario still running is stopped (its faults healed)."""
        ...
