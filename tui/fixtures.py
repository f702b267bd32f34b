"""A Source with fixed, deterministic data, for tests, screenshots and load tests.

source = FixedSource()          # 12 nodes, one or more in every display state
source = FixedSource(n=1000)    # 1,000 generated nodes
source.tick()                   # change some values, as a live cluster would
source.actions                  # [(action, node_id), ...] the console asked for
source.scenarios                # [path, ...] the console asked to run
source.set_scenario(run)        # show a running or finished ScenarioRun
"""

from __future__ import annotations

import dataclasses
import math
import random
from pathlib import Path

from .model import (
    RUN_SCENARIO,
    TASK_STATES,
    ActionError,
    ClusterState,
    Event,
    Ledger,
    NodeRow,
    Sample,
    ScenarioRun,
    ServiceRow,
    TaskRow,
    TaskStep,
)

# 2026-01-01 12:00:00 UTC: every time the fixture shows is relative to it.
T0 = 1_767_268_800.0
HISTORY_POINTS = 60

_K = 1024
# node_id, state, age_ms, cpu%, queue depth, load, gaps, free heap KiB, rssi, fw, boot_id,
# boots, reason (None: not reported). Queue capacity is 16 on the boards, 64 in the sim.
_ROWS = (
    ("esp32-7c9e", "alive", 420, 31.0, 2, 0.42, 0, 182, -61, "esp32-1.27.0", 7, 3, "heartbeats on time"),
    ("esp32-a41f", "joined", 150, 12.0, 0, 0.08, 0, 190, -70, "esp32-1.27.0", 1, 1, "hello from a new node"),
    ("sim-000", "alive", 80, 45.5, 3, 0.61, 0, 96, -48, "sim-0.1.0", 11, 1, "heartbeats on time"),
    ("sim-001", "overloaded", 120, 99.0, 61, 1.87, 2, 88, -52, "sim-0.1.0", 12, 1, "load 1.87 > 1.2 for 5 s"),
    ("sim-002", "alive", 60, 22.0, 1, 0.30, 0, 97, -47, "sim-0.1.0", 13, 1, "heartbeats on time"),
    ("sim-003", "suspect", 2_300, 18.0, 4, 0.25, 1, 95, -66, "sim-0.1.0", 14, 1, "silent 2.3 s (phi 5.1)"),
    ("sim-004", "dead", 74_000, None, None, None, 5, None, None, "sim-0.1.0", 15, 1, "silent 8.0 s (phi 12.0)"),
    ("sim-005", "rebooted", 200, 5.0, 0, 0.05, 0, 99, -50, "sim-0.1.0", 31, 2, "new boot 31 after 15"),
    ("sim-006", "left", 3_900_000, None, None, None, 0, None, None, "sim-0.1.0", 17, 1, "goodbye: shutdown"),
    ("sim-007", "unknown", 900, 40.0, 5, 0.55, 0, 93, -55, "sim-0.1.0", 18, 1, ""),
    ("sim-008", "dead", 12_500, None, None, None, 0, None, None, None, 19, 1, "silent 8.0 s (phi 12.0)"),
    ("sim-009", "alive", 240, 67.0, 12, 0.91, 3, 91, -58, "sim-0.1.0", 20, 1, "heartbeats on time"),
)  # fmt: skip
FIXED_NODES = tuple(
    NodeRow(
        node_id=node_id,
        state=state,
        age_ms=age_ms,
        cpu_pct=cpu,
        queue_depth=depth,
        queue_capacity=None if depth is None else 16 if node_id.startswith("esp32") else 64,
        load_factor=load,
        gaps=gaps,
        free_heap=None if heap_k is None else heap_k * _K,
        rssi=rssi,
        fw=fw,
        via="mqtt" if node_id.startswith("esp32") else "zmq",
        boot_id=boot_id,
        boots=boots,
        reason=reason,
    )
    for (
        node_id,
        state,
        age_ms,
        cpu,
        depth,
        load,
        gaps,
        heap_k,
        rssi,
        fw,
        boot_id,
        boots,
        reason,
    ) in _ROWS
)

FIXED_SERVICES = (
    ServiceRow("relay", "running", 4101, 0, 3_720.0, 120),
    ServiceRow("liveness", "running", 4102, 1, 1_805.0, 90),
    ServiceRow("sim", "backoff", None, 3, 0.0, None),
)

FIXED_EVENTS = (
    Event(T0 - 300, "service", None, "relay started (pid 4101)"),
    Event(T0 - 290, "membership", "sim-000", "joined: hello"),
    Event(T0 - 289, "membership", "sim-001", "joined: hello"),
    Event(T0 - 240, "membership", "sim-004", "suspect: silent 2.1 s (phi 5.0)"),
    Event(T0 - 234, "membership", "sim-004", "dead: silent 8.0 s (phi 12.0)"),
    Event(T0 - 200, "observer", None, "observer DEGRADED: relay_gap; 3 frames missed"),
    Event(T0 - 195, "observer", None, "observer healthy again after 5000 ms (resynced)"),
    Event(T0 - 150, "reject", None, "relay refused 4 rate_limited"),
    Event(T0 - 120, "fault", "sim-005", "reboot applied by the operator"),
    Event(T0 - 118, "membership", "sim-005", "rebooted: new boot 31 after 15 (down 1.9s)"),
    Event(T0 - 90, "service", None, "sim restarted (pid 4177)"),
    Event(T0 - 60, "membership", "sim-006", "left: goodbye: shutdown"),
    Event(T0 - 20, "membership", "sim-008", "dead: silent 8.0 s (phi 12.0)"),
    Event(T0 - 5, "membership", "sim-003", "suspect: silent 2.3 s (phi 5.1)"),
    Event(T0 - 1, "membership", "esp32-a41f", "joined: hello"),
)

# A scenario run by run_scenario() passes after this many ticks (the demo ticks each second).
SCENARIO_TICKS = 8


# Tasks in the fixture's ledger: (task_id, state, kind, owner, origin, epoch, redeliveries,
# reason), newest first.
_TASKS = (
    ("sim-001-000041", "running", "resize", "sim-002", "sim-001", 1, 0, ""),
    ("sim-001-000040", "assigned", "resize", "sim-009", "sim-001", 2, 1, "owner sim-004 dead"),
    ("sim-001-000039", "pending", "hash", None, "sim-001", 0, 0, ""),
    ("esp32-7c9e-07", "delivered", "hash", "sim-000", "esp32-7c9e", 1, 0, ""),
    ("sim-001-000038", "dead_letter", "resize", None, "sim-001", 4, 3, "redelivered 3 times"),
    ("sim-001-000037", "done", "hash", "sim-002", "sim-001", 1, 0, ""),
)  # fmt: skip
FIXED_TASKS = tuple(
    TaskRow(t, state, kind, owner, origin, epoch, redeliveries, reason, T0 - i * 3)
    for i, (t, state, kind, owner, origin, epoch, redeliveries, reason) in enumerate(_TASKS)
)


def _generated(n: int, seed: int) -> dict[str, NodeRow]:
    rng = random.Random(seed)
    weights = (1, 40, 1, 3, 2, 2, 1, 1)
    states = ("joined", "alive", "rebooted", "overloaded", "suspect", "dead", "left", "unknown")
    nodes = {}
    for i in range(n):
        node_id = f"sim-{i:03d}"
        state = rng.choices(states, weights)[0]
        heard = state not in ("dead", "left")
        nodes[node_id] = NodeRow(
            node_id=node_id,
            state=state,
            age_ms=rng.randrange(20, 900) if heard else rng.randrange(8_000, 600_000),
            cpu_pct=round(rng.uniform(0, 100), 1) if heard else None,
            queue_depth=rng.randrange(0, 64) if heard else None,
            queue_capacity=64 if heard else None,
            load_factor=round(rng.uniform(0, 2), 2) if heard else None,
            gaps=rng.choice((0, 0, 0, 1, 4)),
            free_heap=rng.randrange(80, 100) * _K if heard else None,
            rssi=rng.randrange(-80, -40) if heard else None,
            fw="sim-0.1.0",
            via="zmq",
            boot_id=i + 1,
            boots=1,
            reason="heartbeats on time" if state == "alive" else state,
        )
    return nodes


class FixedSource:
    """A Source (tui/model.py) that never changes unless ``tick()`` is called."""

    def __init__(
        self, n: int | None = None, *, seed: int = 1, connected: bool = True, detail: str = ""
    ) -> None:
        if n is None:
            self._nodes = {row.node_id: row for row in FIXED_NODES}
        else:
            self._nodes = _generated(n, seed)
        self._events: list[Event] = list(FIXED_EVENTS)
        self.actions: list[tuple[str, str]] = []
        self.scenarios: list[str] = []
        self.scenario: ScenarioRun | None = None
        self.unavailable: dict[str, str] = {}  # action -> why not
        self.silent: dict[str, float] = {}  # source -> seconds silent (ClusterState.silent_s)
        self.fail: Exception | None = None  # raised by snapshot() and events() when set
        self.closed = False
        self.ticks = 0
        self._connected = connected
        self._detail = detail
        self._version = 0
        self._state = self._build()

    def _build(self) -> ClusterState:
        self._version += 1
        if not self._connected:  # what a feed that cannot reach the cluster shows
            return ClusterState(connected=False, detail=self._detail, version=self._version)
        return ClusterState(
            connected=True,
            detail=self._detail,
            nodes=dict(self._nodes),
            services=FIXED_SERVICES,
            msgs_per_s=412.5 + self.ticks,
            tasks_per_s=None,
            lost=None,
            duplicates=3,
            gaps=sum(row.gaps for row in self._nodes.values()),
            rejected=12,
            observer_healthy=True,
            observer_reasons=(),
            scenario=self.scenario,
            silent_s=dict(self.silent),
            version=self._version,
        )

    def tick(self) -> None:
        """Move time on deterministically: every 7th node's cpu, load and age change."""
        self.ticks += 1
        t = self.ticks
        for i, (node_id, row) in enumerate(list(self._nodes.items())):
            if row.cpu_pct is None or (i + t) % 7:
                continue
            self._nodes[node_id] = dataclasses.replace(
                row,
                cpu_pct=float((i * 13 + t * 17) % 100),
                load_factor=round(((i * 7 + t * 3) % 200) / 100, 2),
                age_ms=(i * 31 + t * 250) % 1000,
            )
        self._events.append(Event(T0 + t, "membership", None, f"tick {t}"))
        run = self.scenario
        if run is not None and run.running:
            done = t - round(run.started_at - T0)
            if done < SCENARIO_TICKS:
                run = dataclasses.replace(
                    run, progress=f"{run.name} seed 1 | faults {done:5.1f}/{SCENARIO_TICKS} s"
                )
            else:
                run = dataclasses.replace(
                    run,
                    ended_at=T0 + t,
                    exit_code=0,
                    verdict="passed",
                    reason="every probe and expectation held",
                )
                self._events.append(Event(T0 + t, "scenario", None, f"{run.name} passed"))
            self.scenario = run
        self._state = self._build()

    def set_scenario(self, run: ScenarioRun | None) -> None:
        self.scenario = run
        self._state = self._build()

    def set_silent(self, **seconds: float) -> None:
        """Sources gone silent, e.g. ``set_silent(relay=12.0)``."""
        self.silent = seconds
        self._state = self._build()

    def set_connected(self, connected: bool, detail: str = "") -> None:
        self._connected = connected
        self._detail = detail
        self._state = self._build()

    # --- Source ------------------------------------------------------------------------

    def snapshot(self) -> ClusterState:
        if self.fail is not None:
            raise self.fail
        return self._state

    def events(self, since: int = 0) -> tuple[int, list[Event]]:
        if self.fail is not None:
            raise self.fail
        return len(self._events), self._events[since:]

    def history(self, node_id: str) -> list[Sample]:
        """A minute of samples; a node that stopped reporting has those from before."""
        row = self._nodes.get(node_id)
        if row is None:
            return []
        cpu, load, depth = row.cpu_pct, row.load_factor, row.queue_depth
        if cpu is None:
            cpu, load, depth = 40.0, 0.5, 6
        phase = sum(map(ord, node_id)) % 17
        out = []
        for k in range(HISTORY_POINTS):
            wave = (math.sin((k + phase) / 5) + 1) / 2  # 0..1
            out.append(
                Sample(
                    at=T0 - (HISTORY_POINTS - k),
                    cpu_pct=round(cpu * (0.5 + wave / 2), 1),
                    load_factor=round((load or 0) * (0.5 + wave / 2), 2),
                    queue_depth=round((depth or 0) * wave),
                )
            )
        return out

    def available(self, action: str) -> str | None:
        run = self.scenario
        if action == RUN_SCENARIO and run is not None and run.running:
            return f"{run.name} is running: one scenario at a time"
        return self.unavailable.get(action)

    def act(self, action: str, node_id: str) -> str:
        self.actions.append((action, node_id))
        if node_id not in self._nodes:
            raise ActionError(f"{action}: no node {node_id}")
        if action == "remove":
            del self._nodes[node_id]
            self._state = self._build()
            return f"{node_id} removed"
        if action in ("drain", "undrain"):
            row = self._nodes[node_id]
            self._nodes[node_id] = dataclasses.replace(row, drained=action == "drain")
            self._state = self._build()
            return f"{node_id} {action}ed"
        return f"{action} applied to {node_id}"

    def run_scenario(self, path: str) -> str:
        """Starts nothing: the scenario shows as running from now (tick() finishes it)."""
        self.scenarios.append(path)
        reason = self.available(RUN_SCENARIO)
        if reason is not None:
            raise ActionError(reason)
        name = Path(path).stem
        self.scenario = ScenarioRun(
            name=name,
            path=path,
            started_at=T0 + self.ticks,
            report=f"chaos-reports/{name}-seed1.json",
            pid=4242,
        )
        self._events.append(Event(T0 + self.ticks, "scenario", None, f"{name} started"))
        self._state = self._build()
        return f"{name} started; report {self.scenario.report}"

    def stop_scenario(self) -> str:
        """As the injector on SIGINT: the run ends aborted, its faults healed."""
        run = self.scenario
        if run is None or not run.running:
            raise ActionError("no scenario is running")
        self.scenario = dataclasses.replace(
            run,
            ended_at=T0 + self.ticks,
            exit_code=2,
            verdict="aborted",
            reason="stopped by the console: interrupted (Ctrl-C); faults healed",
        )
        self._events.append(Event(T0 + self.ticks, "scenario", None, f"{run.name} stopped"))
        self._state = self._build()
        return f"{run.name} stopped: aborted; report {run.report}"

    def ledger(self, latest: int = 1000) -> Ledger:
        if "ledger" in self.unavailable:
            raise ActionError(self.unavailable["ledger"])
        counts = dict.fromkeys(TASK_STATES, 0)
        for row in FIXED_TASKS:
            counts[row.state] += 1
        return Ledger(counts, FIXED_TASKS[:latest])

    def task_history(self, task_id: str) -> tuple[TaskRow, list[TaskStep]]:
        row = next((r for r in FIXED_TASKS if r.task_id == task_id), None)
        if row is None:
            raise ActionError(f"unknown task '{task_id}'")
        at = row.updated_at - 10
        steps = [TaskStep(at, None, "pending", 0, None, "offered")]
        if row.owner:
            steps.append(TaskStep(at + 1, "pending", "assigned", row.epoch, row.owner, "placed"))
        if row.reason:
            steps.append(TaskStep(at + 2, "assigned", "pending", row.epoch, None, row.reason))
        return row, steps

    def close(self) -> None:
        self.closed = True
