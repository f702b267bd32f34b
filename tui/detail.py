"""One node in detail: its fields and reason, cpu/load/queue sparklines, tasks, events."""

from __future__ import annotations

from rich.table import Table
from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.coordinate import Coordinate
from textual.timer import Timer
from textual.widgets import DataTable, Footer, Label, Sparkline, Static

from . import format as fmt
from .actions import NODE_ACTION_BINDINGS
from .base import ConsoleScreen, StatusBanner
from .keys import ConsoleTable
from .model import GONE_STATES, ClusterState, NodeRow, Sample, Source
from .tasks import LEDGER_REFRESH_S, node_tasks

NO_TASKS = "tasks: this node reports none (firmware without the task fields)"
EVENT_ROWS = 500  # this node's newest events kept on screen


def fields(row: NodeRow) -> Table:
    grid = Table.grid(padding=(0, 2))
    for _ in range(3):
        grid.add_column(style="dim")
        grid.add_column()
    pairs = (
        ("state", fmt.state_text(row.state)),
        ("last heard", fmt.age_ms(row.age_ms)),
        ("fw", row.fw or fmt.DASH),
        ("cpu%", fmt.num(row.cpu_pct, "{:.1f}")),
        ("load", fmt.num(row.load_factor, "{:.2f}")),
        ("queue", fmt.queue(row.queue_depth, row.queue_capacity)),
        ("free heap", fmt.heap(row.free_heap)),
        ("rssi", fmt.num(row.rssi, "{} dBm")),
        ("gaps", str(row.gaps)),
        ("boot id", str(row.boot_id)),
        ("boots", str(row.boots)),
        ("via", row.via or fmt.DASH),
    )
    for i in range(0, len(pairs), 3):
        grid.add_row(*(part for pair in pairs[i : i + 3] for part in pair))
    return grid


def ota(row: NodeRow) -> str:
    return f"ota: {row.ota}" if row.ota else ""


def tasks(row: NodeRow) -> str:
    if row.state in GONE_STATES:
        # Its figures are history (the feed blanks them): not "firmware without tasks".
        return f"tasks: - ({row.state}: the events below say where its tasks went)"
    if row.tasks_running is None:
        return NO_TASKS
    return (
        f"tasks: running {row.tasks_running}  delegated in {fmt.num(row.delegated_in)}"
        f"  out {fmt.num(row.delegated_out)}"
    )


class NodeDetailScreen(ConsoleScreen):
    AUTO_FOCUS = "#node-events"
    BINDINGS = [
        Binding("escape", "app.pop_screen", "back"),
        *NODE_ACTION_BINDINGS,
    ]

    def __init__(self, node_id: str) -> None:
        super().__init__()
        self.node_id = node_id
        self._row: NodeRow | None = None
        self._history: list[Sample] | None = None
        self._events_upto = 0  # app event-log number of the newest event looked at
        self._ledger_timer: Timer | None = None

    def compose(self) -> ComposeResult:
        yield StatusBanner(id="banner")
        with Vertical(id="detail"):
            yield Static(id="title")
            yield Static(id="fields")
            yield Static(id="reason")
            for name in ("cpu", "load", "queue"):
                with Horizontal(classes="spark"):
                    yield Label(name, id=f"{name}-label", classes="spark-label")
                    yield Sparkline([], id=f"{name}-spark")
            yield Static(id="tasks")
            yield Static(id="node-ledger")
        events = ConsoleTable(id="node-events", cursor_type="row", zebra_stripes=True)
        events.border_title = "events"
        yield events
        yield Footer()

    def on_screen_resume(self) -> None:
        super().on_screen_resume()
        self.fetch_ledger()
        if self._ledger_timer is None:
            self._ledger_timer = self.set_interval(LEDGER_REFRESH_S, self.fetch_ledger)

    def on_screen_suspend(self) -> None:
        if self._ledger_timer is not None:
            self._ledger_timer.stop()
            self._ledger_timer = None

    @work(thread=True, exclusive=True, group="node-ledger")
    def fetch_ledger(self) -> None:
        """The ledger's tasks on this node, asked off the UI thread while shown."""
        source: Source = self.app.source  # type: ignore[attr-defined]
        try:
            text = node_tasks(source.ledger(), self.node_id)
        except Exception as err:  # no delegator: said in the panel, never raised
            text = Text(f"ledger: {err}", "dim")
        self.app.call_from_thread(self.query_one("#node-ledger", Static).update, text)

    def on_mount(self) -> None:
        table = self.query_one("#node-events", DataTable)
        table.add_column("time", key="time")
        table.add_column("kind", key="kind")
        table.add_column("text", key="text")

    def show_state(self, state: ClusterState) -> None:
        row = state.nodes.get(self.node_id)
        title = self.query_one("#title", Static)
        if row is None:
            title.update(Text(f"{self.node_id}: no longer in the cluster view", "bold red"))
        elif row != self._row:
            self._row = row
            title.update(Text.assemble((row.node_id, "bold"), "  ", fmt.state_text(row.state)))
            self.query_one("#fields", Static).update(fields(row))
            self.query_one("#reason", Static).update(
                Text.assemble(("reason ", "dim"), row.reason or fmt.DASH)
            )
            self.query_one("#tasks", Static).update(
                tasks(row) + (f"\n{ota(row)}" if row.ota else "")  # a board being updated
            )
        self._show_history()
        self._show_events()

    def _show_history(self) -> None:
        history = self.console.history(self.node_id)
        if history == self._history:
            return
        self._history = history
        series = {
            "cpu": ([s.cpu_pct for s in history], "{:.0f}%"),
            "load": ([s.load_factor for s in history], "{:.2f}"),
            "queue": ([float(s.queue_depth) for s in history], "{:.0f}"),
        }
        for name, (data, form) in series.items():
            self.query_one(f"#{name}-spark", Sparkline).data = data
            label = (
                name if not data else f"{name} {form.format(data[-1])} max {form.format(max(data))}"
            )
            self.query_one(f"#{name}-label", Label).update(label)

    def _show_events(self) -> None:
        table = self.query_one("#node-events", DataTable)
        new = self.console.events_after(self._events_upto)
        if not new:
            return
        self._events_upto = new[-1][0]
        with self.app.batch_update():
            for n, event in new:
                if event.node_id == self.node_id:
                    table.add_row(
                        fmt.clock(event.at),
                        Text(event.kind, fmt.KIND_STYLES.get(event.kind, "")),
                        event.text,
                        key=str(n),
                    )
            while table.row_count > EVENT_ROWS:
                table.remove_row(table.coordinate_to_cell_key(Coordinate(0, 0)).row_key)
            if table.row_count:
                table.move_cursor(row=table.row_count - 1)

    def action_node_action(self, action: str) -> None:
        self.console.request_action(action, self.node_id)
