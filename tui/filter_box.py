"""The `/` prompt that the nodes and events views share: it parses what is typed
(tui/query.py), says on its border what is wrong with a bad regex, and posts ``FilterBox.Applied`` with the new Query.

Over many rows it waits for typing to pause before applying: re-filtering 1,000 rows on
every keystroke would make the typing lag. Enter applies at once.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

from textual.message import Message
from textual.timer import Timer
from textual.widgets import Input

from . import query

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
