"""The nodes table: one keyed row per node, refreshed by touching only what changed.

A refresh compares each node's cell texts with what the table shows and calls
``update_cell`` for the differences only, and only for the rows in view (the others are
written when they scroll into view); rows are added and removed by key; the rows are
re-sorted only when the sort column changed or rows were added; and a cell or line is
rendered again only when what it shows changed.

That last part overrides two private DataTable methods (``_render_cell``, ``_render_line``)
to cache by content instead of by DataTable's table-wide update count: at 1,000 live nodes
it takes the console from 72% to 15% of a core (bench/tui.py). textual is pinned below 9;
the snapshot tests and test_a_changed_cell_is_drawn_with_its_new_value catch a change there.
"""

from __future__ import annotations

from functools import total_ordering
from typing import Any

from rich.cells import cell_len
from rich.console import JustifyMethod
from rich.segment import Segment
from rich.style import Style
from rich.text import Text
from textual.binding import Binding
from textual.cache import LRUCache
from textual.coordinate import Coordinate
from textual.geometry import Region
from textual.strip import Strip
from textual.widgets import DataTable
from textual.widgets.data_table import ColumnKey

from . import format as fmt
from .keys import ConsoleTable
from .model import NodeRow
from .query import EVERYTHING, Query

SORT_KEYS = {key: sort for key, _, sort in fmt.COLUMNS}
LABELS = {key: label for key, label, _ in fmt.COLUMNS}
FULL_REBUILD_OVER = 64  # more rows to remove than this: clear and re-add (remove is O(rows))
OFFSCREEN_MARGIN = 8  # rows above and below the view kept current too
CELL_CACHE_SIZE = 8192  # rendered cells: a few screens of a 13-column table
LINE_CACHE_SIZE = 1024  # rendered lines

SegmentLines = list[list[Segment]]  # a rendered cell, as DataTable has it


@total_ordering
class Descending:
    """A sort key in reverse order, so that ties and missing values keep their own order."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Descending) and self.value == other.value

    def __lt__(self, other: Descending) -> bool:
        return bool(self.value > other.value)

    __hash__ = None  # type: ignore[assignment]


def hottest_first(column: str) -> bool:
    """Whether a column's first sort is descending: the busiest, oldest, most behind rows
    on top (free heap and rssi: the lowest is the worst, so those sort ascending)."""
    return column in fmt.HOT_HIGH


class NodeTable(ConsoleTable):
    """Nodes keyed by node_id; sorted by a column (`s` cycles it, `S` reverses, or click
    a header; a number sorts hottest first); filtered by a Query."""

    BINDINGS = [
        Binding("s", "cycle_sort", "sort"),
        Binding("S", "reverse_sort", "reverse"),
    ]

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(cursor_type="row", zebra_stripes=True, **kwargs)
        self.sort_column = "node"
        self.sort_reverse = False
        self.query_: Query = EVERYTHING
        self.nodes: dict[str, NodeRow] = {}
        self._shown: dict[str, tuple[str, ...]] = {}  # node_id -> cell texts in the table
        self._latest: dict[str, tuple[str, ...]] = {}  # node_id -> cell texts of the state
        self._pending: dict[str, tuple[str, ...]] = {}  # latest, not written (out of view)
        self._cells_cache: LRUCache[tuple[Any, ...], SegmentLines] = LRUCache(CELL_CACHE_SIZE)
        self._lines_cache: LRUCache[tuple[Any, ...], Strip] = LRUCache(LINE_CACHE_SIZE)
        self._widths: tuple[int, ...] = ()  # column widths of the frame being rendered

    def on_mount(self) -> None:
        for key, label, _ in fmt.COLUMNS:
            justify: JustifyMethod = "left" if key in fmt.LEFT_ALIGNED else "right"
            self.add_column(Text(label, justify=justify), key=key)
        self._title()

    # --- what the screen calls ---------------------------------------------------------

    @property
    def selected(self) -> str | None:
        """The node id under the cursor."""
        if not self.row_count:
            return None
        row_key, _ = self.coordinate_to_cell_key(self.cursor_coordinate)
        return row_key.value

    def show(self, nodes: dict[str, NodeRow]) -> None:
        """Make the rows say what ``nodes`` says (those the filter lets through)."""
        self.nodes = nodes
        keep = {
            node_id: row
            for node_id, row in nodes.items()
            if self.query_.matches((node_id, row.state), {"state": row.state})
        }
        selected = self.selected
        shown, latest, pending = self._shown, self._latest, self._pending
        gone = [node_id for node_id in shown if node_id not in keep]
        reorder = False
        with self.app.batch_update():
            if len(gone) > FULL_REBUILD_OVER:
                self.clear()
                shown.clear()
                latest.clear()
                pending.clear()
            else:
                for node_id in gone:
                    self.remove_row(node_id)
                    del shown[node_id], latest[node_id]
                    pending.pop(node_id, None)
            sort_index = fmt.COLUMN_KEYS.index(self.sort_column)
            for node_id, row in keep.items():
                new = fmt.cells(row)
                last = latest.get(node_id)
                if last is None:
                    self.add_row(
                        *(fmt.cell(k, v) for k, v in zip(fmt.COLUMN_KEYS, new, strict=True)),
                        key=node_id,
                    )
                    shown[node_id] = latest[node_id] = new
                    reorder = True
                elif new != last:
                    latest[node_id] = new
                    reorder = reorder or new[sort_index] != last[sort_index]
                    if new == shown[node_id]:
                        pending.pop(node_id, None)
                    else:
                        pending[node_id] = new
            if reorder:
                self._sort()
            if selected is not None and selected in shown:
                self._keep_cursor_on(selected)
            self._apply_visible()
            self._title()

    def _apply_visible(self) -> None:
        """Write the pending cells of the rows in view (or nearly): the others wait until
        they scroll into view, so a refresh costs what the screen shows, not the cluster."""
        if not self._pending:
            return
        top = max(0, int(self.scroll_y) - OFFSCREEN_MARGIN)
        bottom = min(self.row_count, int(self.scroll_y) + self.size.height + OFFSCREEN_MARGIN)
        shown, pending = self._shown, self._pending
        for index in range(top, bottom):
            node_id = self.coordinate_to_cell_key(Coordinate(index, 0)).row_key.value
            if node_id is None or (new := pending.pop(node_id, None)) is None:
                continue
            old = shown[node_id]
            for i, (a, b) in enumerate(zip(old, new, strict=True)):
                if a != b:
                    column = fmt.COLUMN_KEYS[i]
                    # Measuring is costly (a narrower cell re-measures the whole column):
                    # only a cell wider than its column asks for it.
                    wider = cell_len(b) > self.columns[ColumnKey(column)].content_width
                    self.update_cell(node_id, column, fmt.cell(column, b), update_width=wider)
            shown[node_id] = new

    # --- rendering: DataTable's, cached by content (see the module docstring) ----------

    def watch_scroll_y(self, old: float, new: float) -> None:
        super().watch_scroll_y(old, new)
        self._apply_visible()

    def on_resize(self) -> None:
        self._apply_visible()

    def _render_cell(
        self,
        row_index: int,
        column_index: int,
        base_style: Style,
        width: int,
        cursor: bool = False,
        hover: bool = False,
    ) -> SegmentLines:
        """DataTable's cell render, cached by what the cell shows.

        DataTable keys its render caches by a table-wide update count, so one changed cell
        re-renders every visible cell. Here a cell is rendered again only when its text,
        place or style changed: a refresh that changes 10 visible rows renders those."""
        if row_index < 0 or column_index < 0:  # header and labels: as DataTable does
            return super()._render_cell(row_index, column_index, base_style, width, cursor, hover)
        row_key = self._row_locations.get_key(row_index)
        node_id = row_key.value if row_key is not None else None
        cells = self._shown.get(node_id) if node_id is not None else None
        if cells is None:
            return super()._render_cell(row_index, column_index, base_style, width, cursor, hover)
        key = (
            row_index,
            column_index,
            cells[column_index],
            base_style,
            width,
            cursor,
            hover,
            self._show_hover_cursor,
            self._pseudo_class_state,
        )
        lines = self._cells_cache.get(key)
        if lines is None:
            lines = super()._render_cell(row_index, column_index, base_style, width, cursor, hover)
            self._cells_cache.set(key, lines)
        return lines

    def _render_line(self, y: int, x1: int, x2: int, base_style: Style) -> Strip:
        """DataTable's line render, cached by what the line shows (as ``_render_cell``)."""
        try:
            row_key, line_no = self._get_offsets(y)
        except LookupError:
            return super()._render_line(y, x1, x2, base_style)
        cells = self._shown.get(row_key.value) if row_key.value is not None else None
        if cells is None or line_no:  # the header, or not one of ours
            return super()._render_line(y, x1, x2, base_style)
        row_index = self._row_locations.get(row_key)
        cursor, hover = self.cursor_coordinate, self.hover_coordinate
        key = (
            y,
            x1,
            x2,
            self.size.width,
            row_index,
            cells,
            base_style,
            cursor if cursor.row == row_index else None,
            hover if hover.row == row_index else None,
            self.cursor_type,
            self.show_cursor,
            self._show_hover_cursor,
            self._pseudo_class_state,
            self._widths,
        )
        strip = self._lines_cache.get(key)
        if strip is None:
            strip = super()._render_line(y, x1, x2, base_style)
            self._lines_cache.set(key, strip)
        return strip

    def render_lines(self, crop: Region) -> list[Strip]:
        self._widths = tuple(column.get_render_width(self) for column in self.columns.values())
        return super().render_lines(crop)

    def notify_style_update(self) -> None:
        self._cells_cache.clear()
        self._lines_cache.clear()
        super().notify_style_update()

    # --- filter and sort ---------------------------------------------------------------

    def set_query(self, query: Query) -> None:
        self.query_ = query
        self.show(self.nodes)

    def sort_by(self, column: str, reverse: bool | None = None) -> None:
        """Sort by ``column``; the same column again flips the order unless ``reverse``;
        a new column starts hottest first (``hottest_first``)."""
        if reverse is None:
            same = column == self.sort_column
            reverse = not self.sort_reverse if same else hottest_first(column)
        self.sort_column, self.sort_reverse = column, reverse
        selected = self.selected
        self._sort()
        if selected is not None:
            self._keep_cursor_on(selected)
        self._title()

    # --- inside ------------------------------------------------------------------------

    def _sort(self) -> None:
        nodes, value_of, reverse = self.nodes, SORT_KEYS[self.sort_column], self.sort_reverse

        def sort_key(node_id: str | Text) -> tuple[Any, ...]:
            row = nodes[str(node_id)]
            value = value_of(row)
            if value is None:  # not reported: last, whichever the direction
                return (1, 0, fmt.natural(row.node_id))
            return (0, Descending(value) if reverse else value, fmt.natural(row.node_id))

        self.sort("node", key=sort_key)

    def _keep_cursor_on(self, node_id: str) -> None:
        row = self.get_row_index(node_id)
        if row != self.cursor_row:
            self.move_cursor(row=row)

    def _title(self) -> None:
        arrow = "↓" if self.sort_reverse else "↑"
        title = (
            f"nodes [{self.row_count}/{len(self.nodes)}]  sort: {LABELS[self.sort_column]} {arrow}"
        )
        if self.query_.text:
            title += f"  filter: {self.query_.text}"
        self.border_title = title

    # --- keys and clicks ---------------------------------------------------------------

    def action_cycle_sort(self) -> None:
        i = fmt.COLUMN_KEYS.index(self.sort_column)
        column = fmt.COLUMN_KEYS[(i + 1) % len(fmt.COLUMN_KEYS)]
        self.sort_by(column, reverse=hottest_first(column))

    def action_reverse_sort(self) -> None:
        self.sort_by(self.sort_column, reverse=not self.sort_reverse)

    def on_data_table_header_selected(self, event: DataTable.HeaderSelected) -> None:
        event.stop()
        self.sort_by(str(event.column_key.value))
