"""The scenarios view: the fault-injection scenarios (``scenarios_dir/*.toml``) with a
preview of the selected one; Enter runs it with the fault injector against this cluster
(the app asks first). Above them: the scenario running now (its latest progress line) or
the last one run (its verdict, exit code and report)."""

from __future__ import annotations

from pathlib import Path

from rich.console import RenderableType
from rich.syntax import Syntax
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, VerticalScroll
from textual.widgets import Footer, OptionList, Static
from textual.widgets.option_list import Option

from . import format as fmt
from .base import ConsoleScreen, StatusBanner
from .keys import ConsoleList
from .model import ClusterState, ScenarioRun

PREVIEW_CHARS = 20_000
NO_RUN = (
    "No scenario run yet. Enter runs the selected one against this cluster with the fault"
    " injector (after y/n); one at a time."
)
VERDICT_STYLES = {
    "passed": "bold green",
    "failed": "bold red",
    "aborted": "bold yellow",
    "undecided": "bold yellow",
}


def run_text(run: ScenarioRun | None) -> RenderableType:
    """The scenario running (its progress) or the last one run (verdict, exit, report)."""
    if run is None:
        return Text(NO_RUN, "dim")
    text = Text()
    text.append(run.name, "bold")
    if run.running:
        text.append("  running", "bold cyan")
        text.append(f" since {fmt.clock(run.started_at)}", "dim")
        if run.pid is not None:
            text.append(f" (pid {run.pid})", "dim")
        text.append("\n")
        text.append(run.progress or "starting...")
        text.append("\n")
        text.append(f"report to {run.report}", "dim")
        return text
    text.append("  ")
    text.append(run.verdict or "?", VERDICT_STYLES.get(run.verdict, "bold red"))
    text.append(f"  exit {fmt.num(run.exit_code)}")
    ended = run.ended_at if run.ended_at is not None else run.started_at
    text.append(f"  ended {fmt.clock(ended)} after {ended - run.started_at:.0f} s", "dim")
    text.append("\n")
    text.append(run.reason or fmt.DASH)
    text.append("\n")
    if run.report:
        summary = str(Path(run.report).with_suffix(".md"))
        text.append(f"report {run.report}  summary {summary}", "dim")
    else:
        text.append("no report written", "dim")
    return text


def scenario_files(directory: Path | None) -> list[Path]:
    if directory is None or not directory.is_dir():
        return []
    return sorted(directory.glob("*.toml"))


class ScenariosScreen(ConsoleScreen):
    AUTO_FOCUS = "#scenario-list"
    BINDINGS = [
        Binding("enter", "run", "run it (asks first; one at a time)"),
        # ctrl+k (k9s: kill): x is remove in the nodes view.
        Binding("ctrl+k", "stop", "stop the running one"),
        Binding("escape", "app.go('nodes')", "back"),
    ]

    def __init__(self, directory: Path | None) -> None:
        super().__init__()
        self.directory = directory
        self.files: list[Path] = []
        self._run: ScenarioRun | None = None
        self._shown = False

    def compose(self) -> ComposeResult:
        yield StatusBanner(id="banner")
        yield Static(id="scenario-run")
        with Horizontal(id="scenarios-body"):
            yield ConsoleList(id="scenario-list")
            with VerticalScroll(id="preview-box"):
                yield Static(id="preview")
        yield Footer()

    def on_screen_resume(self) -> None:  # ConsoleScreen's runs too (Textual calls both)
        self.rescan()

    def show_state(self, state: ClusterState) -> None:
        run = state.scenario
        if self._shown and run == self._run:
            return
        self._run, self._shown = run, True
        panel = self.query_one("#scenario-run", Static)
        if run is None:
            panel.border_title = "scenario runs"
        else:
            panel.border_title = "scenario running" if run.running else "last run"
        panel.update(run_text(run))

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
                Text(f"No *.toml scenarios in {where} yet.", "dim")
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

    def action_stop(self) -> None:
        self.console.request_stop_scenario()

    def action_run(self) -> None:
        path = self._selected()
        if path is None:
            self.notify("no scenario selected", severity="warning")
            return
        self.console.request_scenario(path)
