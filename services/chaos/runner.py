"""One run of a scenario, from the cluster's start to the verdict.

The phases, each recorded in the history:

1. **startup**: start a cluster on free ports in a temporary directory (or attach to a
   running one), wait until the relay hears every node and, if the liveness monitor runs,
   it holds every node alive;
2. **settle**, then **before**: the steady-state probes must hold before any fault (if
   not, no fault is applied and the verdict is "failed", as in Chaos Toolkit);
3. **faults**: the plan's timeline; probes and safety checked every interval;
4. **rollback** (always, also after an abort or Ctrl-C): every fault healed;
5. **recover**: until every node is alive again (at most ``rollback.recover``), then the
   **after** probes;
6. **drain**: arrivals stopped, until the ledger has nothing in flight (at most
   ``rollback.drain``); then tasks are counted and the expectations judged.

Verdicts and exit codes: passed 0, failed 1, aborted 2 (safety, kill switch, Ctrl-C),
undecided 3 (the cluster could not be started or observed, a fault could not be applied),
invalid 4 (raised before anything runs).

Long on purpose: one run is one state machine (start, steady state, faults, recover,
drain, verdict, rollback) whose phases share the run's state; split, they would pass it all
around.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from shoal.services.runtime import security
from shoal.services.runtime.config import ShoalConfig
from shoal.services.runtime.ctl_client import CtlClient, CtlFailed, CtlUnavailable
from shoal.services.runtime.ports import next_port
from shoal.services.runtime.service import EXIT_BIND_FAILED
from shoal.services.runtime.tcp_proxy import TcpProxy

from .actuators import ActuatorError, Actuators
from .checks import (
    Applied,
    Context,
    check_probe,
    detection_latencies,
    evaluate,
    percentile,
    recovery_s,
)
from .fault_proxy import FaultProxy
from .load import STARTUP_ALLOWANCE_S, Loaded, ScenarioError, board_ids, hot_ids, member_ids
from .observer import History, Sampler, Watcher
from .plan import Plan, PlanError, make_plan
from .scenario import (
    FAILING_KINDS,
    Scenario,
    attach_errors,
    kind_of,
    on_services,
    service_links,
)
from .topology import Topology

EXIT_CODES = {"passed": 0, "failed": 1, "aborted": 2, "undecided": 3, "invalid": 4}
REPORT_VERSION = 1
TICK_S = 0.05  # the timeline's resolution
PROGRESS_EVERY_S = 5.0  # a progress line this often when stderr is not a terminal


class Abort(Exception):
    """The run stops now (safety, kill switch, a signal); rollback still runs."""


class Unobservable(Exception):
    """The cluster to attach to is not there: nothing can be said about it."""


@dataclass
class Options:
    seed: int | None = None
    time_scale: float = 1.0
    attach: ShoalConfig | None = None  # a running cluster's config; None: start our own
    without: tuple[str, ...] = ()  # services left out of our own cluster
    keep_logs: Path | None = None  # where our own cluster's log is copied
    progress: Callable[[str], None] | None = None
    # Our own cluster on hosts (services.hosts.layout.Layout: network namespaces, made by
    # ``shoal chaos run --hosts``, which runs us on the ops host); None: on this host.
    hosts: Any = None


def run(loaded: Loaded, options: Options) -> dict[str, Any]:
    """Run the scenario; returns the report (see report.py)."""
    if options.attach is not None and (errors := attach_errors(loaded.scenario)):
        raise ScenarioError(loaded.path, errors)
    return _Run(loaded, options).execute()


class _Run:
    def __init__(self, loaded: Loaded, options: Options) -> None:
        self.loaded = loaded
        self.s: Scenario = loaded.scenario
        self.opts = options
        self.seed = options.seed if options.seed is not None else self.s.seed
        self.t0 = time.monotonic()
        self.started_wall = time.time()
        self.history = History(self.t0)
        self.verdict: str | None = None
        self.reason = ""
        self.plan: Plan | None = None
        self.applied: list[Applied] = []
        self.phase_start: float | None = None
        self.faults_ran = False
        self.drained = False
        self.final: dict[str, Any] = {}
        self.revoked: dict[tuple[str, str], float | None] = {}
        self.rates_before: dict[str, float] = {}
        self.cluster_log: str | None = None
        # (consumer, service) links: ZeroMQ fault proxies, and a TCP one on shim <-> broker
        self.proxies: dict[tuple[str, str], FaultProxy | TcpProxy] = {}
        self.boards: list[str] = []
        self.topology: Topology | None = None
        self._last_progress = 0.0
        self._abort_since: dict[int, float] = {}

    # --- the run ------------------------------------------------------------------------------

    def execute(self) -> dict[str, Any]:
        with contextlib.ExitStack() as stack:
            stack.enter_context(_signals_abort())
            try:
                config, nodes, hot = self._cluster(stack)
                self.config, self.nodes, self.hot = config, nodes, hot
                if self.topology is None:
                    self.topology = Topology.single(config)
                self.plan = make_plan(self.s, self.seed, nodes, hot, self.boards)
                self.watcher = Watcher(config, self.history).start()
                stack.callback(self.watcher.close)
                self.sampler = Sampler(
                    config,
                    self.watcher,
                    nodes,
                    list(self.proxies.values()),
                    self.boards,
                    sims=list(self.topology.sims),
                    supervisors=list(self.topology.supervisors),
                )
                stack.callback(self.sampler.close)
                self.actuators = Actuators(config, self.proxies, self.boards, self.topology)
                stack.callback(self.actuators.close)
                self.actuators.prepare(self.plan.faults)
                self._startup()
                if self.verdict is None:
                    self._before()
                if self.verdict is None:
                    self._faults()
            except PlanError as err:
                raise ScenarioError(self.loaded.path, [str(err)]) from None
            except (Abort, KeyboardInterrupt) as err:
                self._decide("aborted", str(err) or "interrupted (Ctrl-C)")
            except ActuatorError as err:
                self._decide("undecided", f"a fault could not be applied: {err}")
            except Unobservable as err:
                self._decide("undecided", str(err))
            finally:
                self._finish()
        return self._report()  # after the cluster stopped: its log has been kept

    def _finish(self) -> None:
        """Rollback always; recover, after-probes and drain unless the run was aborted."""
        if not hasattr(self, "actuators"):
            return
        with _signals_ignored():  # no second Ctrl-C in the middle of healing
            self._rollback()
        if self.verdict != "aborted" and self.faults_ran:
            try:  # a Ctrl-C here cuts the waiting short; the report is still written
                self._recover()
                self._after()
                self._drain()
            except (Abort, KeyboardInterrupt) as err:
                self._decide("aborted", str(err) or "interrupted (Ctrl-C)")
        with _signals_ignored():
            self._final()

    def _final(self) -> None:
        self.final = dict(self._sample("final")["values"])
        if self._rollouts():
            self.final["ota"] = ctl_call(self.config.ota.ctl, "progress", timeout_s=2.0)
        # Lost at the end: what the nodes cannot account for, and what the ledger took but
        # neither finished nor dead-lettered within the drain.
        parts = [self.final.get(k) for k in ("lost_tasks", "in_flight", "pending")]
        known = self.drained and all(isinstance(p, int) for p in parts)
        self.final["lost_tasks"] = sum(parts) if known else None  # type: ignore[arg-type]
        self._restore_rates()

    def _decide(self, verdict: str, reason: str) -> None:
        if self.verdict is None:
            self.verdict, self.reason = verdict, reason
            self.history.add("verdict", verdict=verdict, reason=reason)

    # --- startup ------------------------------------------------------------------------------

    def _cluster(self, stack: contextlib.ExitStack) -> tuple[ShoalConfig, list[str], list[str]]:
        if self.opts.attach is not None:
            config = self.opts.attach
            nodes_op = ctl_call(config.sim.ctl, "nodes", timeout_s=3.0)
            if not isinstance(nodes_op, dict):
                raise Unobservable(f"no simulated fleet answers at {config.sim.ctl}")
            nodes = sorted(nodes_op)
            self.rates_before = {n: float(v.get("rate_hz", 0.0)) for n, v in nodes_op.items()}
            return config, nodes, hot_ids(self.s.workload, nodes)
        if self.opts.hosts is not None:
            return self._hosts_cluster(stack)
        from shoal.services.testing import Cluster, tcp

        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="shoal-chaos-")))
        w = self.s.workload
        # A partition between services needs a fault proxy on that link: the consumer's
        # config reaches the service at the proxy's endpoints ([liveness] relay_bus, ...).
        # The shim's link to the broker is TCP: a TcpProxy at [mqtt] shim_broker.
        wanted = service_links(self.s)
        shim_link = ("shim", "broker")
        links = {link: (tcp(), tcp()) for link in wanted if link != shim_link}
        via: dict[str, dict[str, str]] = {}
        for (consumer, service), (bus, ctl) in links.items():
            via.setdefault(consumer, {}).update({f"{service}_bus": bus, f"{service}_ctl": ctl})
        shim_proxy_port = next_port() if shim_link in wanted else None
        if shim_proxy_port is not None:
            via["mqtt"] = {"shim_broker": f"mqtt://127.0.0.1:{shim_proxy_port}"}
        self.boards = board_ids(w)
        sections: dict[str, Any] = dict(via)
        # Its own keys (Cluster makes them in the workdir); this process acts with its
        # scenarios key, the fault proxies with a service key of their own.
        if any(kind_of(f) == "ota_rollout" for f in self.s.fault):
            # A new version on probation confirms itself sooner than a board's default.
            board_config: dict[str, Any] | None = {"firmware": {"ota_probation_ms": 1500}}
        else:
            board_config = None
        cluster = Cluster(
            workdir,
            client_key="scenarios",
            nodes=w.nodes,
            without=self.opts.without,
            boards=w.boards,
            board_config=board_config,
            sim={
                "arrival_rate_hz": w.rate,
                "task_cost_ms": w.task_cost_ms,
                "hot_spots": w.hot_spots,
                "hot_spot_factor": w.hot_factor,
                "seed": self.seed,
            },
            **sections,
        )

        def proxies() -> None:
            """A proxy on each link, to the service's endpoints as the cluster has them."""
            for (consumer, service), (bus, ctl) in links.items():
                up = getattr(cluster.config, service)
                old = self.proxies.get((consumer, service))
                if (
                    isinstance(old, FaultProxy)
                    and old.bus == (up.bus, bus)
                    and old.ctl == (up.ctl, ctl)
                ):
                    continue
                if old is not None:
                    old.close()  # frees its ports for the new one
                proxy = FaultProxy(
                    bus=(up.bus, bus),
                    ctl=(up.ctl, ctl),
                    name=f"{consumer}-{service}",
                    security=cluster.security.named("proxy"),
                )
                self.proxies[(consumer, service)] = stack.enter_context(proxy)
            if shim_proxy_port is not None:
                broker = cluster.config.mqtt.listen_address()
                old_tcp = self.proxies.get(shim_link)
                if isinstance(old_tcp, TcpProxy) and old_tcp.upstream == broker:
                    return
                if old_tcp is not None:
                    old_tcp.close()
                tcp_proxy = TcpProxy(broker, shim_proxy_port, name="shim-broker")
                self.proxies[shim_link] = stack.enter_context(tcp_proxy)

        proxies()  # before the cluster, so its consumers find them at once
        stack.callback(self._keep_log, cluster)
        stack.enter_context(cluster)
        proxies()  # again if the cluster had to start over on other ports
        self.history.add("phase", phase="startup", cluster=str(workdir))
        return cluster.config, member_ids(w), hot_ids(w)

    def _hosts_cluster(
        self, stack: contextlib.ExitStack
    ) -> tuple[ShoalConfig, list[str], list[str]]:
        """Our own cluster on hosts (network namespaces already made, their config files
        written: ``shoal chaos run --hosts``); this process runs on the ops host."""
        from shoal.services.hosts.cluster import HostsCluster
        from shoal.services.hosts.linkfaults import KernelLinks

        layout = self.opts.hosts
        net = layout.net()
        kernel = None
        if layout.way is not None:
            kernel = KernelLinks(
                {h.name: (net.netns(h.name), net.address(h.name)) for h in layout.hosts},
                layout.way,
            )
        self.topology = Topology.of_hosts(layout, kernel)
        # This process acts with the scenarios key of the hosts' keys directory, on every
        # endpoint any host's config names (each fleet host has a supervisor of its own).
        ops = layout.config("ops")
        acting = security.Security.from_config(ops, "scenarios")
        for h in layout.hosts:
            security.register(security.endpoints_of(layout.config(h.name)), acting)
        cluster = HostsCluster(layout)
        stack.callback(self._keep_log, cluster)
        stack.enter_context(cluster)
        self.history.add(
            "phase", phase="startup", cluster=layout.workdir, hosts=self.topology.description
        )
        why = cluster.wait_ready()
        if why is not None:
            raise Unobservable(f"the cluster of hosts did not start: {why}")
        w = self.s.workload
        return ops, member_ids(w), hot_ids(w)

    def _keep_log(self, cluster: Any) -> None:
        if self.opts.keep_logs is not None and cluster.log_path.exists():
            self.opts.keep_logs.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(cluster.log_path, self.opts.keep_logs)
            self.cluster_log = str(self.opts.keep_logs)

    def _startup(self) -> None:
        if self.opts.attach is not None:
            self._apply_workload()
        limit = min(STARTUP_ALLOWANCE_S, self._left())
        deadline = time.monotonic() + limit
        while True:
            ready, why = self._ready()
            if ready:
                break
            if time.monotonic() > deadline:
                self._decide("undecided", f"the cluster was not ready within {limit:g} s: {why}")
                return
            self._progress("startup", why)
            time.sleep(0.1)
        self.history.add("phase", phase="settle")
        self._sample_for(self.s.workload.settle, "settle")

    def _ready(self) -> tuple[bool, str]:
        assert self.topology is not None
        tables = [ctl_call(ep, "ps", timeout_s=0.5) for ep in self.topology.supervisors]
        if not all(isinstance(t, list) for t in tables):
            return False, "waiting for the supervisor"
        ps = [row for t in tables for row in t]
        down = [r for r in ps if r.get("state") != "running"]
        failed = [
            f"{r['name']} failed: {r.get('reason')}" for r in down if r.get("state") == "failed"
        ]
        if failed:  # said apart: the supervisor will not start it again
            return False, "; ".join(failed)
        unbound = [r["name"] for r in down if r.get("last_exit") == EXIT_BIND_FAILED]
        if unbound:  # said apart: a port conflict is no slow start
            return False, f"{', '.join(unbound)} could not bind (exit 2; see the cluster log)"
        if down:
            return False, f"waiting for {', '.join(r['name'] for r in down)}"
        snap = ctl_call(self.config.relay.ctl, "snapshot", timeout_s=0.5)
        heard = {n["node_id"] for n in snap.get("nodes", [])} if isinstance(snap, dict) else set()
        missing = [n for n in self.nodes if n not in heard]
        if missing:
            return (
                False,
                f"the relay has heard {len(self.nodes) - len(missing)}/{len(self.nodes)} nodes",
            )
        if any(r["name"] == "liveness" for r in ps):
            states = self.watcher.states()
            alive = sum(states.get(n) == "alive" for n in self.nodes)
            if alive < len(self.nodes):
                return False, f"liveness holds {alive}/{len(self.nodes)} nodes alive"
        return True, ""

    def _apply_workload(self) -> None:
        w = self.s.workload
        with CtlClient(self.config.sim.ctl) as sim:
            sim.call("set_rate", {"rate_hz": w.rate}, timeout_s=2.0, retries=0)
            hot = [n for n in self.nodes if n in self.hot]
            if hot:
                capacity = 1000.0 / w.task_cost_ms
                sim.call(
                    "set_rate",
                    {"rate_hz": w.hot_factor * capacity, "nodes": hot},
                    timeout_s=2.0,
                    retries=0,
                )

    def _restore_rates(self) -> None:
        if not self.rates_before:
            return
        by_rate: dict[float, list[str]] = {}
        for node, rate in self.rates_before.items():
            by_rate.setdefault(rate, []).append(node)
        with contextlib.suppress(CtlFailed, CtlUnavailable), CtlClient(self.config.sim.ctl) as sim:
            for rate, nodes in by_rate.items():
                sim.call("set_rate", {"rate_hz": rate, "nodes": nodes}, timeout_s=2.0, retries=0)

    # --- steady state -------------------------------------------------------------------------

    def _sample(self, phase: str) -> dict[str, Any]:
        values = self.sampler.sample()
        return self.history.add("sample", phase=phase, values=values)

    def _sample_for(
        self, seconds: float, phase: str, until: Callable[[], bool] | None = None
    ) -> None:
        """Sample every interval for ``seconds`` (or until ``until()``), watching safety."""
        interval = self.s.steady_state.interval
        end = time.monotonic() + seconds
        while True:
            entry = self._sample(phase)
            self._safety(entry)
            self._progress(phase, "")
            if until is not None and until():
                return
            left = end - time.monotonic()
            if left <= 0:
                return
            time.sleep(min(interval, left))

    def _before(self) -> None:
        self.history.add("phase", phase="before")
        self._sample_for(self.s.steady_state.interval, "before")  # two samples: rates known
        # A probe that could not be measured (its service is not there) does not stop the
        # run: the verdict says "undecided" for it unless something failed outright.
        failed = [r for r in self._probe_results("before") if r["decided"] and not r["passed"]]
        if failed:
            names = ", ".join(f"{r['name']} (worst {r['worst']})" for r in failed)
            self._decide("failed", f"not in its steady state before the faults: {names}")

    def _after(self) -> None:
        self.history.add("phase", phase="after")
        self._sample_for(self.s.steady_state.interval, "after")

    def _probe_results(self, phase: str) -> list[dict[str, Any]]:
        samples = [e for e in self.history.of("sample") if e["phase"] == phase]
        return [
            check_probe(p, phase, samples) for p in self.s.steady_state.probe if phase in p.phases
        ]

    # --- faults -------------------------------------------------------------------------------

    def _faults(self) -> None:
        assert self.plan is not None
        self.history.add("phase", phase="faults")
        self.phase_start = time.monotonic()
        self.history.add("states", states=self.watcher.states())
        self.faults_ran = True
        start = self.phase_start
        queue: list[tuple[float, int, str, Applied]] = []
        for i, step in enumerate(self.plan.faults):
            applied = Applied(
                id=step.id,
                fault=step.fault,
                kind=step.kind,
                targets=step.targets,
                planned_at=round(self.history.at(start) + step.at_s, 4),
                planned_heal=(
                    round(self.history.at(start) + step.heal_at_s, 4)
                    if step.heal_at_s is not None
                    else None
                ),
            )
            self.applied.append(applied)
            queue.append((step.at_s, i * 2, "apply", applied))
            if step.heal_at_s is not None and step.heal_at_s > step.at_s:
                queue.append((step.heal_at_s, i * 2 + 1, "heal", applied))
        queue.sort(key=lambda q: (q[0], q[1]))
        steps = {a.id: s for a, s in zip(self.applied, self.plan.faults, strict=True)}
        interval = self.s.steady_state.interval
        next_sample = start + interval
        end = start + self.s.workload.duration
        while True:
            now = time.monotonic()
            while queue and start + queue[0][0] <= now:
                _, _, action, applied = queue.pop(0)
                if action == "apply":
                    self._apply(applied, steps[applied.id])
                elif applied.applied_at is not None:
                    applied.healed_at = self.history.at(self.actuators.heal(steps[applied.id]))
                    self.history.add(
                        "heal",
                        id=applied.id,
                        planned=applied.planned_heal,
                        actual=applied.healed_at,
                        **self._dropped(applied),
                    )
            if now >= next_sample:
                entry = self._sample("during")
                self._safety(entry)
                next_sample += interval
            self._progress("faults", "")
            if now >= end and not queue:
                return
            wake = min(next_sample, end, start + queue[0][0] if queue else end)
            time.sleep(max(0.0, min(TICK_S, wake - time.monotonic())))

    def _apply(self, applied: Applied, step: Any) -> None:
        active = [
            a
            for a in self.applied
            if a.applied_at is not None and a.healed_at is None and a.planned_heal != a.planned_at
        ]
        limit = self.s.safety.max_concurrent_faults
        if len({a.fault for a in active} | {applied.fault}) > limit:
            applied.error = f"skipped: {limit} faults already active (safety)"
            self.history.add("fault", id=applied.id, skipped=applied.error)
            return
        if _loses_work(applied):
            owned = ctl_call(self.config.delegator.ctl, "owned", timeout_s=0.5)
            if isinstance(owned, dict):
                applied.held = {n: int(owned.get(n, 0)) for n in applied.targets}
        mono = self.actuators.apply(step)
        applied.via = self.actuators.via.get(step.id)
        applied.applied_at = self.history.at(mono)
        applied.applied_wall = time.time() - (time.monotonic() - mono)
        if step.heal_at_s is not None and step.heal_at_s <= step.at_s:
            applied.healed_at = applied.applied_at  # instant
        via: dict[str, Any] = {"via": applied.via} if applied.via else {}
        self.history.add(
            "fault",
            id=applied.id,
            kind=applied.kind,
            targets=applied.targets,
            planned=applied.planned_at,
            actual=applied.applied_at,
            **via,
        )

    def _dropped(self, applied: Applied) -> dict[str, Any]:
        """For a heal entry: the packets the kernel dropped under that fault (hosts)."""
        n = self.actuators.kernel_dropped.get(applied.id)
        applied.kernel_dropped = n
        return {} if n is None else {"kernel_dropped": n}

    # --- safety -------------------------------------------------------------------------------

    def _safety(self, entry: dict[str, Any]) -> None:
        switch = self.s.safety.kill_switch
        if switch and os.path.exists(switch):
            raise Abort(f"kill switch {switch} exists")
        now = time.monotonic()
        for i, cond in enumerate(self.s.safety.abort):
            value = entry["values"].get(cond.metric)
            if not isinstance(value, (int, float)) or cond.holds(value):
                self._abort_since.pop(i, None)
                continue
            since = self._abort_since.setdefault(i, now)
            if now - since >= cond.for_:
                raise Abort(
                    f"safety: {cond.metric} = {value} is not {cond.describe()} "
                    f"for {now - since:.1f} s (limit {cond.for_:g} s)"
                )
        if self._left() <= 0:
            raise Abort(f"deadline: the run took longer than {self.s.deadline:g} s")

    def _left(self) -> float:
        return self.s.deadline - (time.monotonic() - self.t0)

    # --- rollback, recovery, drain ------------------------------------------------------------

    def _rollback(self) -> None:
        self.history.add("phase", phase="rollback")
        assert self.plan is not None or not self.applied
        steps = {s.id: s for s in self.plan.faults} if self.plan else {}
        for applied in self.applied:
            if applied.applied_at is None or applied.healed_at is not None:
                continue
            try:
                applied.healed_at = self.history.at(self.actuators.heal(steps[applied.id]))
            except ActuatorError as err:
                applied.error = f"heal failed: {err}"
                continue
            self.history.add(
                "heal",
                id=applied.id,
                planned=applied.planned_heal,
                actual=applied.healed_at,
                by="rollback",
                **self._dropped(applied),
            )
        errors = self.actuators.heal_everything(self.nodes)
        self.history.add("rollback", errors=errors)

    def _recover(self) -> None:
        self.history.add("phase", phase="recover")
        n = len(self.nodes)

        def recovered() -> bool:
            if self.sampler.last.get("alive") != n:
                return False
            if not self._rollouts():
                return True
            p = ctl_call(self.config.ota.ctl, "progress", timeout_s=1.0)
            return not isinstance(p, dict) or p.get("state") != "running"  # it has finished

        self._sample_for(
            min(self.s.rollback.recover, max(0.0, self._left())), "recover", until=recovered
        )

    def _rollouts(self) -> bool:
        """Whether an OTA rollout was started in this run."""
        return any(a.kind == "ota_rollout" and a.applied_at is not None for a in self.applied)

    def _drain(self) -> None:
        self.history.add("phase", phase="drain")
        assert self.topology is not None
        for endpoint in self.topology.sims:
            with contextlib.suppress(CtlFailed, CtlUnavailable), CtlClient(endpoint) as sim:
                sim.call("set_rate", {"rate_hz": 0.0}, timeout_s=2.0, retries=0)

        def settled() -> bool:
            v = self.sampler.last
            return v.get("in_flight") == 0 and v.get("undelivered") == 0 and v.get("pending") == 0

        self._sample_for(min(self.s.rollback.drain, max(0.0, self._left())), "drain", until=settled)
        self.drained = True
        for applied in self.applied:
            if applied.applied_wall is None or not _loses_work(applied):
                continue
            for node in applied.targets:
                if applied.held.get(node, 0) == 0:
                    continue
                answer = ctl_call(  # evidence read after the run: worth a wait and a retry
                    self.config.delegator.ctl,
                    "revoked",
                    {"node_id": node, "since": applied.applied_wall - 0.001},
                    timeout_s=3.0,
                    retries=2,
                )
                first = None
                if isinstance(answer, dict):
                    # `owned` was asked just before the fault: a task the node committed in
                    # between, or whose result was already on its way, was not lost and is
                    # not to be taken away, and a task assigned to its new boot after the
                    # fault is not one it held. The ledger says what it held at the fault
                    # and when the first of those it did not finish was taken away.
                    left = int(answer.get("held", 0)) - int(answer.get("finished", 0))
                    if left <= 0:
                        applied.held[node] = 0
                        continue
                    applied.held[node] = left
                    first = answer.get("held_taken_at")
                self.revoked[(applied.id, node)] = (
                    round(first - applied.applied_wall, 3) if first is not None else None
                )

    # --- progress and report ------------------------------------------------------------------

    def _progress(self, phase: str, note: str) -> None:
        if self.opts.progress is None:
            return
        now = time.monotonic()
        tty = sys.stderr.isatty()
        if not tty and now - self._last_progress < PROGRESS_EVERY_S:
            return
        self._last_progress = now
        v = self.sampler.last if hasattr(self, "sampler") else {}
        n = len(getattr(self, "nodes", []))
        if phase == "faults" and self.phase_start is not None:
            clock = f"{now - self.phase_start:5.1f}/{self.s.workload.duration:g} s"
        else:
            clock = f"{now - self.t0:5.1f} s"
        done = sum(a.applied_at is not None for a in self.applied)
        active = sum(a.applied_at is not None and a.healed_at is None for a in self.applied)
        parts = [f"{self.s.name} seed {self.seed}", f"{phase} {clock}"]
        if self.applied:
            parts.append(f"faults {done}/{len(self.applied)} applied, {active} active")
        if v:
            parts.append(
                f"alive {v.get('alive')}/{n} suspect {v.get('suspect')} dead {v.get('dead')}"
            )
            if v.get("telemetry_rate") is not None:
                parts.append(f"{v['telemetry_rate']:.0f} msg/s")
            if v.get("task_throughput") is not None:
                parts.append(f"{v['task_throughput']:.1f} tasks/s")
        if note:
            parts.append(note)
        self.opts.progress(" | ".join(parts))

    def _context(self) -> Context:
        members = self.history.of("member")
        # Recovery counts from the last heal of a fault that took nodes away (a crash, not
        # a CPU hog healed later); without one, from the last heal of any fault.
        failing = [a for a in self.applied if _takes_nodes(a)]
        heals = [a.healed_at for a in failing or self.applied if a.healed_at is not None]
        snapshot = self.history.of("states")
        return Context(
            nodes=self.nodes,
            untouched=self.plan.untouched if self.plan else [],
            applied=self.applied,
            members=members,
            final=self.final,
            last_heal=max(heals) if heals else None,
            all_alive=_all_alive_spans(self.history, self.nodes),
            revoked=self.revoked,
            phase_start=self.history.at(self.phase_start) if self.phase_start else 0.0,
            run_end=self.history.at(time.monotonic()),
            membership_known=bool(snapshot and snapshot[0]["states"]) or bool(members),
        )

    def _report(self) -> dict[str, Any]:
        probes: list[dict[str, Any]] = []
        expectations: list[dict[str, Any]] = []
        ctx = self._context() if hasattr(self, "nodes") else None
        if ctx is not None:
            for phase in ("before", "during", "after"):
                if phase != "before" and not self.faults_ran:
                    continue
                probes += self._probe_results(phase)
            if self.faults_ran:
                expectations = [evaluate(e, ctx) for e in self.s.expect]
        if self.verdict is None:
            failed_probes = [p for p in probes if p["decided"] and not p["passed"]]
            failed = [e for e in expectations if e["decided"] and not e["passed"]]
            undecided = [f"{p['name']} ({p['phase']})" for p in probes if not p["decided"]]
            undecided += [e["name"] for e in expectations if not e["decided"]]
            if failed_probes or failed:
                what = [f"{p['name']} ({p['phase']})" for p in failed_probes]
                what += [e["name"] for e in failed]
                self._decide("failed", "failed: " + ", ".join(what))
            elif undecided:
                self._decide("undecided", "never measured: " + ", ".join(undecided))
            else:
                self._decide("passed", "every probe and expectation held")
        verdict = self.verdict or "undecided"
        return {
            "shoal_chaos_report": REPORT_VERSION,
            "scenario": {
                "name": self.s.name,
                "description": self.s.description,
                "path": self.loaded.path,
                "sha256": self.loaded.sha256,
                "text": self.loaded.text,
            },
            "seed": self.seed,
            "time_scale": self.opts.time_scale,
            "attached": self.opts.attach is not None,
            "hosts": self.topology.description
            if self.opts.hosts is not None and self.topology
            else None,
            "without": list(self.opts.without),
            "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.started_wall)),
            "duration_s": round(time.monotonic() - self.t0, 3),
            "fleet": {"nodes": getattr(self, "nodes", []), "hot": getattr(self, "hot", [])},
            "plan": _plan_dict(self.plan),
            "faults": [asdict(a) for a in self.applied],
            "steady_state": probes,
            "expectations": expectations,
            "metrics": self._metrics(ctx),
            "verdict": verdict,
            "exit_code": EXIT_CODES[verdict],
            "reason": self.reason,
            "cluster_log": self.cluster_log,
            "history": self.history.entries,
        }

    def _metrics(self, ctx: Context | None) -> dict[str, Any]:
        out: dict[str, Any] = {
            k: self.final.get(k)
            for k in (
                "lost_tasks",
                "duplicate_commits",
                "dead_lettered",
                "redelegated",
                "tasks_total",
                "in_flight",
                "alive",
                "dead",
            )
        }
        if ctx is None:
            return out
        failing = [a for a in self.applied if _takes_nodes(a) and a.applied_at is not None]
        for event in ("suspect", "dead"):
            lat = [
                r["latency_s"]
                for r in detection_latencies(ctx, failing, event)
                if r["latency_s"] is not None
            ]
            out[f"detect_{event}_ms_p50"] = _ms(percentile(lat, 0.5))
            out[f"detect_{event}_ms_max"] = _ms(max(lat) if lat else None)
        if ctx.last_heal is not None:
            out["recovery_s"] = recovery_s(ctx)
        if self.opts.hosts is not None and hasattr(self, "actuators"):
            kernel = self.actuators.kernel
            out["kernel_dropped"] = kernel.dropped_total if kernel is not None else None
        revoked = [v for v in self.revoked.values() if v is not None]
        out["redelegate_ms_max"] = _ms(max(revoked) if revoked else None)
        during = [e["values"] for e in self.history.of("sample") if e["phase"] == "during"]
        rates = [v["telemetry_rate"] for v in during if v.get("telemetry_rate") is not None]
        out["telemetry_rate_min"] = min(rates) if rates else None
        return out


def _loses_work(applied: Applied) -> bool:
    """A fault after which its target nodes no longer hold their delegated tasks (a reboot
    too: the queue dies with the old boot), so re-delegation can be measured."""
    return _takes_nodes(applied) or applied.kind == "reboot"


def _takes_nodes(applied: Applied) -> bool:
    """A fault after which its target nodes should be declared failed (a partition
    between services takes no node away)."""
    return applied.kind in FAILING_KINDS and not on_services(applied.kind, applied.targets)


def _ms(seconds: float | None) -> float | None:
    return round(seconds * 1000, 1) if seconds is not None else None


def _plan_dict(plan: Plan | None) -> dict[str, Any] | None:
    if plan is None:
        return None
    import msgspec

    return msgspec.to_builtins(plan)  # type: ignore[no-any-return]


def _all_alive_spans(history: History, nodes: list[str]) -> list[tuple[float, float | None]]:
    """The spans of time in which every node was alive, replaying membership from the
    snapshot taken when the faults began (an open span ends with None)."""
    snap = history.of("states")
    if not snap:
        return []
    states = dict(snap[0]["states"])
    start = snap[0]["t"]
    spans: list[tuple[float, float | None]] = []
    began: float | None = start if all(states.get(n) == "alive" for n in nodes) else None
    for m in history.of("member"):
        if m["t"] < start:
            continue
        states[m["node"]] = m["state"]
        whole = all(states.get(n) == "alive" for n in nodes)
        if whole and began is None:
            began = m["t"]
        elif not whole and began is not None:
            spans.append((began, m["t"]))
            began = None
    if began is not None:
        spans.append((began, None))
    return spans


def ctl_call(
    endpoint: str,
    op: str,
    args: dict[str, Any] | None = None,
    timeout_s: float = 1.0,
    retries: int = 0,
) -> Any:
    try:
        with CtlClient(endpoint) as client:
            return client.call(op, args, timeout_s=timeout_s, retries=retries)
    except (CtlFailed, CtlUnavailable):
        return None


@contextlib.contextmanager
def _signals_abort() -> Iterator[None]:
    """SIGTERM stops a run as Ctrl-C does (KeyboardInterrupt): rollback, then the report."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_term(_signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt("terminated (SIGTERM)")

    old = signal.signal(signal.SIGTERM, on_term)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


@contextlib.contextmanager
def _signals_ignored() -> Iterator[None]:
    """No second Ctrl-C in the middle of the rollback."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old_int = signal.signal(signal.SIGINT, signal.SIG_IGN)
    old_term = signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old_int)
        signal.signal(signal.SIGTERM, old_term)
