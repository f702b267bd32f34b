"""k9s habits in every list: j/k down/up, g/G or Home/End first/last, PgUp/PgDn a page.

Widgets take these bindings from here, so every table view moves the same way; none shows
in the footer (the help lists them once)."""

from __future__ import annotations

from typing import Any

from textual.binding import Binding, BindingType
from textual.containers import VerticalScroll
from textual.widgets import DataTable, OptionList

TABLE_KEYS: list[BindingType] = [
    Binding("j", "cursor_down", "down", show=False),
    Binding("k", "cursor_up", "up", show=False),
    Binding("g,home", "scroll_top", "first row", show=False),
    Binding("G,end", "scroll_bottom", "last row", show=False),
]
LIST_KEYS: list[BindingType] = [
    Binding("j", "cursor_down", "down", show=False),
    Binding("k", "cursor_up", "up", show=False),
    Binding("g", "first", "first", show=False),
    Binding("G", "last", "last", show=False),
]
SCROLL_KEYS: list[BindingType] = [
    Binding("j", "scroll_down", "down", show=False),
    Binding("k", "scroll_up", "up", show=False),
    Binding("g,home", "scroll_home", "top", show=False),
    Binding("G,end", "scroll_end", "bottom", show=False),
]
# For the help: what moves, once for every view.
NAVIGATION_HELP = (
    ("j k ↓ ↑", "next / previous row"),
    ("g G Home End", "first / last row"),
    ("PgUp PgDn", "a page up / down"),
)


class ConsoleTable(DataTable[Any]):
    """A row-cursor DataTable with the k9s keys (Home/End: first/last row, not column)."""

    BINDINGS = TABLE_KEYS


class ConsoleList(OptionList):
    BINDINGS = LIST_KEYS


class ConsoleScroll(VerticalScroll):
    BINDINGS = SCROLL_KEYS
