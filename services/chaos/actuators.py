"""Applying and healing each fault kind, through the parts that can do it for real.

- Node faults (crash, hang, reboot, cpu_hog, queue_flood, clock_skew, flap) and link faults
  (drop, delay, duplicate, reorder, partition) go to the simulated fleet's ``fault`` op:
  the nodes take them in their own transport, as a node with a bad radio would.
- Board faults (power_cut, radio_off) go to the board emulator's ctl (services/boards): a
  power cut SIGKILLs the board's MicroPython process, a radio off cuts its TCP path and
  makes its WLAN stand-in report disconnected. Healed: power on (a new boot), radio on.
- Service faults (kill, restart, pause) are real signals through the supervisor; the MQTT
  broker and the shim are services like the others.
- A partition between services (its target a service) cuts the fault proxies on those
  links (services/chaos/fault_proxy.py), which the runner put into its own cluster's config.

Every timed fault sent to the fleet also carries the fleet's own timer (``duration_ms``:
the planned duration plus ``DEAD_MANS_MARGIN_S``), so a fault heals itself even if the
injector dies; the injector heals it on time itself and records when.

Several link faults on one node at once are merged into the one link fault the node has:
the largest of each parameter, on all its links (a lone partition keeps its services).
Healing one of them sends what the others still ask for.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

from shoal.services.runtime.config import ShoalConfig
from shoal.services.runtime.ctl_client import CtlClient, CtlFailed, CtlUnavailable
from shoal.services.runtime.tcp_proxy import TcpProxy

from .fault_proxy import FaultProxy
from .plan import PlannedFault
from .scenario import on_services

DEAD_MANS_MARGIN_S = 2.0
CALL_TIMEOUT_S = 1.5


class ActuatorError(Exception):
    """A fault could not be applied or healed (the service refused, or did not answer)."""


class Actuators:
    def __init__(
        self,
        config: ShoalConfig,
        proxies: dict[tuple[str, str], FaultProxy | TcpProxy] | None = None,
        boards: list[str] | None = None,
    ) -> None:
        self.config = config
        self._bundles: dict[str, Path] = {}  # version -> a built bundle (ota_rollout)
        self.sim = CtlClient(config.sim.ctl)
        self.supervisor = CtlClient(config.supervisor.ctl)
        self.boards = list(boards or [])
        self.board_ctl = CtlClient(config.boards.ctl) if self.boards else None
        # The boards each board fault holds now (healed at rollback if still on).
        self.board_faults: dict[str, set[str]] = {"power_cut": set(), "radio_off": set()}
        # (consumer, service) -> the fault proxy on that link; and the cuts on each now:
        # {planned fault id: when its dead-man's timer ends, or None}
        self.proxies = dict(proxies or {})
        self._cuts: dict[tuple[str, str], dict[str, float | None]] = {}
        # node -> {planned fault id: link params}: the link faults each node has on now
        # node -> {planned fault id: (link params, when its dead-man's timer ends or None)}
        self._links: dict[str, dict[str, tuple[dict[str, Any], float | None]]] = {}
        self.paused: set[str] = set()

    def close(self) -> None:
        import shutil

        for out in self._bundles.values():
            shutil.rmtree(out.parent, ignore_errors=True)
        self.sim.close()
        self.supervisor.close()
        if self.board_ctl is not None:
            self.board_ctl.close()

    # --- the two calls ----------------------------------------------------------------------

    def _sim(self, args: dict[str, Any]) -> float:
        """One fault op; returns when the fleet applied it (its CLOCK_MONOTONIC reading)."""
        try:
            # No retry: a retried fault could be applied twice (a second reboot).
            reply: dict[str, Any] = self.sim.call(
                "fault", args, timeout_s=CALL_TIMEOUT_S, retries=0
            )
        except (CtlFailed, CtlUnavailable) as err:
            raise ActuatorError(f"sim fault {args.get('action')}: {err}") from None
        return float(reply.get("applied_at", time.monotonic()))

    def _board(self, op: str, args: dict[str, Any]) -> float:
        if self.board_ctl is None:
            raise ActuatorError(f"{op}: this cluster has no boards")
        try:
            self.board_ctl.call(op, args, timeout_s=CALL_TIMEOUT_S * 2, retries=0)
        except (CtlFailed, CtlUnavailable) as err:
            raise ActuatorError(f"boards {op} {args.get('node_id')}: {err}") from None
        return time.monotonic()

    def _board_fault(self, kind: str, boards: list[str], on: bool) -> float:
        """Turn a power cut or a radio loss on (apply) or off (heal) on each board."""
        held = self.board_faults[kind]
        (held.update if on else held.difference_update)(boards)
        if kind == "power_cut":
            op, extra = ("power_off" if on else "power_on"), {}
        else:
            op, extra = "radio", {"on": not on}
        return max(self._board(op, {"node_id": b, **extra}) for b in boards)

    def prepare(self, steps: list[PlannedFault]) -> None:
        """What must be ready before the timeline starts: each rollout's bundle (a build
        takes seconds, far more on a busy machine, and would hold up every fault after it)."""
        for step in steps:
            if step.kind == "ota_rollout":
                self._bundle(bool(step.params.get("bad")))

    def _bundle(self, bad: bool) -> Path:
        version = "shoal-esp32/chaos-bad" if bad else "shoal-esp32/chaos"
        out = self._bundles.get(version)
        if out is not None:
            return out
        from shoal.services.ota.bundles import variant

        out = Path(tempfile.mkdtemp(prefix="shoal-chaos-ota-")) / "bundle"
        try:
            variant(out, version, raise_at_import=bad)
        except Exception as err:  # mpy-cross missing, a build refused: the fault cannot run
            raise ActuatorError(f"ota_rollout: building {version}: {err}") from None
        self._bundles[version] = out
        return out

    def _rollout(self, boards: list[str], bad: bool, max_unavailable: int) -> float:
        """Start the rollout of a new version (one that raises at import if ``bad``)
        through the OTA service."""
        out = self._bundle(bad)
        try:
            with CtlClient(self.config.ota.ctl) as ota:
                ota.call(
                    "rollout",
                    {"bundle": str(out), "nodes": boards, "max_unavailable": max_unavailable},
                    timeout_s=10.0,
                    retries=0,
                )
        except (CtlFailed, CtlUnavailable) as err:
            raise ActuatorError(f"ota_rollout: {err}") from None
        return time.monotonic()

    def _signal(self, service: str, sig: str) -> float:
        try:
            self.supervisor.call(
                "signal", {"name": service, "signal": sig}, timeout_s=CALL_TIMEOUT_S, retries=0
            )
        except (CtlFailed, CtlUnavailable) as err:
            raise ActuatorError(f"signal {sig} to {service}: {err}") from None
        return time.monotonic()

    # --- apply and heal ---------------------------------------------------------------------

    def apply(self, step: PlannedFault) -> float:
        """Apply one planned fault; returns the monotonic time it took effect."""
        kind, nodes, p = step.kind, step.targets, step.params
        timer = self._timer_ms(step)
        if kind in ("crash", "hang", "flap"):
            action = "hang" if kind == "hang" else "crash"
            return self._sim({"action": action, "nodes": nodes, **timer})
        if kind == "reboot":
            return self._sim({"action": "reboot", "nodes": nodes})
        if kind in ("power_cut", "radio_off"):
            return self._board_fault(kind, nodes, on=True)
        if kind == "ota_rollout":
            return self._rollout(nodes, bool(p.get("bad")), int(p.get("max_unavailable", 1)))
        if kind == "cpu_hog":
            return self._sim(
                {"action": "cpu_hog", "nodes": nodes, "percent": p["percent"], **timer}
            )
        if kind == "queue_flood":
            return self._sim({"action": "flood", "nodes": nodes, "tasks": p["tasks"]})
        if kind == "clock_skew":
            return self._sim(
                {"action": "clock_skew", "nodes": nodes, "skew_ms": p["skew_ms"], **timer}
            )
        if on_services(kind, nodes):
            ends = time.monotonic() + timer["duration_ms"] / 1000 if timer else None
            for link in _links(step):
                self._cuts.setdefault(link, {})[step.id] = ends
            return self._send_cuts(_links(step))
        if kind in ("drop", "delay", "duplicate", "reorder", "partition"):
            for node in nodes:
                ends = time.monotonic() + timer["duration_ms"] / 1000 if timer else None
                self._links.setdefault(node, {})[step.id] = (link_params(kind, p), ends)
            return self._send_links(nodes)
        if kind == "kill":
            return max(self._signal(s, "KILL") for s in nodes)
        if kind == "restart":
            for service in nodes:
                try:
                    self.supervisor.call(
                        "restart", {"name": service}, timeout_s=CALL_TIMEOUT_S, retries=0
                    )
                except (CtlFailed, CtlUnavailable) as err:
                    raise ActuatorError(f"restart {service}: {err}") from None
            return time.monotonic()
        if kind == "pause":
            at = max(self._signal(s, "STOP") for s in nodes)
            self.paused.update(nodes)
            return at
        raise ActuatorError(f"no actuator for {kind}")

    def heal(self, step: PlannedFault) -> float:
        """Undo one planned fault; returns the monotonic time it was undone."""
        kind, nodes = step.kind, step.targets
        if kind in ("crash", "hang", "flap"):
            return self._sim({"action": "resume", "nodes": nodes})
        if kind in ("cpu_hog", "clock_skew"):
            return self._sim({"action": "heal", "nodes": nodes, "kinds": [kind]})
        if kind in ("power_cut", "radio_off"):
            return self._board_fault(kind, nodes, on=False)
        if on_services(kind, nodes):
            for link in _links(step):
                self._cuts.get(link, {}).pop(step.id, None)
            return self._send_cuts(_links(step))
        if kind in ("drop", "delay", "duplicate", "reorder", "partition"):
            for node in nodes:
                self._links.get(node, {}).pop(step.id, None)
            return self._send_links(nodes)
        if kind == "pause":
            at = max(self._signal(s, "CONT") for s in nodes)
            self.paused.difference_update(nodes)
            return at
        return time.monotonic()  # instant faults have nothing to undo

    def heal_everything(self, nodes: list[str]) -> list[str]:
        """Rollback: every node resumed, its link, CPU and clock healed; every paused service
        continued. Goes on past errors; returns them."""
        errors = []
        self._links.clear()
        self._cuts.clear()
        for proxy in self.proxies.values():
            proxy.heal()
        for kind in ("power_cut", "radio_off"):
            for board in sorted(self.board_faults[kind]):
                try:
                    self._board_fault(kind, [board], on=False)
                except ActuatorError as err:
                    errors.append(str(err))
            self.board_faults[kind].clear()
        sim_nodes = [n for n in nodes if n not in self.boards]
        for args in (
            {"action": "resume", "nodes": sim_nodes},
            {"action": "heal", "nodes": sim_nodes},  # link, cpu_hog and clock skew
        ):
            try:
                self._sim(args)
            except ActuatorError as err:
                errors.append(str(err))
        for service in sorted(self.paused):
            try:
                self._signal(service, "CONT")
            except ActuatorError as err:
                errors.append(str(err))
        self.paused.clear()
        return errors

    # --- links ------------------------------------------------------------------------------

    def _send_links(self, nodes: list[str]) -> float:
        """Send each node the merge of the link faults it has on now, with a dead-man's
        timer running to the last of theirs (none if one of them lasts until rollback)."""
        at = time.monotonic()
        for node in nodes:
            active = list(self._links.get(node, {}).values())
            if not active:
                at = self._sim({"action": "heal", "nodes": [node], "kinds": ["link"]})
                continue
            ends = [end for _, end in active]
            timer: dict[str, int] = {}
            if None not in ends:
                left = max(e for e in ends if e is not None) - time.monotonic()
                timer = {"duration_ms": max(1, int(left * 1000))}
            merged = merge_links([params for params, _ in active])
            at = self._sim({"action": "link", "nodes": [node], **merged, **timer})
        return at

    def _send_cuts(self, links: list[tuple[str, str]]) -> float:
        """Cut each link while a partition is on it (its proxy's timer running to the last
        of theirs), heal it when none is."""
        at = time.monotonic()
        for link in links:
            proxy = self.proxies.get(link)
            if proxy is None:
                raise ActuatorError(f"no fault proxy on {link[0]} <-> {link[1]}")
            ends = list(self._cuts.get(link, {}).values())
            if not ends:
                at = proxy.heal()
            elif None in ends:
                at = proxy.cut(None)
            else:
                left = max(e for e in ends if e is not None) - time.monotonic()
                at = proxy.cut(max(0.001, left))
        return at

    @staticmethod
    def _timer_ms(step: PlannedFault) -> dict[str, int]:
        if step.heal_at_s is None or step.heal_at_s <= step.at_s:
            return {}
        return {"duration_ms": int((step.heal_at_s - step.at_s + DEAD_MANS_MARGIN_S) * 1000)}


def _links(step: PlannedFault) -> list[tuple[str, str]]:
    """The (consumer, service) links a partition between services cuts."""
    return [(t, s) for t in step.targets for s in step.params.get("services") or ()]


def link_params(kind: str, p: dict[str, Any]) -> dict[str, Any]:
    """A link fault as the fleet's ``link`` action takes it."""
    if kind == "drop":
        return {"drop": p["probability"], "correlation": p.get("correlation", 0.0)}
    if kind == "delay":
        return {
            "delay_ms": int(p["delay"] * 1000),
            "jitter_ms": int(p.get("delay_jitter", 0) * 1000),
        }
    if kind == "duplicate":
        return {"duplicate": p["probability"]}
    if kind == "reorder":
        return {"reorder": p["probability"], "delay_ms": int(p.get("delay", 0.05) * 1000)}
    if kind == "partition":
        return {"drop": 1.0, "services": list(p.get("services") or ["relay", "delegator"])}
    raise ValueError(kind)


def merge_links(active: list[dict[str, Any]]) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    services: set[str] = set()
    scoped = False
    for params in active:
        for key, value in params.items():
            if key == "services":
                services.update(value)
                scoped = True
            else:
                merged[key] = max(merged.get(key, value), value)
    if scoped and len(active) == 1:
        merged["services"] = sorted(services)
    return merged
