"""The operator console, driven with Textual's Pilot against fixed data (tui/fixtures.py).

No pytest-asyncio here: each test runs its Pilot session with ``asyncio.run``. Snapshot
tests (pytest-textual-snapshot) keep their SVGs in tests/__snapshots__/test_tui/;
regenerate them with ``pytest tests/test_tui.py --snapshot-update`` after a deliberate
change, and look at them before committing.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from textual.pilot import Pilot
from textual.widgets import DataTable, OptionList
from textual.widgets.data_table import ColumnKey

from shoal.tui import format as fmt
from shoal.tui import query
from shoal.tui.actions import ACTION_KEYS
from shoal.tui.app import ShoalConsole
from shoal.tui.base import StatusBanner
from shoal.tui.command import resolve
from shoal.tui.confirm import ConfirmScreen
from shoal.tui.detail import NO_TASKS, NodeDetailScreen
from shoal.tui.detail import tasks as tasks_line
from shoal.tui.event_log import EventsScreen
from shoal.tui.fixtures import FIXED_EVENTS, FIXED_NODES, SCENARIO_TICKS, T0, FixedSource
from shoal.tui.help import HelpScreen
from shoal.tui.model import ACTIONS, FLOOD_TASKS, STATES, ActionError, ScenarioRun
from shoal.tui.node_table import OFFSCREEN_MARGIN, NodeTable
from shoal.tui.nodes import NodesScreen
from shoal.tui.scenarios import NO_RUN, ScenariosScreen

SIZE = (160, 48)
ALL_IDS = sorted(row.node_id for row in FIXED_NODES)
SCENARIO = """\
# Crash one node, then check that it is declared dead and comes back.
[scenario]
name = "node-crash"
description = "crash sim-001 for 10 s"

[[step]]
at_s = 0
fault = "crash"
nodes = ["sim-001"]

[[step]]
at_s = 10
fault = "resume"
nodes = ["sim-001"]
"""


@pytest.fixture(autouse=True)
def utc() -> Iterator[None]:
    """Event times print as local time: pin the zone so the screens are the same anywhere."""
    old = os.environ.get("TZ")
    os.environ["TZ"] = "UTC"
    time.tzset()
    yield
    if old is None:
        del os.environ["TZ"]
    else:
        os.environ["TZ"] = old
    time.tzset()


@pytest.fixture
def scenarios_dir(tmp_path: Path) -> Path:
    (tmp_path / "README.md").write_text("# scenarios\n")
    (tmp_path / "node-crash.toml").write_text(SCENARIO)
    (tmp_path / "relay-restart.toml").write_text('[scenario]\nname = "relay-restart"\n')
    return tmp_path


class Notes:
    """What the app told the operator (its notify calls), still shown as usual."""

    def __init__(self, app: ShoalConsole) -> None:
        self.seen: list[tuple[str, str]] = []
        show = app.notify

        def notify(message: str, **kwargs: Any) -> None:
            self.seen.append((message, kwargs.get("severity", "information")))
            show(message, **kwargs)

        app.notify = notify  # type: ignore[method-assign]

    def text(self) -> str:
        return "\n".join(message for message, _ in self.seen)


def drive(app: ShoalConsole, steps: Callable[[Pilot[None]], Awaitable[None]]) -> None:
    async def main() -> None:
        async with app.run_test(size=SIZE) as pilot:
            await pilot.pause()
            await steps(pilot)

    asyncio.run(main())


def table_of(app: ShoalConsole) -> NodeTable:
    screen = app.screen
    assert isinstance(screen, NodesScreen)
    return screen.table


def shown_ids(app: ShoalConsole) -> list[str]:
    table = table_of(app)
    return [str(table.coordinate_to_cell_key((i, 0)).row_key.value) for i in range(table.row_count)]


async def settle(pilot: Pilot[None]) -> None:
    """Let action workers finish and the app handle what they posted."""
    await pilot.app.workers.wait_for_complete()
    await pilot.pause()


async def type_filter(pilot: Pilot[None], text: str) -> None:
    await pilot.press("slash", *text, "enter")
    await pilot.pause()


def select(app: ShoalConsole, node_id: str) -> None:
    table = table_of(app)
    table.move_cursor(row=table.get_row_index(node_id))


def console(source: FixedSource | None = None, **options: Any) -> tuple[Any, ShoalConsole, Notes]:
    """A console on fixed data (or ``source``), and the notifications it shows."""
    source = source or FixedSource()
    app = ShoalConsole(source, **options)
    return source, app, Notes(app)


async def press_on(
    pilot: Pilot[None], key: str, node_id: str | None = None
) -> ConfirmScreen | None:
    """Select ``node_id`` (if given) and press ``key``: the confirmation it opened, or None."""
    if node_id is not None:
        select(pilot.app, node_id)  # type: ignore[arg-type]
    await pilot.press(key)
    await pilot.pause()
    screen = pilot.app.screen
    return screen if isinstance(screen, ConfirmScreen) else None


def question(screen: ConfirmScreen) -> str:
    return str(screen.query_one("#question").render())


async def asks_first(
    pilot: Pilot[None], asking: str, key: str, node_id: str | None = None
) -> ConfirmScreen:
    """Press ``key`` (on ``node_id``): the confirmation it must open, its question saying
    ``asking``."""
    confirm = await press_on(pilot, key, node_id)
    assert confirm is not None
    assert asking in question(confirm)
    return confirm


def quits_on(app: ShoalConsole, *keys: str) -> None:
    """Run ``app``, press ``keys``: it must have stopped."""

    async def steps(pilot: Pilot[None]) -> None:
        await pilot.press(*keys)
        await pilot.pause()
        assert not app.is_running

    drive(app, steps)


async def answer(pilot: Pilot[None], key: str = "y") -> None:
    """Answer the confirmation and let the action's worker finish."""
    await pilot.press(key)
    await settle(pilot)


# --- pure parts ----------------------------------------------------------------------------


def test_query_regex_bang_and_field() -> None:
    q = query.parse("sim-00[1-3]", ("state",))
    assert q.matches(("sim-002", "alive"), {"state": "alive"})
    assert not q.matches(("sim-004", "dead"), {"state": "dead"})
    inverted = query.parse("!sim", ("state",))
    assert inverted.matches(("esp32-7c9e", "alive"), {"state": "alive"})
    assert not inverted.matches(("sim-000", "alive"), {"state": "alive"})
    states = query.parse("state:suspect|dead", ("state",))
    assert states.matches(("x", "dead"), {"state": "dead"})
    assert not states.matches(("dead-node", "alive"), {"state": "alive"})  # field, not id
    assert query.parse("", ()).matches(("anything",), {})
    with pytest.raises(ValueError, match="bad regex"):
        query.parse("sim-(", ())


def test_commands_resolve_names_prefixes_and_quit() -> None:
    assert resolve("nodes") == "nodes"
    assert resolve("ev") == "events"
    assert resolve("sc") == "scenarios"
    assert resolve("no") == "nodes"
    assert resolve("q") == resolve("quit") == "quit"
    assert resolve("q!") == "quit!"
    assert resolve("help") == "help"
    assert resolve("xyz") is None


def test_every_action_has_its_own_key() -> None:
    assert set(ACTION_KEYS) == set(ACTIONS)
    assert len(set(ACTION_KEYS.values())) == len(ACTIONS)


# --- nodes view: rows, filter, sort ------------------------------------------------------


def test_nodes_view_lists_every_node_keyed_by_id_sorted_by_id() -> None:
    app = ShoalConsole(FixedSource())

    async def steps(pilot: Pilot[None]) -> None:
        assert shown_ids(app) == ALL_IDS
        header = app.screen.query_one("#summary").render()
        assert "dead 2" in str(header) and "lost -" in str(header)

    drive(app, steps)


def test_filter_regex_keeps_matching_nodes_and_escape_clears_it() -> None:
    app = ShoalConsole(FixedSource())

    async def steps(pilot: Pilot[None]) -> None:
        await type_filter(pilot, "sim-00[1-3]")
        assert shown_ids(app) == ["sim-001", "sim-002", "sim-003"]
        assert "filter: sim-00[1-3]" in str(table_of(app).border_title)
        await pilot.press("escape")
        await pilot.pause()
        assert shown_ids(app) == ALL_IDS

    drive(app, steps)


def test_filter_bang_inverts_the_match() -> None:
    app = ShoalConsole(FixedSource())

    async def steps(pilot: Pilot[None]) -> None:
        await type_filter(pilot, "!sim")
        assert shown_ids(app) == ["esp32-7c9e", "esp32-a41f"]

    drive(app, steps)


def test_filter_state_prefix_matches_the_state_whole() -> None:
    app = ShoalConsole(FixedSource())

    async def steps(pilot: Pilot[None]) -> None:
        await type_filter(pilot, "state:dead")
        assert shown_ids(app) == ["sim-004", "sim-008"]
        await type_filter(pilot, "state:suspect|dead")  # `/` selects the old text: replaced
        assert shown_ids(app) == ["sim-003", "sim-004", "sim-008"]

    drive(app, steps)


def test_filter_with_a_bad_regex_keeps_the_last_good_one() -> None:
    app = ShoalConsole(FixedSource())

    async def steps(pilot: Pilot[None]) -> None:
        await type_filter(pilot, "esp")
        await pilot.press("slash", "(")
        await pilot.pause()
        assert app.screen.query_one("#filter").has_class("-bad")
        assert shown_ids(app) == ["esp32-7c9e", "esp32-a41f"]

    drive(app, steps)


def test_sort_keys_cycle_the_column_and_reverse_it() -> None:
    app = ShoalConsole(FixedSource())

    async def steps(pilot: Pilot[None]) -> None:
        table = table_of(app)
        await pilot.press("S")
        await pilot.pause()
        assert shown_ids(app) == ALL_IDS[::-1]
        await pilot.press("s")  # next column: state, ascending (in the order of STATES)
        await pilot.pause()
        assert table.sort_column == "state" and not table.sort_reverse
        states = [table.nodes[i].state for i in shown_ids(app)]
        assert states == sorted(states, key=STATES.index)
        table.sort_by("cpu", reverse=True)
        await pilot.pause()
        assert shown_ids(app)[:3] == ["sim-001", "sim-009", "sim-000"]  # 99, 67, 45.5
        assert shown_ids(app)[-3:] == ["sim-004", "sim-006", "sim-008"]  # no cpu: last
        assert "sort: cpu% ↓" in str(table.border_title)

    drive(app, steps)


def test_clicking_a_header_sorts_by_it_and_again_reverses() -> None:
    app = ShoalConsole(FixedSource())

    async def steps(pilot: Pilot[None]) -> None:
        table = table_of(app)
        load = ColumnKey("load")
        table.post_message(DataTable.HeaderSelected(table, load, 5, table.columns[load].label))
        await pilot.pause()
        assert (table.sort_column, table.sort_reverse) == ("load", True)  # hottest first
        assert shown_ids(app)[0] == "sim-001"  # 1.87
        table.post_message(DataTable.HeaderSelected(table, load, 5, table.columns[load].label))
        await pilot.pause()
        assert (table.sort_column, table.sort_reverse) == ("load", False)
        assert shown_ids(app)[0] == "sim-005"  # 0.05

    drive(app, steps)


def test_refresh_writes_only_changed_cells_in_view_and_the_rest_on_scroll() -> None:
    source = FixedSource(n=1000)
    app = ShoalConsole(source, refresh_s=3600)  # polled by hand below

    async def steps(pilot: Pilot[None]) -> None:
        table = table_of(app)
        before = dict(source.snapshot().nodes)
        calls: list[tuple[str, str]] = []
        update_cell = table.update_cell

        def counting(row_key: Any, column_key: Any, *args: Any, **kwargs: Any) -> None:
            calls.append((str(row_key), str(column_key)))
            update_cell(row_key, column_key, *args, **kwargs)

        table.update_cell = counting  # type: ignore[method-assign]
        source.tick()
        app.poll()
        nodes = source.snapshot().nodes
        changed = {i for i, row in nodes.items() if row != before[i]}
        written = {node for node, _ in calls}
        in_view = set(shown_ids(app)[: table.size.height + OFFSCREEN_MARGIN])
        assert written and written == changed & in_view  # not the other ~130
        assert {column for _, column in calls} <= {"age", "cpu", "load"}  # what tick changes

        table.scroll_end(animate=False)
        await pilot.pause()
        for node_id in shown_ids(app)[-table.size.height :]:
            assert [str(c) for c in table.get_row(node_id)] == list(fmt.cells(nodes[node_id]))
        assert table.row_count == 1000
        source.act("remove", "sim-007")
        app.poll()
        assert table.row_count == 999 and "sim-007" not in table.rows

    drive(app, steps)


def test_a_changed_cell_is_drawn_with_its_new_value() -> None:
    source = FixedSource()
    app = ShoalConsole(source, refresh_s=3600)

    async def steps(pilot: Pilot[None]) -> None:
        table = table_of(app)

        def line_of(node_id: str) -> str:
            return table.render_line(1 + table.get_row_index(node_id)).text  # 1: the header

        before = source.snapshot().nodes
        source.tick()
        source.tick()  # the second tick changes sim-003 (cpu 18 -> 99, load 0.25 -> 0.41)
        app.poll()
        await pilot.pause()
        row = source.snapshot().nodes["sim-003"]
        assert row != before["sim-003"]
        assert f" {row.load_factor:.2f} " in line_of("sim-003")
        assert f" {before['sim-003'].load_factor:.2f} " not in line_of("sim-003")
        table.move_cursor(row=table.get_row_index("sim-003"))
        await pilot.pause()
        assert f" {row.load_factor:.2f} " in line_of("sim-003")  # with the cursor on it

    drive(app, steps)


# --- detail ------------------------------------------------------------------------------


def test_enter_opens_the_node_detail_and_escape_goes_back() -> None:
    app = ShoalConsole(FixedSource())

    async def steps(pilot: Pilot[None]) -> None:
        select(app, "sim-004")
        await pilot.press("enter")
        await pilot.pause()
        screen = app.screen
        assert isinstance(screen, NodeDetailScreen) and screen.node_id == "sim-004"
        shown = str(screen.query_one("#tasks").render())  # dead: its figures are history
        assert "tasks: - (dead: the events below say where its tasks went)" in shown
        assert tasks_line(app.state.nodes["sim-000"]) == NO_TASKS  # alive, no task fields
        events = screen.query_one("#node-events", DataTable)
        assert events.row_count == 2  # its suspect and dead events
        await pilot.press("escape")
        await pilot.pause()
        assert isinstance(app.screen, NodesScreen)
        assert table_of(app).selected == "sim-004"

    drive(app, steps)


# --- actions -------------------------------------------------------------------------------


def test_action_runs_after_yes() -> None:
    source, app, notes = console()

    async def steps(pilot: Pilot[None]) -> None:
        await asks_first(pilot, "crash", "c", "sim-002")
        await answer(pilot)
        assert source.actions == [("crash", "sim-002")]
        assert "crash applied to sim-002" in notes.text()
        assert isinstance(app.screen, NodesScreen)

    drive(app, steps)


def test_action_does_not_run_after_no_or_escape() -> None:
    source, app, _ = console()

    async def steps(pilot: Pilot[None]) -> None:
        assert await press_on(pilot, "b") is not None
        await pilot.press("n")
        await pilot.pause()
        await pilot.press("x")
        await answer(pilot, "escape")
        assert source.actions == []
        assert isinstance(app.screen, NodesScreen)

    drive(app, steps)


def test_remove_from_the_detail_view_takes_the_node_off_the_list() -> None:
    source, app, _ = console()

    async def steps(pilot: Pilot[None]) -> None:
        app.open_detail("sim-008")
        await pilot.pause()
        await pilot.press("x")
        await answer(pilot)
        assert source.actions == [("remove", "sim-008")]
        await pilot.press("escape")
        await pilot.pause()
        assert "sim-008" not in shown_ids(app)

    drive(app, steps)


def test_flood_asks_first_then_goes_to_the_source() -> None:
    source, app, notes = console()

    async def steps(pilot: Pilot[None]) -> None:
        confirm = await asks_first(pilot, "flood node sim-009?", "f", "sim-009")
        assert f"{FLOOD_TASKS} tasks" in str(confirm.query_one("#what").render())
        await answer(pilot, "n")
        assert source.actions == []
        await pilot.press("f")
        await answer(pilot)
        assert source.actions == [("flood", "sim-009")]
        assert "flood applied to sim-009" in notes.text()

    drive(app, steps)


def test_unavailable_action_says_why_and_asks_nothing() -> None:
    source, app, notes = console()
    source.unavailable["drain"] = "no delegator in this cluster"

    async def steps(pilot: Pilot[None]) -> None:
        assert await press_on(pilot, "d") is None
        assert "drain: no delegator in this cluster" in notes.text()
        assert source.actions == []

    drive(app, steps)


def test_action_error_is_shown_as_an_error() -> None:
    class Refusing(FixedSource):
        def act(self, action: str, node_id: str) -> str:
            raise ActionError(f"{action}: no answer from sim")

    _, app, notes = console(Refusing())

    async def steps(pilot: Pilot[None]) -> None:
        await pilot.press("h")
        await answer(pilot)
        assert ("hang: no answer from sim", "error") in notes.seen

    drive(app, steps)


def test_readonly_refuses_every_action_without_confirmation() -> None:
    source, app, notes = console(readonly=True)

    async def steps(pilot: Pilot[None]) -> None:
        for key in ACTION_KEYS.values():
            assert await press_on(pilot, key) is None
        assert len([m for m, _ in notes.seen if m.startswith("read-only")]) == len(ACTIONS)
        assert source.actions == []

    drive(app, steps)


# --- a cluster that is not there -----------------------------------------------------------


def test_disconnected_state_shows_the_banner_and_keeps_polling() -> None:
    source = FixedSource(connected=False, detail="relay at tcp://127.0.0.1:5601 not answering")
    app = ShoalConsole(source)

    async def steps(pilot: Pilot[None]) -> None:
        banner = app.screen.query_one(StatusBanner)
        assert banner.display and "disconnected: relay at" in str(banner.render())
        source.set_connected(True)
        app.poll()
        await pilot.pause()
        assert not banner.display
        assert shown_ids(app) == ALL_IDS

    drive(app, steps)


def test_a_source_that_raises_keeps_the_app_alive_and_says_so() -> None:
    source = FixedSource()
    app = ShoalConsole(source)

    async def steps(pilot: Pilot[None]) -> None:
        source.fail = ConnectionError("feed thread died")
        app.poll()
        await pilot.pause()
        banner = app.screen.query_one(StatusBanner)
        text = str(banner.render())
        assert "disconnected: ConnectionError: feed thread died (retrying)" in text
        assert shown_ids(app) == ALL_IDS  # the last good state stays on screen
        await pilot.press("enter")  # still answering keys
        await pilot.pause()
        assert isinstance(app.screen, NodeDetailScreen)
        source.fail = None
        app.poll()
        await pilot.pause()
        assert not banner.display
        assert app.is_running

    drive(app, steps)


# --- events, scenarios, help, command mode ------------------------------------------------


def test_events_view_follows_the_newest_and_filters() -> None:
    source = FixedSource()
    app = ShoalConsole(source)

    async def steps(pilot: Pilot[None]) -> None:
        await pilot.press("colon", *"events", "enter")
        await pilot.pause()
        screen = app.screen
        assert isinstance(screen, EventsScreen)
        table = screen.table
        assert table.row_count == len(FIXED_EVENTS)
        source.tick()
        app.poll()
        await pilot.pause()
        assert table.row_count == len(FIXED_EVENTS) + 1
        assert table.cursor_row == table.row_count - 1  # following
        await pilot.press("t")  # follow off
        table.move_cursor(row=0)
        source.tick()
        app.poll()
        await pilot.pause()
        assert table.cursor_row == 0
        await pilot.press("slash", *"kind:observer", "enter")
        await pilot.pause()
        assert table.row_count == 2
        await pilot.press("escape")
        await pilot.pause()
        assert table.row_count == len(FIXED_EVENTS) + 2
        await pilot.press("escape")  # no filter: back to the nodes
        await pilot.pause()
        assert isinstance(app.screen, NodesScreen)

    drive(app, steps)


def run_panel(app: ShoalConsole) -> str:
    screen = app.screen
    assert isinstance(screen, ScenariosScreen)
    return str(screen.query_one("#scenario-run").render())


def test_enter_on_a_scenario_asks_then_starts_it_through_the_source(
    scenarios_dir: Path,
) -> None:
    source = FixedSource()
    app = ShoalConsole(source, scenarios_dir=scenarios_dir)
    notes = Notes(app)

    async def steps(pilot: Pilot[None]) -> None:
        await pilot.press("colon", *"scenarios", "enter")
        await pilot.pause()
        screen = app.screen
        assert isinstance(screen, ScenariosScreen)
        assert screen.query_one(OptionList).option_count == 2  # the README is not one
        assert NO_RUN in run_panel(app)
        await pilot.press("enter")
        await pilot.pause()
        assert isinstance(app.screen, ConfirmScreen)
        assert "run scenario node-crash?" in str(app.screen.query_one("#question").render())
        await pilot.press("n")
        await settle(pilot)
        assert source.scenarios == []
        await pilot.press("enter", "y")
        await settle(pilot)
        assert source.scenarios == [str(scenarios_dir / "node-crash.toml")]
        assert "node-crash started" in notes.text()
        assert "node-crash  running" in run_panel(app)
        await pilot.press("down", "enter")  # another while one runs: refused, not asked
        await pilot.pause()
        assert not isinstance(app.screen, ConfirmScreen)
        assert "node-crash is running: one scenario at a time" in notes.text()
        assert source.scenarios == [str(scenarios_dir / "node-crash.toml")]
        for _ in range(SCENARIO_TICKS):  # the fixture's run passes after these
            source.tick()
        app.poll()
        await pilot.pause()
        assert "node-crash  passed  exit 0" in run_panel(app)
        kinds = [(e.kind, e.text) for _, e in app.event_log if e.kind == "scenario"]
        assert kinds == [("scenario", "node-crash started"), ("scenario", "node-crash passed")]

    drive(app, steps)


def test_scenarios_view_shows_the_running_ones_progress_then_its_verdict(
    scenarios_dir: Path,
) -> None:
    source = FixedSource()
    app = ShoalConsole(source, scenarios_dir=scenarios_dir)
    running = ScenarioRun(
        name="node-crash",
        path=str(scenarios_dir / "node-crash.toml"),
        started_at=T0,
        report="chaos-reports/node-crash-20260101-120000.json",
        pid=4242,
        progress="node-crash seed 1 | faults   3.0/6 s | faults 1/1 applied, 1 active",
    )

    async def steps(pilot: Pilot[None]) -> None:
        await pilot.press("colon", *"scenarios", "enter")
        await pilot.pause()
        source.set_scenario(running)
        app.poll()
        await pilot.pause()
        panel = run_panel(app)
        assert "node-crash  running since 12:00:00 (pid 4242)" in panel
        assert "faults   3.0/6 s | faults 1/1 applied, 1 active" in panel
        assert "report to chaos-reports/node-crash-20260101-120000.json" in panel
        source.set_scenario(
            dataclasses.replace(
                running,
                ended_at=T0 + 9,
                exit_code=1,
                verdict="failed",
                reason="declared dead: FAILED by 0.4 s",
            )
        )
        app.poll()
        await pilot.pause()
        panel = run_panel(app)
        assert "node-crash  failed  exit 1  ended 12:00:09 after 9 s" in panel
        assert "declared dead: FAILED by 0.4 s" in panel
        assert (
            "report chaos-reports/node-crash-20260101-120000.json"
            "  summary chaos-reports/node-crash-20260101-120000.md"
        ) in panel
        assert "running" not in panel

    drive(app, steps)


def test_readonly_refuses_to_run_a_scenario(scenarios_dir: Path) -> None:
    source = FixedSource()
    app = ShoalConsole(source, readonly=True, scenarios_dir=scenarios_dir)
    notes = Notes(app)

    async def steps(pilot: Pilot[None]) -> None:
        await pilot.press("colon", *"scenarios", "enter")
        await pilot.pause()
        await pilot.press("enter")
        await pilot.pause()
        assert not isinstance(app.screen, ConfirmScreen)
        assert "read-only: run scenario refused" in notes.text()
        assert source.scenarios == []

    drive(app, steps)


def test_command_mode_jumps_between_views_and_quits() -> None:
    app = ShoalConsole(FixedSource())
    notes = Notes(app)

    async def steps(pilot: Pilot[None]) -> None:
        await pilot.press("colon", *"ev", "enter")
        await pilot.pause()
        assert isinstance(app.screen, EventsScreen)
        await pilot.press("question_mark")
        await pilot.pause()
        assert isinstance(app.screen, HelpScreen)
        await pilot.press("escape", "colon", *"nodes", "enter")
        await pilot.pause()
        assert isinstance(app.screen, NodesScreen)
        await pilot.press("colon", *"bogus", "enter")
        await pilot.pause()
        assert "unknown command ':bogus'" in notes.text()
        await pilot.press("colon", "q", "enter")
        await pilot.pause()
        assert not app.is_running

    drive(app, steps)


# --- snapshots -------------------------------------------------------------------------------


def test_snapshot_nodes_view(snap_compare: Any) -> None:
    assert snap_compare(ShoalConsole(FixedSource()), terminal_size=SIZE)


def test_snapshot_node_detail(snap_compare: Any) -> None:
    async def open_sim_004(pilot: Pilot[None]) -> None:
        pilot.app.open_detail("sim-004")  # type: ignore[attr-defined]
        await pilot.pause()

    assert snap_compare(ShoalConsole(FixedSource()), terminal_size=SIZE, run_before=open_sim_004)


def test_snapshot_events_view(snap_compare: Any) -> None:
    assert snap_compare(
        ShoalConsole(FixedSource()), press=["colon", *"events", "enter"], terminal_size=SIZE
    )


def test_snapshot_scenarios_view(snap_compare: Any, scenarios_dir: Path) -> None:
    assert snap_compare(
        ShoalConsole(FixedSource(), scenarios_dir=scenarios_dir),
        press=["colon", *"scenarios", "enter"],
        terminal_size=SIZE,
    )


def test_snapshot_help(snap_compare: Any) -> None:
    assert snap_compare(ShoalConsole(FixedSource()), press=["question_mark"], terminal_size=SIZE)


def test_snapshot_confirmation(snap_compare: Any) -> None:
    assert snap_compare(ShoalConsole(FixedSource()), press=["down", "b"], terminal_size=SIZE)


def test_snapshot_disconnected(snap_compare: Any) -> None:
    source = FixedSource(connected=False, detail="relay at tcp://127.0.0.1:5601 not answering")
    assert snap_compare(ShoalConsole(source), terminal_size=SIZE)


# --- k9s habits (issue 14, part 5) ---------------------------------------------------------


def test_j_k_g_G_home_end_move_in_every_table(scenarios_dir: Path) -> None:
    app = ShoalConsole(FixedSource(), scenarios_dir=scenarios_dir)

    async def steps(pilot: Pilot[None]) -> None:
        table = table_of(app)
        await pilot.press("j", "j")
        assert table.cursor_row == 2
        await pilot.press("k")
        assert table.cursor_row == 1
        await pilot.press("G")
        assert table.cursor_row == len(ALL_IDS) - 1
        await pilot.press("g")
        assert table.cursor_row == 0
        await pilot.press("end")
        assert table.cursor_row == len(ALL_IDS) - 1
        await pilot.press("home")
        assert table.cursor_row == 0
        await pilot.press("pagedown")
        assert table.cursor_row > 1
        await pilot.press("colon", *"events", "enter")
        await pilot.pause()
        events = app.screen.query_one("#events", DataTable)
        await pilot.press("g")
        assert events.cursor_row == 0
        await pilot.press("j", "G")
        assert events.cursor_row == events.row_count - 1
        await pilot.press("colon", *"scenarios", "enter")
        await pilot.pause()
        listing = app.screen.query_one(OptionList)
        await pilot.press("j")
        assert listing.highlighted == 1
        await pilot.press("k")
        assert listing.highlighted == 0
        await pilot.press("G")
        assert listing.highlighted == 1

    drive(app, steps)


def test_a_number_column_sorts_hottest_first_and_S_reverses() -> None:
    app = ShoalConsole(FixedSource())

    async def steps(pilot: Pilot[None]) -> None:
        table = table_of(app)
        await pilot.press("s", "s")  # node -> state (ascending) -> age: oldest first
        await pilot.pause()
        assert (table.sort_column, table.sort_reverse) == ("age", True)
        assert shown_ids(app)[0] == "sim-006"  # silent for an hour
        await pilot.press("s")  # cpu: busiest first
        await pilot.pause()
        assert shown_ids(app)[0] == "sim-001"
        await pilot.press("S")
        await pilot.pause()
        assert (table.sort_column, table.sort_reverse) == ("cpu", False)
        assert shown_ids(app)[0] == "sim-005"  # 5% (no cpu still last)
        table.sort_by("heap")  # free heap: the lowest is the hot one
        await pilot.pause()
        assert not table.sort_reverse

    drive(app, steps)


def test_follow_and_flood_have_distinct_keys() -> None:
    from shoal.tui.event_log import EventsScreen as Events

    follow = {b.key for b in Events.BINDINGS if "follow" in b.action}  # type: ignore[union-attr]
    assert follow == {"t"} and ACTION_KEYS["flood"] == "f"


def test_a_bad_regex_says_why_on_the_filter_box() -> None:
    app = ShoalConsole(FixedSource())

    async def steps(pilot: Pilot[None]) -> None:
        await type_filter(pilot, "esp")
        await pilot.press("slash", "(")
        await pilot.pause()
        box = app.screen.query_one("#filter")
        assert "bad regex" in str(box.border_title)
        assert "still showing: esp" in str(box.border_title)
        await pilot.press("backspace")
        await pilot.pause()
        assert box.border_title is None

    drive(app, steps)


def test_ctrl_k_stops_the_running_scenario_after_yes(scenarios_dir: Path) -> None:
    source = FixedSource()
    app = ShoalConsole(source, scenarios_dir=scenarios_dir)
    notes = Notes(app)

    async def steps(pilot: Pilot[None]) -> None:
        await pilot.press("colon", *"scenarios", "enter")
        await pilot.pause()
        await pilot.press("ctrl+k")  # none running: said, nothing asked
        await pilot.pause()
        assert "stop scenario: none is running" in notes.text()
        await pilot.press("enter")
        await answer(pilot)
        await asks_first(pilot, "stop scenario node-crash?", "ctrl+k")
        await answer(pilot)
        assert source.scenario is not None and source.scenario.verdict == "aborted"
        assert "node-crash stopped: aborted" in notes.text()
        assert "node-crash  aborted" in run_panel(app)

    drive(app, steps)


def test_q_leaves_a_console_that_does_not_own_the_cluster() -> None:
    quits_on(ShoalConsole(FixedSource()), "q")


def test_q_in_the_console_shoal_up_opened_asks_first() -> None:
    app = ShoalConsole(FixedSource(), owns_cluster=True)

    async def steps(pilot: Pilot[None]) -> None:
        await asks_first(pilot, "stop the cluster", "q")
        await pilot.press("n")
        await pilot.pause()
        assert app.is_running and isinstance(app.screen, NodesScreen)
        await pilot.press("colon", *"q", "enter")  # :q asks too
        await pilot.pause()
        assert isinstance(app.screen, ConfirmScreen)
        await pilot.press("y")
        await pilot.pause()
        assert not app.is_running

    drive(app, steps)


def test_colon_q_bang_quits_without_asking() -> None:
    quits_on(ShoalConsole(FixedSource(), owns_cluster=True), "colon", *"q!", "enter")


def test_help_at_80x24_stacks_its_sections_and_says_there_is_more() -> None:
    app = ShoalConsole(FixedSource())

    async def main() -> None:
        async with app.run_test(size=(80, 24)) as pilot:
            await pilot.press("question_mark")
            await pilot.pause()
            screen = app.screen
            assert isinstance(screen, HelpScreen)
            grid = screen.query_one("#help-grid")
            assert grid.styles.grid_size_columns == 1
            assert "scroll for more" in str(screen.query_one("#help-title").render())
            scroll = screen.query_one("#help")
            assert scroll.max_scroll_y > 0
            await pilot.press("j", "j")
            await pilot.pause()
            assert scroll.scroll_y > 0

    asyncio.run(main())


SMALL, LARGE = (80, 24), (200, 50)


@pytest.mark.parametrize("size", [SMALL, LARGE], ids=["80x24", "200x50"])
def test_snapshot_nodes_view_sizes(snap_compare: Any, size: tuple[int, int]) -> None:
    assert snap_compare(ShoalConsole(FixedSource()), terminal_size=size)


@pytest.mark.parametrize("size", [SMALL, LARGE], ids=["80x24", "200x50"])
def test_snapshot_help_sizes(snap_compare: Any, size: tuple[int, int]) -> None:
    assert snap_compare(ShoalConsole(FixedSource()), press=["question_mark"], terminal_size=size)


# --- freshness (issue 14, part 4) ----------------------------------------------------------


def test_a_silent_sources_figures_are_marked_stale_not_shown_as_current() -> None:
    from shoal.tui.header import summary

    source = FixedSource()
    fresh = str(summary(source.snapshot()))
    assert "msgs in/s 412.5" in fresh and "stale" not in fresh
    source.set_silent(relay=12.0, liveness=4.0)
    text = str(summary(source.snapshot()))
    assert "msgs in/s -" in text  # a rate of a silent relay is unknown
    assert "duplicates 3?" in text and "gaps 11?" in text  # counters: the last known
    assert "observer ?" in text
    assert "stale, silent: liveness 4.0s, relay 12s" in text


def test_a_service_not_running_shows_no_heartbeat() -> None:
    from shoal.tui.header import heartbeat
    from shoal.tui.model import ServiceRow

    assert heartbeat(ServiceRow("relay", "running", 1, 0, 9.0, 120)) == "<1s"
    assert heartbeat(ServiceRow("relay", "backoff", None, 1, 0.0, 120)) == "-"
    assert heartbeat(ServiceRow("relay", "?", None, 0, 0.0, 2500)) == "2.5s"


class FirstLookSource(FixedSource):
    """A feed before its first build: version 0, not connected."""

    def snapshot(self) -> Any:
        from shoal.tui.model import ClusterState

        return ClusterState(connected=False, detail="connecting...")


def test_no_red_banner_before_the_feed_has_had_its_first_look() -> None:
    app = ShoalConsole(FirstLookSource())

    async def steps(pilot: Pilot[None]) -> None:
        assert app.link == ("warn", "connecting to the cluster...")
        banner = app.screen.query_one(StatusBanner)
        assert not banner.has_class("-error")

    drive(app, steps)


# --- honest actions (issue 14, part 3) -----------------------------------------------------


@pytest.mark.parametrize("action", ["hang", "flood", "drain", "crash"])
def test_an_action_on_a_dead_node_says_so_and_asks_nothing(action: str) -> None:
    source, app, notes = console()

    async def steps(pilot: Pilot[None]) -> None:
        assert await press_on(pilot, ACTION_KEYS[action], "sim-004") is None
        assert f"{action}: sim-004 is dead: {action} needs a live node" in notes.text()
        assert source.actions == []

    drive(app, steps)


def test_remove_is_only_offered_on_a_dead_or_left_node() -> None:
    _, app, notes = console()

    async def steps(pilot: Pilot[None]) -> None:
        await press_on(pilot, "x", "sim-000")
        assert "sim-000 is alive: only a dead or left node can be removed" in notes.text()
        assert await press_on(pilot, "x", "sim-006") is not None  # left

    drive(app, steps)


def test_drain_shows_on_the_row_and_d_again_undrains() -> None:
    source, app, _ = console()

    async def steps(pilot: Pilot[None]) -> None:
        await press_on(pilot, "d", "sim-002")
        await answer(pilot)
        table = table_of(app)
        assert str(table.get_cell("sim-002", "state")) == "alive, drained"
        await asks_first(pilot, "undrain node sim-002?", "d")
        await answer(pilot)
        assert source.actions == [("drain", "sim-002"), ("undrain", "sim-002")]
        assert str(table.get_cell("sim-002", "state")) == "alive"

    drive(app, steps)


# --- the tasks view (issue 14, part 1) -----------------------------------------------------


def test_tasks_view_lists_the_ledger_filters_and_opens_a_tasks_history() -> None:
    from shoal.tui.fixtures import FIXED_TASKS
    from shoal.tui.tasks import TaskHistoryScreen, TasksScreen

    app = ShoalConsole(FixedSource())

    async def steps(pilot: Pilot[None]) -> None:
        await pilot.press("colon", *"tasks", "enter")
        await settle(pilot)
        screen = app.screen
        assert isinstance(screen, TasksScreen)
        assert screen.table.row_count == len(FIXED_TASKS)
        counts = str(screen.query_one("#ledger-counts").render())
        assert "running 1" in counts and "dead_letter 1" in counts
        await pilot.press("slash", *"state:running|assigned", "enter")
        await pilot.pause()
        assert screen.table.row_count == 2
        await pilot.press("escape")
        await pilot.pause()
        await pilot.press("slash", *"node:sim-002", "enter")
        await pilot.pause()
        assert screen.table.row_count == 2  # running and done on sim-002
        await pilot.press("escape", "j", "enter")
        await settle(pilot)
        history = app.screen
        assert isinstance(history, TaskHistoryScreen)
        assert history.task_id == FIXED_TASKS[1].task_id
        title = str(history.query_one("#task-title").render())
        assert "assigned" in title and "why: owner sim-004 dead" in title
        assert history.query_one("#task-history", DataTable).row_count == 3
        await pilot.press("escape")
        await pilot.pause()
        assert isinstance(app.screen, TasksScreen)

    drive(app, steps)


def test_tasks_view_without_a_delegator_says_so() -> None:
    source = FixedSource()
    source.unavailable["ledger"] = "no ledger: delegator at tcp://x not answering"
    app = ShoalConsole(source)

    async def steps(pilot: Pilot[None]) -> None:
        await pilot.press("colon", *"tasks", "enter")
        await settle(pilot)
        assert "no ledger" in str(app.screen.query_one("#ledger-counts").render())

    drive(app, steps)


def test_node_detail_lists_the_nodes_tasks() -> None:
    app = ShoalConsole(FixedSource())

    async def steps(pilot: Pilot[None]) -> None:
        app.open_detail("sim-002")
        await settle(pilot)
        text = str(app.screen.query_one("#node-ledger").render())
        assert "1 tasks on this node now" in text and "sim-001-000041 running" in text

    drive(app, steps)


def test_snapshot_tasks_view(snap_compare: Any) -> None:
    async def wait(pilot: Pilot[None]) -> None:
        await pilot.press("colon", *"tasks", "enter")
        await settle(pilot)

    assert snap_compare(ShoalConsole(FixedSource()), run_before=wait, terminal_size=(120, 30))
