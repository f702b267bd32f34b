"""The delegator's task ledger: every transition, every refusal, epoch fencing, one commit per
task, redeliveries and dead letters, durability across close and SIGKILL."""

from __future__ import annotations

import json
import os
import queue
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from shoal.protocol.tasks import Task
from shoal.services.delegator import ledger as ledger_module
from shoal.services.delegator.ledger import (
    SCHEMA_VERSION,
    STATES,
    Ledger,
    LedgerError,
    LedgerFileError,
)
from shoal.services.runtime.config import ConfigError

LEASE_MS = 3000


def tasks(n: int, origin: str = "a", start: int = 0) -> list[Task]:
    return [
        Task(task_id=f"{origin}.1.{i}", kind="compute", cost_ms=10, arg=i, origin=origin)
        for i in range(start, start + n)
    ]


@pytest.fixture
def ledger(tmp_path: Path):
    with Ledger(tmp_path / "ledger.db") as led:
        yield led


def running(led: Ledger, task_id: str, owner: str = "p1", now: float = 1.0) -> int:
    """Offer (if new), assign and accept: the task runs on owner; returns the epoch."""
    if led.task(task_id) is None:
        origin = task_id.split(".")[0]
        led.offer(origin, [Task(task_id=task_id, kind="compute", cost_ms=1, origin=origin)], now)
    epoch = led.assign(task_id, owner, now)
    assert led.accepted(task_id, epoch, owner, LEASE_MS, now)
    return epoch


# --- the file ------------------------------------------------------------------------------


def test_a_new_file_is_a_versioned_wal_ledger_with_full_sync(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    with Ledger(path) as led:
        assert led._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    db.close()
    Ledger(path).close()  # reopening an existing ledger works


def test_a_newer_schema_version_is_refused_by_name(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    Ledger(path).close()
    db = sqlite3.connect(path)
    db.execute("PRAGMA user_version=7")
    db.commit()
    db.close()
    with pytest.raises(LedgerError, match="schema version 7 is newer") as err:
        Ledger(path)
    assert str(path) in str(err.value)


def test_a_file_that_is_not_a_database_is_a_config_error_naming_key_and_path(
    tmp_path: Path,
) -> None:
    path = tmp_path / "ledger.db"
    path.write_bytes(b"this is not sqlite at all" * 200)
    with pytest.raises(ConfigError) as err:
        Ledger(path)
    assert str(err.value) == f"delegator.ledger '{path}': not a SQLite database"
    assert isinstance(err.value, LedgerError)  # and still a ledger error for its callers


def test_another_sqlite_database_is_not_taken_for_a_ledger(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE t (x)")
    db.commit()
    db.close()
    with pytest.raises(LedgerFileError, match="not a shoal ledger"):
        Ledger(path)


def test_a_corrupt_ledger_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    with Ledger(path) as led:
        for n in range(20):
            led.offer("a", tasks(50, start=n * 50), 1.0)
        led.commit()
    data = bytearray(path.read_bytes())
    page = 4096
    assert len(data) > 6 * page
    data[3 * page : 5 * page] = random.Random(1).randbytes(2 * page)
    path.write_bytes(bytes(data))
    with pytest.raises(LedgerError) as err:
        Ledger(path)
    assert str(path) in str(err.value)


def test_an_unreachable_path_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "no" / "such" / "dir" / "ledger.db"
    with pytest.raises(ConfigError) as err:
        Ledger(path)
    assert str(err.value) == f"delegator.ledger '{path}': directory '{path.parent}' does not exist"


def test_a_directory_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        Ledger(tmp_path)
    assert str(err.value) == f"delegator.ledger '{tmp_path}': is a directory"


def test_a_path_through_a_file_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "plain").write_text("x")
    with pytest.raises(ConfigError, match=r"directory '.*plain' is not a directory"):
        Ledger(tmp_path / "plain" / "ledger.db")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes to read-only directories")
def test_a_read_only_directory_is_a_config_error(tmp_path: Path) -> None:
    tmp_path.chmod(0o500)
    try:
        with pytest.raises(ConfigError, match="is not writable"):
            Ledger(tmp_path / "ledger.db")
    finally:
        tmp_path.chmod(0o700)


def test_a_ledger_file_not_writable_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    Ledger(path).close()
    real = os.access

    def access(p: object, mode: int) -> bool:  # as root, a chmod would not show it
        return False if Path(str(p)) == path else real(p, mode)  # type: ignore[arg-type]

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ledger_module.os, "access", access)
        with pytest.raises(ConfigError, match="not readable and writable"):
            Ledger(path)


def test_a_shoal_versioned_file_without_the_ledger_tables_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA application_id={ledger_module.APPLICATION_ID}")
    db.execute("PRAGMA user_version=1")
    db.execute("CREATE TABLE tasks (x)")
    db.commit()
    db.close()
    with pytest.raises(ConfigError, match="not a shoal ledger \\(no table commits, events\\)"):
        Ledger(path)
    db = sqlite3.connect(path)  # refused before anything was written
    assert db.execute("SELECT name FROM sqlite_schema").fetchall() == [("tasks",)]
    db.close()


def test_a_version_1_ledger_is_migrated_and_keeps_its_tasks(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    db = sqlite3.connect(path, isolation_level=None)
    db.executescript(
        f"{ledger_module._SCHEMA_V1} PRAGMA application_id={ledger_module.APPLICATION_ID}; "
        "PRAGMA user_version=1;"
    )
    db.execute(
        "INSERT INTO tasks (task_id, kind, cost_ms, arg, payload, origin, created_ms, state, "
        "created_at, updated_at) VALUES ('a.1.0', 'compute', 1, 0, '', 'a', 0, 'pending', 1, 1)"
    )
    db.close()
    with Ledger(path) as led:
        assert led._db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert led.task("a.1.0").state == "pending"  # type: ignore[union-attr]
        assert led.prune(1e9, 10) == (0, False)  # the new tables are there


# --- offer and placement -------------------------------------------------------------------


def test_offer_takes_new_tasks_as_pending(ledger: Ledger) -> None:
    taken, refused = ledger.offer("a", tasks(3), 5.0)
    assert taken == ["a.1.0", "a.1.1", "a.1.2"] and refused == []
    row = ledger.task("a.1.1")
    assert row is not None
    assert (row.state, row.origin, row.arg, row.epoch, row.owner) == ("pending", "a", 1, 0, None)
    assert row.created_at == row.updated_at == 5.0
    assert row.as_task() == tasks(3)[1]
    assert [(e.from_state, e.to_state) for e in ledger.history("a.1.1")] == [(None, "pending")]


def test_offer_is_idempotent_for_the_same_origin(ledger: Ledger) -> None:
    ledger.offer("a", tasks(2), 1.0)
    epoch = running(ledger, "a.1.0")
    before = [ledger.task("a.1.0"), ledger.task("a.1.1")]
    taken, refused = ledger.offer("a", tasks(3), 9.0)  # resent, with one more
    assert taken == ["a.1.0", "a.1.1", "a.1.2"] and refused == []
    assert [ledger.task("a.1.0"), ledger.task("a.1.1")] == before  # unchanged
    assert ledger.task("a.1.0").epoch == epoch  # type: ignore[union-attr]
    assert len(ledger.history("a.1.1")) == 1
    assert ledger.counts()["pending"] == 2


def test_the_same_id_from_another_origin_is_refused(ledger: Ledger) -> None:
    ledger.offer("a", tasks(1), 1.0)
    thief = Task(task_id="a.1.0", kind="sha256", cost_ms=5, origin="b")
    taken, refused = ledger.offer("b", [thief], 2.0)
    assert taken == [] and refused == [("a.1.0", "duplicate_id")]
    assert ledger.task("a.1.0").origin == "a"  # type: ignore[union-attr]


def test_a_task_whose_origin_is_not_the_sender_is_refused(ledger: Ledger) -> None:
    taken, refused = ledger.offer("b", tasks(1, origin="a"), 1.0)
    assert taken == [] and refused == [("a.1.0", "origin_mismatch")]
    assert ledger.task("a.1.0") is None


def test_placeable_is_pending_oldest_first(ledger: Ledger) -> None:
    ledger.offer("a", tasks(5), 1.0)
    ledger.offer("b", tasks(2, origin="b"), 0.5)  # later, even with an earlier clock
    ledger.assign("a.1.1", "p1", 2.0)
    oldest_first = ["a.1.0", "a.1.2", "a.1.3", "a.1.4", "b.1.0", "b.1.1"]
    assert [r.task_id for r in ledger.placeable(10)] == oldest_first
    assert [r.task_id for r in ledger.placeable(2)] == ["a.1.0", "a.1.2"]


# --- assignment ----------------------------------------------------------------------------


def test_assign_moves_pending_to_assigned_under_epoch_one(ledger: Ledger) -> None:
    ledger.offer("a", tasks(1), 1.0)
    assert ledger.assign("a.1.0", "p1", 2.0) == 1
    row = ledger.task("a.1.0")
    assert row is not None
    assert (row.state, row.owner, row.epoch, row.assigned_at) == ("assigned", "p1", 1, 2.0)
    assert ledger.history("a.1.0")[-1].to_state == "assigned"


def test_assign_refuses_a_task_that_is_not_pending(ledger: Ledger) -> None:
    ledger.offer("a", tasks(1), 1.0)
    ledger.assign("a.1.0", "p1", 2.0)
    before = ledger.task("a.1.0")
    with pytest.raises(LedgerError, match="it is assigned"):
        ledger.assign("a.1.0", "p2", 3.0)
    with pytest.raises(LedgerError, match="it is unknown"):
        ledger.assign("nope", "p2", 3.0)
    assert ledger.task("a.1.0") == before


def test_accepted_starts_the_lease(ledger: Ledger) -> None:
    ledger.offer("a", tasks(1), 1.0)
    epoch = ledger.assign("a.1.0", "p1", 2.0)
    assert ledger.accepted("a.1.0", epoch, "p1", 1500, 2.5)
    row = ledger.task("a.1.0")
    assert row is not None
    assert (row.state, row.lease_until) == ("running", 4.0)


def test_accepted_refusals_change_nothing(ledger: Ledger) -> None:
    ledger.offer("a", tasks(2), 1.0)
    epoch = ledger.assign("a.1.0", "p1", 2.0)
    before = ledger.task("a.1.0")
    assert not ledger.accepted("a.1.0", epoch + 1, "p1", LEASE_MS, 3.0)  # wrong epoch
    assert not ledger.accepted("a.1.0", epoch, "p2", LEASE_MS, 3.0)  # wrong node
    assert not ledger.accepted("a.1.1", 1, "p1", LEASE_MS, 3.0)  # pending
    assert not ledger.accepted("zz", 1, "p1", LEASE_MS, 3.0)  # unknown
    assert ledger.task("a.1.0") == before
    assert ledger.accepted("a.1.0", epoch, "p1", LEASE_MS, 3.0)
    after = ledger.task("a.1.0")
    assert not ledger.accepted("a.1.0", epoch, "p1", LEASE_MS, 4.0)  # a repeated reply
    assert ledger.task("a.1.0") == after


def test_declined_puts_the_task_back_without_counting_a_redelivery(ledger: Ledger) -> None:
    ledger.offer("a", tasks(1), 1.0)
    for n in range(1, 11):  # far more declines than max_redeliveries
        epoch = ledger.assign("a.1.0", f"p{n}", float(n))
        assert epoch == n
        assert ledger.declined("a.1.0", epoch, f"p{n}", "full", float(n))
    row = ledger.task("a.1.0")
    assert row is not None
    assert (row.state, row.owner, row.declines, row.redeliveries) == ("pending", None, 10, 0)
    assert row.reason == "declined by p10: full"
    assert ledger.history("a.1.0")[-1].detail == "declined: full"


def test_declined_refusals_change_nothing(ledger: Ledger) -> None:
    ledger.offer("a", tasks(1), 1.0)
    epoch = ledger.assign("a.1.0", "p1", 2.0)
    before = ledger.task("a.1.0")
    assert not ledger.declined("a.1.0", epoch, "p2", "full", 3.0)
    assert not ledger.declined("a.1.0", epoch + 1, "p1", "full", 3.0)
    assert ledger.task("a.1.0") == before
    ledger.accepted("a.1.0", epoch, "p1", LEASE_MS, 3.0)
    before = ledger.task("a.1.0")
    assert not ledger.declined("a.1.0", epoch, "p1", "full", 4.0)  # running: too late
    assert ledger.task("a.1.0") == before


# --- leases --------------------------------------------------------------------------------


def test_renew_extends_only_the_leases_the_node_holds(ledger: Ledger) -> None:
    ledger.offer("a", tasks(3), 0.0)
    e0 = running(ledger, "a.1.0", "p1", 1.0)
    e1 = running(ledger, "a.1.1", "p2", 1.0)
    leases = [("a.1.0", e0), ("a.1.1", e1), ("a.1.0", e0 + 1), ("a.1.2", 1), ("zz", 1)]
    assert ledger.renew("p1", leases, 2.0, LEASE_MS) == 1
    assert ledger.task("a.1.0").lease_until == 5.0  # type: ignore[union-attr]
    assert ledger.task("a.1.1").lease_until == 4.0  # type: ignore[union-attr]
    assert ledger.task("a.1.2").state == "pending"  # type: ignore[union-attr]
    assert ledger.renew("p1", [("a.1.0", e0)], 1.5, LEASE_MS) == 1
    assert ledger.task("a.1.0").lease_until == 5.0  # type: ignore[union-attr]  # never shortened


def test_renew_of_an_assignment_whose_accept_was_lost_makes_it_running(ledger: Ledger) -> None:
    ledger.offer("a", tasks(1), 0.0)
    epoch = ledger.assign("a.1.0", "p1", 1.0)
    assert ledger.renew("p1", [("a.1.0", epoch)], 2.0, LEASE_MS) == 1
    row = ledger.task("a.1.0")
    assert row is not None
    assert (row.state, row.lease_until) == ("running", 5.0)
    assert ledger.history("a.1.0")[-1].detail == "accepted by renew"


def test_expire_returns_lapsed_leases_as_redeliveries(ledger: Ledger) -> None:
    ledger.offer("a", tasks(3), 0.0)
    running(ledger, "a.1.0", "p1", 1.0)  # lease until 4.0
    running(ledger, "a.1.1", "p1", 2.0)  # lease until 5.0
    ledger.assign("a.1.2", "p2", 1.5)  # no answer: lapses at 4.5
    assert ledger.expire(3.9, LEASE_MS) == []
    assert ledger.expire(4.0, LEASE_MS) == ["a.1.0"]
    assert ledger.expire(4.6, LEASE_MS) == ["a.1.2"]
    row = ledger.task("a.1.0")
    assert row is not None
    assert (row.state, row.owner, row.redeliveries, row.lease_until) == ("pending", None, 1, None)
    assert row.reason == "lease expired on p1 (epoch 1)"
    assert ledger.task("a.1.2").reason == "no answer on p2 (epoch 1)"  # type: ignore[union-attr]
    assert ledger.task("a.1.1").state == "running"  # type: ignore[union-attr]


def test_a_task_is_dead_lettered_after_max_redeliveries(tmp_path: Path) -> None:
    with Ledger(tmp_path / "l.db", max_redeliveries=3) as led:
        led.offer("a", tasks(1), 0.0)
        for n in range(1, 4):
            running(led, "a.1.0", f"p{n}", float(n * 10))
            assert led.expire(n * 10 + 5.0, LEASE_MS) == ["a.1.0"]
            row = led.task("a.1.0")
            assert (row.state, row.redeliveries) == ("pending", n)  # type: ignore[union-attr]
        running(led, "a.1.0", "p4", 40.0)
        assert led.owner_lost("p4", 41.0, "dead") == ["a.1.0"]
        row = led.task("a.1.0")
        assert row is not None
        assert (row.state, row.redeliveries, row.owner) == ("dead_letter", 3, None)
        assert row.reason == "owner p4 lost: dead; gave up after 3 redeliveries"
        assert row.epoch == 4
        assert led.placeable(10) == []
        assert [e.to_state for e in led.history("a.1.0")][-2:] == ["running", "dead_letter"]


def test_owner_lost_revokes_only_that_owners_tasks(ledger: Ledger) -> None:
    ledger.offer("a", tasks(4), 0.0)
    running(ledger, "a.1.0", "p1")
    ledger.assign("a.1.1", "p1", 1.0)
    running(ledger, "a.1.2", "p2")
    assert ledger.owner_lost("p1", 2.0, "rebooted") == ["a.1.0", "a.1.1"]
    assert [r.task_id for r in ledger.in_flight()] == ["a.1.2"]
    row = ledger.task("a.1.1")
    assert row is not None
    assert (row.state, row.redeliveries, row.reason) == ("pending", 1, "owner p1 lost: rebooted")
    assert ledger.owner_lost("p1", 3.0, "dead") == []


def test_owned_and_revoked_say_what_a_node_held_and_when_it_was_taken_away(
    ledger: Ledger,
) -> None:
    ledger.offer("a", tasks(3), 0.0)
    running(ledger, "a.1.0", "p1")
    ledger.assign("a.1.1", "p1", 1.0)
    running(ledger, "a.1.2", "p2")
    ledger.commit()
    assert ledger.owned() == {"p1": 2, "p2": 1}
    assert ledger.revoked("p1", 0.0) == (None, 0)
    ledger.owner_lost("p1", 5.0, "dead")
    ledger.commit()
    assert ledger.owned() == {"p2": 1}
    assert ledger.revoked("p1", 4.0) == (5.0, 2)
    assert ledger.revoked("p1", 6.0) == (None, 0)  # only what happened since
    assert ledger.revoked("p2", 0.0) == (None, 0)


def test_held_then_says_what_a_node_held_at_a_time_and_what_it_finished_itself(
    ledger: Ledger,
) -> None:
    """A fault's judge asks it: a task the node committed after the fault was not lost."""
    ledger.offer("a", tasks(3), 0.0)
    epoch = running(ledger, "a.1.0", "p1")
    ledger.assign("a.1.1", "p1", 1.0)
    running(ledger, "a.1.2", "p2")
    assert ledger.result("a.1.0", epoch, "p1", True, "42", "", 3.0) == "committed"
    ledger.owner_lost("p1", 5.0, "rebooted")
    ledger.commit()
    assert ledger.held_then("p1", 2.0) == (2, 1, 5.0)  # a.1.0 it finished, a.1.1 taken at 5
    assert ledger.held_then("p1", 4.0) == (1, 0, 5.0)
    assert ledger.held_then("p1", 6.0) == (0, 0, None)
    assert ledger.held_then("p2", 2.0) == (1, 0, None)  # still running there
    assert ledger.held_then("p9", 2.0) == (0, 0, None)


# --- results -------------------------------------------------------------------------------


def test_a_result_from_the_owner_commits_once(ledger: Ledger) -> None:
    epoch = running(ledger, "a.1.0", "p1")
    assert ledger.result("a.1.0", epoch, "p1", True, "42", "", 2.0) == "committed"
    row = ledger.task("a.1.0")
    assert row is not None
    assert (row.state, row.owner, row.ok, row.output, row.lease_until) == (
        "done",
        "p1",
        True,
        "42",
        None,
    )
    for _ in range(3):  # resent: acknowledged as a duplicate, never committed again
        assert ledger.result("a.1.0", epoch, "p1", False, "other", "x", 3.0) == "duplicate"
    assert ledger.commit_count("a.1.0") == 1
    assert ledger.task("a.1.0") == row


def test_a_result_for_an_assigned_task_commits(ledger: Ledger) -> None:
    ledger.offer("a", tasks(1), 0.0)
    epoch = ledger.assign("a.1.0", "p1", 1.0)  # the accept never arrived
    assert ledger.result("a.1.0", epoch, "p1", False, "", "boom", 2.0) == "committed"
    row = ledger.task("a.1.0")
    assert row is not None
    assert (row.state, row.ok, row.error) == ("done", False, "boom")


def test_epoch_fencing_after_re_delegation(ledger: Ledger) -> None:
    e1 = running(ledger, "a.1.0", "p1", 1.0)
    ledger.expire(10.0, LEASE_MS)  # p1 went quiet
    assert ledger.result("a.1.0", e1, "p1", True, "late", "", 10.5) == "stale_epoch"  # revoked
    e2 = running(ledger, "a.1.0", "p2", 11.0)
    assert e2 == e1 + 1
    before = ledger.task("a.1.0")
    assert ledger.result("a.1.0", e1, "p1", True, "late", "", 12.0) == "stale_epoch"
    assert ledger.result("a.1.0", e2, "p1", True, "late", "", 12.0) == "wrong_node"
    assert ledger.result("a.1.0", e2 + 1, "p2", True, "?", "", 12.0) == "stale_epoch"
    assert ledger.result("nope", 1, "p2", True, "?", "", 12.0) == "unknown_task"
    assert ledger.task("a.1.0") == before
    assert ledger.commit_count("a.1.0") == 0
    assert ledger.result("a.1.0", e2, "p2", True, "ok", "", 13.0) == "committed"
    # After the commit, the old epoch's result is still stale, never a duplicate.
    assert ledger.result("a.1.0", e1, "p1", True, "late", "", 14.0) == "stale_epoch"
    assert ledger.result("a.1.0", e2, "p1", True, "late", "", 14.0) == "wrong_node"
    assert ledger.commit_count("a.1.0") == 1
    assert ledger.task("a.1.0").output == "ok"  # type: ignore[union-attr]


def test_a_result_for_a_pending_or_dead_task_is_stale(tmp_path: Path) -> None:
    with Ledger(tmp_path / "l.db", max_redeliveries=0) as led:
        led.offer("a", tasks(2), 0.0)
        assert led.result("a.1.0", 1, "p1", True, "", "", 1.0) == "stale_epoch"  # never placed
        epoch = running(led, "a.1.1", "p1")
        led.owner_lost("p1", 2.0, "dead")
        assert led.task("a.1.1").state == "dead_letter"  # type: ignore[union-attr]
        assert led.result("a.1.1", epoch, "p1", True, "", "", 3.0) == "stale_epoch"
        assert led.counts()["done"] == 0


def test_the_schema_itself_refuses_a_second_commit(ledger: Ledger) -> None:
    epoch = running(ledger, "a.1.0", "p1")
    ledger.result("a.1.0", epoch, "p1", True, "1", "", 2.0)
    ledger.commit()
    db = ledger._db
    with pytest.raises(sqlite3.IntegrityError):
        db.execute("INSERT INTO commits (task_id, epoch, node, at) VALUES ('a.1.0', 2, 'p9', 3)")
    with pytest.raises(sqlite3.IntegrityError, match="cannot leave done"):
        db.execute("UPDATE tasks SET state = 'pending' WHERE task_id = 'a.1.0'")
    ledger.offer("a", [Task(task_id="a.2.0", kind="compute", cost_ms=1, origin="a")], 4.0)
    with pytest.raises(sqlite3.IntegrityError, match="without a commit"):
        db.execute("UPDATE tasks SET state = 'done' WHERE task_id = 'a.2.0'")
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        db.execute("UPDATE events SET detail = 'x'")
    assert ledger.commit_count("a.1.0") == 1


# --- delivery ------------------------------------------------------------------------------


def test_delivered_completes_a_done_task_idempotently(ledger: Ledger) -> None:
    ledger.offer("a", tasks(2), 0.0)
    epoch = running(ledger, "a.1.0", "p1")
    assert not ledger.delivered("a.1.0", "a", 1.5)  # not done yet
    ledger.result("a.1.0", epoch, "p1", True, "1", "", 2.0)
    assert [r.task_id for r in ledger.undelivered(10)] == ["a.1.0"]
    assert not ledger.delivered("a.1.0", "b", 3.0)  # not its origin
    assert ledger.delivered("a.1.0", "a", 3.0)
    row = ledger.task("a.1.0")
    assert ledger.delivered("a.1.0", "a", 4.0)  # the ack resent
    assert ledger.task("a.1.0") == row
    assert row is not None and row.state == "delivered"
    assert ledger.undelivered(10) == []
    assert not ledger.delivered("a.1.1", "a", 5.0)
    assert not ledger.delivered("zz", "a", 5.0)
    assert [e.to_state for e in ledger.history("a.1.0")] == [
        "pending",
        "assigned",
        "running",
        "done",
        "delivered",
    ]


def test_counts_and_listings(ledger: Ledger) -> None:
    assert ledger.counts() == dict.fromkeys(STATES, 0)
    ledger.offer("a", tasks(4), 0.0)
    running(ledger, "a.1.0", "p1", 1.0)
    ledger.assign("a.1.1", "p2", 2.0)
    epoch = running(ledger, "a.1.2", "p1", 3.0)
    ledger.result("a.1.2", epoch, "p1", True, "", "", 4.0)
    assert ledger.counts() == {
        "pending": 1,
        "assigned": 1,
        "running": 1,
        "done": 1,
        "delivered": 0,
        "dead_letter": 0,
    }
    assert [r.task_id for r in ledger.in_flight()] == ["a.1.0", "a.1.1"]
    assert [r.task_id for r in ledger.latest(2)] == ["a.1.2", "a.1.1"]


# --- pruning -------------------------------------------------------------------------------

RETAIN = 100.0


def one_of_each_state(led: Ledger, now: float = 0.0) -> dict[str, str]:
    """One task in every state, all last changed at ``now``: state -> task id."""
    led.offer("a", tasks(6), now)
    running(led, "a.1.1", "p1", now)
    led.assign("a.1.2", "p1", now)
    for task_id in ("a.1.3", "a.1.4"):
        epoch = running(led, task_id, "p2", now)
        led.result(task_id, epoch, "p2", True, "x", "", now)
    led.delivered("a.1.4", "a", now)
    running(led, "a.1.5", "gone", now)
    led.owner_lost("gone", now, "dead")
    ids = {"pending": "a.1.0", "running": "a.1.1", "assigned": "a.1.2", "done": "a.1.3"}
    ids |= {"delivered": "a.1.4", "dead_letter": "a.1.5"}
    assert {s: led.task(i).state for s, i in ids.items()} == {s: s for s in ids}  # type: ignore[union-attr]
    return ids


def test_prune_deletes_final_tasks_past_retention_and_never_an_open_one(tmp_path: Path) -> None:
    with Ledger(tmp_path / "l.db", max_redeliveries=0, retention_s=RETAIN) as led:
        ids = one_of_each_state(led)
        led.commit()
        open_ids = [ids[s] for s in ("pending", "assigned", "running", "done")]
        before = {i: (led.task(i), led.history(i)) for i in open_ids}
        assert led.prune(RETAIN - 1, 100) == (0, False)  # within retention: kept
        assert led.prune(RETAIN + 1, 100) == (2, False)
        led.commit()
        assert led.task(ids["delivered"]) is None and led.task(ids["dead_letter"]) is None
        assert led.history(ids["delivered"]) == [] and led.commit_count(ids["delivered"]) == 0
        assert {i: (led.task(i), led.history(i)) for i in open_ids} == before
        assert led.prune(1e9, 100) == (0, False)  # the open ones stay, however old
        a = led.audit()
        assert (a["total"], a["delivered"], a["dead_letter"]) == (4, 0, 0)
        assert (a["pruned_delivered"], a["pruned_dead_letter"]) == (1, 1)


def test_prune_goes_in_batches_oldest_change_first(tmp_path: Path) -> None:
    with Ledger(tmp_path / "l.db", retention_s=RETAIN) as led:
        for i in range(10):
            epoch = running(led, f"a.1.{i}", "p1", float(i))
            led.result(f"a.1.{i}", epoch, "p1", True, "", "", float(i))
            led.delivered(f"a.1.{i}", "a", float(10 - i))  # the last delivered first
        led.commit()
        batches = []
        while True:
            pruned, more = led.prune(RETAIN + 20, 3)
            led.commit()
            batches.append(pruned)
            if not more:
                break
        assert batches == [3, 3, 3, 1]
        assert led.counts()["delivered"] == 0
        order = led._db.execute("SELECT task_id FROM pruned ORDER BY seq").fetchall()
        assert [r[0] for r in order] == [f"a.1.{i}" for i in reversed(range(10))]


def test_beyond_max_tasks_final_tasks_go_sooner_open_ones_never(tmp_path: Path) -> None:
    with Ledger(tmp_path / "l.db", retention_s=RETAIN, max_tasks=5) as led:
        for i in range(8):
            epoch = running(led, f"a.1.{i}", "p1", float(i))
            led.result(f"a.1.{i}", epoch, "p1", True, "", "", float(i))
            led.delivered(f"a.1.{i}", "a", float(i))
        led.offer("b", tasks(3, origin="b"), 9.0)
        assert led.prune(10.0, 100) == (6, False)  # 11 rows, 5 allowed: the 6 oldest final
        assert [r.task_id for r in led.latest(10)] == ["b.1.2", "b.1.1", "b.1.0", "a.1.7", "a.1.6"]
        led.offer("b", tasks(4, origin="b", start=3), 11.0)  # 7 open tasks, more than 5
        assert led.prune(12.0, 100) == (2, False)
        assert led.counts()["pending"] == 7 and led.counts()["delivered"] == 0


def test_a_pruned_task_answers_late_messages_as_before_and_never_comes_back(
    tmp_path: Path,
) -> None:
    with Ledger(tmp_path / "l.db", max_redeliveries=0, retention_s=RETAIN) as led:
        ids = one_of_each_state(led)
        done, dead = ids["delivered"], ids["dead_letter"]
        epoch = led.task(done).epoch  # type: ignore[union-attr]

        def answers() -> list[object]:
            return [
                led.result(done, epoch, "p2", True, "again", "", 200.0),
                led.result(done, epoch, "p1", True, "again", "", 200.0),
                led.result(done, epoch + 1, "p2", True, "again", "", 200.0),
                led.result(dead, 1, "gone", True, "late", "", 200.0),
                led.offer("a", [tasks(5)[4], tasks(6)[5]], 200.0),
                led.offer("b", [Task(task_id=done, kind="compute", cost_ms=1, origin="b")], 200.0),
                led.delivered(done, "a", 200.0),
                led.delivered(done, "b", 200.0),
            ]

        before = answers()
        assert before[:4] == ["duplicate", "wrong_node", "stale_epoch", "stale_epoch"]
        led.commit()
        assert led.prune(RETAIN + 1, 100) == (2, False)
        led.commit()
        assert answers() == before
        assert led.task(done) is None and led.task(dead) is None  # the offers took nothing in
        assert led.commit_count(done) == 0 and led.placeable(10) == [led.task(ids["pending"])]
        tomb = led.tombstone(done)
        assert tomb is not None and (tomb.state, tomb.epoch, tomb.node) == ("delivered", 1, "p2")
        with pytest.raises(sqlite3.IntegrityError, match="cannot enter the ledger again"):
            led._db.execute(
                "INSERT INTO tasks (task_id, kind, cost_ms, arg, payload, origin, created_ms, "
                "state, created_at, updated_at) "
                f"VALUES ('{done}', 'compute', 1, 0, '', 'a', 0, 'pending', 1, 1)"
            )


def test_tombstones_beyond_max_pruned_go_oldest_first(tmp_path: Path) -> None:
    with Ledger(tmp_path / "l.db", retention_s=0.0, max_pruned=2) as led:
        for i in range(5):
            epoch = running(led, f"a.1.{i}", "p1", float(i))
            led.result(f"a.1.{i}", epoch, "p1", True, "", "", float(i))
            led.delivered(f"a.1.{i}", "a", float(i))
        assert led.prune(10.0, 100) == (5, False)
        assert led.size()["tombstones"] == 2
        assert led.tombstone("a.1.4") is not None and led.tombstone("a.1.2") is None
        # Past the tombstones' horizon the id is unknown: refused, still never committed.
        assert led.result("a.1.0", 1, "p1", True, "", "", 11.0) == "unknown_task"
        assert led.audit()["pruned_delivered"] == 5


def test_size_reports_rows_tombstones_and_bytes(ledger: Ledger) -> None:
    ledger.offer("a", tasks(3), 0.0)
    ledger.commit()
    size = ledger.size()
    assert (size["rows"], size["tombstones"]) == (3, 0) and size["bytes"] > 4096


def test_latest_pages_on_with_a_cursor(ledger: Ledger) -> None:
    ledger.offer("a", tasks(3), 1.0)
    ledger.offer("a", tasks(4, start=3), 2.0)  # four changed at the same time
    seen: list[str] = []
    before = None
    while page := ledger.latest_page(2, before):
        seen += [row.task_id for _, row in page]
        before = page[-1][0]
    assert seen == [f"a.1.{i}" for i in reversed(range(7))]


def test_history_can_be_cut_to_its_last_events(ledger: Ledger) -> None:
    ledger.offer("a", tasks(1), 0.0)
    for n in range(1, 6):
        ledger.declined("a.1.0", ledger.assign("a.1.0", "p1", float(n)), "p1", "full", float(n))
    assert ledger.history_length("a.1.0") == 11
    last = ledger.history("a.1.0", limit=3)
    assert last == ledger.history("a.1.0")[-3:] and last[-1].detail == "declined: full"


# --- durability ----------------------------------------------------------------------------


def test_only_committed_changes_survive_a_close(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    with Ledger(path) as led:
        led.offer("a", tasks(2), 0.0)
        epoch = led.assign("a.1.0", "p1", 1.0)
        led.commit()
        led.accepted("a.1.0", epoch, "p1", LEASE_MS, 2.0)
        led.offer("a", tasks(1, start=5), 2.0)
        assert led.counts()["running"] == 1  # this connection sees its own batch
    with Ledger(path) as led:
        assert led.task("a.1.5") is None
        row = led.task("a.1.0")
        assert row is not None and (row.state, row.epoch) == ("assigned", 1)
        assert led.counts()["pending"] == 1
        assert [e.to_state for e in led.history("a.1.0")] == ["pending", "assigned"]


def test_rollback_drops_the_batch(ledger: Ledger) -> None:
    ledger.offer("a", tasks(1), 0.0)
    ledger.commit()
    ledger.assign("a.1.0", "p1", 1.0)
    ledger.rollback()
    assert ledger.task("a.1.0").state == "pending"  # type: ignore[union-attr]
    assert ledger.assign("a.1.0", "p1", 2.0) == 1


def test_a_restarted_delegator_recovers_every_in_flight_task(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    with Ledger(path) as led:
        led.offer("a", tasks(4), 0.0)
        e0 = running(led, "a.1.0", "p1", 1.0)  # lease until 4.0
        led.assign("a.1.1", "p2", 1.0)
        e2 = running(led, "a.1.2", "p1", 1.0)
        led.result("a.1.2", e2, "p1", True, "x", "", 2.0)
        led.commit()
    with Ledger(path) as led:  # down from 2.0 to 60.0: no owner could renew
        rows = led.recover(60.0, LEASE_MS)
        led.commit()
        assert [(r.task_id, r.state, r.owner) for r in rows] == [
            ("a.1.0", "running", "p1"),
            ("a.1.1", "assigned", "p2"),
        ]
        assert rows[0].lease_until == 63.0
        assert led.expire(61.0, LEASE_MS) == []  # the downtime costs no redelivery
        assert [r.task_id for r in led.undelivered(10)] == ["a.1.2"]
        assert [r.task_id for r in led.placeable(10)] == ["a.1.3"]
        assert led.renew("p1", [("a.1.0", e0)], 62.0, LEASE_MS) == 1
        assert led.expire(64.0, LEASE_MS) == ["a.1.1"]  # p2 never answered


# --- a crash at a random moment ------------------------------------------------------------

CHILD = r"""
import json, sys
from shoal.protocol.tasks import Task
from shoal.services.delegator.ledger import Ledger

path, run = sys.argv[1], sys.argv[2]
ledger = Ledger(path, max_redeliveries=0)
ledger.recover(0.0, 1000)
ledger.commit()
print("R", flush=True)
TARGETS = ("pending", "assigned", "running", "done", "delivered", "dead_letter")
n = 0
while True:
    now = float(n)
    batch = [Task(task_id=f"o.{run}.{n}.{i}", kind="compute", cost_ms=1, origin="o")
             for i in range(12)]
    want = {t.task_id: TARGETS[i % len(TARGETS)] for i, t in enumerate(batch)}
    print("B", n, json.dumps(want), flush=True)  # the intent: all of it, or none
    taken, _ = ledger.offer("o", batch, now)
    assert len(taken) == len(batch)
    for i, t in enumerate(batch):
        target = want[t.task_id]
        if target == "pending":
            continue
        owner = "gone" if target == "dead_letter" else "p"
        epoch = ledger.assign(t.task_id, owner, now)
        if target in ("assigned", "dead_letter"):
            continue
        assert ledger.accepted(t.task_id, epoch, owner, 1000, now)
        if target == "running":
            continue
        assert ledger.result(t.task_id, epoch, owner, True, str(i), "", now) == "committed"
        if target == "delivered":
            assert ledger.delivered(t.task_id, "o", now)
    ledger.owner_lost("gone", now, "crash test")
    ledger.commit()
    print("C", n, flush=True)  # reported only once durable
    n += 1
"""


def _lines(proc: subprocess.Popen[str], out: queue.Queue[str | None]) -> None:
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.endswith("\n"):  # a line cut by the kill is not a report
            out.put(line.rstrip("\n"))
    out.put(None)


def test_sigkill_at_random_moments_loses_nothing_committed(tmp_path: Path) -> None:
    rng = random.Random(20261124)
    path = tmp_path / "ledger.db"
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    committed: dict[str, str] = {}  # task id -> the state its batch reported
    in_doubt: list[dict[str, str]] = []  # batches announced but not reported committed
    kills = 0
    deadline = time.monotonic() + 6.0
    while kills < 16 and time.monotonic() < deadline:
        proc = subprocess.Popen(
            [sys.executable, str(script), str(path), str(kills)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        lines: queue.Queue[str | None] = queue.Queue()
        reader = threading.Thread(target=_lines, args=(proc, lines), daemon=True)
        reader.start()
        log: list[str] = []
        try:
            wanted = rng.randint(-1, 8)  # -1: kill while it opens the file
            seen = -1 if wanted < 0 else None
            while seen is None or seen < wanted:
                line = lines.get(timeout=10)
                assert line is not None, f"child ended: {proc.stderr.read()}"  # type: ignore[union-attr]
                log.append(line)
                if line == "R":
                    seen = 0
                elif line.startswith("C"):
                    seen = (seen or 0) + 1
            time.sleep(rng.uniform(0, 0.01))  # anywhere in the next batches, not just after a line
            proc.send_signal(signal.SIGKILL)
        finally:
            proc.kill()
            proc.wait(timeout=10)
            reader.join(timeout=10)
        kills += 1
        while (line := lines.get_nowait()) is not None:
            log.append(line)  # printed before the kill, read after it
        pending: dict[int, dict[str, str]] = {}
        for line in log:
            tag, rest = line[0], line[2:]
            if tag == "B":
                n, states = rest.split(" ", 1)
                pending[int(n)] = json.loads(states)
            elif tag == "C":
                committed.update(pending.pop(int(rest)))
        assert len(pending) <= 1
        in_doubt.extend(pending.values())

        db = sqlite3.connect(path)
        assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        db.close()
        with Ledger(path) as led:
            for task_id, state in committed.items():
                row = led.task(task_id)
                assert row is not None, f"{task_id} reported committed, missing after kill {kills}"
                assert row.state == state, (task_id, row.state, state)
            for want in in_doubt:  # a batch is atomic: all of it is there, or none
                found = {t: led.task(t) for t in want}
                if any(r is not None for r in found.values()):
                    assert {t: r.state for t, r in found.items() if r} == want
            counts = led.counts()
            assert sum(counts.values()) == len(committed) + sum(
                1 for want in in_doubt for t in want if led.task(t) is not None
            )
    assert kills >= 3
    assert len(committed) > 0


def test_moved_lists_where_the_tasks_taken_from_a_node_are_now(ledger: Ledger) -> None:
    ledger.offer("a", tasks(3), 0.0)
    for i in range(3):
        running(ledger, f"a.1.{i}", "p1", 1.0)
    assert sorted(ledger.owner_lost("p1", 5.0, "dead")) == ["a.1.0", "a.1.1", "a.1.2"]
    running(ledger, "a.1.0", "p2", 6.0)
    running(ledger, "a.1.1", "p3", 6.0)
    rows, total = ledger.moved("p1", 5.0, limit=10)
    assert total == 3
    assert rows == [
        ("a.1.0", "running", "p2"),
        ("a.1.1", "running", "p3"),
        ("a.1.2", "pending", None),
    ]
    assert ledger.moved("p1", 5.0, limit=1) == ([("a.1.0", "running", "p2")], 3)
    assert ledger.moved("p1", 5.5, limit=10) == ([], 0)  # taken before then
    assert ledger.moved("p2", 0.0, limit=10) == ([], 0)  # nothing taken from p2


# --- checkpoints off the loop (the delegator's setting) ------------------------------------


def test_a_checkpointer_thread_checkpoints_the_wal_and_the_commits_stay(tmp_path: Path) -> None:
    path = tmp_path / "l.db"
    with Ledger(path, checkpoint_every_s=0.01) as led:
        assert led._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL, as ever
        assert led._db.execute("PRAGMA wal_autocheckpoint").fetchone()[0] > 1000  # a backstop
        for k in range(50):
            led.offer("a", tasks(4, start=4 * k), 1.0)
            led.commit()
        checkpointer = led.checkpointer
        assert checkpointer is not None
        wait = time.monotonic() + 10
        while checkpointer.checkpoints == 0 and time.monotonic() < wait:
            time.sleep(0.01)  # the thread's interval is 10 ms
        assert checkpointer.checkpoints > 0
        assert checkpointer.counters()["checkpoints_failed"] == 0
    assert led.checkpointer is None  # stopped at close
    assert not Path(f"{path}-wal").exists()  # the last close checkpointed and removed it
    with Ledger(path) as led:
        assert led.counts()["pending"] == 200
