"""The console's live data: a small shoal service in a background thread.

It follows the relay's node table (RelayView) and the liveness monitor's membership
(MembershipView), polls the supervisor's process table, turns what changes into events,
and every ``BUILD_INTERVAL_S`` builds one immutable ``ClusterState`` that the UI thread
picks up (one reference swap: no lock on the UI's path). Operator actions go out on their
own short-lived control connections. Scenarios run through the fault injector as a
subprocess (tui/scenario_runner.py), one at a time; ``close`` stops one still running.
The service itself, its sockets and timers, is tui/feed_link.py; this module keeps the
state it reports and builds the snapshots.

Usage::

    feed = LiveFeed(load_config())
    feed.start()
    state = feed.snapshot()
    ...
    feed.close()
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

from shoal.protocol.messages import (
    MemberEvent,
    NodeMessage,
    ObserverHealth,
    ServiceBeat,
    Telemetry,
)
from shoal.services.runtime.config import ShoalConfig
from shoal.services.runtime.ctl_client import CtlClient, CtlFailed, CtlUnavailable

from . import derived
from .actions import UNDRAIN, why_not
from .feed_link import BUILD_INTERVAL_S, PS_INTERVAL_S, FeedLink
from .model import (
    FLOOD_TASKS,
    GONE_STATES,
    JOINED_SHOW_S,
    LEDGER_ROWS,
    RUN_SCENARIO,
    STALE_AFTER_S,
    ActionError,
    ClusterState,
    Event,
    Ledger,
    NodeRow,
    Sample,
    ServiceRow,
    TaskRow,
    TaskStep,
)
from .scenario_runner import REPORTS_DIR, ScenarioRunner

__all__ = ["BUILD_INTERVAL_S", "PS_INTERVAL_S", "LiveFeed", "task_row"]

PS_STALE_S = 3.0  # no ps reply for this long: the supervisor's states are unknown ("?")
# Membership events after which the delegator takes a node's tasks away (delegator OWNER_LOST),
# and how far before the event the `moved` question looks (clocks: the delegator's and ours).
LOST_OWNER = frozenset({"dead", "rebooted", "left"})
MOVED_SINCE_S = 1.0
# A relay silent (no frame) for longer than this counts as disconnected.
RELAY_STALE_S = 3.0
EVENTS_KEPT = 5000
HISTORY_KEPT = 300  # samples per node: five minutes of 1 s telemetry
ACTION_TIMEOUT_S = 1.5
# A node the relay still lists but the monitor does not, silent this long, was forgotten
# there (removed by an operator, or forget_after_s): not a new node waiting for a verdict,
# which the monitor judges within a second or two. Hidden, so every console drops it.
FORGOTTEN_SILENT_S = 5.0


def forgotten(age_ms: int | None) -> bool:
    return age_ms is None or age_ms > FORGOTTEN_SILENT_S * 1000


# Node faults the console can apply through the simulated fleet's "fault" op.
SIM_FAULTS = {"crash": "crash", "hang": "hang", "reboot": "reboot", "flood": "flood"}


def task_row(r: dict[str, Any]) -> TaskRow:
    """A ledger row (a msgpack map) as the console shows it."""
    return TaskRow(
        task_id=str(r.get("task_id", "")),
        state=str(r.get("state", "")),
        kind=str(r.get("kind") or ""),
        owner=r.get("owner"),
        origin=r.get("origin"),
        epoch=int(r.get("epoch") or 0),
        redeliveries=int(r.get("redeliveries") or 0),
        reason=str(r.get("reason") or ""),
        updated_at=float(r.get("updated_at") or 0.0),
    )


def console_key(config: ShoalConfig, readonly: bool) -> str:
    """The key a console holds: the reader key only when read-only (it could not act if it
    tried), else [security] key or ``console``, an operator's."""
    return "reader" if readonly else config.security.key or "console"


class LiveFeed:
    """A Source (tui/model.py) reading a running cluster."""

    def __init__(
        self, config: ShoalConfig, reports_dir: Path = REPORTS_DIR, readonly: bool = False
    ) -> None:
        self.config = config
        self.service = FeedLink(config, self, console_key(config, readonly))
        self.scenarios = ScenarioRunner(
            config, reports_dir, on_event=lambda text: self._add_event("scenario", None, text)
        )
        self._thread: threading.Thread | None = None
        self._state = ClusterState(connected=False, detail="connecting...")
        self._lock = threading.Lock()  # events, histories and ps; the UI reads them too
        self._events: deque[tuple[int, Event]] = deque(maxlen=EVENTS_KEPT)
        self._cursor = 0
        self._history: dict[str, deque[Sample]] = {}
        self._ps: dict[str, dict[str, Any]] = {}
        self._ps_at = 0.0
        self._beats: dict[str, float] = {}  # service -> monotonic time of its last beat
        self._lost_owner: dict[str, str] = {}  # node -> dead, rebooted, left: its last loss
        self._moved_last_ask: dict[str, float] = {}  # node -> when its last `moved` is asked
        self._beat_pids: dict[str, int] = {}  # service -> the pid its last beat came from
        # source -> monotonic time it was last heard (beats, the sim's and ps's replies)
        self._heard: dict[str, float] = {}
        self._synced_at: float | None = None  # when the relay's snapshot first arrived
        # Per relay shard (its beat's "shard" counter): its counters at its last beat, the
        # (time, accepted) then, and its rate; the console shows their sums.
        self._shard_counters: dict[int, dict[str, int]] = {}
        self._shard_rate: dict[int, tuple[float, int]] = {}
        self._shard_msgs_per_s: dict[int, float] = {}
        self._relay_counters: dict[str, int] = {}
        self._msgs_per_s = 0.0
        self._tasks_rate: tuple[float, int] | None = None  # (time, committed) at a beat
        self._tasks_per_s: float | None = None  # None until a delegator is heard
        self._dead_letters: int | None = None
        self._lost: int | None = None  # the fleet's tasks_unaccounted; None: no sim heard
        self._shown_since: dict[str, tuple[str, float]] = {}  # node -> (joined|rebooted, t)
        self._hidden: set[str] = set()  # removed by the operator until heard again
        self._overloaded: dict[str, bool] = {}  # node -> its last telemetry's flag
        self._delegator_counters: dict[str, Any] | None = None
        self._sim_counters: dict[str, Any] | None = None
        self._window = derived.Window()  # delegator traffic, said once an interval
        self._drained: set[str] = set()  # the delegator's drained nodes (`drained`, each second)
        self._ota: dict[str, str] = {}  # node -> its update, as the OTA service said last
        self._version = 0

    # --- lifecycle ---------------------------------------------------------------------

    def start(self) -> LiveFeed:
        self._thread = threading.Thread(target=self._run, name="shoal-feed", daemon=True)
        self._thread.start()
        self.service.wait_ready(10)
        return self

    def _run(self) -> None:
        with contextlib.suppress(Exception):  # the UI shows "disconnected", never a traceback
            self.service.run(install_signals=False)

    def close(self) -> None:
        run = self.scenarios.state()
        if run is not None and run.running:
            # The console's screen is gone by now: say why quitting takes a while.
            print(
                f"stopping scenario {run.name}: the injector heals its faults and writes"
                f" its report (up to {self.scenarios.stop_timeout_s:g} s)",
                file=sys.stderr,
            )
            run = self.scenarios.stop()
            if run is not None:
                print(f"scenario {run.name}: {run.verdict} ({run.reason})", file=sys.stderr)
        self.service.stop()
        if self._thread is not None:
            self._thread.join(5)

    # --- what the UI calls -------------------------------------------------------------

    def snapshot(self) -> ClusterState:
        return self._state

    def events(self, since: int = 0) -> tuple[int, list[Event]]:
        with self._lock:
            new = [e for n, e in self._events if n > since]
            return self._cursor, new

    def history(self, node_id: str) -> list[Sample]:
        with self._lock:
            return list(self._history.get(node_id, ()))

    def available(self, action: str) -> str | None:
        if action == RUN_SCENARIO:
            run = self.scenarios.state()
            if run is not None and run.running:
                return f"{run.name} is running: one scenario at a time"
            if not self._ps.get("sim"):
                return "no simulated fleet in this cluster (the injector drives its faults)"
            return None
        if action in ("drain", UNDRAIN) and self._tasks_per_s is None:
            return "no delegator in this cluster (drain takes a node out of its placement)"
        if action in SIM_FAULTS and not self._ps.get("sim"):
            return "no simulated fleet in this cluster (faults go through its fault op)"
        return None

    def act(self, action: str, node_id: str) -> str:
        reason = self.available(action) or why_not(action, self._state.nodes.get(node_id), node_id)
        if reason is not None:
            raise ActionError(reason)
        try:
            if action in ("drain", UNDRAIN):
                args = {"node_id": node_id, "drain": action == "drain"}
                reply = self._call(self.config.delegator.ctl, "drain", args)
                with self._lock:  # the delegator's whole set: what every row shows
                    self._drained = set(reply.get("all", ())) if isinstance(reply, dict) else set()
                if action == UNDRAIN:
                    self._add_event("action", node_id, "undrained: new work may go there again")
                    return f"{node_id} undrained"
                self._add_event("action", node_id, "drained: no new work goes there")
                return f"{node_id} drained"
            if action == "remove":
                self._call(self.config.liveness.ctl, "forget", {"node_id": node_id})
                with self._lock:
                    self._hidden.add(node_id)  # at once; other consoles: FORGOTTEN_SILENT_S
                self._add_event("action", node_id, "removed by the operator")
                return f"{node_id} removed"
            if action == "flood":
                args = {"action": "flood", "nodes": [node_id], "tasks": FLOOD_TASKS}
                self._call(self.config.sim.ctl, "fault", args)
                self._add_event("fault", node_id, f"flood of {FLOOD_TASKS} tasks by the operator")
                return f"flood of {FLOOD_TASKS} tasks applied to {node_id}"
            if action in SIM_FAULTS:
                args = {"action": SIM_FAULTS[action], "nodes": [node_id]}
                self._call(self.config.sim.ctl, "fault", args)
                self._add_event("fault", node_id, f"{action} applied by the operator")
                return f"{action} applied to {node_id}"
        except CtlUnavailable as err:
            raise ActionError(f"{action}: no answer ({err})") from None
        except CtlFailed as err:
            raise ActionError(f"{action}: {err}") from None
        raise ActionError(f"unknown action '{action}'")

    def run_scenario(self, path: str) -> str:
        reason = self.available(RUN_SCENARIO)
        if reason is not None:
            raise ActionError(reason)
        run = self.scenarios.start(path)
        return f"{run.name} started; report {run.report}"

    def stop_scenario(self) -> str:
        run = self.scenarios.state()
        if run is None or not run.running:
            raise ActionError("no scenario is running")
        run = self.scenarios.stop()
        if run is None:
            return "stopped"
        where = f"report {run.report}" if run.report else "no report written"
        return f"{run.name} stopped: {run.verdict} ({run.reason}); {where}"

    def ledger(self, latest: int = LEDGER_ROWS) -> Ledger:
        try:
            page = self._call(self.config.delegator.ctl, "tasks", {"latest": latest})
        except (CtlUnavailable, CtlFailed) as err:
            raise ActionError(
                f"no ledger: delegator at {self.config.delegator.ctl}: {err}"
            ) from None
        return Ledger(dict(page["counts"]), tuple(task_row(r) for r in page["latest"]))

    def task_history(self, task_id: str) -> tuple[TaskRow, list[TaskStep]]:
        try:
            reply = self._call(self.config.delegator.ctl, "task", {"task_id": task_id})
        except (CtlUnavailable, CtlFailed) as err:
            raise ActionError(f"task {task_id}: {err}") from None
        steps = [
            TaskStep(
                at=float(e.get("at", 0.0)),
                from_state=e.get("from_state"),
                to_state=str(e.get("to_state", "")),
                epoch=int(e.get("epoch", 0)),
                node=e.get("node"),
                detail=str(e.get("detail", "")),
            )
            for e in reply["history"]
        ]
        return task_row(reply["task"]), steps

    def _call(self, endpoint: str, op: str, args: dict[str, Any]) -> Any:
        with CtlClient(endpoint, security=self.service.security) as client:
            return client.call(op, args, timeout_s=ACTION_TIMEOUT_S, retries=0)

    # --- inputs (on the feed thread) ---------------------------------------------------

    def _add_event(self, kind: str, node_id: str | None, text: str) -> None:
        with self._lock:
            self._add_event_locked(kind, node_id, text)

    def _add_event_locked(self, kind: str, node_id: str | None, text: str) -> None:
        self._cursor += 1
        self._events.append((self._cursor, Event(time.time(), kind, node_id, text)))

    def _on_records(self, records: list[NodeMessage]) -> None:
        now = time.time()
        with self._lock:
            for rec in records:
                if rec.__class__ is Telemetry:
                    t: Telemetry = rec  # type: ignore[assignment]
                    hist = self._history.get(t.node_id)
                    if hist is None:
                        hist = self._history[t.node_id] = deque(maxlen=HISTORY_KEPT)
                    hist.append(Sample(now, t.cpu_pct, t.load_factor, t.queue_depth))
                    flag = bool(t.overloaded)
                    text = derived.overload(
                        self._overloaded.get(t.node_id),
                        flag,
                        t.load_factor,
                        t.queue_depth,
                        t.queue_capacity,
                    )
                    self._overloaded[t.node_id] = flag
                    if text is not None:
                        self._add_event_locked("overload", t.node_id, text)

    def _on_relay_beat(self, beat: ServiceBeat) -> None:
        self._on_beat(beat)
        counters = beat.counters
        shard = counters.get("shard", 0)
        now = time.monotonic()
        accepted = counters.get("accepted", 0)
        rate = self._shard_rate.get(shard)
        if rate is not None and now > rate[0] and accepted >= rate[1]:
            self._shard_msgs_per_s[shard] = (accepted - rate[1]) / (now - rate[0])
            self._msgs_per_s = sum(self._shard_msgs_per_s.values())
        self._shard_rate[shard] = (now, accepted)
        old = self._shard_counters.get(shard, {})
        refused = {
            k.removeprefix("reject_"): v - old.get(k, 0)
            for k, v in counters.items()
            if k.startswith("reject_") and k != "reject_duplicate" and v > old.get(k, 0)
        }
        if old and refused:
            text = ", ".join(f"{n} {reason}" for reason, n in sorted(refused.items()))
            self._add_event("reject", None, f"relay refused {text}")
        self._shard_counters[shard] = dict(counters)
        total: dict[str, int] = {}
        for part in self._shard_counters.values():
            for key, value in part.items():
                total[key] = total.get(key, 0) + value
        self._relay_counters = total

    def _on_delegator_beat(self, beat: Any) -> None:
        if not isinstance(beat, ServiceBeat):
            return
        self._on_beat(beat)
        now = time.monotonic()
        committed = beat.counters.get("result_committed", 0)
        if self._tasks_rate is not None and now > self._tasks_rate[0]:
            self._tasks_per_s = max(0.0, committed - self._tasks_rate[1]) / (
                now - self._tasks_rate[0]
            )
        elif self._tasks_per_s is None:
            self._tasks_per_s = 0.0
        self._tasks_rate = (now, committed)
        dead = beat.counters.get("tasks_dead_letter")
        text = derived.dead_lettered(self._dead_letters, dead)
        if text is not None:
            self._add_event("task", None, text)
        self._dead_letters = dead
        old, self._delegator_counters = self._delegator_counters, dict(beat.counters)
        if old is None:
            return  # the first beat: its counters are since the delegator started
        grown = derived.deltas(old, beat.counters)
        text = derived.redelegation(grown)
        if text is not None:
            self._add_event("delegation", None, text)
        self._window.add(grown, now)
        if self._window.due(now):
            seconds = now - (self._window.started or now)
            text = derived.delegation_summary(self._window.take(), seconds)
            if text is not None:
                self._add_event("delegation", None, text)

    def _on_beat(self, beat: ServiceBeat) -> None:
        self._beats[beat.service] = self._heard[beat.service] = time.monotonic()
        self._beat_pids[beat.service] = beat.pid

    def _on_member_event(self, event: MemberEvent) -> None:
        node = event.node_id
        if event.event in ("joined", "rebooted"):
            self._shown_since[node] = (event.event, time.monotonic())
        if event.event in ("joined", "rebooted", "alive"):
            with self._lock:
                self._hidden.discard(node)  # a removed node that comes back is welcome
        elif event.event == "forgotten":
            with self._lock:
                self._hidden.add(node)  # removed by any console (or forget_after_s)
        if event.event in LOST_OWNER and self._tasks_per_s is not None:  # a delegator is heard
            self._lost_owner[node] = event.event
            self.service.ask_moved(node, max(0.0, time.time() - MOVED_SINCE_S))
        text = f"{event.event}: {event.reason}"
        if event.downtime_ms is not None:
            text += f" (down {event.downtime_ms / 1000:.1f}s)"
        self._add_event("membership", node, text)

    def _on_membership_frame(self, frame: Any) -> None:
        if isinstance(frame, ObserverHealth):
            if frame.healthy:
                text = f"observer healthy again after {frame.degraded_ms} ms ({frame.detail})"
            else:
                text = f"observer DEGRADED: {', '.join(frame.reasons)}; {frame.detail}"
            self._add_event("observer", None, text)

    def _on_sim_counters(self, counters: dict[str, Any]) -> None:
        self._heard["sim"] = time.monotonic()
        old, self._sim_counters = self._sim_counters, dict(counters)
        if old is not None:
            grown = derived.deltas(old, counters)
            texts = derived.faults(grown, old.get("nodes_stopped"), counters.get("nodes_stopped"))
            for line in texts:
                self._add_event("fault", None, line)
            shed = derived.shed(grown)
            if shed is not None:
                self._add_event("task", None, shed)
        lost = counters.get("tasks_unaccounted")
        self._lost = lost if isinstance(lost, int) else None

    def _on_moved(self, reply: dict[str, Any]) -> None:
        node = reply["node_id"]
        rows = [r for r in reply["tasks"] if isinstance(r, dict)]
        total = reply.get("total")
        why = self._lost_owner.get(node, "lost")
        last = time.monotonic() >= self._moved_last_ask.get(node, 0.0) - 0.5  # the last ask's
        n = total if isinstance(total, int) else len(rows)
        text = derived.moved(why, rows, n, last)
        if text is not None:
            self._add_event("delegation", node, text)

    def _on_drained(self, nodes: list[str]) -> None:
        self._drained = set(nodes)  # replaced whole: the UI's action reads it on its thread

    def _on_ota(self, progress: dict[str, Any]) -> None:
        """The rollout's rows as one line a board: version, state, bytes, seconds."""
        out: dict[str, str] = {}
        for row in progress["nodes"]:
            if not isinstance(row, dict) or not isinstance(row.get("node_id"), str):
                continue
            text = f"{progress.get('version')} {row.get('state')}"
            if row.get("total"):
                text += f" {row.get('done', 0):,}/{row['total']:,} B"
            if row.get("seconds") is not None:
                text += f" {row['seconds']} s"
            out[row["node_id"]] = text
        with self._lock:
            self._ota = out

    def _on_ps(self, rows: list[dict[str, Any]]) -> None:
        old = self._ps
        new = {row.get("name", "?"): row for row in rows if isinstance(row, dict)}
        for text in derived.service_changes(old, new):
            self._add_event("service", None, text)
        with self._lock:
            self._ps = new
        self._ps_at = self._heard["supervisor"] = time.monotonic()

    # --- the snapshot ------------------------------------------------------------------

    def _build(self) -> None:
        view = self.service.relay
        members = self.service.members.members
        now = time.monotonic()
        with self._lock:
            hidden = set(self._hidden)
            drained = set(self._drained)
        judged = self.service.members.synced
        nodes: dict[str, NodeRow] = {}
        for node_id, nv in view.nodes.items():
            if node_id in hidden or (
                judged and node_id not in members and forgotten(view.age_ms(node_id))
            ):
                continue
            member = members.get(node_id)
            state = self._display_state(
                node_id, member.state if member else None, nv.telemetry, now
            )
            # A dead or left node's last telemetry is history, not what it does now.
            t = None if state in GONE_STATES else nv.telemetry
            nodes[node_id] = NodeRow(
                node_id=node_id,
                state=state,
                age_ms=view.age_ms(node_id),
                cpu_pct=t.cpu_pct if t else None,
                queue_depth=t.queue_depth if t else None,
                queue_capacity=t.queue_capacity if t else None,
                load_factor=t.load_factor if t else None,
                tasks_running=getattr(t, "tasks_running", None),
                delegated_in=getattr(t, "delegated_in", None),
                delegated_out=getattr(t, "delegated_out", None),
                gaps=nv.gaps,
                free_heap=t.free_heap if t else None,
                rssi=t.rssi if t else None,
                fw=(nv.telemetry.fw if nv.telemetry else None)
                or (nv.hello.fw if nv.hello else None),
                via=nv.hello.via if nv.hello else "",
                boot_id=nv.boot_id,
                boots=nv.boots,
                reason=member.reason if member else "",
                drained=node_id in drained,
                ota=self._ota.get(node_id, ""),
            )
        for node_id, member in members.items():
            if node_id not in nodes and node_id not in hidden:
                # The relay forgot it (long silent); the monitor still lists it.
                nodes[node_id] = NodeRow(
                    node_id=node_id,
                    state=member.state,
                    age_ms=member.evidence.silence_ms,
                    boot_id=member.boot_id,
                    boots=member.boots,
                    reason=member.reason,
                )
        if view.synced and self._synced_at is None:
            self._synced_at = now
        # Fresh from the snapshot on: the relay's first beat may be half a second away,
        # and nodes already listed must not sit under a "disconnected" banner meanwhile.
        relay_last = max(self._beats.get("relay", 0.0), self._synced_at or 0.0)
        connected = view.synced and now - relay_last < RELAY_STALE_S
        heard = dict(self._heard)
        silent = {k: round(now - t, 1) for k, t in heard.items() if now - t > STALE_AFTER_S}
        missing = []
        if not connected:
            missing.append(f"relay at {self.config.relay.ctl} not answering")
        if not self.service.members.synced:
            missing.append(f"liveness at {self.config.liveness.ctl} not answering")
        counters = self._relay_counters
        self._version += 1
        self._state = ClusterState(
            connected=connected,
            detail="; ".join(missing),
            nodes=nodes,
            services=self._services(now),
            msgs_per_s=round(self._msgs_per_s, 1),
            tasks_per_s=None if self._tasks_per_s is None else round(self._tasks_per_s, 1),
            dead_letters=self._dead_letters,
            lost=self._lost,
            duplicates=counters.get("duplicates", 0),
            gaps=sum(n.gaps for n in view.nodes.values()),
            rejected=counters.get("rejected", 0),
            observer_healthy=self.service.members.healthy if self.service.members.synced else None,
            observer_reasons=tuple(self.service.members.reasons),
            scenario=self.scenarios.state(),
            silent_s=silent,
            version=self._version,
        )

    def _display_state(self, node_id: str, state: str | None, t: Any, now: float) -> str:
        if state is None:
            return "unknown"
        if state != "alive":
            return state
        shown = self._shown_since.get(node_id)
        if shown is not None and now - shown[1] < JOINED_SHOW_S:
            return shown[0]
        if getattr(t, "overloaded", None):
            return "overloaded"
        return "alive"

    def _services(self, now: float) -> tuple[ServiceRow, ...]:
        with self._lock:
            ps = dict(self._ps)
        stale = now - self._ps_at > PS_STALE_S
        names = list(ps) or ["relay", "liveness", "sim"]
        rows = []
        for name in names:
            row = {} if stale else ps.get(name, {})
            beat = self._beats.get(name)
            pid = row.get("pid")
            if pid is not None and self._beat_pids.get(name) != pid:
                beat = None  # a process started since: its first heartbeat is still to come
            rows.append(
                ServiceRow(
                    name=name,
                    state=str(row.get("state", "?")),
                    pid=row.get("pid"),
                    restarts=int(row.get("restarts", 0)),
                    uptime_s=float(row.get("uptime_s", 0.0)),
                    beat_age_ms=None if beat is None else int((now - beat) * 1000),
                )
            )
        return tuple(rows)
