"""The nodes view's header: cluster counters on the left, the services on the right."""

from __future__ import annotations

from rich.console import RenderableType
from rich.table import Table
from rich.text import Text
from textual.widgets import Static

from . import format as fmt
from .model import FIGURE_SOURCE, STATES, ClusterState, ServiceRow


def summary(state: ClusterState, readonly: bool = False) -> Text:
    """Counts by state, rates and counters, the observer's health, read-only mode."""
    counts = state.counts()
    text = Text()
    text.append("nodes ", "bold")
    text.append(str(len(state.nodes)), "bold")
    for name in STATES:
        text.append("  ")
        n = counts.get(name, 0)
        text.append(f"{name} ", fmt.STATE_STYLES[name] if n else "dim")
        text.append(str(n), "bold" if n else "dim")
    text.append("\n")
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
    for i, (label, value) in enumerate(pairs):
        if i:
            text.append("  ")
        text.append(f"{label} ", "dim")
        if FIGURE_SOURCE[label] in silent:
            # A silent source's rate is unknown, its counters old: never shown as current.
            text.append("-" if label.endswith("/s") else f"{value}?", "dim yellow")
        else:
            text.append(value, "bold")
    text.append("\n")
    text.append("observer ", "dim")
    if state.observer_healthy is None:
        text.append("?", "bold")
    elif "liveness" in silent:
        text.append("?", "bold yellow")
    elif state.observer_healthy:
        text.append("healthy", "bold green")
    else:
        text.append("DEGRADED", "bold red")
        if state.observer_reasons:
            text.append(": " + ", ".join(state.observer_reasons), "red")
    if silent:
        words = ", ".join(f"{name} {fmt.age(int(s * 1000))}" for name, s in sorted(silent.items()))
        text.append("  stale, silent: ", "yellow")
        text.append(words, "bold yellow")
    if readonly:
        text.append("    read-only: actions are refused", "bold yellow")
    return text


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


def services(state: ClusterState) -> RenderableType:
    """One line per service: state, restarts, heartbeat age."""
    table = Table(box=None, padding=(0, 1), show_edge=False, header_style="dim")
    table.add_column("service")
    table.add_column("state")
    table.add_column("restarts", justify="right")
    table.add_column("heartbeat", justify="right")
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
    _shown: Text | None = None

    def show(self, state: ClusterState, readonly: bool = False) -> None:
        text = summary(state, readonly)
        if text != self._shown:
            # Always three lines: a new layout (costly, the whole screen) only the first time.
            self.update(text, layout=self._shown is None)
            self._shown = text


class ServicesPanel(Static):
    _shown: tuple[ServiceRow, ...] | None = None
    _shape: tuple[int, ...] = ()

    def show(self, state: ClusterState) -> None:
        if state.services == self._shown:
            return
        self._shown = state.services
        # The panel's size follows its text: a new layout only when that could change.
        shape = tuple(
            len(s.name) + len(s.state) + len(str(s.restarts)) + len(heartbeat(s))
            for s in state.services
        )
        self.update(services(state), layout=shape != self._shape)
        self._shape = shape
