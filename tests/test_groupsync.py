"""Group commit (services/delegator/groupsync.py): every batch submitted is delivered, in
order, only after a sync that began after it was submitted; a failed sync delivers none."""

from __future__ import annotations

import threading

from shoal.services.delegator.groupsync import GroupSync


def test_batches_are_delivered_in_order_after_a_sync_that_covers_them() -> None:
    events: list[tuple[str, object]] = []
    lock = threading.Lock()
    done = threading.Event()

    def sync() -> None:
        with lock:
            events.append(("sync", None))

    def deliver(batches: list[list[object]]) -> None:
        with lock:
            events.append(("deliver", [x for b in batches for x in b]))
            if any(99 in b for b in batches):
                done.set()

    group = GroupSync(sync, deliver, lambda err: None)
    submitted = []
    for k in range(100):
        with lock:
            events.append(("submit", k))
        group.submit([k])
        submitted.append(k)
    assert done.wait(10)
    group.close()
    delivered = [x for kind, xs in events if kind == "deliver" for x in xs]  # type: ignore[union-attr]
    assert delivered == submitted
    # Each item is delivered after a sync that came after its submit.
    for k in submitted:
        at_submit = events.index(("submit", k))
        at_deliver = next(i for i, (kind, xs) in enumerate(events) if kind == "deliver" and k in xs)  # type: ignore[operator]
        assert any(events[i][0] == "sync" for i in range(at_submit, at_deliver))
    assert group.counters()["ledger_synced_passes"] == 100
    assert group.counters()["ledger_syncs"] <= 100  # grouped when they pile up


def test_a_failed_sync_delivers_nothing_and_reports() -> None:
    failures: list[BaseException] = []
    reported = threading.Event()
    delivered: list[object] = []

    def sync() -> None:
        raise OSError(5, "Input/output error")

    def failed(err: BaseException) -> None:
        failures.append(err)
        reported.set()

    group = GroupSync(sync, delivered.extend, failed)
    group.submit(["taken"])
    assert reported.wait(10)
    group.close()
    assert delivered == []
    assert isinstance(failures[0], OSError)
