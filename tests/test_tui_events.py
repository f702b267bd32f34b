"""Events the console derives from counters and telemetry (tui/derived.py, issue 14 part 2)."""

from __future__ import annotations

from shoal.tui import derived


def test_deltas_count_growth_only() -> None:
    assert derived.deltas({"a": 1, "b": 5}, {"a": 4, "b": 2, "c": 3, "s": "x"}) == {"a": 3, "c": 3}


def test_delegation_is_summarised_once_an_interval() -> None:
    window = derived.Window(interval_s=10)
    window.add({"offered": 5, "assigned": 4}, now=100.0)
    assert not window.due(105.0)
    window.add({"offered": 7, "no_peer": 2}, now=105.0)
    assert window.due(110.0)
    text = derived.delegation_summary(window.take(), 10)
    assert text == (
        "last 10 s: 12 tasks offered by overloaded nodes, 4 placed on a peer,"
        " 2 found no peer with room"
    )
    assert window.take() == {} and derived.delegation_summary({}, 10) is None


def test_redelegations_say_their_cause() -> None:
    text = derived.redelegation({"redelegated_dead_owner": 3, "lease_expired": 1, "offered": 9})
    assert text == "4 tasks re-delegated: owner dead 3, lease expired 1"
    assert derived.redelegation({"offered": 9}) is None


def test_shed_dead_lettered_and_faults() -> None:
    assert derived.shed({"tasks_shed": 130}) == "130 tasks shed by full queues on the fleet's nodes"
    assert (
        derived.dead_lettered(2, 5) == "3 tasks dead-lettered (gave up after every retry); 5 in all"
    )
    assert derived.dead_lettered(None, 5) is None and derived.dead_lettered(5, 5) is None
    assert derived.faults({"faults_applied": 1}, 0, 1) == [
        "1 faults applied on the fleet",
        "1 nodes stopped (crash, hang or leave); 1 stopped",
    ]
    assert derived.faults({}, 1, 0) == ["1 nodes running again (healed); 0 stopped"]


def test_overload_entered_and_left() -> None:
    assert derived.overload(None, True, 1.9, 60, 64) is None  # first sight: no change
    assert derived.overload(False, True, 1.9, 60, 64) == "overload entered (load 1.90, queue 60/64)"
    assert derived.overload(True, False, 0.4, 3, 64) == "overload left (load 0.40, queue 3/64)"
    assert derived.overload(True, True, 1.9, 60, 64) is None


def test_service_changes_restarts_and_states() -> None:
    old = {"relay": {"state": "running", "restarts": 0, "pid": 1}, "sim": {"state": "running"}}
    new = {
        "relay": {"state": "running", "restarts": 1, "pid": 2},
        "sim": {"state": "failed", "reason": "exit 78"},
    }
    assert derived.service_changes(old, new) == [
        "relay restarted (pid 2; restarts 1)",
        "sim running -> failed: exit 78",
    ]


def test_where_a_lost_nodes_tasks_went_is_said_by_new_owner() -> None:
    from shoal.tui import derived

    rows = [
        {"task_id": "a", "state": "running", "owner": "sim-003"},
        {"task_id": "b", "state": "assigned", "owner": "sim-003"},
        {"task_id": "c", "state": "running", "owner": "sim-001"},
        {"task_id": "d", "state": "delivered", "owner": "board-01"},
        {"task_id": "e", "state": "pending", "owner": None},
        {"task_id": "f", "state": "dead_letter", "owner": None},
    ]
    assert derived.moved("dead", rows, 7) == (
        "dead: 7 tasks re-delegated: running on sim-003 2, sim-001 1;"
        " done on board-01 1; 1 waiting for a peer; 1 dead-lettered; 1 more not listed"
    )
    assert derived.moved("dead", [], 0) is None  # not yet: asked again later
    assert derived.moved("dead", [], 0, last=True) == (
        "dead: it held no delegated tasks, none re-delegated"
    )
    one = [{"task_id": "a", "state": "done", "owner": "sim-002"}]
    assert derived.moved("rebooted", one, 1) == ("rebooted: 1 task re-delegated: done on sim-002 1")
    assert (
        derived.redelegation({"assign_declined": 1}) == "1 task re-delegated: assignment declined 1"
    )
