"""The `/` prompt that the nodes, events and tasks views share: it parses what is typed
(tui/query.py), says on its border what is wrong with a bad regex, and posts ``FilterBox.Applied`` with the new Query.
``FilteredScreen`` is the keys and handlers the events and tasks views wrap around it.

Over many rows it waits for typing to pause before applying: re-filtering 1,000 rows on
every keystroke would make the typing lag. Enter applies at once.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from textual.message import Message
from textual.timer import Timer
from textual.widgets import DataTable, Input

from . import query
from .base import ConsoleScreen

AT_ONCE_UP_TO = 200  # rows; with more, a change applies once typing pauses
DEBOUNCE_S = 0.2


class FilterBox(Input):
    @dataclass
    class Applied(Message):
        box: FilterBox
        query: query.Query

    def __init__(self, fields: Collection[str], placeholder: str, id: str) -> None:
        super().__init__(placeholder=placeholder, id=id)
        self.fields = fields
        self.rows = 0  # how many rows the filter runs over (the view keeps it current)
        self.current = query.EVERYTHING
        self._pending: query.Query | None = None
        self._timer: Timer | None = None

    @property
    def active(self) -> bool:
        return self.has_class("-shown") or bool(self.current.text)

    def open(self) -> None:
        self.add_class("-shown")
        self.focus()

    def clear_filter(self) -> None:
        """Empty and hide the box, and apply "everything"."""
        self._pending = None
        self.value = ""
        self.remove_class("-shown", "-bad")
        self.border_title = None
        self._apply(query.EVERYTHING)

    def on_input_changed(self, event: Input.Changed) -> None:
        event.stop()
        try:
            q = query.parse(event.value, self.fields)
        except ValueError as err:
            # Said in words on the box, not only by its colour.
            self.add_class("-bad")
            self.border_title = f"{err}; still showing: {self.current.text or 'everything'}"
            return
        self.remove_class("-bad")
        self.border_title = None
        self._pending = q
        if self._timer is not None:
            self._timer.stop()
        if self.rows <= AT_ONCE_UP_TO:
            self.apply_pending()
        else:
            self._timer = self.set_timer(DEBOUNCE_S, self.apply_pending)

    def apply_pending(self) -> None:
        self._timer = None
        if self._pending is not None:
            self._apply(self._pending)
            self._pending = None

    def _apply(self, q: query.Query) -> None:
        if q != self.current:
            self.current = q
            self.post_message(self.Applied(self, q))


class FilteredScreen(ConsoleScreen):
    """A view of one table behind a FilterBox: `/` opens the box, Esc empties it (or, with
    no filter, goes back to the nodes view), Enter applies what is typed and returns to the
    table. A subclass names its ``table`` and shows its rows anew in ``refilter``."""

    query_: query.Query = query.EVERYTHING

    @property
    def table(self) -> DataTable[Any]:
        raise NotImplementedError

    def refilter(self) -> None:
        """Show the rows ``self.query_`` lets through."""
        raise NotImplementedError

    def filter_note(self) -> str:
        """What the table's title says of the filter: nothing when there is none."""
        return f"  filter: {self.query_.text}" if self.query_.text else ""

    def action_filter(self) -> None:
        self.query_one(FilterBox).open()

    def action_back(self) -> None:
        box = self.query_one(FilterBox)
        if box.active:
            box.clear_filter()
            self.table.focus()
        else:
            self.console.go("nodes")

    def on_filter_box_applied(self, event: FilterBox.Applied) -> None:
        self.query_ = event.query
        self.refilter()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        if not event.value.strip():
            self.action_back()
        else:
            self.query_one(FilterBox).apply_pending()
            self.table.focus()
