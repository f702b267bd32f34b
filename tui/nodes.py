"""The nodes view (the default screen): header, services, and the nodes table.

Keys: `/` filter, Esc clears it, Enter opens the node's detail, `s`/`r` sort, and the node
actions (tui/actions.py).
"""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal
from textual.widgets import DataTable, Footer, Input

from .actions import NODE_ACTION_BINDINGS
from .base import ConsoleScreen, StatusBanner
from .filter_box import FilterBox
from .header import ClusterSummary, ServicesPanel
from .model import ClusterState
from .node_table import NodeTable

NODE_FIELDS = ("state",)  # what `field:regex` may name in the nodes filter


class NodesScreen(ConsoleScreen):
    AUTO_FOCUS = "NodeTable"
    BINDINGS = [
        Binding("slash", "filter", "filter"),
        Binding("escape", "clear_filter", "clear filter", show=False),
        *NODE_ACTION_BINDINGS,
    ]

    def compose(self) -> ComposeResult:
        yield StatusBanner(id="banner")
        with Horizontal(id="top"):
            yield ClusterSummary(id="summary")
            yield ServicesPanel(id="services")
        yield FilterBox(NODE_FIELDS, "regex on node id or state; ! inverts; state:dead", "filter")
        yield NodeTable(id="nodes")
        yield Footer()

    @property
    def table(self) -> NodeTable:
        return self.query_one(NodeTable)

    def show_state(self, state: ClusterState) -> None:
        self.query_one(ClusterSummary).show(state, self.console.readonly)
        self.query_one(ServicesPanel).show(state)
        self.table.show(state.nodes)
        self.query_one(FilterBox).rows = len(state.nodes)

    def on_resize(self) -> None:
        # The services panel is compact below 100 columns: a new width may change it.
        self.query_one(ServicesPanel).show(self.console.state)

    # --- filter ------------------------------------------------------------------------

    def action_filter(self) -> None:
        self.query_one(FilterBox).open()

    def action_clear_filter(self) -> None:
        self.query_one(FilterBox).clear_filter()
        self.table.focus()

    def on_filter_box_applied(self, event: FilterBox.Applied) -> None:
        self.table.set_query(event.query)

    def on_input_submitted(self, event: Input.Submitted) -> None:
        box = self.query_one(FilterBox)
        if not event.value.strip():
            self.action_clear_filter()
        else:
            box.apply_pending()
            self.table.focus()

    # --- drill down and actions ----------------------------------------------------------

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        if event.row_key.value is not None:
            self.console.open_detail(event.row_key.value)

    def action_node_action(self, action: str) -> None:
        self.console.request_action(action, self.table.selected)
