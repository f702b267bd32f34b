"""The ledger's WAL checkpoints, off the delegator's loop: a thread with a connection of its own.

Why: SQLite checkpoints a WAL file by default from inside the COMMIT that takes it past
1,000 pages (4 MB): that commit copies every page back into the database file and fsyncs
it, so one pass of the delegator's loop in every hundred or so took 20 to 150 ms instead of
2 to 5, and every hand-off decided in it waited as long (measured, docs/architecture.md,
"The ledger's checkpoints run beside the loop"). On a board gateway's SD card that copy
is slower still.

Here the loop's connection never checkpoints (``wal_autocheckpoint`` is raised to a
backstop far above what a thread that keeps up lets the WAL reach), and this thread runs a
PASSIVE checkpoint every ``interval_s``. PASSIVE never waits for a lock and never blocks
the writer; sqlite3 releases the GIL while it copies and syncs. Durability is unchanged:
a transaction is durable when its COMMIT has fsynced the WAL (synchronous=FULL), whatever
the checkpoints do after; a crash in the middle of one is recovered by SQLite from the WAL.

Usage (Ledger does this when given ``checkpoint_every_s``)::

    ckpt = Checkpointer(path, interval_s=0.5)
    ...
    ckpt.close()  # before the ledger's own connection closes
"""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

# The loop's connection still checkpoints past this many pages (64 MB): only if this
# thread could not keep up (it died, or a reader pinned the WAL for a long time).
BACKSTOP_PAGES = 16_384
# What a WAL file is cut back to once a checkpoint has emptied it (its high-water mark
# would stay on disk otherwise).
WAL_SIZE_LIMIT = 4 * 2**20


class Checkpointer:
    """Checkpoints the WAL of the ledger at ``path`` every ``interval_s`` on a thread."""

    def __init__(self, path: Path, interval_s: float) -> None:
        self.interval_s = interval_s
        self.checkpoints = 0  # that copied pages
        self.busy = 0  # that found a lock (another checkpoint) and did nothing
        self.failed = 0  # that raised (the file went away, a disk error): tried again later
        self.max_ms = 0.0
        self._last = (-1, -1)
        self._stop = threading.Event()
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA synchronous=FULL")  # sync the WAL, then the database file
        self._thread = threading.Thread(target=self._run, name="ledger-checkpoint", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.checkpoint()

    def checkpoint(self) -> None:
        start = time.perf_counter()
        try:
            busy, wal_pages, copied = self._db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        except sqlite3.Error:
            self.failed += 1
            return
        if busy:
            self.busy += 1
        elif copied > 0 and (wal_pages, copied) != self._last:
            self._last = (wal_pages, copied)
            self.checkpoints += 1
            self.max_ms = max(self.max_ms, (time.perf_counter() - start) * 1000)

    def counters(self) -> dict[str, int]:
        return {
            "checkpoints": self.checkpoints,
            "checkpoints_busy": self.busy,
            "checkpoints_failed": self.failed,
            "checkpoint_max_ms": round(self.max_ms),
        }

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self._db.close()
