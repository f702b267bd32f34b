"""One SQLite file of shoal's own (the task ledger, the device registry), opened with the
checks both need: a path that can hold it, a file that is this kind of file (its
``application_id`` and ``user_version``), not a newer schema, WAL mode, not corrupt.

What cannot be opened raises the caller's file error (a ConfigError naming its key) with one
reason, so the message says what SQLite alone would call "unable to open database file".

Usage::

    KIND = FileKind(noun="shoal device registry", application_id=0x73686476,
                    schema_version=1, tables={1: {"devices", "ota_history"}},
                    upgrade=lambda version: SCHEMA)
    db = open_sqlite_file(path, KIND, lambda reason: RegistryFileError(f"... {reason}"))
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

# How long a file another process holds locked is waited for at open (then: an error).
LOCKED_RETRY_S = 10.0


@dataclass(frozen=True)
class FileKind:
    """What makes a file one of shoal's, and how it is kept.

    ``tables``: by schema version, the tables a file of that version must hold (checked
    before anything is written to a versioned file, and again after an upgrade);
    ``columns``: table -> columns it must have. ``upgrade(version)``: the SQL that takes a
    file of that version (0: a new, empty file) to ``schema_version``, run in one
    transaction with the version and id set."""

    noun: str  # "shoal ledger": said in "not a shoal ledger (...)"
    application_id: int
    schema_version: int
    tables: Mapping[int, set[str]]
    upgrade: Callable[[int], str]
    columns: Mapping[str, set[str]] = field(default_factory=dict)
    synchronous: Literal["NORMAL", "FULL"] = "NORMAL"
    foreign_keys: bool = False
    problems_shown: int = 1  # how many quick_check lines a corrupt file's error shows


def check_path(path: Path, error: Callable[[str], Exception]) -> None:
    """Say what SQLite would only call "unable to open database file"."""
    parent = path.parent
    if path.is_dir():
        raise error("is a directory")
    if not parent.is_dir():
        what = "is not a directory" if parent.exists() else "does not exist"
        raise error(f"directory '{parent}' {what}")
    # SQLite creates the file, and the WAL and its index beside it.
    if not os.access(parent, os.W_OK | os.X_OK):
        raise error(f"directory '{parent}' is not writable")
    if path.exists() and not os.access(path, os.R_OK | os.W_OK):
        raise error("not readable and writable")


def open_sqlite_file(
    path: Path, kind: FileKind, error: Callable[[str], Exception]
) -> sqlite3.Connection:
    """The file, checked and at the current schema, in WAL mode; or ``error(reason)``
    raised (the connection closed). The connection has no implicit transactions
    (``isolation_level=None``): its user issues BEGIN / COMMIT."""
    check_path(path, error)
    # The registry and the OTA service open one file at once when a cluster starts; on a
    # busy machine one may hold it past the busy timeout while it makes the schema
    # ("database is locked", seen beside a CPU hog): that is a wait, not a bad file.
    deadline = time.monotonic() + LOCKED_RETRY_S
    while True:
        try:
            db = sqlite3.connect(path, isolation_level=None, timeout=2.0)
        except sqlite3.Error as err:
            raise error(f"cannot open: {err}") from None
        try:
            _open(db, kind, error)
            return db
        except sqlite3.OperationalError as err:
            db.close()
            if "locked" in str(err) and time.monotonic() < deadline:
                time.sleep(0.1)
                continue
            raise error(_unreadable(err, kind.noun)) from None
        except sqlite3.Error as err:
            db.close()
            raise error(_unreadable(err, kind.noun)) from None
        except BaseException:
            db.close()
            raise


def _open(db: sqlite3.Connection, kind: FileKind, error: Callable[[str], Exception]) -> None:
    # The three reads in one read transaction: another process making the file between
    # them would otherwise show its tables beside the old version 0 ("other tables").
    db.execute("BEGIN")
    try:
        app_id = db.execute("PRAGMA application_id").fetchone()[0]
        version = db.execute("PRAGMA user_version").fetchone()[0]
        tables = db.execute("SELECT count(*) FROM sqlite_schema").fetchone()[0]
    finally:
        db.execute("COMMIT")
    if app_id not in (0, kind.application_id) or (version and app_id != kind.application_id):
        raise error(f"not a {kind.noun} (application_id {app_id:#x}, user_version {version})")
    if version > kind.schema_version:
        raise error(
            f"{kind.noun.removeprefix('shoal ')} schema version {version} is newer than this "
            f"shoal reads ({kind.schema_version}); upgrade shoal or use another file"
        )
    if version == 0 and tables:
        raise error(f"not a {kind.noun} (other tables, no version)")
    if version:
        _check_schema(db, kind, version, error)  # someone else's file is never written to
    mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
    if mode != "wal":
        raise error(f"cannot use WAL mode (journal_mode is {mode})")
    db.execute(f"PRAGMA synchronous={kind.synchronous}")
    if kind.foreign_keys:
        db.execute("PRAGMA foreign_keys=ON")
    if version != kind.schema_version:
        # One transaction: a crash leaves the file as it was, never half upgraded.
        try:
            db.executescript(
                f"BEGIN IMMEDIATE; {kind.upgrade(version)} "
                f"PRAGMA application_id={kind.application_id}; "
                f"PRAGMA user_version={kind.schema_version}; COMMIT;"
            )
        except sqlite3.OperationalError:
            # Another process (the registry and the OTA service start together) made or
            # upgraded the file between our read and our BEGIN: theirs stands.
            if db.in_transaction:
                db.execute("ROLLBACK")
            if db.execute("PRAGMA user_version").fetchone()[0] != kind.schema_version:
                raise
    _check_schema(db, kind, kind.schema_version, error)
    check = db.execute("PRAGMA quick_check").fetchall()
    if check != [("ok",)]:
        problems = "; ".join(str(r[0]) for r in check[: kind.problems_shown])
        raise error(f"the {kind.noun.removeprefix('shoal ')} is corrupt: {problems}")


def _check_schema(
    db: sqlite3.Connection, kind: FileKind, version: int, error: Callable[[str], Exception]
) -> None:
    have = {r[0] for r in db.execute("SELECT name FROM sqlite_schema WHERE type = 'table'")}
    if missing := sorted(kind.tables.get(version, set()) - have):
        raise error(f"not a {kind.noun} (no table {', '.join(missing)})")
    for table, columns in kind.columns.items():
        if table not in have:
            continue
        present = {r[1] for r in db.execute(f"PRAGMA table_info({table})")}
        if missing := sorted(columns - present):
            raise error(f"not a {kind.noun} ({table} has no {', '.join(missing)})")


def _unreadable(err: sqlite3.Error, noun: str) -> str:
    text = str(err)
    if "file is not a database" in text:
        return "not a SQLite database"
    return f"not a readable {noun.removeprefix('shoal ')} (corrupt?): {text}"
