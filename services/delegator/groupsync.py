"""Group commit: the ledger's fsyncs on a thread, each pass's replies sent once durable.

Why: with synchronous=FULL every COMMIT of the delegator's loop waited for an fsync of the
WAL (2 to 5 ms here, 20 to 60 ms while other processes write, far more on an SD card),
and the loop did nothing else meanwhile: an assign_reply arriving during another pass's
fsync waited for it too. Now the loop commits without syncing (synchronous=NORMAL: the
COMMIT only writes the WAL) and hands the pass's replies here; this thread fsyncs the WAL
once for every pass committed since its last fsync, then gives their replies back to the
loop, in order, to be sent. The loop takes in and decides new messages while the disk
works.

The rule of docs/delegation.md holds as before: no reply leaves before the changes that
decided it are durable. A pass's replies are queued after its COMMIT returned, and the
thread takes the queue before it calls fsync, so that fsync covers every pass it
releases. A crash before it returns loses those passes' replies with them, as a crash
before a COMMIT did (every sender retries; every handler is idempotent). A failed fsync
leaves nothing known about what is on disk: ``on_failure`` is told, and the delegator
exits so that its restart reads the ledger back from the file.

Usage::

    group = GroupSync(ledger.sync, deliver=post_to_loop, on_failure=die)
    ledger.commit()
    group.submit(replies)  # deliver(list_of_batches) is called later, from the thread
    group.close()
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

Batch = list[Any]


class GroupSync:
    """Runs ``sync`` on a thread for the batches submitted; ``deliver`` gets them after."""

    def __init__(
        self,
        sync: Callable[[], None],
        deliver: Callable[[list[Batch]], None],
        on_failure: Callable[[BaseException], None],
    ) -> None:
        self._sync = sync
        self._deliver = deliver
        self._on_failure = on_failure
        self._pending: list[Batch] = []
        self._cond = threading.Condition()
        self._stopping = False
        self.syncs = 0
        self.batches = 0
        self.max_ms = 0.0
        self._thread = threading.Thread(target=self._run, name="ledger-sync", daemon=True)
        self._thread.start()

    def submit(self, batch: Batch) -> None:
        """A pass committed (ledger.commit() returned): its replies, sent once durable."""
        with self._cond:
            self._pending.append(batch)
            self._cond.notify()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._stopping:
                    self._cond.wait()
                if not self._pending:
                    return  # stopping, nothing left
                batches, self._pending = self._pending, []
            start = time.perf_counter()
            try:
                self._sync()  # after taking the batches: it covers every one of them
            except OSError as err:
                self._on_failure(err)
                return
            self.max_ms = max(self.max_ms, (time.perf_counter() - start) * 1000)
            self.syncs += 1
            self.batches += len(batches)
            self._deliver(batches)

    def counters(self) -> dict[str, int]:
        return {
            "ledger_syncs": self.syncs,
            "ledger_synced_passes": self.batches,
            "ledger_sync_max_ms": round(self.max_ms),
        }

    def close(self) -> None:
        """Sync and deliver what was submitted, then end the thread."""
        with self._cond:
            self._stopping = True
            self._cond.notify()
        self._thread.join()
