"""The console's live feed against a real cluster: nodes, states, services, events, actions."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from shoal.services.testing import Cluster, wait_for
from shoal.tui.feed import LiveFeed
from shoal.tui.model import ActionError

NODES = 5


@pytest.fixture
def feed(tmp_path: Path) -> Iterator[tuple[Cluster, LiveFeed]]:
    with Cluster(tmp_path, nodes=NODES, sim={"tick_ms": 20}) as cluster:
        live = LiveFeed(cluster.config).start()
        try:
            yield cluster, live
        finally:
            live.close()


def alive(live: LiveFeed) -> bool:
    state = live.snapshot()
    return (
        state.connected
        and len(state.nodes) == NODES
        and all(n.state in ("alive", "joined") for n in state.nodes.values())
    )


def test_the_feed_shows_every_node_its_state_and_the_services(
    feed: tuple[Cluster, LiveFeed],
) -> None:
    _, live = feed
    wait_for(lambda: alive(live), timeout_s=30)
    state = live.snapshot()
    row = state.nodes["sim-000"]
    wait_for(lambda: live.snapshot().nodes["sim-000"].cpu_pct is not None, 10)
    assert row.boot_id and row.fw
    wait_for(lambda: {s.name for s in live.snapshot().services} >= {"relay", "liveness", "sim"})
    services = {s.name: s for s in live.snapshot().services}
    assert services["relay"].state == "running" and services["relay"].beat_age_ms is not None
    assert state.observer_healthy is True
    wait_for(lambda: live.snapshot().msgs_per_s > 0, 10)
    wait_for(lambda: len(live.history("sim-000")) >= 2, 10)


def test_crash_from_the_console_turns_the_node_dead_then_remove_hides_it(
    feed: tuple[Cluster, LiveFeed],
) -> None:
    _, live = feed
    wait_for(lambda: alive(live), timeout_s=30)
    cursor, _ = live.events()
    assert "crash applied" in live.act("crash", "sim-002")
    wait_for(lambda: live.snapshot().nodes["sim-002"].state == "dead", 10)
    _, events = live.events(cursor)
    texts = [e.text for e in events if e.node_id == "sim-002"]
    assert any(t.startswith("suspect") for t in texts) and any(t.startswith("dead") for t in texts)
    assert "removed" in live.act("remove", "sim-002")
    wait_for(lambda: "sim-002" not in live.snapshot().nodes, 5)
    wait_for(lambda: live.available("drain") is None, 10)  # the delegator has beaten
    assert "drained" in live.act("drain", "sim-001")
    with pytest.raises(ActionError, match="injector"):
        live.act("flood", "sim-001")
    with pytest.raises(ActionError, match="only dead or left"):
        live.act("remove", "sim-001")


def test_without_a_cluster_the_feed_says_disconnected(tmp_path: Path) -> None:
    from shoal.services.testing import config_on_free_ports

    live = LiveFeed(config_on_free_ports()).start()
    try:
        wait_for(lambda: live.snapshot().version > 2, 5)
        state = live.snapshot()
        assert not state.connected and "not answering" in state.detail
        with pytest.raises(ActionError):
            live.act("crash", "sim-000")
    finally:
        live.close()


def test_the_console_attached_to_a_real_cluster_shows_its_nodes_and_a_crash(
    feed: tuple[Cluster, LiveFeed],
) -> None:
    """End to end: the Textual app on the live feed, driven by Pilot."""
    import asyncio

    from textual.widgets import DataTable

    from shoal.tui.app import ShoalConsole

    _, live = feed
    wait_for(lambda: alive(live), timeout_s=30)

    async def scenario() -> None:
        app = ShoalConsole(live)
        async with app.run_test(size=(160, 48)) as pilot:
            table = app.screen.query_one(DataTable)

            async def until(cond: object, timeout_s: float = 10.0) -> None:
                deadline = asyncio.get_running_loop().time() + timeout_s
                while not cond():  # type: ignore[operator]
                    assert asyncio.get_running_loop().time() < deadline, "console never showed it"
                    await pilot.pause(0.1)

            def ids() -> set[str]:
                return {str(key.value) for key in table.rows}

            await until(lambda: ids() == {f"sim-{i:03d}" for i in range(NODES)})
            live.act("crash", "sim-003")

            def state_of(node: str) -> str:
                return str(table.get_cell(node, "state"))

            await until(lambda: "dead" in state_of("sim-003"), 10.0)
            assert "alive" in state_of("sim-000") or "joined" in state_of("sim-000")

    asyncio.run(scenario())
