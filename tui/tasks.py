"""The tasks view (`:tasks`): the delegator's ledger, counts by state and the latest
changed tasks, filterable by state, node (owner or origin) and kind; Enter shows a task's
history. The ledger is asked on a worker thread every LEDGER_REFRESH_S while the view is
shown, never on the UI thread and never while it is hidden."""

from __future__ import annotations

from rich.cells import cell_len
from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.timer import Timer
from textual.widgets import DataTable, Footer, Static

from . import format as fmt
from . import query
from .base import StatusBanner
from .filter_box import FilterBox, FilteredScreen
from .keys import ConsoleTable
from .model import TASK_STATES, ActionError, Ledger, Source, TaskRow, TaskStep

LEDGER_REFRESH_S = 2.0
REBUILD_OVER = 200  # rows more or fewer than shown (a filter): cheaper built anew
TASK_FIELDS = ("state", "node", "kind")
STATE_STYLES = {
    "pending": "yellow",
    "assigned": "cyan",
    "running": "green",
    "done": "dim green",
    "delivered": "dim",
    "dead_letter": "bold red",
}
COLUMNS = ("task", "state", "kind", "owner", "origin", "epoch", "redeliveries", "changed", "why")


def counts_text(ledger: Ledger, shown: int) -> Text:
    text = Text()
    text.append("ledger ", "bold")
    for state in TASK_STATES:
        n = ledger.counts.get(state, 0)
        text.append(f"{state} ", STATE_STYLES[state] if n else "dim")
        text.append(f"{n}  ", "bold" if n else "dim")
    text.append(f"\nthe latest {len(ledger.tasks)} changed tasks, {shown} shown", "dim")
    return text


def _texts(row: TaskRow) -> tuple[str, ...]:
    return (row.task_id, row.state, row.kind, row.owner or "", row.origin or "", row.reason)


def _cells(r: TaskRow) -> tuple[str | Text, ...]:
    """A task's cells as the table shows them, in COLUMNS order."""
    return (
        r.task_id,
        Text(r.state, STATE_STYLES.get(r.state, "")),
        r.kind or fmt.DASH,
        r.owner or fmt.DASH,
        r.origin or fmt.DASH,
        Text(str(r.epoch), justify="right"),
        Text(str(r.redeliveries), justify="right"),
        fmt.clock(r.updated_at) if r.updated_at else fmt.DASH,
        r.reason,
    )


def _fields(row: TaskRow) -> dict[str, str]:
    return {"state": row.state, "kind": row.kind, "node": row.owner or row.origin or ""}


def node_tasks(ledger: Ledger, node_id: str) -> Text:
    """For the node detail: the tasks the ledger has on this node (owned or offered)."""
    owned = [r for r in ledger.tasks if r.owner == node_id and r.state in ("assigned", "running")]
    offered = sum(1 for r in ledger.tasks if r.origin == node_id)
    text = Text()
    text.append("ledger ", "dim")
    text.append(f"{len(owned)} tasks on this node now", "bold")
    text.append(f"; {offered} offered by it among the latest {len(ledger.tasks)}", "dim")
    for r in owned[:5]:
        text.append(f"\n  {r.task_id} {r.state} epoch {r.epoch}")
    if len(owned) > 5:
        text.append(f"\n  ... {len(owned) - 5} more (:tasks, filter node:{node_id})", "dim")
    return text


class TasksScreen(FilteredScreen):
    AUTO_FOCUS = "#tasks-table"
    BINDINGS = [
        Binding("slash", "filter", "filter"),
        Binding("escape", "back", "back"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.ledger: Ledger | None = None
        self.query_ = query.EVERYTHING
        self._timer: Timer | None = None
        self._slots: list[tuple[str, tuple[str | Text, ...]]] = []  # row n: task id, cells

    @property
    def source(self) -> Source:
        return self.app.source  # type: ignore[attr-defined, no-any-return]

    def compose(self) -> ComposeResult:
        yield StatusBanner(id="banner")
        yield Static(Text("asking the delegator...", "dim"), id="ledger-counts")
        yield FilterBox(
            TASK_FIELDS, "regex on task, state, kind, node; state:running, node:sim-001", "filter"
        )
        yield ConsoleTable(id="tasks-table", cursor_type="row", zebra_stripes=True)
        yield Footer()

    @property
    def table(self) -> DataTable[str | Text]:
        return self.query_one("#tasks-table", DataTable)

    def on_mount(self) -> None:
        for key in COLUMNS:
            self.table.add_column(key, key=key)
        self.table.border_title = "tasks"

    def on_screen_resume(self) -> None:
        super().on_screen_resume()
        self.fetch()
        if self._timer is None:
            self._timer = self.set_interval(LEDGER_REFRESH_S, self.fetch)

    def on_screen_suspend(self) -> None:
        if self._timer is not None:
            self._timer.stop()
            self._timer = None

    @work(thread=True, exclusive=True, group="ledger")
    def fetch(self) -> None:
        try:
            ledger = self.source.ledger()
        except ActionError as err:
            self.app.call_from_thread(self._no_ledger, str(err))
        except Exception as err:  # the banner tells about the link; the view says why
            self.app.call_from_thread(self._no_ledger, f"{type(err).__name__}: {err}")
        else:
            self.app.call_from_thread(self.show_ledger, ledger)

    def _no_ledger(self, why: str) -> None:
        self.query_one("#ledger-counts", Static).update(Text(why, "bold red"))

    def show_ledger(self, ledger: Ledger) -> None:
        """Show the ledger's rows, latest changed first, writing only the cells that changed.

        Rows are slots (row n shows the n-th task), not keyed by task: with delegation going
        on the latest 1,000 tasks turn over within one refresh, and a table rebuilt (or
        re-sorted after removing and adding rows) every 2 s re-measured 9,000 cells each
        time, most of the view's CPU at 1,000 nodes. A slot's changed cell is written as is
        (measured only when wider than its column), and only rows in view are drawn."""
        self.ledger = ledger
        table = self.table
        selected = self.selected
        rows = [r for r in ledger.tasks if self.query_.matches(_texts(r), _fields(r))]
        columns = {str(key.value): column for key, column in table.columns.items()}
        with self.app.batch_update():
            if abs(len(rows) - len(self._slots)) > REBUILD_OVER:
                table.clear()
                self._slots.clear()
            while len(self._slots) > len(rows):
                table.remove_row(str(len(self._slots) - 1))
                self._slots.pop()
            for n, r in enumerate(rows):
                cells = _cells(r)
                if n == len(self._slots):
                    table.add_row(*cells, key=str(n))
                    self._slots.append((r.task_id, cells))
                    continue
                old = self._slots[n][1]
                if old != cells:
                    for column, was, now in zip(COLUMNS, old, cells, strict=True):
                        if was != now:
                            plain = now if isinstance(now, str) else now.plain
                            wider = cell_len(plain) > columns[column].content_width
                            table.update_cell(str(n), column, now, update_width=wider)
                    self._slots[n] = (r.task_id, cells)
            if selected is not None:
                where = next((n for n, r in enumerate(rows) if r.task_id == selected), None)
                if where is not None and where != table.cursor_row:
                    table.move_cursor(row=where)  # the cursor stays on its task
        self.query_one("#ledger-counts", Static).update(counts_text(ledger, len(rows)))
        self.table.border_title = f"tasks [{len(rows)}/{len(ledger.tasks)}]" + self.filter_note()
        self.query_one(FilterBox).rows = len(ledger.tasks)

    @property
    def selected(self) -> str | None:
        """The task id under the cursor."""
        row = self.table.cursor_row
        return self._slots[row][0] if self.table.row_count and row < len(self._slots) else None

    # --- keys --------------------------------------------------------------------------

    def refilter(self) -> None:
        if self.ledger is not None:
            self.show_ledger(self.ledger)

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        if event.data_table is self.table and event.cursor_row < len(self._slots):
            self.app.push_screen(TaskHistoryScreen(self._slots[event.cursor_row][0]))


class TaskHistoryScreen(Screen[None]):
    """One task: its ledger row and every state change, oldest first."""

    AUTO_FOCUS = "#task-history"
    BINDINGS = [Binding("escape", "app.pop_screen", "back")]

    def __init__(self, task_id: str) -> None:
        super().__init__()
        self.task_id = task_id

    def compose(self) -> ComposeResult:
        yield Static(Text(f"{self.task_id}: asking the delegator...", "dim"), id="task-title")
        yield ConsoleTable(id="task-history", cursor_type="row", zebra_stripes=True)
        yield Footer()

    def on_mount(self) -> None:
        table = self.query_one("#task-history", DataTable)
        for key in ("time", "from", "to", "epoch", "node", "detail"):
            table.add_column(key, key=key)
        table.border_title = "history"
        self.fetch()

    @work(thread=True, exclusive=True, group="task")
    def fetch(self) -> None:
        source: Source = self.app.source  # type: ignore[attr-defined]
        try:
            row, steps = source.task_history(self.task_id)
        except Exception as err:
            self.app.call_from_thread(
                self.query_one("#task-title", Static).update, Text(str(err), "bold red")
            )
        else:
            self.app.call_from_thread(self.show, row, steps)

    def show(self, row: TaskRow, steps: list[TaskStep]) -> None:
        title = Text.assemble(
            (row.task_id, "bold"),
            "  ",
            (row.state, STATE_STYLES.get(row.state, "")),
            (f"  kind {row.kind or fmt.DASH}  owner {row.owner or fmt.DASH}", ""),
            (f"  origin {row.origin or fmt.DASH}  epoch {row.epoch}", ""),
            (f"  redeliveries {row.redeliveries}", ""),
        )
        if row.reason:
            title.append(f"\nwhy: {row.reason}", "dim")
        self.query_one("#task-title", Static).update(title)
        table = self.query_one("#task-history", DataTable)
        table.clear()
        for n, step in enumerate(steps):
            table.add_row(
                fmt.clock(step.at),
                step.from_state or "(new)",
                step.to_state,
                str(step.epoch),
                step.node or fmt.DASH,
                step.detail,
                key=str(n),
            )
