"""The scenarios view: the fault-injection scenarios (``scenarios_dir/*.toml``) with a
preview of the selected one. Running one waits for the fault injector (issue 5)."""

from __future__ import annotations

from pathlib import Path

from rich.syntax import Syntax
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, VerticalScroll
from textual.widgets import Footer, OptionList, Static
from textual.widgets.option_list import Option

from .base import ConsoleScreen, StatusBanner

NOT_BUILT = "the fault injector is not built yet (issue 5 adds it)"
PREVIEW_CHARS = 20_000


def scenario_files(directory: Path | None) -> list[Path]:
    if directory is None or not directory.is_dir():
        return []
    return sorted(directory.glob("*.toml"))


class ScenariosScreen(ConsoleScreen):
    AUTO_FOCUS = "#scenario-list"
    BINDINGS = [
        Binding("enter", "run", "run"),
        Binding("escape", "app.go('nodes')", "back"),
    ]

    def __init__(self, directory: Path | None) -> None:
        super().__init__()
        self.directory = directory
        self.files: list[Path] = []

    def compose(self) -> ComposeResult:
        yield StatusBanner(id="banner")
        with Horizontal(id="scenarios-body"):
            yield OptionList(id="scenario-list")
            with VerticalScroll(id="preview-box"):
                yield Static(id="preview")
        yield Footer()

    def on_screen_resume(self) -> None:  # ConsoleScreen's runs too (Textual calls both)
        self.rescan()

    def rescan(self) -> None:
        files = scenario_files(self.directory)
        listing = self.query_one(OptionList)
        if files == self.files and listing.option_count:
            return
        self.files = files
        listing.clear_options()
        listing.border_title = f"scenarios [{len(files)}]"
        if files:
            listing.add_options(Option(p.stem, id=str(p)) for p in files)
            listing.highlighted = 0
        else:
            where = self.directory if self.directory is not None else "(no scenarios directory)"
            listing.add_option(Option(Text("none yet", "dim"), disabled=True))
            self.query_one("#preview", Static).update(
                Text(f"No *.toml scenarios in {where} yet.\n\n{NOT_BUILT}.", "dim")
            )

    def _selected(self) -> Path | None:
        listing = self.query_one(OptionList)
        if listing.highlighted is None or not self.files:
            return None
        return self.files[listing.highlighted]

    def on_option_list_option_highlighted(self, event: OptionList.OptionHighlighted) -> None:
        path = self._selected()
        if path is None:
            return
        try:
            text = path.read_text(encoding="utf-8", errors="replace")[:PREVIEW_CHARS]
        except OSError as err:
            self.query_one("#preview", Static).update(
                Text(f"cannot read {path.name}: {err}", "red")
            )
            return
        box = self.query_one("#preview-box", VerticalScroll)
        box.border_title = path.name
        self.query_one("#preview", Static).update(Syntax(text, "toml", theme="ansi_dark"))

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        self.action_run()

    def action_run(self) -> None:
        path = self._selected()
        if path is None:
            self.notify("no scenario selected", severity="warning")
            return
        self.notify(f"{path.stem}: {NOT_BUILT}", severity="warning", title="run scenario")
