"""The `?` view: every key, read from the BINDINGS of the screens that own them."""

from __future__ import annotations

from collections.abc import Iterable

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Grid
from textual.screen import Screen
from textual.widgets import Footer, Static

from .actions import ACTION_KEYS, ACTION_TEXT
from .command import VIEWS
from .keys import NAVIGATION_HELP, ConsoleScroll
from .model import ACTIONS

KEY_NAMES = {
    "colon": ":",
    "question_mark": "?",
    "slash": "/",
    "escape": "Esc",
    "enter": "Enter",
    "ctrl+c": "Ctrl+C",
    "ctrl+k": "Ctrl+K",
    "home": "Home",
    "end": "End",
    "ctrl+q": "Ctrl+Q",
}

FILTER_HELP = (
    ("sim-00[1-3]", "a regex on node id or state (events: kind, node, text); any case"),
    ("!regex", "everything that does not match"),
    ("state:dead", "one field in full: state:suspect|dead; events: kind:fault, node:sim-003"),
    ("Esc", "clear the filter"),
)

SCENARIO_HELP = (
    ("q :q Ctrl+C", "quitting stops a running scenario too (faults healed, report written)"),
)
QUIT_HELP = ((":q!", "quit without asking"),)
# Longer words than the footer has room for, by action.
LONGER = {
    "leave": "quit (the console shoal up opened asks: the cluster stops with it)",
    "quit": "quit at once (the cluster shoal up started stops too)",
}
TWO_COLUMNS_FROM = 110  # terminal columns; narrower, the sections stack in one
HINT = "  j/k PgUp/PgDn scroll for more; Esc back"


def key_label(keys: str) -> str:
    return " ".join(KEY_NAMES.get(k, k) for k in keys.split(","))


def section(
    title: str, bindings: Iterable[BindingType], extra: tuple[tuple[str, str], ...] = ()
) -> Table:
    table = Table(
        title=title,
        title_justify="left",
        title_style="bold",
        box=None,
        padding=(0, 2, 0, 0),
        show_header=False,
    )
    table.add_column("key", style="bold cyan", min_width=8)
    table.add_column("does")
    for binding in Binding.make_bindings(bindings):
        if binding.description and not binding.action.startswith("node_action"):
            table.add_row(key_label(binding.key), LONGER.get(binding.action, binding.description))
    for key, does in extra:
        table.add_row(key, does)
    return table


def help_sections(app_bindings: Iterable[BindingType]) -> list[Table]:
    """Every key, by where it works; ``app_bindings`` are the app's own (passed in: the app
    imports this module, not the other way round)."""
    # Imported here: the screens import this module's neighbours, not the other way round.
    from .confirm import ConfirmScreen
    from .detail import NodeDetailScreen
    from .event_log import EventsScreen
    from .node_table import NodeTable
    from .nodes import NodesScreen
    from .scenarios import ScenariosScreen
    from .tasks import TasksScreen

    actions = tuple((ACTION_KEYS[a], f"{a}: {ACTION_TEXT[a]}") for a in ACTIONS)
    commands = (*((f":{v}", f"the {v} view") for v in VIEWS), (":q", "quit"), *QUIT_HELP)
    return [
        section("everywhere", app_bindings, commands),
        section("moving (every table)", [], NAVIGATION_HELP),
        section(
            "nodes",
            [*NodesScreen.BINDINGS, *NodeTable.BINDINGS],
            (
                ("Enter", "node detail"),
                ("", "a number sorts hottest first (heap, rssi: lowest)"),
                ("click header", "sort by it (again: reverse)"),
            ),
        ),
        section("node detail", NodeDetailScreen.BINDINGS),
        section("actions (nodes view and detail; y/n to confirm)", [], actions),
        section("events", EventsScreen.BINDINGS),
        section(
            "tasks",
            TasksScreen.BINDINGS,
            (("Enter", "the task's history"), ("filter", "state:running, node:sim-001, kind:hash")),
        ),
        section("scenarios", ScenariosScreen.BINDINGS, SCENARIO_HELP),
        section("confirmation", ConfirmScreen.BINDINGS),
        section("filter (/)", [], FILTER_HELP),
    ]


class HelpScreen(Screen[None]):
    """Every key; made with the app's own bindings."""

    BINDINGS = [
        Binding("escape", "app.pop_screen", "back"),
        Binding("question_mark", "app.pop_screen", "back", show=False),
        Binding("q", "app.pop_screen", "back", show=False),
    ]

    def __init__(self, app_bindings: Iterable[BindingType]) -> None:
        super().__init__()
        self.app_bindings = list(app_bindings)

    def compose(self) -> ComposeResult:
        with ConsoleScroll(id="help"):
            title = Text("shoal console: keys", "bold")
            title.append(HINT, "dim")
            if getattr(self.app, "readonly", False):
                title.append("   read-only: actions are refused", "bold yellow")
            yield Static(title, id="help-title")
            with Grid(id="help-grid"):
                for table in help_sections(self.app_bindings):
                    yield Static(table, classes="help-section")
        yield Footer()

    def on_resize(self) -> None:
        # Two columns when they fit; at 80x24 one, scrolled (the title says so).
        grid = self.query_one("#help-grid", Grid)
        grid.styles.grid_size_columns = 2 if self.size.width >= TWO_COLUMNS_FROM else 1
