"""`shoal status`: one row per node from the relay's snapshot, with its liveness state."""

from __future__ import annotations

from typing import Any

import click
import msgspec

from shoal.protocol.messages import MembershipSnapshot, RelaySnapshot

from .config import config_from, config_option, use_keys

LIVENESS_STATES = ("alive", "suspect", "dead", "left")
SUPERVISOR_TIMEOUT_S = 0.3  # asked only for failed services: no supervisor costs little
COLUMNS = (
    "node", "via", "age", "cpu%", "queue", "load", "run", "in", "out", "gaps", "dups", "msgs",
    "boots", "state",
)  # fmt: skip


# A node the relay lists, silent this long, that the monitor does not know was forgotten
# there (an operator's remove, forget_after_s): not shown (tui/feed.py does the same).
FORGOTTEN_SILENT_MS = 5000


def _states(members: MembershipSnapshot | None) -> dict[str, str]:
    return {m.node_id: m.state for m in members.members} if members else {}


def shown_nodes(snap: RelaySnapshot, members: MembershipSnapshot | None) -> list[Any]:
    """The relay's nodes, less those the monitor has forgotten (when it answered)."""
    if members is None:
        return list(snap.nodes)
    known = {m.node_id for m in members.members}
    return [n for n in snap.nodes if n.node_id in known or n.age_ms <= FORGOTTEN_SILENT_MS]


# What a service counts of the requests it refused for who sent them (docs/protocol.md §14).
REFUSALS = (
    "auth_refused_key",
    "auth_refused_role",
    "auth_refused_node",
    "auth_refused_revoked",
    "reject_forbidden",
    "reject_impersonation",
)
# Asked for their counters beside the relay and the monitor (each at once, one wait).
OTHER_SERVICES = ("delegator", "sim", "shim", "boards", "registry", "supervisor")


def refusals(counters: dict[str, Any]) -> dict[str, int]:
    """A service's refusals by reason (the embedded broker's: refused_*, denied_*)."""
    mqtt = {k for k in counters if k.startswith(("refused_", "denied_"))}
    return {k: int(counters.get(k, 0)) for k in (*REFUSALS, *sorted(mqtt)) if k in counters}


def security_summary(curve: bool, per_service: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """``security`` of `shoal status --json`: Curve on or off, and per service (that
    answered) what it refused, by reason; ``refused`` is their sum."""
    services = {name: refusals(c) for name, c in sorted(per_service.items())}
    total = sum(v for r in services.values() for v in r.values())
    return {"curve": curve, "refused": total, "services": services}


def other_counters(config: Any, timeout_s: float) -> dict[str, dict[str, Any]]:
    """The status counters of the services beside the relay and the monitor, asked at once."""
    from shoal.services.runtime.config import shim_instances
    from shoal.services.runtime.ctl_client import ask_all

    endpoints = {
        "delegator": config.delegator.ctl,
        "sim": config.sim.ctl,
        "shim": config.mqtt.shim_ctl,
        "boards": config.boards.ctl,
        "registry": config.devices.ctl,
        "supervisor": config.supervisor.ctl,
    }
    for k, shim in enumerate(shim_instances(config)[1:], start=1):
        endpoints[f"shim-{k}"] = shim.ctl  # the supervisor's name for it
    # The supervisor says what runs: a service that is not there costs no wait.
    ps = ask_all({"supervisor": config.supervisor.ctl}, "ps", timeout_s=timeout_s)
    rows = ps.get("supervisor")
    if isinstance(rows, list):
        running = {r.get("name") for r in rows if isinstance(r, dict) and r.get("pid")}
        running.add("supervisor")
        endpoints = {k: v for k, v in endpoints.items() if k in running}
    answers = ask_all(endpoints, "status", timeout_s=timeout_s)
    return {
        name: a["counters"]
        for name, a in answers.items()
        if isinstance(a, dict) and isinstance(a.get("counters"), dict)
    }


def snapshot_as_dict(
    snap: RelaySnapshot,
    members: MembershipSnapshot | None = None,
    broker: dict[str, int] | None = None,
    security: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The JSON shape of `shoal status --json` (documented in README)."""
    states = _states(members)
    nodes = []
    for n in shown_nodes(snap, members):
        t = n.telemetry
        nodes.append(
            {
                "node_id": n.node_id,
                "state": states.get(n.node_id),
                "boot_id": n.boot_id,
                "first_seq": n.first_seq,
                "last_seq": n.last_seq,
                "age_ms": n.age_ms,
                "cpu_pct": t.cpu_pct if t else None,
                "queue_depth": t.queue_depth if t else None,
                "queue_capacity": t.queue_capacity if t else None,
                "load_factor": t.load_factor if t else None,
                "tasks_running": t.tasks_running if t else None,
                "delegated_in": t.delegated_in if t else None,
                "delegated_out": t.delegated_out if t else None,
                "overloaded": t.overloaded if t else None,
                "free_heap": t.free_heap if t else None,
                "rssi": t.rssi if t else None,
                "fw": (t.fw if t else None) or (n.hello.fw if n.hello else None),
                "via": n.hello.via if n.hello else None,
                "gaps": n.gaps,
                "duplicates": n.duplicates,
                "rejects": n.rejects,
                "msgs": n.msgs,
                "boots": n.boots,
                "left": n.left,
            }
        )
    counters = snap.counters
    return {
        "relay": {
            "pub": snap.pub,
            "pseq": snap.pseq,
            "accepted": counters.get("accepted", 0),
            "duplicates": counters.get("duplicates", 0),
            "gaps": counters.get("gaps", 0),
            "rejected": counters.get("rejected", 0),
            "rejects": snap.rejects,
            "counters": counters,
        },
        "liveness": None
        if members is None
        else {
            "healthy": members.healthy,
            "reasons": members.reasons,
            "counters": members.counters,
        },
        # The embedded broker's counters (refused_<reason>, denied_publish/subscribe,
        # keepalive_drops); None: no embedded broker, or it did not answer.
        "broker": None if broker is None else {"counters": broker},
        "nodes": nodes,
        "security": security,
    }


def _opt(value: int | None) -> str:
    return "-" if value is None else str(value)


def _state(state: str | None, left: bool, overloaded: bool) -> str:
    if state is None:
        return "left" if left else "?"
    return f"{state}+overloaded" if overloaded and state == "alive" else state


def _age(ms: int) -> str:
    return f"{ms / 1000:.1f}s" if ms < 60_000 else f"{ms / 60_000:.0f}m"


def render_table(
    snap: RelaySnapshot,
    members: MembershipSnapshot | None = None,
    broker: dict[str, int] | None = None,
    security: dict[str, Any] | None = None,
) -> str:
    states = _states(members)
    rows = [COLUMNS]
    shown = shown_nodes(snap, members)
    for n in shown:
        t = n.telemetry
        rows.append(
            (
                n.node_id,
                n.hello.via if n.hello else "-",
                _age(n.age_ms),
                f"{t.cpu_pct:.0f}" if t else "-",
                f"{t.queue_depth}/{t.queue_capacity}" if t else "-",
                f"{t.load_factor:.2f}" if t else "-",
                _opt(t.tasks_running if t else None),
                _opt(t.delegated_in if t else None),
                _opt(t.delegated_out if t else None),
                str(n.gaps),
                str(n.duplicates),
                str(n.msgs),
                str(n.boots),
                _state(states.get(n.node_id), n.left, bool(t and t.overloaded)),
            )
        )
    # Nodes the relay has forgotten (silent for 10 minutes) but the monitor still lists as
    # dead or left: an operator should see them until they are forgotten there too.
    known = {n.node_id for n in snap.nodes}
    for m in members.members if members else []:
        if m.node_id not in known:
            age = _age(m.evidence.silence_ms)
            rows.append((m.node_id, "-", age, *("-",) * 9, str(m.boots), m.state))
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]
    c = snap.counters
    rejects = ", ".join(f"{k}={v}" for k, v in sorted(snap.rejects.items()) if v) or "none"
    lines.append("")
    lines.append(
        f"relay: nodes={len(shown)} accepted={c.get('accepted', 0)} "
        f"duplicates={c.get('duplicates', 0)} gaps={c.get('gaps', 0)} rejects: {rejects}"
    )
    lines.append(_liveness_line(members))
    if broker is not None:
        refused = ", ".join(
            f"{k}={v}"
            for k, v in sorted(broker.items())
            if v and k.startswith(("refused", "denied"))
        )
        lines.append(f"broker: refusals: {refused or 'none'}")
    if security is not None:
        lines.append(_security_line(security))
    return "\n".join(lines)


def _security_line(security: dict[str, Any]) -> str:
    if not security["curve"]:
        return "security: Curve OFF (nothing is authenticated; loopback only)"
    parts = []
    for name, counts in security["services"].items():
        said = [
            f"{k.removeprefix('auth_refused_').removeprefix('reject_')}={v}"
            for k, v in counts.items()
            if v
        ]
        if said:
            parts.append(f"{name} {' '.join(said)}")
    return f"security: Curve on; refused {security['refused']}" + (
        f" ({'; '.join(parts)})" if parts else ""
    )


def _liveness_line(members: MembershipSnapshot | None) -> str:
    if members is None:
        return "liveness: unavailable (states shown as ?)"
    counts = " ".join(f"{state}={members.counters.get(state, 0)}" for state in LIVENESS_STATES)
    health = "healthy" if members.healthy else f"DEGRADED ({', '.join(members.reasons)})"
    return f"liveness: {counts}; observer {health}"


def to_json(
    snap: RelaySnapshot,
    members: MembershipSnapshot | None = None,
    broker: dict[str, int] | None = None,
    security: dict[str, Any] | None = None,
) -> str:
    text = msgspec.json.encode(snapshot_as_dict(snap, members, broker, security)).decode()
    return msgspec.json.format(text, indent=2)


@click.command()
@config_option
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option(
    "--timeout", type=float, default=2.0, show_default=True, help="Seconds to wait for the relay."
)
@click.option(
    "--watch",
    type=click.FloatRange(0.2),
    default=None,
    metavar="SECONDS",
    help="Refresh every SECONDS until Ctrl-C.",
)
def status(config_path: str | None, as_json: bool, timeout: float, watch: float | None) -> None:
    """One row per node (relay snapshot and liveness state), plus counters."""
    import contextlib
    import time

    from shoal.protocol.messages import MembershipSnapshot
    from shoal.services.relay.client import RelayClient
    from shoal.services.runtime.ctl_client import CtlClient, CtlFailed, CtlUnavailable

    config = config_from(config_path)
    embedded = config.mqtt.embedded
    use_keys(config, "reader")
    with RelayClient(config) as relay, CtlClient(config.liveness.ctl) as liveness:
        while True:
            try:
                snap = relay.snapshot(timeout_s=timeout, retries=1)
                members: MembershipSnapshot | None = None
                with contextlib.suppress(CtlUnavailable, CtlFailed):  # states shown as "?"
                    members = liveness.call(
                        "members", result_type=MembershipSnapshot, timeout_s=timeout, retries=0
                    )
                broker = _broker_counters(config.mqtt.broker_ctl, timeout) if embedded else None
                per_service = {"relay": snap.counters, **other_counters(config, 0.5)}
                if members is not None:
                    per_service["liveness"] = members.counters
                if broker is not None:
                    per_service["broker"] = broker
                security = security_summary(config.security.curve, per_service)
                text = (
                    to_json(snap, members, broker, security)
                    if as_json
                    else render_table(snap, members, broker, security)
                )
                failed = "" if as_json else _failed_line(config.supervisor.ctl)
                text += f"\n{failed}" if failed else ""
            except (CtlUnavailable, CtlFailed) as err:
                text = f"relay at {config.relay.ctl}: {err}"
                failed = _failed_line(config.supervisor.ctl)
                text += f"; {failed}" if failed else ""
                if watch is None:
                    raise click.ClickException(text) from None
                text += " (retrying)"
            if watch is None:
                click.echo(text)
                return
            click.clear()
            click.echo(watch_header(time.time(), watch, as_json))
            click.echo(text)
            try:
                time.sleep(watch)  # the refresh period the user asked for
            except KeyboardInterrupt:  # how --watch stops: a clean exit 0
                return


def watch_header(at: float, every_s: float, as_json: bool = False) -> str:
    """The line above each --watch refresh: when it was taken, so a frozen screen shows.
    With --json it is a JSON object of its own line, so each refresh stays parseable."""
    import time

    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(at))
    if as_json:
        return msgspec.json.encode({"at": round(at, 3), "every_s": every_s}).decode()
    return f"shoal status at {stamp} (every {every_s:g} s; Ctrl-C stops)"


def _broker_counters(broker_ctl: str, timeout_s: float) -> dict[str, int] | None:
    """The embedded broker's status counters; None when it does not answer."""
    from shoal.protocol.messages import ServiceStatus
    from shoal.services.runtime.ctl_client import CtlClient, CtlFailed, CtlUnavailable

    try:
        with CtlClient(broker_ctl) as client:
            status: ServiceStatus = client.call(
                "status", result_type=ServiceStatus, timeout_s=min(timeout_s, 1.0), retries=0
            )
    except (CtlUnavailable, CtlFailed):
        return None
    return dict(status.counters)


def _failed_line(supervisor_ctl: str) -> str:
    """The services the supervisor gave up on, with why ("" if none, or no supervisor):
    a service whose configuration is wrong is down for good, not slow."""
    from shoal.services.runtime.ctl_client import CtlClient, CtlFailed, CtlUnavailable

    try:
        with CtlClient(supervisor_ctl) as supervisor:
            rows: list[Any] = supervisor.call("ps", timeout_s=SUPERVISOR_TIMEOUT_S, retries=0)
    except (CtlUnavailable, CtlFailed):
        return ""
    failed = [r for r in rows if isinstance(r, dict) and r.get("state") == "failed"]
    return "; ".join(f"{r['name']} FAILED: {r.get('reason') or 'see its log'}" for r in failed)
