"""The events view: every event (time, kind, node, text), newest last, filterable, and
following the newest unless the operator turns that off."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.widgets import DataTable, Footer

from . import format as fmt
from . import query
from .base import StatusBanner
from .filter_box import FilterBox, FilteredScreen
from .keys import ConsoleTable
from .model import ClusterState, Event

MAX_ROWS = 3000  # rows kept on screen; more, and the oldest go in one batch
TRIM_SLACK = 500
EVENT_FIELDS = ("kind", "node")  # what `field:regex` may name in the events filter


def _texts(event: Event) -> tuple[str, ...]:
    return (event.kind, event.node_id or "", event.text)


def _fields(event: Event) -> dict[str, str]:
    return {"kind": event.kind, "node": event.node_id or ""}


class EventsScreen(FilteredScreen):
    AUTO_FOCUS = "#events"
    BINDINGS = [
        Binding("slash", "filter", "filter"),
        # t (tail -f): not f, which floods a node in the nodes view.
        Binding("t", "toggle_follow", "follow"),
        Binding("escape", "back", "back"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.follow = True
        self.query_ = query.EVERYTHING
        self._upto = 0  # app event-log number of the newest event looked at

    def compose(self) -> ComposeResult:
        yield StatusBanner(id="banner")
        yield FilterBox(
            EVENT_FIELDS,
            "regex on kind, node or text; ! inverts; kind:fault, node:sim-003",
            "filter",
        )
        yield ConsoleTable(id="events", cursor_type="row", zebra_stripes=True)
        yield Footer()

    @property
    def table(self) -> DataTable[str | Text]:
        return self.query_one("#events", DataTable)

    def on_mount(self) -> None:
        for key in ("time", "kind", "node", "text"):
            self.table.add_column(key, key=key)
        self._title()

    def show_state(self, state: ClusterState) -> None:
        new = self.console.events_after(self._upto)
        if not new:
            return
        self._upto = new[-1][0]
        self._add(new)
        self.query_one(FilterBox).rows = len(self.console.event_log)

    def _add(self, items: list[tuple[int, Event]]) -> None:
        table = self.table
        with self.app.batch_update():
            for n, event in items:
                if self.query_.matches(_texts(event), _fields(event)):
                    table.add_row(
                        fmt.clock(event.at),
                        Text(event.kind, fmt.KIND_STYLES.get(event.kind, "")),
                        event.node_id or fmt.DASH,
                        event.text,
                        key=str(n),
                    )
            if table.row_count > MAX_ROWS + TRIM_SLACK:
                self._rebuild()
                return
            self._after_change()

    def _rebuild(self) -> None:
        """Show the newest MAX_ROWS events the filter lets through (filter change, trim)."""
        keep: list[tuple[int, Event]] = []
        for n, event in reversed(self.console.event_log):
            if n > self._upto:
                continue
            if self.query_.matches(_texts(event), _fields(event)):
                keep.append((n, event))
                if len(keep) == MAX_ROWS:
                    break
        keep.reverse()
        self.table.clear()
        self._add(keep)

    def _after_change(self) -> None:
        if self.follow and self.table.row_count:
            self.table.move_cursor(row=self.table.row_count - 1)
        self._title()

    def _title(self) -> None:
        follow = "on" if self.follow else "off"
        self.table.border_title = f"events [{self.table.row_count}]  follow: {follow}" + (
            self.filter_note()
        )

    # --- keys --------------------------------------------------------------------------

    def action_toggle_follow(self) -> None:
        self.follow = not self.follow
        self._after_change()

    def refilter(self) -> None:
        self._rebuild()
