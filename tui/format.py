"""How values look in the console: one place for units, dashes and state colours."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import Any

from rich.text import Text

from .model import STATES, NodeRow

DASH = "-"
STATE_ORDER = {name: i for i, name in enumerate(STATES)}

# Rich styles of the display states (tui/model.py STATES) and of event kinds.
STATE_STYLES = {
    "joined": "cyan",
    "alive": "green",
    "rebooted": "cyan",
    "overloaded": "yellow",
    "suspect": "bold yellow",
    "dead": "bold red",
    "left": "dim",
    "unknown": "dim",
}
KIND_STYLES = {
    "membership": "cyan",
    "observer": "magenta",
    "reject": "yellow",
    "fault": "red",
    "action": "bold",
    "service": "blue",
    "scenario": "bold magenta",
    "overload": "yellow",
    "delegation": "cyan",
    "task": "bold yellow",
}


def state_text(state: str) -> Text:
    return Text(state, style=STATE_STYLES.get(state, ""))


def age(ms: int | None) -> str:
    """Milliseconds as a short duration: <1s, 2.3s, 12s, 5m03s, 2h05m.

    Coarse on purpose: a node heard within the second reads "<1s" from one refresh to the
    next, so a healthy cluster's table barely changes (what changes costs a redraw).
    """
    if ms is None:
        return DASH
    if ms < 1000:
        return "<1s"
    s = ms / 1000
    if s < 10:
        return f"{s:.1f}s"
    if s < 60:
        return f"{int(s)}s"
    if s < 3600:
        return f"{int(s // 60)}m{int(s % 60):02d}s"
    return f"{int(s // 3600)}h{int(s % 3600 // 60):02d}m"


def age_ms(ms: int | None) -> str:
    """Milliseconds as they are, for the detail view: 420 ms, 12.5 s, 5m03s."""
    if ms is None:
        return DASH
    if ms < 1000:
        return f"{ms} ms"
    if ms < 60_000:
        return f"{ms / 1000:.1f} s"
    return age(ms)


def num(value: float | int | None, fmt: str = "{}") -> str:
    return DASH if value is None else fmt.format(value)


def queue(depth: int | None, capacity: int | None) -> str:
    if depth is None:
        return DASH
    return f"{depth}/{capacity}" if capacity is not None else str(depth)


def heap(free: int | None) -> str:
    return DASH if free is None else f"{free / 1024:.0f}K"


def clock(at: float) -> str:
    """Wall-clock seconds as local HH:MM:SS."""
    return time.strftime("%H:%M:%S", time.localtime(at))


# The nodes table's columns: (key, label, sort value), in display order; ``cells`` gives
# their text. Columns sort by these values; None (not reported) always sorts last.
Column = tuple[str, str, Callable[[NodeRow], Any]]

_DIGITS = re.compile(r"(\d+)")


def natural(node_id: str) -> tuple[Any, ...]:
    """Sort key that puts sim-9 before sim-10."""
    return tuple(int(p) if p.isdigit() else p for p in _DIGITS.split(node_id))


def _state_rank(row: NodeRow) -> int:
    return STATE_ORDER.get(row.state, len(STATE_ORDER))


COLUMNS: tuple[Column, ...] = (
    ("node", "node", lambda r: natural(r.node_id)),
    ("state", "state", _state_rank),
    ("age", "age", lambda r: r.age_ms),
    ("cpu", "cpu%", lambda r: r.cpu_pct),
    ("queue", "queue", lambda r: r.queue_depth),
    ("load", "load", lambda r: r.load_factor),
    ("running", "running", lambda r: r.tasks_running),
    ("in", "in", lambda r: r.delegated_in),
    ("out", "out", lambda r: r.delegated_out),
    ("gaps", "gaps", lambda r: r.gaps),
    ("heap", "heap", lambda r: r.free_heap),
    ("rssi", "rssi", lambda r: r.rssi),
    ("fw", "fw", lambda r: r.fw),
    ("via", "via", lambda r: r.via),
)
COLUMN_KEYS = tuple(c[0] for c in COLUMNS)
# Columns where a high value is the hot one: their first sort is descending.
HOT_HIGH = frozenset({"age", "cpu", "queue", "load", "running", "in", "out", "gaps"})
LEFT_ALIGNED = {"node", "state", "fw", "via"}


def cells(r: NodeRow) -> tuple[str, ...]:
    """The text of each column of a node's row (in COLUMNS order). Every refresh formats
    every node, so this is written out rather than looped."""
    return (
        r.node_id,
        f"{r.state}, drained" if r.drained else r.state,
        age(r.age_ms),
        DASH if r.cpu_pct is None else f"{r.cpu_pct:.0f}",
        queue(r.queue_depth, r.queue_capacity),
        DASH if r.load_factor is None else f"{r.load_factor:.2f}",
        DASH if r.tasks_running is None else str(r.tasks_running),
        DASH if r.delegated_in is None else str(r.delegated_in),
        DASH if r.delegated_out is None else str(r.delegated_out),
        str(r.gaps),
        heap(r.free_heap),
        DASH if r.rssi is None else str(r.rssi),
        r.fw or DASH,
        r.via or DASH,
    )


def cell(column: str, value: str) -> Text | str:
    """A cell as the table shows it: states coloured, numbers right-aligned."""
    if column == "state":
        state, _, drained = value.partition(", ")
        return Text.assemble(
            (state, STATE_STYLES.get(state, "")), (f", {drained}" if drained else "", "bold yellow")
        )
    if column in LEFT_ALIGNED:
        return value
    return Text(value, justify="right")
