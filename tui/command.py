"""Command mode, k9s style: `:` then a view name (or a unique prefix of one), Enter."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import ModalScreen
from textual.suggester import SuggestFromList
from textual.widgets import Input

VIEWS = ("nodes", "events", "tasks", "scenarios", "help")
QUIT = ("q", "quit")
FORCE_QUIT = ("q!", "quit!")  # without asking, even when quitting stops the cluster
COMMANDS = (*VIEWS, "quit")


def resolve(text: str) -> str | None:
    """The view (or "quit", "quit!") a command names: exact, an alias, or a unique prefix."""
    word = text.strip().lower().lstrip(":")
    if word in QUIT:
        return "quit"
    if word in FORCE_QUIT:
        return "quit!"
    if word in ("?", "h"):
        return "help"
    if word == "no":  # k9s: :no is nodes
        return "nodes"
    hits = [c for c in COMMANDS if c.startswith(word)] if word else []
    return hits[0] if len(hits) == 1 else None


class CommandScreen(ModalScreen[str | None]):
    """The `:` prompt; dismisses with what was typed (None on Esc)."""

    BINDINGS = [Binding("escape", "cancel", "cancel", show=False)]

    def compose(self) -> ComposeResult:
        yield Input(
            placeholder="nodes | events | tasks | scenarios | help | quit",
            suggester=SuggestFromList(COMMANDS, case_sensitive=False),
            id="command",
        )

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self.dismiss(event.value)

    def action_cancel(self) -> None:
        self.dismiss(None)
