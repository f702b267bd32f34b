"""Events the feed derives from what it already receives: counter deltas of the delegator's
heartbeats and the fleet's status, telemetry's overload flag, the supervisor's process
table. Pure functions and a small accumulator, so they are tested without a cluster.

Every text is what the operator reads in the events view; each says what it counts.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

# Delegator traffic is summed over this long, then said in one event: one line per task
# would drown the log at a few hundred tasks a second.
SUMMARY_INTERVAL_S = 10.0
# Why the delegator took tasks away from a node, by counter (services/delegator/service.py).
REDELEGATION_CAUSES = {
    "redelegated_dead_owner": "owner dead",
    "redelegated_rebooted_owner": "owner rebooted",
    "redelegated_left_owner": "owner left",
    "lease_expired": "lease expired",
    "assign_unanswered": "assignment unanswered",
    "assign_declined": "assignment declined",
}


def deltas(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, int]:
    """How much each int counter grew (a counter that went down, a restart: not counted)."""
    out = {}
    for key, value in new.items():
        before = old.get(key, 0)
        if isinstance(value, int) and isinstance(before, int) and value > before:
            out[key] = value - before
    return out


class Window:
    """Counter growth summed until ``due``: then ``take`` empties it."""

    def __init__(self, interval_s: float = SUMMARY_INTERVAL_S) -> None:
        self.interval_s = interval_s
        self.sums: dict[str, int] = {}
        self.started: float | None = None

    def add(self, grown: Mapping[str, int], now: float) -> None:
        if self.started is None:
            self.started = now
        for key, n in grown.items():
            self.sums[key] = self.sums.get(key, 0) + n

    def due(self, now: float) -> bool:
        return self.started is not None and now - self.started >= self.interval_s

    def take(self) -> dict[str, int]:
        sums, self.sums, self.started = self.sums, {}, None
        return sums


def delegation_summary(sums: Mapping[str, int], seconds: float) -> str | None:
    """Offers and placements over the interval: "last 10 s: 120 tasks offered, ..."."""
    parts = [
        (sums.get("offered", 0), "tasks offered by overloaded nodes"),
        (sums.get("taken", 0), "taken into the ledger"),
        (sums.get("assigned", 0), "placed on a peer"),
        (sums.get("no_peer", 0), "found no peer with room"),
        (sums.get("delivered", 0), "results delivered"),
    ]
    said = [f"{n} {what}" for n, what in parts if n]
    if not said:
        return None
    return f"last {seconds:.0f} s: " + ", ".join(said)


def tasks(n: int) -> str:
    return f"{n} task" if n == 1 else f"{n} tasks"


def redelegation(grown: Mapping[str, int]) -> str | None:
    """Tasks taken away from their node, with why: "3 tasks re-delegated: owner dead 3"."""
    causes = [(grown[k], why) for k, why in REDELEGATION_CAUSES.items() if grown.get(k)]
    if not causes:
        return None
    total = sum(n for n, _ in causes)
    return f"{tasks(total)} re-delegated: " + ", ".join(f"{why} {n}" for n, why in causes)


# After a node dies, reboots or leaves, the feed asks the delegator's `moved` op where the
# tasks taken from it are, this long after (placed at once; done a few seconds on).
MOVED_ASK_AFTER_S = (2.0, 12.0)


def _by_owner(counts: dict[str, int]) -> str:
    return ", ".join(
        f"{owner} {n}" for owner, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    )


def moved(
    why: str, rows: Sequence[Mapping[str, Any]], total: int, last: bool = False
) -> str | None:
    """Where the tasks taken from a lost node are now, by new owner: "dead: 19 tasks
    re-delegated: running on sim-003 5, sim-001 4; done on board-01 3; 7 waiting
    for a peer". When it held none: None, or on the ``last`` ask, that it held none (its
    delegated work may all have finished just before; the detail's list is 2 s old)."""
    if not total:
        return f"{why}: it held no delegated tasks, none re-delegated" if last else None
    on: dict[str, int] = {}
    done: dict[str, int] = {}
    waiting = dead = 0
    for row in rows:
        state, owner = row.get("state"), row.get("owner") or "?"
        if state in ("assigned", "running"):
            on[owner] = on.get(owner, 0) + 1
        elif state in ("done", "delivered"):
            done[owner] = done.get(owner, 0) + 1
        elif state == "dead_letter":
            dead += 1
        else:
            waiting += 1
    parts = []
    if on:
        parts.append("running on " + _by_owner(on))
    if done:
        parts.append("done on " + _by_owner(done))
    if waiting:
        parts.append(f"{waiting} waiting for a peer")
    if dead:
        parts.append(f"{dead} dead-lettered")
    if total > len(rows):
        parts.append(f"{total - len(rows)} more not listed")
    # No node id in the text: the events view's node column and the detail both say it, and
    # the owners must fit 100 columns.
    return f"{why}: {tasks(total)} re-delegated: " + "; ".join(parts)


def dead_lettered(old: int | None, new: int | None) -> str | None:
    """The delegator's dead-letter count grew: tasks it gave up on."""
    if old is None or new is None or new <= old:
        return None
    return f"{tasks(new - old)} dead-lettered (gave up after every retry); {new} in all"


def shed(grown: Mapping[str, int]) -> str | None:
    n = grown.get("tasks_shed", 0)
    return f"{tasks(n)} shed by full queues on the fleet's nodes" if n else None


def faults(grown: Mapping[str, int], stopped_before: int | None, stopped: int | None) -> list[str]:
    """Faults the fleet applied (anyone's: this console, another, a scenario) and nodes
    it stopped or started again (a crash, hang or leave; its heal)."""
    out = []
    if grown.get("faults_applied"):
        out.append(f"{grown['faults_applied']} faults applied on the fleet")
    if stopped_before is not None and stopped is not None and stopped != stopped_before:
        if stopped > stopped_before:
            out.append(
                f"{stopped - stopped_before} nodes stopped (crash, hang or leave); {stopped} stopped"
            )
        else:
            out.append(
                f"{stopped_before - stopped} nodes running again (healed); {stopped} stopped"
            )
    return out


def overload(was: bool | None, now: bool, load: float, depth: int, capacity: int) -> str | None:
    """A node's overload flag changed (telemetry): entered or left."""
    if was is None or was == now:
        return None
    figures = f"load {load:.2f}, queue {depth}/{capacity}"
    return f"overload entered ({figures})" if now else f"overload left ({figures})"


def service_changes(
    old: Mapping[str, Mapping[str, Any]], new: Mapping[str, Mapping[str, Any]]
) -> list[str]:
    """The supervisor's view changed: a restart, a process in backoff, failed, back."""
    out = []
    for name, row in new.items():
        before = old.get(name)
        if before is None:
            continue
        if row.get("restarts", 0) > before.get("restarts", 0):
            out.append(f"{name} restarted (pid {row.get('pid')}; restarts {row.get('restarts')})")
        elif row.get("state") != before.get("state"):
            why = f": {row['reason']}" if row.get("reason") else ""
            out.append(f"{name} {before.get('state')} -> {row.get('state')}{why}")
    return out
