"""A rollout: one version to a set of boards, board by board, at most ``max_unavailable``
of them updating at once, gated by the liveness monitor, halted at the first failure.

Per board (``Row.state``):

- ``waiting``: not started; ``offline``: its turn came while the monitor did not hold it
  alive (it gets the offer when it is alive again, without holding the others up);
- ``downloading`` (offered; its status says how far), ``switching`` (verified, resetting
  into the new version), ``trial`` (its new boot runs, on probation);
- ``confirmed``: its new boot confirmed itself and the monitor holds it alive: done;
- ``rolled_back`` (it switched back by itself) or ``failed`` (no room, no new boot within
  ``trial_timeout_s``): the rollout halts: no new board starts, downloads are aborted.

The gate: a new board starts only while fewer than ``max_unavailable`` are between offer
and confirmation, the monitor trusts its own view, and every board this rollout confirmed
is alive. Pure: the service feeds it statuses and the monitor's states and carries out
what ``step`` returns; it is saved as JSON after each change so a restarted service goes on.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from .wire import Status

ACTIVE = ("downloading", "switching", "trial")
FAILED = ("rolled_back", "failed")


@dataclass
class Row:
    node_id: str
    state: str = "waiting"
    fw: str | None = None  # the version it last said it runs
    done: int = 0
    total: int = 0
    bad_chunks: int = 0
    retries: int = 0
    started: float | None = None  # wall time of the offer
    finished: float | None = None
    since: float | None = None  # wall time the state was entered
    detail: str = ""

    def seconds(self, now: float) -> float | None:
        if self.started is None:
            return None
        return round((self.finished or now) - self.started, 1)


@dataclass
class Rollout:
    version: str
    nodes: list[str]
    max_unavailable: int = 1
    trial_timeout_s: float = 90.0
    offer_every_s: float = 3.0
    state: str = "running"  # running, succeeded, halted
    detail: str = ""
    created: float = 0.0
    rows: dict[str, Row] = field(default_factory=dict)
    last_offer: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for node in self.nodes:
            self.rows.setdefault(node, Row(node))

    # --- evidence ----------------------------------------------------------------------

    def on_status(self, st: Status, now: float) -> list[tuple[str, str]]:
        """A board's status; returns the (node, new state) changes it made."""
        row = self.rows.get(st.node_id)
        if row is None:
            return []
        row.fw = st.fw
        before = row.state
        result = st.result
        rolled_back = (
            result is not None and result.version == self.version and result.result == "rolled_back"
        )
        if rolled_back and row.state in (*ACTIVE, "confirmed_board"):
            assert result is not None
            self._move(row, "rolled_back", now, result.detail or "rolled back")
        elif st.state == "failed" and st.version in (self.version, None) and row.state in ACTIVE:
            self._move(row, "failed", now, st.detail)
        elif st.fw == self.version:
            if row.state in ("waiting", "offline") and st.state == "idle":
                self._move(row, "confirmed", now, "already on it")
            elif st.state == "trial" and row.state != "trial":
                self._move(row, "trial", now, "")
            elif st.state == "idle" and row.state in ACTIVE:
                self._move(row, "confirmed_board", now, "")
        elif st.state == "downloading" and st.version == self.version:
            row.done, row.total = st.done, st.total
            if row.state in ("waiting", "offline", "downloading"):
                self._move(row, "downloading", now, "")
        elif st.state == "switching" and st.version == self.version:
            row.done = row.total
            self._move(row, "switching", now, "")
        row.bad_chunks = max(row.bad_chunks, st.bad_chunks)  # a new boot starts from 0
        row.retries = max(row.retries, st.retries)
        return [(row.node_id, row.state)] if row.state != before else []

    def _move(self, row: Row, state: str, now: float, detail: str) -> None:
        if state == row.state:
            return
        row.state, row.since, row.detail = state, now, detail
        if state in ("switching", "trial", "confirmed_board", "confirmed") and row.total:
            row.done = row.total  # every byte in and verified
        if state in ("confirmed", *FAILED):
            row.finished = now
        if state in FAILED and self.state == "running":
            self.state = "halted"
            self.detail = f"{row.node_id}: {state}: {detail}"

    # --- what to do next ----------------------------------------------------------------

    def step(
        self,
        now: float,
        alive: dict[str, bool],
        healthy: bool,
        heard: dict[str, float] | None = None,
    ) -> tuple[list[str], list[str], list[tuple[str, str]]]:
        """(boards to offer to, boards to abort, state changes) for this moment. ``heard``:
        when each board last sent anything OTA (a board asking for chunks needs no offer)."""
        changes: list[tuple[str, str]] = []
        offers: list[str] = []
        aborts: list[str] = []
        for row in self.rows.values():
            before = row.state
            if row.state == "confirmed_board" and alive.get(row.node_id):
                self._move(row, "confirmed", now, "")  # its own word, and the monitor's
            elif (
                row.state in ("switching", "trial", "confirmed_board")
                and row.since is not None
                and now - row.since > self.trial_timeout_s
            ):
                self._move(
                    row, "failed", now, f"no confirmed new boot in {self.trial_timeout_s:g} s"
                )
            if row.state != before:
                changes.append((row.node_id, row.state))
        if self.state == "halted":
            aborts = [r.node_id for r in self.rows.values() if r.state == "downloading"]
            for node in aborts:
                self._move(self.rows[node], "waiting", now, "aborted: the rollout halted")
                changes.append((node, "waiting"))
            return offers, aborts, changes
        if all(r.state == "confirmed" for r in self.rows.values()):
            if self.state != "succeeded":
                self.state = "succeeded"
            return offers, aborts, changes
        # Boards under way but quiet: offered again (the offer is idempotent; it reaches a
        # board that lost it, or that never heard it while the broker was away).
        heard = heard or {}
        for row in self.rows.values():
            quiet = now - heard.get(row.node_id, 0.0) >= self.offer_every_s
            if row.state in ("downloading", "switching") and quiet and self._due(row.node_id, now):
                offers.append(row.node_id)
        gate_open = healthy and all(
            alive.get(r.node_id) for r in self.rows.values() if r.state == "confirmed"
        )
        busy = sum(r.state in ACTIVE or r.state == "confirmed_board" for r in self.rows.values())
        for row in self.rows.values():
            if busy >= self.max_unavailable or not gate_open:
                break
            if row.state not in ("waiting", "offline"):
                continue
            if not alive.get(row.node_id):
                if row.state != "offline":
                    self._move(row, "offline", now, "not alive: it gets the update when it is")
                    changes.append((row.node_id, row.state))
                continue
            row.started = row.started or now
            self._move(row, "downloading", now, "offered")
            changes.append((row.node_id, row.state))
            self.last_offer[row.node_id] = now
            offers.append(row.node_id)
            busy += 1
        return offers, aborts, changes

    def _due(self, node: str, now: float) -> bool:
        if now - self.last_offer.get(node, 0.0) < self.offer_every_s:
            return False
        self.last_offer[node] = now
        return True

    # --- views and persistence --------------------------------------------------------------

    def progress(self, now: float) -> dict[str, Any]:
        rows = [
            {**asdict(r), "seconds": r.seconds(now), "state": _shown(r.state)}
            for r in self.rows.values()
        ]
        return {
            "version": self.version,
            "state": self.state,
            "detail": self.detail,
            "max_unavailable": self.max_unavailable,
            "nodes": rows,
        }

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Rollout:
        rows = {k: Row(**v) for k, v in data.pop("rows", {}).items()}
        return cls(**data, rows=rows)


def _shown(state: str) -> str:
    return "trial" if state == "confirmed_board" else state
