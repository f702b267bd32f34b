"""The device registry: one SQLite file (WAL) of the boards shoal knows.

``devices``: one row per board: node id, chip, MAC (when known: ``shoal firmware flash``
reads it), firmware version (from its hello, or the bundle deploy copied), where it was
added from, first and last seen (wall-clock seconds), and its OTA state. ``ota_history``:
one row per OTA state change (from, to, versions, detail), append-only: the table part 5
(over-the-air updates) writes to; today only ``none`` is ever set.

Like the ledger (services/delegator/ledger.py), opened by services/runtime/sqlite_file.py:
a file marked with an application id and a schema version; a file that cannot be a registry (not SQLite, someone else's database, a
newer schema, a directory that is missing) raises ``RegistryFileError``, a ConfigError
naming the key (``devices.registry``), which no restart fixes.

Usage::

    with Registry("shoal-devices.db") as reg:
        reg.add("esp32-01", chip="esp32", firmware="shoal-esp32/0.2", source="deploy")
        reg.seen([("esp32-01", "shoal-esp32/0.2", time.time())])   # one transaction
        reg.get("esp32-01").last_seen
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Literal

from msgspec import Struct

from shoal.protocol import limits
from shoal.services.runtime.config import ConfigError
from shoal.services.runtime.sqlite_file import FileKind, open_sqlite_file

SCHEMA_VERSION = 1
APPLICATION_ID = 0x73686476  # "shdv": marks the file as a shoal device registry
OtaState = Literal[
    "none", "pending", "downloading", "applied", "confirmed", "failed", "rolled_back"
]
OTA_STATES: tuple[OtaState, ...] = (
    "none",
    "pending",
    "downloading",
    "applied",
    "confirmed",
    "failed",
    "rolled_back",
)
Source = Literal["operator", "deploy", "telemetry"]
_NODE_ID = re.compile(limits.NODE_ID_PATTERN)

_SCHEMA = f"""
CREATE TABLE devices (
    node_id TEXT PRIMARY KEY,
    chip TEXT,                        -- esp32, esp32s3, ...; NULL: not known
    mac TEXT,                         -- aa:bb:cc:dd:ee:ff; NULL: not known
    firmware TEXT,                    -- e.g. shoal-esp32/0.2 (its hello's fw)
    source TEXT NOT NULL,             -- how it was added: operator, deploy, telemetry
    broker TEXT,                      -- the broker deploy configured it for
    first_seen REAL,                  -- wall-clock seconds; NULL: never heard
    last_seen REAL,
    added_at REAL NOT NULL,
    ota_state TEXT NOT NULL DEFAULT 'none' CHECK (ota_state IN ({", ".join(repr(s) for s in OTA_STATES)})),
    ota_target TEXT,                  -- the firmware version an update is taking it to
    ota_updated REAL
) WITHOUT ROWID;

CREATE TABLE ota_history (
    id INTEGER PRIMARY KEY,
    node_id TEXT NOT NULL,
    at REAL NOT NULL,
    from_state TEXT,
    to_state TEXT NOT NULL,
    from_version TEXT,
    to_version TEXT,
    detail TEXT NOT NULL DEFAULT ''
);
CREATE INDEX ota_history_by_node ON ota_history (node_id, id);
CREATE TRIGGER ota_history_append_only BEFORE UPDATE ON ota_history
BEGIN SELECT RAISE(ABORT, 'ota_history is append-only'); END;
"""
REGISTRY_FILE = FileKind(
    noun="shoal device registry",
    application_id=APPLICATION_ID,
    schema_version=SCHEMA_VERSION,
    tables={SCHEMA_VERSION: {"devices", "ota_history"}},
    upgrade=lambda _version: _SCHEMA,  # version 1 is the only one: a new file gets it
    synchronous="NORMAL",  # WAL: durable at checkpoints, never corrupt
)


class RegistryError(Exception):
    """The registry cannot do what was asked; the message says what."""


class RegistryFileError(RegistryError, ConfigError):
    """The file cannot be a registry: one line naming the key and the path."""


class Device(Struct, frozen=True, kw_only=True):
    node_id: str
    chip: str | None
    mac: str | None
    firmware: str | None
    source: str
    broker: str | None
    first_seen: float | None
    last_seen: float | None
    added_at: float
    ota_state: str
    ota_target: str | None
    ota_updated: float | None


class OtaEvent(Struct, frozen=True, kw_only=True):
    at: float
    from_state: str | None
    to_state: str
    from_version: str | None
    to_version: str | None
    detail: str


_COLUMNS = ", ".join(Device.__struct_fields__)


def check_node_id(node_id: str) -> str:
    if not _NODE_ID.match(node_id):
        raise RegistryError(
            f"node id {node_id!r}: 1-32 characters of a-z, 0-9 and '-', not starting with '-'"
        )
    return node_id


class Registry:
    """The registry in one SQLite file; writers batch (``seen`` takes a list)."""

    def __init__(self, path: str | Path, *, key: str = "devices.registry") -> None:
        self.path = Path(path)
        self.key = key
        self._db = open_sqlite_file(self.path, REGISTRY_FILE, self._file_error)

    def _file_error(self, reason: str) -> RegistryFileError:
        return RegistryFileError(f"{self.key} '{self.path}': {reason}")

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Registry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- reads ---------------------------------------------------------------------------

    def devices(self) -> list[Device]:
        rows = self._db.execute(f"SELECT {_COLUMNS} FROM devices ORDER BY node_id")
        return [Device(**dict(zip(Device.__struct_fields__, r, strict=True))) for r in rows]

    def get(self, node_id: str) -> Device | None:
        row = self._db.execute(
            f"SELECT {_COLUMNS} FROM devices WHERE node_id = ?", (node_id,)
        ).fetchone()
        return (
            None if row is None else Device(**dict(zip(Device.__struct_fields__, row, strict=True)))
        )

    def ota_history(self, node_id: str) -> list[OtaEvent]:
        rows = self._db.execute(
            "SELECT at, from_state, to_state, from_version, to_version, detail "
            "FROM ota_history WHERE node_id = ? ORDER BY id",
            (node_id,),
        )
        return [OtaEvent(**dict(zip(OtaEvent.__struct_fields__, r, strict=True))) for r in rows]

    # --- writes (each method one transaction) --------------------------------------------

    def add(
        self,
        node_id: str,
        *,
        chip: str | None = None,
        mac: str | None = None,
        firmware: str | None = None,
        broker: str | None = None,
        source: Source = "operator",
        now: float | None = None,
    ) -> Device:
        """Enter a board, or update what is given of one already entered."""
        check_node_id(node_id)
        now = time.time() if now is None else now
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute(
                "INSERT INTO devices (node_id, chip, mac, firmware, source, broker, added_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (node_id) DO UPDATE SET "
                "chip = coalesce(excluded.chip, chip), mac = coalesce(excluded.mac, mac), "
                "firmware = coalesce(excluded.firmware, firmware), "
                "broker = coalesce(excluded.broker, broker)",
                (node_id, chip, mac, firmware, source, broker, now),
            )
        device = self.get(node_id)
        assert device is not None
        return device

    def remove(self, node_id: str) -> bool:
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            gone = self._db.execute("DELETE FROM devices WHERE node_id = ?", (node_id,)).rowcount
        return gone > 0

    def seen(self, sightings: Iterable[tuple[str, str | None, float]]) -> int:
        """Many (node id, firmware or None, wall time) in one transaction: a board heard
        for the first time is entered (source telemetry); its firmware is updated when
        given, first_seen set once, last_seen moved forward. Returns rows written."""
        rows = [(n, fw, at) for n, fw, at in sightings if _NODE_ID.match(n)]
        if not rows:
            return 0
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.executemany(
                "INSERT INTO devices (node_id, firmware, source, first_seen, last_seen, added_at) "
                "VALUES (?1, ?2, 'telemetry', ?3, ?3, ?3) ON CONFLICT (node_id) DO UPDATE SET "
                "firmware = coalesce(excluded.firmware, firmware), "
                "first_seen = coalesce(first_seen, excluded.first_seen), "
                "last_seen = max(coalesce(last_seen, 0), excluded.last_seen)",
                rows,
            )
        return len(rows)

    def set_ota(
        self,
        node_id: str,
        state: OtaState,
        *,
        target: str | None = None,
        detail: str = "",
        now: float | None = None,
    ) -> None:
        """Move a board's OTA state and append the change to its history (part 5 uses it)."""
        if state not in OTA_STATES:
            raise RegistryError(f"OTA state {state!r}: one of {', '.join(OTA_STATES)}")
        now = time.time() if now is None else now
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            row = self._db.execute(
                "SELECT ota_state, firmware FROM devices WHERE node_id = ?", (node_id,)
            ).fetchone()
            if row is None:
                raise RegistryError(f"no device {node_id!r} in the registry")
            self._db.execute(
                "UPDATE devices SET ota_state = ?, ota_target = ?, ota_updated = ? WHERE node_id = ?",
                (state, target, now, node_id),
            )
            self._db.execute(
                "INSERT INTO ota_history (node_id, at, from_state, to_state, from_version, "
                "to_version, detail) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (node_id, now, row[0], state, row[1], target, detail),
            )
