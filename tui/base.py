"""What every console screen shares: it is handed each new ClusterState, and a banner."""

from __future__ import annotations

from collections import deque
from pathlib import Path
from typing import Protocol, cast

from textual.screen import Screen
from textual.widgets import Static

from .model import ClusterState, Event, Sample


class Console(Protocol):
    """What a screen asks of the console app (app.py's ShoalConsole): named here so the
    screens need not import the app that imports them."""

    state: ClusterState
    readonly: bool
    event_log: deque[tuple[int, Event]]

    def events_after(self, n: int) -> list[tuple[int, Event]]: ...
    def history(self, node_id: str) -> list[Sample]: ...
    def go(self, view: str) -> None: ...
    def open_detail(self, node_id: str) -> None: ...
    def request_action(self, action: str, node_id: str | None) -> None: ...
    def request_scenario(self, path: Path) -> None: ...
    def request_stop_scenario(self) -> None: ...


class StatusBanner(Static):
    """The link to the cluster when it is not right: "disconnected: ... retrying"."""

    def on_mount(self) -> None:
        self.watch(self.app, "link", self._show)

    def _show(self, link: tuple[str, str]) -> None:
        level, text = link
        self.set_class(level == "error", "-error")
        self.set_class(level == "warn", "-warn")
        self.update(text)


class ConsoleScreen(Screen[None]):
    """A screen that shows the cluster; the app calls ``show_state`` with every new state."""

    @property
    def console(self) -> Console:
        return cast(Console, self.app)

    def on_screen_resume(self) -> None:
        self.show_state(self.console.state)

    def show_state(self, state: ClusterState) -> None:
        """Bring the screen up to date with ``state`` (and the app's event log)."""
