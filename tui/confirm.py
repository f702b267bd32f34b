"""The confirmation before an action (or a scenario run): y runs it, n or Esc does not."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Static

from .actions import ACTION_TEXT


class ConfirmScreen(ModalScreen[bool]):
    BINDINGS = [
        Binding("y", "answer(True)", "yes"),
        Binding("n", "answer(False)", "no"),
        Binding("escape", "answer(False)", "no", show=False),
    ]

    def __init__(
        self,
        action: str,
        target: str,
        *,
        noun: str = "node",
        what: str | None = None,
        question: Text | None = None,
    ) -> None:
        super().__init__()
        self.question = question
        self.verb = action
        self.target = target
        self.noun = noun
        self.what = ACTION_TEXT.get(action, "") if what is None else what

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog"):
            question = self.question or Text.assemble(
                (self.verb, "bold"), f" {self.noun} ", (self.target, "bold"), "?"
            )
            yield Static(question, id="question")
            yield Static(Text(self.what, "dim"), id="what")
            with Horizontal(id="buttons"):
                yield Button("yes (y)", variant="error", id="yes")
                yield Button("no (n)", variant="primary", id="no")

    def on_mount(self) -> None:
        self.query_one("#no", Button).focus()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "yes")

    def action_answer(self, yes: bool) -> None:
        self.dismiss(yes)
