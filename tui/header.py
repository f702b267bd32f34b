"""The nodes view's header: cluster counters on the left, the services on the right."""

from __future__ import annotations

from rich.console import RenderableType
from rich.table import Table
from rich.text import Text
from textual.widgets import Static

from . import format as fmt
from .model import FIGURE_SOURCE, STATES, ClusterState, ServiceRow


def _pair(label: str, value: str, label_style: str, value_style: str) -> Text:
    return Text.assemble((f"{label} ", label_style), (value, value_style))


def summary_lines(state: ClusterState, readonly: bool = False) -> list[list[Text]]:
    """The summary as lines of items (a label and its value): counts by state; rates and
    counters; the observer's health, what is stale, read-only mode."""
    counts = state.counts()
    states = [_pair("nodes", str(len(state.nodes)), "bold", "bold")]
    for name in STATES:
        n = counts.get(name, 0)
        states.append(
            _pair(name, str(n), fmt.STATE_STYLES[name] if n else "dim", "bold" if n else "dim")
        )
    silent = state.silent_s
    pairs = (
        ("msgs in/s", f"{state.msgs_per_s:.1f}"),
        ("results/s", fmt.num(state.tasks_per_s, "{:.1f}")),
        ("lost", fmt.num(state.lost)),
        ("dead-lettered", fmt.num(state.dead_letters)),
        ("duplicates", str(state.duplicates)),
        ("gaps", str(state.gaps)),
        ("rejected", str(state.rejected)),
    )
    figures = []
    for label, value in pairs:
        if FIGURE_SOURCE[label] in silent:
            # A silent source's rate is unknown, its counters old: never shown as current.
            shown = "-" if label.endswith("/s") else f"{value}?"
            figures.append(_pair(label, shown, "dim", "dim yellow"))
        else:
            figures.append(_pair(label, value, "dim", "bold"))
    observer = Text.assemble(("observer ", "dim"))
    if state.observer_healthy is None:
        observer.append("?", "bold")
    elif "liveness" in silent:
        observer.append("?", "bold yellow")
    elif state.observer_healthy:
        observer.append("healthy", "bold green")
    else:
        observer.append("DEGRADED", "bold red")
        if state.observer_reasons:
            observer.append(": " + ", ".join(state.observer_reasons), "red")
    health = [observer]
    if silent:
        words = ", ".join(f"{name} {fmt.age(int(s * 1000))}" for name, s in sorted(silent.items()))
        health.append(Text.assemble(("stale, silent: ", "yellow"), (words, "bold yellow")))
    if readonly:
        health.append(Text.assemble(("  read-only: actions are refused", "bold yellow")))
    return [states, figures, health]


def wrapped(lines: list[list[Text]], width: int | None = None) -> Text:
    """Each line's items two spaces apart, broken between items (never inside "gaps 11")
    where a line is wider than ``width``; None: never broken."""
    text = Text()
    for n, items in enumerate(lines):
        if n:
            text.append("\n")
        used = 0
        for i, item in enumerate(items):
            if i and width is not None and used + 2 + item.cell_len > width:
                text.append("\n")
                used = 0
            elif i:
                text.append("  ")
                used += 2
            text.append_text(item)
            used += item.cell_len
    return text


def summary(state: ClusterState, readonly: bool = False, width: int | None = None) -> Text:
    """Counts by state, rates and counters, the observer's health, read-only mode."""
    return wrapped(summary_lines(state, readonly), width)


SERVICE_STYLES = {
    "running": "green",
    "backoff": "yellow",
    "paused": "yellow",
    "stopped": "red",
    "failed": "bold red",  # not restarted: its config or port cannot work (ps says why)
}


def heartbeat(svc: ServiceRow) -> str:
    """Its last heartbeat's age; "-" when the supervisor says it is not running (in
    backoff, stopped), as no process of it can have beaten since."""
    if svc.state not in ("running", "?"):
        return fmt.DASH
    return fmt.age(svc.beat_age_ms)


NARROW = 100  # columns: below this the services panel is compact, to leave the summary room


def services(state: ClusterState, compact: bool = False) -> RenderableType:
    """One line per service: state, restarts, heartbeat age (compact: shorter headings)."""
    table = Table(box=None, padding=(0, 1), show_edge=False, header_style="dim")
    table.add_column("service")
    table.add_column("state")
    table.add_column("rst" if compact else "restarts", justify="right")
    table.add_column("beat" if compact else "heartbeat", justify="right")
    for svc in state.services:
        table.add_row(
            svc.name,
            Text(svc.state, SERVICE_STYLES.get(svc.state, "dim")),
            str(svc.restarts),
            heartbeat(svc),
        )
    if not state.services:
        table.add_row(Text("no services known", "dim"), "", "", "")
    return table


class ClusterSummary(Static):
    """The summary, broken between items to fit its width (80 columns included)."""

    _lines: list[list[Text]] | None = None
    _shown: Text | None = None

    def show(self, state: ClusterState, readonly: bool = False) -> None:
        lines = summary_lines(state, readonly)
        if lines != self._lines:
            self._lines = lines
            self._render_lines()

    def on_resize(self) -> None:
        self._render_lines()

    def _render_lines(self) -> None:
        if self._lines is None:
            return
        width = self.content_size.width or None  # None before the first layout
        text = wrapped(self._lines, width)
        if text != self._shown:
            # A new layout (costly, the whole screen) only when the height changes.
            old = self._shown
            self.update(text, layout=old is None or old.plain.count("\n") != text.plain.count("\n"))
            self._shown = text


class ServicesPanel(Static):
    _shown: tuple[tuple[ServiceRow, ...], bool] | None = None
    _shape: tuple[int, ...] = ()

    def show(self, state: ClusterState) -> None:
        compact = self.app.size.width < NARROW
        if (state.services, compact) == self._shown:
            return
        self._shown = (state.services, compact)
        # The panel's size follows its text: a new layout only when that could change.
        shape = (
            int(compact),
            *(
                len(s.name) + len(s.state) + len(str(s.restarts)) + len(heartbeat(s))
                for s in state.services
            ),
        )
        self.update(services(state, compact), layout=shape != self._shape)
        self._shape = shape
