"""What every console screen shares: it is handed each new ClusterState, and a banner."""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

from textual.screen import Screen
from textual.widgets import Static

from .model import ClusterState

if TYPE_CHECKING:
    from .app import ShoalConsole


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
    def console(self) -> ShoalConsole:
        return cast("ShoalConsole", self.app)

    def on_screen_resume(self) -> None:
        self.show_state(self.console.state)

    def show_state(self, state: ClusterState) -> None:
        """Bring the screen up to date with ``state`` (and the app's event log)."""
