"""The delegator's durable task ledger: SQLite in WAL mode, synchronous=FULL.

Long on purpose: the ledger is one SQLite schema and the transactions over it; every
state change must be read beside the schema's constraints that make it safe.

What makes "no task lost, none committed twice" true by design:

- Every change happens inside the ledger's current transaction and becomes durable at
  ``commit()``. The caller (the delegator) applies one loop pass of changes, commits once,
  and only then sends the acks (taken, result_ack, ...). A crash before the commit loses the
  batch and its acks together, so the senders resend (delivery is at least once, every
  handler here is idempotent); a crash after it loses nothing that was acknowledged.
- A task is placed under an epoch (+1 at every assignment). Only a result from the owner
  of the live assignment, under its epoch, commits; an assignment revoked (lease lapsed,
  owner dead, assignment declined) is fenced at once, before the task is placed again.
- A committed result is written to ``commits`` (one row per task: the primary key) in the
  same transaction as the task's move to ``done``, and a trigger forbids a committed task
  from leaving done/delivered: a second commit is impossible at the schema level too.
- Every state change appends a row to ``events`` in the same transaction.
- Pruning (``prune``) deletes only final tasks (delivered, dead_letter) and leaves a
  tombstone (``pruned``: id, origin, the committed epoch and node) in the same transaction:
  a late offer or result of a pruned task gets the answer it would have got before (taken
  again unchanged, duplicate, stale_epoch), and a trigger forbids the id from entering the
  ledger again. Tombstones are small; the oldest go past ``max_pruned``.

States: pending (not placed), assigned (sent to an owner under an epoch, no answer yet),
running (owner accepted; it holds a lease), done (result committed, not yet delivered to
the origin), delivered (the origin acknowledged), dead_letter (gave up; ``reason`` says why).

Times (``now``) are wall-clock seconds (``time.time()``): leases must survive a restart of
the delegator. Every mutation takes ``now`` explicitly, so tests use fake times.

Usage, one pass of the delegator's loop::

    ledger = Ledger(config.delegator.ledger, config.delegator.max_redeliveries)
    # (a file that cannot be a ledger: LedgerFileError, a ConfigError naming the key)
    for row in ledger.recover(time.time(), lease_ms):     # once, after a (re)start
        ...                                                # resend assign / wait for renew
    ledger.commit()

    now = time.time()
    taken, refused = ledger.offer(msg.node_id, msg.tasks, now)
    for row in ledger.placeable(limit=16):
        epoch = ledger.assign(row.task_id, peer, now)
    status = ledger.result(r.task_id, r.epoch, r.node_id, r.ok, r.output, r.error, now)
    lost = ledger.expire(now, lease_ms)
    ledger.commit()                                        # durable: now send the acks
    send(Taken(...)); send(Assign(...)); send(ResultAck(status=status, ...))

    pruned, more = ledger.prune(time.time(), limit=256)   # from a timer; then commit()

A database failure during a mutation rolls the whole uncommitted batch back and raises
``LedgerError`` ("... rolled back"): send none of that batch's acks. A task in the wrong
state is refused by return value (False, a status string) and changes nothing, except in
``assign``, whose caller must only pass pending tasks (LedgerError, nothing rolled back).
"""

from __future__ import annotations

import os  # noqa: F401 (tests patch os.access through this module)
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, Literal

from msgspec import Struct

from shoal.protocol.tasks import Task, TaskKind
from shoal.services.runtime.config import ConfigError
from shoal.services.runtime.sqlite_file import FileKind, open_sqlite_file

from .checkpointer import BACKSTOP_PAGES, WAL_SIZE_LIMIT, Checkpointer

State = Literal["pending", "assigned", "running", "done", "delivered", "dead_letter"]
STATES: tuple[State, ...] = ("pending", "assigned", "running", "done", "delivered", "dead_letter")
ResultStatus = Literal["committed", "duplicate", "stale_epoch", "wrong_node", "unknown_task"]

FINAL_STATES: tuple[State, ...] = ("delivered", "dead_letter")  # what prune may delete

SCHEMA_VERSION = 2
APPLICATION_ID = 0x73686F6C  # "shol": marks the file as a shoal ledger

_SCHEMA_V1 = """
CREATE TABLE tasks (
    seq INTEGER PRIMARY KEY,          -- insertion order: placement is oldest first
    task_id TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL,
    cost_ms INTEGER NOT NULL,
    arg INTEGER NOT NULL,
    payload TEXT NOT NULL,
    origin TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    state TEXT NOT NULL CHECK (state IN
        ('pending', 'assigned', 'running', 'done', 'delivered', 'dead_letter')),
    owner TEXT,                       -- the live assignment's node, or the committer
    epoch INTEGER NOT NULL DEFAULT 0, -- the last epoch issued; 0: never assigned
    assigned_at REAL,
    lease_until REAL,
    redeliveries INTEGER NOT NULL DEFAULT 0,
    declines INTEGER NOT NULL DEFAULT 0,
    ok INTEGER,
    output TEXT,
    error TEXT,
    reason TEXT,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE INDEX tasks_by_state ON tasks (state, seq);
CREATE INDEX tasks_by_owner ON tasks (owner) WHERE state IN ('assigned', 'running');
CREATE INDEX tasks_by_update ON tasks (updated_at);

CREATE TABLE commits (
    task_id TEXT PRIMARY KEY REFERENCES tasks (task_id),  -- one commit per task, ever
    epoch INTEGER NOT NULL,
    node TEXT NOT NULL,
    at REAL NOT NULL
);

CREATE TABLE events (
    id INTEGER PRIMARY KEY,
    at REAL NOT NULL,
    task_id TEXT NOT NULL,
    from_state TEXT,
    to_state TEXT NOT NULL,
    epoch INTEGER NOT NULL,
    node TEXT,
    detail TEXT NOT NULL DEFAULT ''
);
CREATE INDEX events_by_task ON events (task_id, id);

-- A committed result is final: the task may only go on to delivered.
CREATE TRIGGER committed_is_final BEFORE UPDATE OF state ON tasks
WHEN OLD.state IN ('done', 'delivered') AND NEW.state NOT IN ('done', 'delivered')
BEGIN SELECT RAISE(ABORT, 'a committed task cannot leave done/delivered'); END;

CREATE TRIGGER done_needs_commit BEFORE UPDATE OF state ON tasks
WHEN NEW.state = 'done' AND NOT EXISTS (SELECT 1 FROM commits WHERE task_id = NEW.task_id)
BEGIN SELECT RAISE(ABORT, 'done without a commit row'); END;

-- History and commits are never rewritten (rows may be pruned by a later migration).
CREATE TRIGGER commits_immutable BEFORE UPDATE ON commits
BEGIN SELECT RAISE(ABORT, 'commits are immutable'); END;
CREATE TRIGGER events_append_only BEFORE UPDATE ON events
BEGIN SELECT RAISE(ABORT, 'events are append-only'); END;
"""

# Version 2: pruning, and indexes that keep the ctl queries off whole-table scans.
_V1_TO_V2 = """
CREATE TABLE pruned (
    seq INTEGER PRIMARY KEY,          -- pruning order: the oldest tombstones go first
    task_id TEXT NOT NULL UNIQUE,
    origin TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('delivered', 'dead_letter')),
    epoch INTEGER,                    -- the committed result's epoch and node (delivered)
    node TEXT,
    at REAL NOT NULL                  -- when it was pruned
);
-- Tasks pruned ever, per final state: audit's figures stay whole.
CREATE TABLE pruned_totals (state TEXT PRIMARY KEY, n INTEGER NOT NULL) WITHOUT ROWID;

CREATE TRIGGER pruned_stays_pruned BEFORE INSERT ON tasks
WHEN EXISTS (SELECT 1 FROM pruned WHERE task_id = NEW.task_id)
BEGIN SELECT RAISE(ABORT, 'a pruned task cannot enter the ledger again'); END;

CREATE INDEX tasks_final_by_update ON tasks (updated_at)
    WHERE state IN ('delivered', 'dead_letter');
CREATE INDEX tasks_redelivered ON tasks (redeliveries) WHERE redeliveries > 0;
CREATE INDEX events_done ON events (task_id) WHERE to_state = 'done';
CREATE INDEX events_revoked ON events (node, at)
    WHERE from_state IN ('assigned', 'running') AND to_state IN ('pending', 'dead_letter');
"""

# _MIGRATIONS[v]: the script that takes a version v file to version v + 1.
_MIGRATIONS = {1: _V1_TO_V2}
# What a file of the current version must hold (the rest of the check is the version).
_TABLES = {"tasks", "commits", "events", "pruned", "pruned_totals"}

_TASK_COLUMNS = (
    "task_id, kind, cost_ms, arg, payload, origin, created_ms, state, owner, epoch, "
    "assigned_at, lease_until, redeliveries, declines, ok, output, error, reason, "
    "created_at, updated_at"
)
_COLUMNS = {"seq", *(c.strip() for c in _TASK_COLUMNS.split(","))}


def _upgrade(version: int) -> str:
    """A new file gets the whole schema, an older one the steps since its version."""
    steps = [_SCHEMA_V1] if version == 0 else []
    return "".join(steps + [_MIGRATIONS[v] for v in range(max(version, 1), SCHEMA_VERSION)])


LEDGER_FILE = FileKind(
    noun="shoal ledger",
    application_id=APPLICATION_ID,
    schema_version=SCHEMA_VERSION,
    tables={1: {"tasks", "commits", "events"}, SCHEMA_VERSION: _TABLES},
    columns={"tasks": _COLUMNS},
    upgrade=_upgrade,
    synchronous="FULL",  # fsync the WAL at every commit
    foreign_keys=True,
    problems_shown=3,
)


class LedgerError(Exception):
    """The ledger cannot do what was asked; the message names the file."""


class LedgerFileError(LedgerError, ConfigError):
    """The file cannot be a ledger (unopenable, not SQLite, another schema, corrupt), in one
    line naming the key and the path: a configuration error, which no restart fixes."""


class TaskRow(Struct, frozen=True, kw_only=True):
    """A task as the ledger holds it.

    ``owner``: the node of the live assignment (assigned, running) or the one whose result
    was committed (done, delivered); None otherwise. ``epoch``: the last epoch issued (0:
    never assigned). ``reason``: why the task last lost its assignment (declined, lease
    lapsed, owner lost), or why it was dead-lettered. Times are wall-clock seconds.
    """

    task_id: str
    kind: TaskKind
    cost_ms: int
    arg: int
    payload: str
    origin: str
    created_ms: int
    state: State
    owner: str | None
    epoch: int
    assigned_at: float | None
    lease_until: float | None
    redeliveries: int
    declines: int
    ok: bool | None
    output: str | None
    error: str | None
    reason: str | None
    created_at: float
    updated_at: float

    def as_task(self) -> Task:
        """The task as its origin made it (what an Assign carries)."""
        return Task(
            task_id=self.task_id,
            kind=self.kind,
            cost_ms=self.cost_ms,
            arg=self.arg,
            payload=self.payload,
            origin=self.origin,
            created_ms=self.created_ms,
        )


class Event(Struct, frozen=True, kw_only=True):
    """One state change of a task. ``from_state`` is None when the task entered the ledger."""

    at: float
    task_id: str
    from_state: State | None
    to_state: State
    epoch: int
    node: str | None
    detail: str


class Tombstone(Struct, frozen=True, kw_only=True):
    """What the ledger keeps of a pruned task: enough to answer its late messages as before.
    ``epoch`` and ``node``: the committed result's (a delivered task); None for a dead letter.
    ``at``: when it was pruned."""

    task_id: str
    origin: str
    state: State
    epoch: int | None
    node: str | None
    at: float


# Where a page of ``latest_page`` ends: (updated_at, seq) of its last task.
Cursor = tuple[float, int]


def _row(r: tuple[Any, ...]) -> TaskRow:
    ok = r[14]
    return TaskRow(
        task_id=r[0],
        kind=r[1],
        cost_ms=r[2],
        arg=r[3],
        payload=r[4],
        origin=r[5],
        created_ms=r[6],
        state=r[7],
        owner=r[8],
        epoch=r[9],
        assigned_at=r[10],
        lease_until=r[11],
        redeliveries=r[12],
        declines=r[13],
        ok=None if ok is None else bool(ok),
        output=r[15],
        error=r[16],
        reason=r[17],
        created_at=r[18],
        updated_at=r[19],
    )


class Ledger:
    """The task ledger in one SQLite file; one Ledger (one process) per file.

    ``max_redeliveries``: how many times a task that lost its owner (lease lapsed, owner
    dead) is placed again; the next loss dead-letters it. Declined assignments are not
    redeliveries (the peer never ran the task): they are counted in ``declines``.
    """

    def __init__(
        self,
        path: str | Path,
        max_redeliveries: int = 3,
        *,
        retention_s: float = 3600.0,
        max_tasks: int = 100_000,
        max_pruned: int = 500_000,
        key: str = "delegator.ledger",
        checkpoint_every_s: float | None = None,
    ) -> None:
        self.path = Path(path)
        self.max_redeliveries = max_redeliveries
        self.retention_s = retention_s
        self.max_tasks = max_tasks
        self.max_pruned = max_pruned
        self.key = key  # the config key that named the file, for error messages
        # None: SQLite checkpoints the WAL inside the commit that fills it (fine for tests
        # and tools); a number: a thread does, that often (checkpointer.py, off by default).
        self.checkpointer: Checkpointer | None = None
        self._db = open_sqlite_file(self.path, LEDGER_FILE, self._file_error)
        if checkpoint_every_s is not None:
            self._db.execute(f"PRAGMA wal_autocheckpoint={BACKSTOP_PAGES}")
            self._db.execute(f"PRAGMA journal_size_limit={WAL_SIZE_LIMIT}")
            self.checkpointer = Checkpointer(self.path, checkpoint_every_s)

    def _file_error(self, reason: str) -> LedgerFileError:
        return LedgerFileError(f"{self.key} '{self.path}': {reason}")

    # --- transactions --------------------------------------------------------------------

    def commit(self) -> None:
        """Make every change since the last commit durable (fsync). Ack only after this."""
        with self._guard():
            if self._db.in_transaction:
                self._db.execute("COMMIT")

    def rollback(self) -> None:
        """Drop every change since the last commit."""
        with self._guard():
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")

    def close(self) -> None:
        """Close the file; changes not committed are dropped."""
        if self.checkpointer is not None:
            self.checkpointer.close()  # first: the last connection to close checkpoints
            self.checkpointer = None
        if self._db.in_transaction:
            self._db.execute("ROLLBACK")
        self._db.close()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _guard(self) -> Iterator[None]:
        """sqlite errors become LedgerError naming the file."""
        try:
            yield
        except sqlite3.Error as err:
            raise LedgerError(f"{self.path}: {err}") from None

    @contextmanager
    def _change(self) -> Iterator[sqlite3.Connection]:
        """A mutation: joins the current transaction (opening one if needed). A database
        error rolls the whole uncommitted batch back, so that no ack of it is ever sent
        for a half-applied batch."""
        try:
            if not self._db.in_transaction:
                self._db.execute("BEGIN IMMEDIATE")
            yield self._db
        except LedgerError:
            raise  # refused before anything was written
        except BaseException as err:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            if isinstance(err, sqlite3.Error):
                raise LedgerError(f"{self.path}: {err} (uncommitted changes rolled back)") from None
            raise

    def _event(
        self,
        now: float,
        task_id: str,
        from_state: str | None,
        to_state: str,
        epoch: int,
        node: str | None,
        detail: str = "",
    ) -> None:
        self._db.execute(
            "INSERT INTO events (at, task_id, from_state, to_state, epoch, node, detail) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (now, task_id, from_state, to_state, epoch, node, detail),
        )

    def _get(self, task_id: str) -> TaskRow | None:
        r = self._db.execute(
            f"SELECT {_TASK_COLUMNS} FROM tasks WHERE task_id = ?", (task_id,)
        ).fetchone()
        return None if r is None else _row(r)

    def _select(self, where: str, params: tuple[object, ...], tail: str) -> list[TaskRow]:
        with self._guard():
            rows = self._db.execute(
                f"SELECT {_TASK_COLUMNS} FROM tasks WHERE {where} {tail}", params
            ).fetchall()
        return [_row(r) for r in rows]

    # --- mutations -----------------------------------------------------------------------

    def offer(
        self, origin: str, tasks: list[Task], now: float
    ) -> tuple[list[str], list[tuple[str, str]]]:
        """Take tasks from their origin as pending. Returns (taken ids, [(id, reason)]).

        Idempotent: an id already in the ledger from the same origin is taken again,
        unchanged (the origin resent its offer). Refused: an id that another origin used
        ("duplicate_id"), a task whose ``origin`` is not the sender ("origin_mismatch":
        the result goes to the sender, so they must agree).
        """
        taken: list[str] = []
        refused: list[tuple[str, str]] = []
        with self._change() as db:
            for t in tasks:
                if t.origin != origin:
                    refused.append((t.task_id, "origin_mismatch"))
                    continue
                # A pruned task's tombstone answers as the task would have (taken again).
                had = db.execute(
                    "SELECT origin FROM tasks WHERE task_id = ? "
                    "UNION ALL SELECT origin FROM pruned WHERE task_id = ?",
                    (t.task_id, t.task_id),
                ).fetchone()
                if had is not None:
                    if had[0] == origin:
                        taken.append(t.task_id)
                    else:
                        refused.append((t.task_id, "duplicate_id"))
                    continue
                db.execute(
                    "INSERT INTO tasks (task_id, kind, cost_ms, arg, payload, origin, "
                    "created_ms, state, created_at, updated_at) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, 'pending', ?, ?)",
                    (
                        t.task_id,
                        t.kind,
                        t.cost_ms,
                        t.arg,
                        t.payload,
                        origin,
                        t.created_ms,
                        now,
                        now,
                    ),
                )
                self._event(now, t.task_id, None, "pending", 0, origin, "offered")
                taken.append(t.task_id)
        return taken, refused

    def assign(self, task_id: str, owner: str, now: float) -> int:
        """pending -> assigned to ``owner`` under a new epoch, which is returned (the first
        is 1). Raises LedgerError if the task is not pending (a bug of the caller)."""
        with self._change() as db:
            row = self._get(task_id)
            if row is None or row.state != "pending":
                state = "unknown" if row is None else row.state
                raise LedgerError(f"{self.path}: cannot assign {task_id!r}: it is {state}")
            epoch = row.epoch + 1
            db.execute(
                "UPDATE tasks SET state = 'assigned', owner = ?, epoch = ?, assigned_at = ?, "
                "lease_until = NULL, updated_at = ? WHERE task_id = ?",
                (owner, epoch, now, now, task_id),
            )
            self._event(now, task_id, "pending", "assigned", epoch, owner)
        return epoch

    def accepted(self, task_id: str, epoch: int, node: str, lease_ms: int, now: float) -> bool:
        """The owner accepted: assigned (this epoch, this owner) -> running, leased until
        now + lease_ms. False, and no change, otherwise (a repeated or stale reply)."""
        with self._change() as db:
            moved = db.execute(
                "UPDATE tasks SET state = 'running', lease_until = ?, updated_at = ? "
                "WHERE task_id = ? AND state = 'assigned' AND epoch = ? AND owner = ?",
                (now + lease_ms / 1000, now, task_id, epoch, node),
            ).rowcount
            if moved:
                self._event(now, task_id, "assigned", "running", epoch, node, "accepted")
        return bool(moved)

    def declined(self, task_id: str, epoch: int, node: str, reason: str, now: float) -> bool:
        """The peer refused the assignment, or never answered it: assigned (this epoch,
        this owner) -> pending, to be placed elsewhere. Not a redelivery (the task never
        ran): counted in ``declines``. False, and no change, otherwise."""
        with self._change() as db:
            moved = db.execute(
                "UPDATE tasks SET state = 'pending', owner = NULL, assigned_at = NULL, "
                "declines = declines + 1, reason = ?, updated_at = ? "
                "WHERE task_id = ? AND state = 'assigned' AND epoch = ? AND owner = ?",
                (f"declined by {node}: {reason}", now, task_id, epoch, node),
            ).rowcount
            if moved:
                self._event(now, task_id, "assigned", "pending", epoch, node, f"declined: {reason}")
        return bool(moved)

    def renew(self, node: str, leases: list[tuple[str, int]], now: float, lease_ms: int) -> int:
        """Extend the leases ``node`` holds under those epochs to now + lease_ms; returns
        how many were extended. A lease of an assignment whose accept was lost (still
        assigned, same epoch and owner) proves it runs: it becomes running. Pairs that do
        not match a live assignment of this node are ignored (the node learns at its
        result)."""
        until = now + lease_ms / 1000
        count = 0
        with self._change() as db:
            for task_id, epoch in leases:
                n = db.execute(
                    "UPDATE tasks SET lease_until = max(lease_until, ?), updated_at = ? "
                    "WHERE task_id = ? AND state = 'running' AND epoch = ? AND owner = ?",
                    (until, now, task_id, epoch, node),
                ).rowcount
                if not n:
                    n = db.execute(
                        "UPDATE tasks SET state = 'running', lease_until = ?, updated_at = ? "
                        "WHERE task_id = ? AND state = 'assigned' AND epoch = ? AND owner = ?",
                        (until, now, task_id, epoch, node),
                    ).rowcount
                    if n:
                        self._event(
                            now, task_id, "assigned", "running", epoch, node, "accepted by renew"
                        )
                count += n
        return count

    def result(
        self,
        task_id: str,
        epoch: int,
        node: str,
        ok: bool,
        output: str,
        error: str,
        now: float,
    ) -> ResultStatus:
        """A result from a node. Only "committed" changes anything:

        - committed: the live assignment (assigned or running) under this epoch, from its
          owner -> done. An assigned task commits too (its accept may have been lost).
        - duplicate: this very result (epoch and node) was committed before.
        - stale_epoch: not the live assignment's epoch (revoked, superseded, never issued,
          or another epoch's result was committed).
        - wrong_node: the right epoch from another node.
        - unknown_task: no such task in the ledger, and no tombstone of one.

        A pruned task answers from its tombstone as it did before: duplicate, wrong_node or
        stale_epoch, never a commit (nothing of it is left to commit to).
        """
        with self._change() as db:
            row = self._get(task_id)
            if row is None:
                tomb = self._tombstone(task_id)
                if tomb is None:
                    return "unknown_task"
                if tomb.state != "delivered":
                    return "stale_epoch"
                return _against_commit(tomb.epoch, tomb.node, epoch, node)
            if row.state in ("done", "delivered"):
                c_epoch, c_node = db.execute(
                    "SELECT epoch, node FROM commits WHERE task_id = ?", (task_id,)
                ).fetchone()
                return _against_commit(c_epoch, c_node, epoch, node)
            if row.state not in ("assigned", "running") or row.epoch != epoch:
                return "stale_epoch"
            if row.owner != node:
                return "wrong_node"
            # The commit row first: its primary key refuses a second commit outright.
            db.execute(
                "INSERT INTO commits (task_id, epoch, node, at) VALUES (?, ?, ?, ?)",
                (task_id, epoch, node, now),
            )
            db.execute(
                "UPDATE tasks SET state = 'done', ok = ?, output = ?, error = ?, "
                "lease_until = NULL, updated_at = ? WHERE task_id = ?",
                (int(ok), output, error, now, task_id),
            )
            self._event(now, task_id, row.state, "done", epoch, node, "ok" if ok else "failed")
        return "committed"

    def expire(self, now: float, lease_ms: int) -> list[str]:
        """Revoke the assignments that lapsed: running tasks whose lease ended, and assigned
        ones not answered for lease_ms. Each goes back to pending as a redelivery, or to
        dead_letter past max_redeliveries. Returns the ids moved."""
        with self._change() as db:
            rows = [
                _row(r)
                for r in db.execute(
                    f"SELECT {_TASK_COLUMNS} FROM tasks WHERE "
                    "(state = 'running' AND lease_until <= ?) OR "
                    "(state = 'assigned' AND assigned_at <= ?) ORDER BY seq",
                    (now, now - lease_ms / 1000),
                )
            ]
            for row in rows:
                what = "lease expired" if row.state == "running" else "no answer"
                self._revoke(row, now, f"{what} on {row.owner} (epoch {row.epoch})")
        return [row.task_id for row in rows]

    def owner_lost(self, node: str, now: float, reason: str) -> list[str]:
        """The node is dead (or rebooted, or left): revoke every assignment it holds, as
        redeliveries (or dead letters). Returns the ids moved."""
        with self._change() as db:
            rows = [
                _row(r)
                for r in db.execute(
                    f"SELECT {_TASK_COLUMNS} FROM tasks WHERE owner = ? "
                    "AND state IN ('assigned', 'running') ORDER BY seq",
                    (node,),
                )
            ]
            for row in rows:
                self._revoke(row, now, f"owner {node} lost: {reason}")
        return [row.task_id for row in rows]

    def _revoke(self, row: TaskRow, now: float, cause: str) -> None:
        if row.redeliveries >= self.max_redeliveries:
            state, redeliveries = "dead_letter", row.redeliveries
            reason = f"{cause}; gave up after {row.redeliveries} redeliveries"
        else:
            state, redeliveries, reason = "pending", row.redeliveries + 1, cause
        self._db.execute(
            "UPDATE tasks SET state = ?, owner = NULL, assigned_at = NULL, lease_until = NULL, "
            "redeliveries = ?, reason = ?, updated_at = ? WHERE task_id = ?",
            (state, redeliveries, reason, now, row.task_id),
        )
        self._event(now, row.task_id, row.state, state, row.epoch, row.owner, reason)

    def delivered(self, task_id: str, origin: str, now: float) -> bool:
        """The origin acknowledged the result: done -> delivered. Idempotent: True again
        for a delivered task (pruned or not); False for another origin or a task not done."""
        with self._change() as db:
            row = self._get(task_id)
            if row is None:
                tomb = self._tombstone(task_id)
                return tomb is not None and tomb.origin == origin and tomb.state == "delivered"
            if row.origin != origin or row.state not in ("done", "delivered"):
                return False
            if row.state == "done":
                db.execute(
                    "UPDATE tasks SET state = 'delivered', updated_at = ? WHERE task_id = ?",
                    (now, task_id),
                )
                self._event(now, task_id, "done", "delivered", row.epoch, origin)
        return True

    def recover(self, now: float, lease_ms: int) -> list[TaskRow]:
        """After a (re)start, before the first ``expire``: every in-flight task gets a fresh
        lease (its owner could not renew while the delegator was down, and the delegator's
        absence must not cost it a redelivery). Returns the in-flight tasks: resend the
        assign of the assigned ones. A mutation: commit() it."""
        with self._change() as db:
            db.execute(
                "UPDATE tasks SET lease_until = max(lease_until, ?) WHERE state = 'running'",
                (now + lease_ms / 1000,),
            )
            db.execute(
                "UPDATE tasks SET assigned_at = max(assigned_at, ?) WHERE state = 'assigned'",
                (now,),
            )
        return self.in_flight()

    def prune(self, now: float, limit: int) -> tuple[int, bool]:
        """Delete at most ``limit`` final tasks (delivered, dead_letter; never an open one),
        oldest change first: those last changed over ``retention_s`` ago, and while the
        ledger holds more than ``max_tasks``, the oldest final ones sooner. Each leaves a
        tombstone; tombstones beyond ``max_pruned`` go, oldest first, ``limit`` at most.
        Returns (tasks pruned, whether there is more to do now). A mutation: commit() it."""
        with self._change() as db:
            excess = db.execute("SELECT count(*) FROM tasks").fetchone()[0] - self.max_tasks
            oldest = db.execute(
                "SELECT t.task_id, t.origin, t.state, c.epoch, c.node, t.updated_at "
                # The partial index: batch rows read, not every final task sorted.
                "FROM tasks t INDEXED BY tasks_final_by_update "
                "LEFT JOIN commits c ON c.task_id = t.task_id "
                "WHERE t.state IN ('delivered', 'dead_letter') ORDER BY t.updated_at LIMIT ?",
                (limit,),
            ).fetchall()
            cutoff = now - self.retention_s
            # Both rules pick a prefix of the oldest: their union is one too.
            doomed = [r[:5] for i, r in enumerate(oldest) if r[5] < cutoff or i < excess]
            self._bury(doomed, now)
            trimmed = self._trim_tombstones(limit)
        return len(doomed), len(doomed) == limit or trimmed == limit

    def _bury(self, doomed: list[tuple[Any, ...]], now: float) -> None:
        """Replace each task (id, origin, state, epoch, node) by its tombstone."""
        db = self._db
        ids = [(r[0],) for r in doomed]
        db.executemany("DELETE FROM events WHERE task_id = ?", ids)
        db.executemany("DELETE FROM commits WHERE task_id = ?", ids)  # before its task (FK)
        db.executemany("DELETE FROM tasks WHERE task_id = ?", ids)
        db.executemany(
            "INSERT INTO pruned (task_id, origin, state, epoch, node, at) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            [(*r, now) for r in doomed],
        )
        for state in FINAL_STATES:
            n = sum(1 for r in doomed if r[2] == state)
            if n:
                db.execute(
                    "INSERT INTO pruned_totals (state, n) VALUES (?, ?) "
                    "ON CONFLICT (state) DO UPDATE SET n = n + excluded.n",
                    (state, n),
                )

    def _trim_tombstones(self, limit: int) -> int:
        top = self._db.execute("SELECT max(seq) FROM pruned").fetchone()[0]
        if top is None:
            return 0
        return self._db.execute(
            "DELETE FROM pruned WHERE seq IN "
            "(SELECT seq FROM pruned WHERE seq <= ? ORDER BY seq LIMIT ?)",
            (top - self.max_pruned, limit),
        ).rowcount

    # --- queries (they see the uncommitted changes of this Ledger) -----------------------

    def task(self, task_id: str) -> TaskRow | None:
        with self._guard():
            return self._get(task_id)

    def placeable(self, limit: int) -> list[TaskRow]:
        """Pending tasks, oldest first."""
        return self._select("state = 'pending'", (limit,), "ORDER BY seq LIMIT ?")

    def undelivered(self, limit: int) -> list[TaskRow]:
        """Done tasks whose origin has not acknowledged the result, oldest first."""
        return self._select("state = 'done'", (limit,), "ORDER BY seq LIMIT ?")

    def in_flight(self) -> list[TaskRow]:
        """Assigned and running tasks, oldest first."""
        return self._select("state IN ('assigned', 'running')", (), "ORDER BY seq")

    def tombstone(self, task_id: str) -> Tombstone | None:
        """What is left of a pruned task, if it was pruned (and its tombstone kept)."""
        with self._guard():
            return self._tombstone(task_id)

    def _tombstone(self, task_id: str) -> Tombstone | None:
        r = self._db.execute(
            "SELECT task_id, origin, state, epoch, node, at FROM pruned WHERE task_id = ?",
            (task_id,),
        ).fetchone()
        if r is None:
            return None
        return Tombstone(task_id=r[0], origin=r[1], state=r[2], epoch=r[3], node=r[4], at=r[5])

    def latest(self, n: int) -> list[TaskRow]:
        """The n tasks changed last, newest first."""
        return [row for _, row in self.latest_page(n)]

    def latest_page(self, n: int, before: Cursor | None = None) -> list[tuple[Cursor, TaskRow]]:
        """The n tasks changed last, newest first, each with its cursor; with ``before``, the
        n that follow that cursor in this order (the next page). Through the updated_at
        index: n rows read, whatever the ledger's size. A task that changes between two
        pages moves to the front, so paging may miss it or show it twice."""
        where, params = ("(updated_at, seq) < (?, ?)", before) if before else ("1", ())
        with self._guard():
            rows = self._db.execute(
                f"SELECT updated_at, seq, {_TASK_COLUMNS} FROM tasks WHERE {where} "
                "ORDER BY updated_at DESC, seq DESC LIMIT ?",
                (*params, n),
            ).fetchall()
        return [((r[0], r[1]), _row(r[2:])) for r in rows]

    def counts(self) -> dict[str, int]:
        """Tasks per state, every state included."""
        with self._guard():
            rows = self._db.execute("SELECT state, count(*) FROM tasks GROUP BY state")
            found = dict(rows.fetchall())
        return {s: found.get(s, 0) for s in STATES}

    def history(self, task_id: str, limit: int | None = None) -> list[Event]:
        """Every state change of the task, oldest first; with ``limit``, the last ``limit``
        of them (a task declined over and over has no bound on its history)."""
        with self._guard():
            rows = self._db.execute(
                "SELECT at, task_id, from_state, to_state, epoch, node, detail FROM "
                "(SELECT * FROM events WHERE task_id = ? ORDER BY id DESC LIMIT ?) ORDER BY id",
                (task_id, -1 if limit is None else limit),
            ).fetchall()
        return [
            Event(at=a, task_id=t, from_state=f, to_state=s, epoch=e, node=n, detail=d)
            for a, t, f, s, e, n, d in rows
        ]

    def history_length(self, task_id: str) -> int:
        with self._guard():
            return int(
                self._db.execute(
                    "SELECT count(*) FROM events WHERE task_id = ?", (task_id,)
                ).fetchone()[0]
            )

    def size(self) -> dict[str, int]:
        """The ledger's footprint: task rows, tombstones, and bytes on disk (the file and
        its WAL)."""
        with self._guard():
            rows = self._db.execute("SELECT count(*) FROM tasks").fetchone()[0]
            tombstones = self._db.execute("SELECT count(*) FROM pruned").fetchone()[0]
        on_disk = 0
        for name in (self.path, Path(f"{self.path}-wal")):
            with suppress(OSError):  # no WAL after a checkpoint that truncated it
                on_disk += name.stat().st_size
        return {"rows": int(rows), "tombstones": int(tombstones), "bytes": on_disk}

    def owned(self) -> dict[str, int]:
        """Assigned and running tasks per owner: what each node holds of the ledger's."""
        with self._guard():
            rows = self._db.execute(
                "SELECT owner, count(*) FROM tasks WHERE state IN ('assigned', 'running') "
                "GROUP BY owner"
            ).fetchall()
        return {str(owner): int(n) for owner, n in rows}

    def revoked(self, node: str, since: float) -> tuple[float | None, int]:
        """When the ledger first took a task away from ``node`` at or after ``since`` (wall
        time; a dead owner, a lapsed lease, a refusal), and how many it took: the scenarios'
        "re-delegated within" evidence."""
        with self._guard():
            first, n = self._db.execute(
                "SELECT min(at), count(*) FROM events WHERE node = ? AND at >= ? "
                "AND from_state IN ('assigned', 'running') "
                "AND to_state IN ('pending', 'dead_letter')",
                (node, since),
            ).fetchone()
        return (float(first) if first is not None else None, int(n))

    def held_then(self, node: str, at: float) -> tuple[int, int, float | None]:
        """What ``node`` held at wall time ``at`` (tasks whose last event at or before it
        left them assigned or running there), how many of those it then committed itself,
        and when the first of the others was taken away from it (None: not yet). A fault's
        judge needs exactly this: the work the node did not finish, and when it moved."""
        with self._guard():
            rows = self._db.execute(
                "SELECT t.task_id, "
                "(SELECT to_state || '|' || coalesce(node, '') FROM events "
                " WHERE task_id = t.task_id AND at <= ? ORDER BY id DESC LIMIT 1) "
                "FROM (SELECT DISTINCT task_id FROM events WHERE node = ? AND at <= ?) t",
                (at, node, at),
            ).fetchall()
            mine = {f"assigned|{node}", f"running|{node}"}
            held = [task for task, before in rows if before in mine]
            finished, taken = 0, []
            for task in held:
                then = self._db.execute(
                    "SELECT at, to_state FROM events WHERE task_id = ? AND at > ? "
                    "AND to_state IN ('done', 'pending', 'dead_letter') ORDER BY id LIMIT 1",
                    (task, at),
                ).fetchone()
                if then is not None and then[1] == "done":
                    finished += 1
                elif then is not None:
                    taken.append(float(then[0]))
        return len(held), finished, min(taken) if taken else None

    def moved(
        self, node: str, since: float, limit: int
    ) -> tuple[list[tuple[str, str, str | None]], int]:
        """The tasks the ledger took away from ``node`` at or after ``since`` (as
        ``revoked`` counts them), each with its state and owner now: at most ``limit`` of
        them, and how many there are. What a console says after a node dies: where its
        work went."""
        taken = (
            "SELECT DISTINCT task_id FROM events WHERE node = ? AND at >= ? "
            "AND from_state IN ('assigned', 'running') "
            "AND to_state IN ('pending', 'dead_letter')"
        )
        with self._guard():
            total = self._db.execute(f"SELECT count(*) FROM ({taken})", (node, since)).fetchone()
            rows = self._db.execute(
                f"SELECT t.task_id, t.state, t.owner FROM tasks t JOIN ({taken}) m "
                "ON t.task_id = m.task_id ORDER BY t.task_id LIMIT ?",
                (node, since, limit),
            ).fetchall()
        return [(str(t), str(s), o) for t, s, o in rows], int(total[0])

    def commit_count(self, task_id: str) -> int:
        """How many results of the task were committed: 0 or 1 (the schema allows no more)."""
        with self._guard():
            return int(
                self._db.execute(
                    "SELECT count(*) FROM commits WHERE task_id = ?", (task_id,)
                ).fetchone()[0]
            )

    def audit(self) -> dict[str, int]:
        """Whole-ledger figures for tests, benchmarks and scenarios, from the ledger's own
        history: tasks by state, tasks whose result was committed more than once (counted
        from the event log, independently of the schema that forbids it), tasks redelivered
        at least once, redeliveries in all, and the tasks pruned ever per final state
        (pruned tasks have left every other figure)."""
        with self._guard():
            db = self._db
            total = db.execute("SELECT count(*) FROM tasks").fetchone()[0]
            twice = db.execute(
                "SELECT count(*) FROM (SELECT task_id FROM events WHERE to_state = 'done' "
                "GROUP BY task_id HAVING count(*) > 1)"
            ).fetchone()[0]
            redelivered, redeliveries = db.execute(
                "SELECT count(*), coalesce(sum(redeliveries), 0) FROM tasks WHERE redeliveries > 0"
            ).fetchone()
            pruned = dict(db.execute("SELECT state, n FROM pruned_totals").fetchall())
        return {
            "total": int(total),
            **self.counts(),
            "committed_twice": int(twice),
            "redelivered_tasks": int(redelivered),
            "redeliveries": int(redeliveries),
            **{f"pruned_{s}": int(pruned.get(s, 0)) for s in FINAL_STATES},
        }


def _against_commit(c_epoch: int | None, c_node: str | None, epoch: int, node: str) -> ResultStatus:
    """A result for a task whose result was committed (epoch c_epoch by c_node)."""
    if c_epoch != epoch:
        return "stale_epoch"
    return "duplicate" if c_node == node else "wrong_node"
