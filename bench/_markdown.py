"""A Markdown table from rows of figures, as the benchmark reports print them, and the
columns the chaos tables share."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

DASH = "-"  # a figure a row does not have

# What a chaos run's row says of its outcome, in the chaos library's table and the report's:
# (heading, field of a result row).
CHAOS_OUTCOME = (
    ("dead p50 ms", "detect_dead_ms_p50"),
    ("dead max ms", "detect_dead_ms_max"),
    ("re-delegated ms", "redelegate_ms_max"),
    ("recovery s", "recovery_s"),
    ("tasks", "tasks_total"),
    ("lost", "lost_tasks"),
    ("twice", "duplicate_commits"),
)


def table(columns: Sequence[tuple[str, str]], rows: Iterable[dict[str, Any]]) -> list[str]:
    """The lines of a table: ``columns`` are (heading, key of a row); a missing or None
    figure shows as a dash."""
    lines = ["| " + " | ".join(h for h, _ in columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        cells = [DASH if row.get(k) is None else str(row[k]) for _, k in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return lines
