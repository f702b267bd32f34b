"""The operator console: ``ShoalConsole(source)`` polls the source and shows the cluster.

    from shoal.tui.app import ShoalConsole
    from shoal.tui.fixtures import FixedSource

    ShoalConsole(FixedSource()).run()

The app is the only thing that talks to the Source (tui/model.py): it polls
``snapshot()`` and ``events()`` at most four times a second, keeps an event log, hands
every new state to the screens on the stack, and carries out operator actions and
scenario runs (read-only check, ``available``, confirmation, ``act`` or ``run_scenario`` on
a worker thread). Nothing the source raises reaches the screen as a traceback: it becomes
the "disconnected ... retrying" banner.
"""

from __future__ import annotations

import contextlib
from collections import deque
from collections.abc import Callable
from pathlib import Path

from rich.text import Text
from textual import work
from textual.app import App
from textual.binding import Binding
from textual.css.query import NoMatches
from textual.reactive import reactive

from .actions import verb_for, why_not
from .base import ConsoleScreen
from .command import CommandScreen, resolve
from .confirm import ConfirmScreen
from .detail import NodeDetailScreen
from .event_log import EventsScreen
from .help import HelpScreen
from .model import RUN_SCENARIO, ActionError, ClusterState, Event, Sample, Source
from .nodes import NodesScreen
from .scenarios import ScenariosScreen
from .tasks import TasksScreen

MIN_REFRESH_S = 0.25  # at most four refreshes a second, whatever the caller asks
EVENT_LOG_KEPT = 5000


def _describe(err: BaseException) -> str:
    text = str(err)
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


class ShoalConsole(App[None]):
    CSS_PATH = "console.tcss"
    TITLE = "shoal"
    ENABLE_COMMAND_PALETTE = False
    BINDINGS = [
        Binding("colon", "command", "command"),
        Binding("question_mark", "help", "help"),
        Binding("q", "leave", "quit"),
        Binding("ctrl+c", "quit", "quit at once", show=False, priority=True),
    ]

    # (level, text) of the banner: ("", "") hidden, "warn" partial data, "error" no data.
    link: reactive[tuple[str, str]] = reactive(("", ""), init=False)

    def __init__(
        self,
        source: Source,
        readonly: bool = False,
        scenarios_dir: Path | None = None,
        refresh_s: float = 0.25,
        owns_cluster: bool = False,
    ) -> None:
        """``owns_cluster``: this console is the one `shoal up` opened, and quitting it
        stops the cluster (so `q` asks first); a `shoal tui` console just leaves."""
        super().__init__()
        self.source = source
        self.readonly = readonly
        self.owns_cluster = owns_cluster
        self.scenarios_dir = scenarios_dir
        self.refresh_s = max(refresh_s, MIN_REFRESH_S)
        self.state = ClusterState(connected=False, detail="connecting...")
        self.event_log: deque[tuple[int, Event]] = deque(maxlen=EVENT_LOG_KEPT)
        self._event_n = 0
        self._cursor = 0  # the source's event cursor

    def on_mount(self) -> None:
        self.add_mode("nodes", NodesScreen)
        self.add_mode("events", EventsScreen)
        self.add_mode("scenarios", lambda: ScenariosScreen(self.scenarios_dir))
        self.add_mode("tasks", TasksScreen)
        self.poll()
        self.switch_mode("nodes")
        self.set_interval(self.refresh_s, self.poll)

    # --- the source --------------------------------------------------------------------

    def poll(self) -> None:
        """Take the source's newest state and events and hand them to the screens."""
        try:
            state = self.source.snapshot()
            cursor, new = self.source.events(self._cursor)
        except Exception as err:  # whatever it is, the console stays up and says so
            self.link = ("error", f"disconnected: {_describe(err)} (retrying)")
            return
        self._cursor = cursor
        for event in new:
            self._event_n += 1
            self.event_log.append((self._event_n, event))
        if not state.connected and state.version == 0:
            # Nothing built yet: not a failure, the feed has not had its first look.
            self.link = ("warn", "connecting to the cluster...")
        elif not state.connected:
            self.link = ("error", f"disconnected: {state.detail or 'no cluster'} (retrying)")
        elif state.detail:
            self.link = ("warn", state.detail)
        else:
            self.link = ("", "")
        if state is self.state and not new:
            return
        self.state = state
        for screen in self.screen_stack:
            if isinstance(screen, ConsoleScreen) and screen.is_mounted:
                # Mounted, its widgets may still be composing (seen on a busy machine): it
                # shows the next state instead, a poll later.
                with contextlib.suppress(NoMatches):
                    screen.show_state(state)

    def events_after(self, n: int) -> list[tuple[int, Event]]:
        """The logged events numbered after ``n``, oldest first."""
        out = []
        for item in reversed(self.event_log):
            if item[0] <= n:
                break
            out.append(item)
        out.reverse()
        return out

    def history(self, node_id: str) -> list[Sample]:
        try:
            return self.source.history(node_id)
        except Exception:  # shown as no history; the banner tells about the link
            return []

    # --- navigation --------------------------------------------------------------------

    def go(self, view: str) -> None:
        """Show a view: nodes, events, tasks, scenarios (their own stacks) or help."""
        if view == "help":
            self.action_help()
            return
        if view == self.current_mode:
            while len(self.screen_stack) > 1:
                self.pop_screen()
        else:
            self.switch_mode(view)

    def open_detail(self, node_id: str) -> None:
        self.push_screen(NodeDetailScreen(node_id))

    def action_help(self) -> None:
        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen(self.BINDINGS))

    def action_go(self, view: str) -> None:
        self.go(view)

    def action_command(self) -> None:
        self.push_screen(CommandScreen(), self._on_command)

    def _on_command(self, text: str | None) -> None:
        if text is None or not text.strip():
            return
        target = resolve(text)
        if target is None:
            self.notify(f"unknown command ':{text.strip()}'", severity="error")
        elif target == "quit":
            self.action_leave()
        elif target == "quit!":
            self.exit()
        else:
            self.go(target)

    def action_leave(self) -> None:
        """`q`: leave the console; the one `shoal up` opened asks, as the cluster stops too."""
        if not self.owns_cluster:
            self.exit()
            return
        if isinstance(self.screen, ConfirmScreen):
            return
        question = Text.assemble(("quit", "bold"), " and ", ("stop the cluster", "bold"), "?")
        what = "shoal up started it: it stops with this console (:q! quits without asking)"

        def answered(yes: bool | None) -> None:
            if yes:
                self.exit()

        self.push_screen(ConfirmScreen("quit", "", what=what, question=question), answered)

    # --- actions -----------------------------------------------------------------------

    def request_action(self, action: str, node_id: str | None) -> None:
        """Refuse (read-only, nothing selected, not available), or confirm then run."""
        if self.readonly:
            self.notify(f"read-only: {action} refused", severity="warning")
            return
        if node_id is None:
            self.notify(f"{action}: no node selected", severity="warning")
            return
        row = self.state.nodes.get(node_id)
        action = verb_for(action, row)
        why = why_not(action, row, node_id)
        if why is not None:
            self.notify(f"{action}: {why}", severity="warning")
            return
        try:
            reason = self.source.available(action)
        except Exception as err:
            self.notify(f"{action}: {_describe(err)}", severity="error")
            return
        if reason is not None:
            self.notify(f"{action}: {reason}", severity="warning")
            return

        def answered(yes: bool | None) -> None:
            if yes:
                self._act(action, node_id)

        self.push_screen(ConfirmScreen(action, node_id), answered)

    def request_scenario(self, path: Path) -> None:
        """Refuse (read-only, one running, not available), or confirm then start it."""
        verb = "run scenario"
        if self.readonly:
            self.notify(f"read-only: {verb} refused", severity="warning")
            return
        try:
            reason = self.source.available(RUN_SCENARIO)
        except Exception as err:
            self.notify(f"{verb}: {_describe(err)}", severity="error")
            return
        if reason is not None:
            self.notify(f"{verb} {path.stem}: {reason}", severity="warning")
            return

        def answered(yes: bool | None) -> None:
            if yes:
                self._run_scenario(path)

        what = "the fault injector runs it against this cluster; quitting stops it"
        self.push_screen(ConfirmScreen("run", path.stem, noun="scenario", what=what), answered)

    def request_stop_scenario(self) -> None:
        """Confirm, then stop the running scenario (its faults healed, its report written)."""
        verb = "stop scenario"
        if self.readonly:
            self.notify(f"read-only: {verb} refused", severity="warning")
            return
        run = self.state.scenario
        if run is None or not run.running:
            self.notify(f"{verb}: none is running", severity="warning")
            return

        def answered(yes: bool | None) -> None:
            if yes:
                self.notify(f"stopping {run.name}: the injector heals its faults", title=verb)
                self._stop_scenario()

        what = "the injector heals the faults it applied and writes its report"
        self.push_screen(ConfirmScreen("stop", run.name, noun="scenario", what=what), answered)

    @work(thread=True, group="scenario-stop")
    def _stop_scenario(self) -> None:
        self._carry_out("stop scenario", self.source.stop_scenario)

    @work(thread=True, group="actions")
    def _act(self, action: str, node_id: str) -> None:
        """The action on a worker thread: a source may wait on the cluster to answer."""
        self._carry_out(action, lambda: self.source.act(action, node_id))

    @work(thread=True, group="actions")
    def _run_scenario(self, path: Path) -> None:
        self._carry_out("run scenario", lambda: self.source.run_scenario(str(path)))

    def _carry_out(self, title: str, call: Callable[[], str]) -> None:
        """On a worker thread: the source's line, or its error, as a notification."""
        try:
            line = call()
        except ActionError as err:
            self.call_from_thread(self.notify, str(err), title=title, severity="error")
        except Exception as err:
            self.call_from_thread(
                self.notify, f"{title}: {_describe(err)}", title=title, severity="error"
            )
        else:
            self.call_from_thread(self.notify, line, title=title)
            self.call_from_thread(self.poll)
