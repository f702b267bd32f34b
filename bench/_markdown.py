"""A Markdown table from rows of figures, as the benchmark reports print them."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

DASH = "-"  # a figure a row does not have


def table(columns: Sequence[tuple[str, str]], rows: Iterable[dict[str, Any]]) -> list[str]:
    """The lines of a table: ``columns`` are (heading, key of a row); a missing or None
    figure shows as a dash."""
    lines = ["| " + " | ".join(h for h, _ in columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        cells = [DASH if row.get(k) is None else str(row[k]) for _, k in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return lines
