"""What the injector sees of the cluster: the recorded history and the metrics.

- ``History``: every fault applied and healed, every membership event and observer-health
  change (stamped on arrival with this machine's CLOCK_MONOTONIC, which the fleet's fault
  replies use too), every metric sample. Expectations are checked against it afterwards,
  as Jepsen checks a recorded history.
- ``Watcher``: a small service in a thread following the liveness monitor's membership
  stream (MembershipView: snapshot, then numbered updates, resync on a gap).
- ``Sampler``: the metrics (docs/scenarios.md, "Metrics") from the services' ctl ops, once
  per steady-state interval; a service that does not answer leaves its metrics unknown
  (None) for that sample rather than guessing.
"""

from __future__ import annotations

import contextlib
import threading
import time
from typing import Any

from shoal.protocol.messages import MemberEvent, ObserverHealth, RelaySnapshot, ServiceStatus
from shoal.services.liveness.view import MembershipView
from shoal.services.runtime.config import ShoalConfig, with_overrides
from shoal.services.runtime.ctl_client import CtlClient, CtlFailed, CtlUnavailable
from shoal.services.runtime.service import Service

SAMPLE_TIMEOUT_S = 0.5
MIN_RATE_WINDOW_S = 0.5  # a rate over less than this is noise
SERVICES_WATCHED = ("relay", "liveness", "delegator", "sim", "broker", "shim", "boards")


class History:
    """Append-only, thread-safe; times are seconds since ``t0`` (monotonic)."""

    def __init__(self, t0: float) -> None:
        self.t0 = t0
        self.entries: list[dict[str, Any]] = []
        self._lock = threading.Lock()

    def at(self, mono: float) -> float:
        return round(mono - self.t0, 4)

    def add(self, type_: str, mono: float | None = None, **fields: Any) -> dict[str, Any]:
        entry = {"t": self.at(mono if mono is not None else time.monotonic()), "type": type_}
        entry.update(fields)
        with self._lock:
            self.entries.append(entry)
        return entry

    def of(self, type_: str) -> list[dict[str, Any]]:
        with self._lock:
            return [e for e in self.entries if e["type"] == type_]


class _WatcherService(Service):
    name = "injector"
    key_name = "scenarios"  # the fault injector acts as an operator with its own key

    def __init__(self, config: ShoalConfig, watcher: Watcher) -> None:
        super().__init__(with_overrides(config, "runtime", log_level="error"))
        self.watcher = watcher

    def setup(self) -> None:
        self.members = MembershipView(self, self.config.liveness)
        self.members.on_event = self.watcher._on_event
        self.members.on_update = self.watcher._on_frame


class Watcher:
    """Follows membership in a thread; ``states()`` is the current view, the history gets
    each event as it arrives."""

    def __init__(self, config: ShoalConfig, history: History) -> None:
        self.history = history
        self.service = _WatcherService(config, self)
        self._thread: threading.Thread | None = None

    def start(self) -> Watcher:
        self._thread = threading.Thread(target=self._run, name="injector-watch", daemon=True)
        self._thread.start()
        self.service.wait_ready(10)
        return self

    def _run(self) -> None:
        with contextlib.suppress(Exception):
            self.service.run(install_signals=False)

    def close(self) -> None:
        self.service.stop()
        if self._thread is not None:
            self._thread.join(5)

    def states(self) -> dict[str, str]:
        view = getattr(self.service, "members", None)
        if view is None:
            return {}
        return {node: m.state for node, m in dict(view.members).items()}

    def synced(self) -> bool:
        """Whether a liveness monitor has answered: without one, membership is unknown."""
        view = getattr(self.service, "members", None)
        return view is not None and bool(view.synced)

    def healthy(self) -> bool | None:
        view = getattr(self.service, "members", None)
        return None if view is None or not view.synced else bool(view.healthy)

    def _on_event(self, event: MemberEvent) -> None:
        self.history.add(
            "member",
            node=event.node_id,
            event=event.event,
            state=event.state,
            reason=event.reason,
            boot_id=event.boot_id,
        )

    def _on_frame(self, frame: Any) -> None:
        if isinstance(frame, ObserverHealth):
            self.history.add("observer", healthy=frame.healthy, reasons=list(frame.reasons))


class Sampler:
    """One sample of every metric; rates come from the change since the previous sample."""

    def __init__(
        self,
        config: ShoalConfig,
        watcher: Watcher,
        nodes: list[str],
        proxies: list[Any] | None = None,
        boards: list[str] | None = None,
        sims: list[str] | None = None,
        supervisors: list[str] | None = None,
    ) -> None:
        self.watcher = watcher
        self.nodes = nodes
        self.boards = list(boards or [])
        self.proxies = list(proxies or [])  # the run's fault proxies (link_dropped)
        self.relay = CtlClient(config.relay.ctl)
        # A cluster of hosts has a fleet and a supervisor on each: their figures are summed
        # (unknown if one of them does not answer).
        self.sims = [CtlClient(ep) for ep in sims or [config.sim.ctl]]
        self.delegator = CtlClient(config.delegator.ctl)
        self.supervisors = [CtlClient(ep) for ep in supervisors or [config.supervisor.ctl]]
        self._prev: dict[str, tuple[float, int]] = {}
        self._rates: dict[str, float] = {}
        self.last: dict[str, Any] = {}

    def close(self) -> None:
        for client in (self.relay, *self.sims, self.delegator, *self.supervisors):
            client.close()

    def _call(self, client: CtlClient, op: str, **kw: Any) -> Any:
        try:
            return client.call(op, timeout_s=SAMPLE_TIMEOUT_S, retries=0, **kw)
        except (CtlFailed, CtlUnavailable):
            return None

    def _rate(self, key: str, now: float, count: int | None) -> float | None:
        if count is None:
            return None
        prev = self._prev.get(key)
        if prev is not None and count >= prev[1] and now - prev[0] < MIN_RATE_WINDOW_S:
            return self._rates.get(key)  # too short a window to say: the last rate stands
        self._prev[key] = (now, count)
        if prev is None or count < prev[1]:
            self._rates.pop(key, None)
            return None  # the first sample, or the counter restarted with its service
        rate = round((count - prev[1]) / (now - prev[0]), 2)
        self._rates[key] = rate
        return rate

    def _board_tasks(self) -> dict[str, int | None]:
        """Tasks the boards took from others and gave away, from their latest telemetry in
        the relay's snapshot (the boards' own counters: delegated_in, delegated_out)."""
        keys = ("boards_delegated_in", "boards_delegated_out")
        if not self.boards:
            return dict.fromkeys(keys)
        snap = self._call(self.relay, "snapshot", result_type=RelaySnapshot)
        if snap is None:
            return dict.fromkeys(keys)
        din = dout = 0
        for node in snap.nodes:
            t = node.telemetry
            if node.node_id in self.boards and t is not None:
                din += t.delegated_in or 0
                dout += t.delegated_out or 0
        return {"boards_delegated_in": din, "boards_delegated_out": dout}

    def _sim_counters(self) -> dict[str, int]:
        """The fleet's counters; a fleet split over hosts: the sum of their counters, or
        none (every metric of them unknown) if one does not answer."""
        total: dict[str, int] = {}
        for client in self.sims:
            status = self._call(client, "status", result_type=ServiceStatus)
            if status is None:
                return {}
            for key, value in status.counters.items():
                total[key] = total.get(key, 0) + value
        return total

    def sample(self) -> dict[str, Any]:
        now = time.monotonic()
        states = self.watcher.states()
        fleet = [states.get(n) for n in self.nodes]
        known = self.watcher.synced()
        values: dict[str, Any] = {
            "alive": sum(s == "alive" for s in fleet) if known else None,
            "suspect": sum(s == "suspect" for s in fleet) if known else None,
            "dead": sum(s == "dead" for s in fleet) if known else None,
            "left": sum(s == "left" for s in fleet) if known else None,
            "members": sum(s is not None for s in fleet) if known else None,
        }
        healthy = self.watcher.healthy()
        values["observer_healthy"] = None if healthy is None else int(healthy)
        # Messages the fault proxies dropped so far; unknown when the run has none.
        values["link_dropped"] = sum(p.dropped() for p in self.proxies) if self.proxies else None

        relay = self._call(self.relay, "status", result_type=ServiceStatus)
        accepted = relay.counters.get("accepted") if relay is not None else None
        values["telemetry_rate"] = self._rate("accepted", now, accepted)
        values.update(self._board_tasks())

        counters = self._sim_counters()
        done = counters.get("tasks_completed")
        values["task_throughput"] = self._rate("completed", now, done)
        values["overloaded"] = counters.get("tasks_overloaded")
        unaccounted = counters.get("tasks_unaccounted")
        twice_at_origin = counters.get("completions_twice")

        audit = self._call(self.delegator, "audit")
        if audit is not None:
            values["in_flight"] = audit.get("assigned", 0) + audit.get("running", 0)
            values["dead_lettered"] = audit.get("dead_letter")
            values["redelegated"] = audit.get("redelivered_tasks")
            values["tasks_total"] = audit.get("total")
            values["undelivered"] = audit.get("done")
            values["pending"] = audit.get("pending")
            twice = audit.get("committed_twice")
        else:
            twice = None
            for key in (
                "in_flight",
                "dead_lettered",
                "redelegated",
                "tasks_total",
                "undelivered",
                "pending",
            ):
                values[key] = None
        values["lost_tasks"] = unaccounted
        values["duplicate_commits"] = (
            twice + twice_at_origin if twice is not None and twice_at_origin is not None else None
        )

        tables = [self._call(client, "ps") for client in self.supervisors]
        ps = (
            [row for t in tables for row in t] if all(isinstance(t, list) for t in tables) else None
        )
        if isinstance(ps, list):
            running = {row["name"] for row in ps if row.get("state") == "running"}
            watched = [row["name"] for row in ps if row["name"] in SERVICES_WATCHED]
            values["services_down"] = sum(name not in running for name in watched)
            values["services"] = {row["name"]: row.get("state") for row in ps}
        else:
            values["services_down"] = None
        self.last = values
        return values
